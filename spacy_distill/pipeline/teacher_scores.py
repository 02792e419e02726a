"""Teacher outputs carried on a Doc.

spaCy's textcat only accepts 0/1 values in ``doc.cats`` (error E851), so the
teacher's soft outputs live beside them, in ``doc.user_data``. ``DocBin`` keeps
``user_data`` when created with ``store_user_data=True``, so the scores survive
serialization, and reading them needs no extension to be registered first (a
packaged pipeline or a fresh process can read a labelled corpus).

For convenience the same values are exposed as the extensions
``doc._.teacher_probs`` and ``doc._.teacher_logits`` once this module is imported.
"""

from typing import Dict, Optional

from spacy.tokens import Doc

# The key layout is the one spaCy itself uses for extension values, so
# ``doc._.teacher_probs`` and these helpers read and write the same slot.
PROBS_KEY = ("._.", "teacher_probs", None, None)
LOGITS_KEY = ("._.", "teacher_logits", None, None)

for _name in ("teacher_probs", "teacher_logits"):
    if not Doc.has_extension(_name):
        Doc.set_extension(_name, default=None)


def set_teacher_scores(
    doc: Doc, probs: Dict[str, float], logits: Optional[Dict[str, float]] = None
) -> None:
    """Store the teacher's outputs on a doc.

    doc (Doc): The doc to annotate.
    probs (Dict[str, float]): Teacher probability per label.
    logits (Optional[Dict[str, float]]): Teacher logit per label. Teachers that
        expose only probabilities store log-probabilities (softmax) or
        log-odds (sigmoid) here: see ``spacy_distill.teacher.label`` and
        ``spacy_distill.pipeline.activations.logits_from_probs``.
    """
    doc.user_data[PROBS_KEY] = {str(k): float(v) for k, v in probs.items()}
    if logits is not None:
        doc.user_data[LOGITS_KEY] = {str(k): float(v) for k, v in logits.items()}


def get_teacher_probs(doc: Doc) -> Optional[Dict[str, float]]:
    """The teacher's probabilities on a doc, or None.

    doc (Doc): The doc.
    RETURNS (Optional[Dict[str, float]]): Probability per label.
    """
    return doc.user_data.get(PROBS_KEY)


def get_teacher_logits(doc: Doc) -> Optional[Dict[str, float]]:
    """The teacher's logits on a doc, or None.

    doc (Doc): The doc.
    RETURNS (Optional[Dict[str, float]]): Logit per label.
    """
    return doc.user_data.get(LOGITS_KEY)


def has_teacher_scores(doc: Doc) -> bool:
    """Whether the doc carries teacher outputs.

    doc (Doc): The doc.
    RETURNS (bool): True if probabilities or logits are stored.
    """
    return PROBS_KEY in doc.user_data or LOGITS_KEY in doc.user_data

