"""The compressed sentence encoders, one registered layer per module:

* ``quantized``: ``spacy-distill.QuantizedSentenceEncoder.v1`` (torch dynamic int8);
* ``onnx``: ``spacy-distill.OnnxSentenceEncoder.v1`` (ONNX Runtime, optionally int8).

The float ``spacy-distill.SentenceEncoder.v1`` stays in ``teacher/encoder.py``
(its import path is public); both layers here share its argument checks,
length-sorted padded batching and pooling. The model surgery they run at
initialization is in ``teacher/surgery.py``.

Kept import-light: importing this package imports none of its submodules (the
entry points name each module).
"""
