"""The student's side, torch-free: what a packaged pipeline needs to load and run.

* ``component``: the ``distill_textcat`` factory (soft-label text classifier);
* ``models``, ``layers``, ``char_ngrams``, ``mean_vectors``: its architectures and thinc layers;
* ``losses``: the distillation losses (thinc ``Loss`` classes);
* ``tokenizer``: the CJK-aware ``xx`` tokenizer;
* ``teacher_scores``: the teacher's probabilities and logits carried on a ``Doc``;
* ``weights``: ``spacy-distill.init_layer_from.v1``, weights of a trained pipeline's
  model part copied in after initialization (the two-stage student);
* ``mix``: ``spacy-distill.LogitMix.v1``, two trained classifiers' logits mixed with a
  weight, and the callbacks that assemble it (weights copied in, weight chosen on dev);
* ``readers``: the corpus reader of teacher-labelled DocBins for ``spacy train``;
* ``activations``: softmax, sigmoid and the logits of probabilities (one copy of each);
* ``calibration``: the ``distill_calibration`` factory (fitting one is ``teacher.calibrate``'s).
* ``optimizers``: ``spacy-distill.Adam.v1``, Adam whose gradient clipping is the same on every
  CPU (measured on the augmenter's POS taggers; ``metrics/reproducibility.md``).

Nothing is imported here: entry points (or the modules themselves) register the names.
"""
