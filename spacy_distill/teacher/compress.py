"""Compressing the frozen-encoder teacher (``SentenceEncoder.v1`` + ``EncoderTextCat.v1``):
the pipeline side. A compressed teacher is the same pipeline with another encoder
block and the same head (``scripts/compress_teacher.py``, docs/compression.md).

* :func:`encoder_of`: the encoder layer of a teacher pipeline;
* :func:`rebuild_with_encoder`: a copy of a teacher pipeline with another encoder
  and the same head.

The rest of the compression lives beside it: the compressed encoder layers in
``teacher/encoders/`` (``quantized.py``: ``spacy-distill.QuantizedSentenceEncoder.v1``,
``onnx.py``: ``spacy-distill.OnnxSentenceEncoder.v1``), the int8 / ONNX / Hugging Face
folder surgery in ``teacher/surgery.py``, vocabulary and layer pruning in
``teacher/prune.py``.

The encoders it builds need torch and transformers (the teacher extra). The student
never imports this module.
"""

from typing import Any, Dict, List, Optional

from spacy.language import Language
from spacy.training import Example
from spacy.util import load_model_from_config
from thinc.api import Model


def encoder_of(nlp: Language) -> Model:
    """The encoder layer of a teacher pipeline (``textcat`` with ``EncoderTextCat.v1``).

    nlp (Language): The pipeline.
    RETURNS (Model): The encoder (``get_ref("encoder")``).
    """
    if "textcat" not in nlp.pipe_names:
        raise ValueError(f"the pipeline has no 'textcat' component (components: {nlp.pipe_names})")
    model = nlp.get_pipe("textcat").model
    if not model.has_ref("encoder") or not model.has_ref("head"):
        raise ValueError("the textcat model is not an encoder + head (spacy-distill.EncoderTextCat.v1)")
    return model.get_ref("encoder")


def rebuild_with_encoder(source: Language, encoder: Dict[str, Any], sample: List[str], head_from: Optional[Language] = None) -> Language:
    """A copy of a teacher pipeline with another encoder and the same head.

    The new encoder is initialized from its config (``name`` = a HF folder), so
    the head must have been trained on the vectors it produces, or ones close to
    them (a quantized or vocabulary-pruned encoder: the same model).

    source (Language): The teacher pipeline (config, labels, meta).
    encoder (Dict[str, Any]): The new ``[components.textcat.model.encoder]`` block.
    sample (List[str]): A few texts for shape inference at initialization.
    head_from (Optional[Language]): Take the head weights from this pipeline
        instead of ``source`` (same labels).
    RETURNS (Language): The new pipeline, initialized.
    """
    head_source = head_from if head_from is not None else source
    encoder_of(source)
    encoder_of(head_source)
    labels = list(head_source.get_pipe("textcat").labels)
    config = source.config.copy()
    config["components"]["textcat"]["model"]["encoder"] = dict(encoder)
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    if not sample:
        raise ValueError("rebuild_with_encoder: need at least one sample text")
    examples = [Example.from_dict(nlp.make_doc(text), {"cats": {label: float(i == j % len(labels)) for i, label in enumerate(labels)}}) for j, text in enumerate(sample)]
    nlp.initialize(lambda: examples)
    textcat = nlp.get_pipe("textcat")
    if list(textcat.labels) != labels:
        raise ValueError(f"rebuild_with_encoder: labels {list(textcat.labels)} != the head's {labels}")
    textcat.model.get_ref("head").from_bytes(head_source.get_pipe("textcat").model.get_ref("head").to_bytes())
    return nlp


__all__ = ["encoder_of", "rebuild_with_encoder"]
