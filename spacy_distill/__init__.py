"""spacy-distill: distil transformer text classifiers into small spaCy students.

Everything the package registers (the ``distill_textcat`` and
``distill_calibration`` factories, architectures, layers, losses, tokenizer,
augmenter, reader, training logger) is found through its entry points, so
``spacy.load`` and ``spacy train`` need neither ``--code`` nor an import of this
package. The package itself imports nothing heavy: ``import spacy_distill`` or
``python -m spacy_distill.cli`` does not import spaCy, thinc or torch until a
command or name needs them. That is what lets ``spacy-distill serve`` keep torch
out of a server of torch-free students (thinc imports torch whenever it can).
The names below are imported on first use.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it (imported on first access, PEP 562).
_LAZY = {
    "DistillTextCategorizer": "pipeline.component",
    "DistillLoss": "pipeline.losses",
    "DistillTargets": "pipeline.losses",
    "LogitMSE": "pipeline.losses",
    "SoftCrossEntropy": "pipeline.losses",
    "get_teacher_logits": "pipeline.teacher_scores",
    "get_teacher_probs": "pipeline.teacher_scores",
    "set_teacher_scores": "pipeline.teacher_scores",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spacy_distill' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
