"""spacy-distill: distil transformer text classifiers into small spaCy students.

Importing the package registers its components, architectures, losses, tokenizer,
augmenter, reader and training logger (installed entry points do the same without the import).
"""

from . import (  # noqa: F401
    augment,
    char_ngrams,
    component,
    layers,
    losses,
    models,
    progress,
    readers,
    teacher_scores,
    tokenizer,
)
from .component import DistillTextCategorizer
from .losses import DistillLoss, DistillTargets, LogitMSE, SoftCrossEntropy
from .teacher_scores import get_teacher_logits, get_teacher_probs, set_teacher_scores

__version__ = "0.1.0"

__all__ = [
    "DistillTextCategorizer",
    "DistillLoss",
    "DistillTargets",
    "LogitMSE",
    "SoftCrossEntropy",
    "get_teacher_logits",
    "get_teacher_probs",
    "set_teacher_scores",
    "__version__",
]
