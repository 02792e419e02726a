"""The output activations and their inverse, once for the whole package.

* :func:`softmax` (exclusive classes) and :func:`sigmoid` (multi-label classes),
  with an optional temperature: the student's ``predict``, the distillation
  losses, the ``distill_calibration`` component, the teacher's calibration and
  the cascade's confidence all apply these same functions;
* :func:`logits_from_probs`: the logits of a classifier that exposes only
  probabilities (a stock ``textcat``), after clipping them to
  ``[PROB_EPS, 1 − PROB_EPS]``.

numpy only (no torch, spaCy or thinc): a packaged pipeline needs it, and the
cascade's decision imports nothing heavier. The functions use numpy's ufuncs
and array methods only, so cupy arrays (a student on GPU) work too.
"""

from typing import Sequence, Union

import numpy

#: Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before taking logs, so a
#: probability of exactly 0 or 1 gives a large finite logit instead of an infinite one.
PROB_EPS = 1e-7


def softmax(X: numpy.ndarray, temperature: float = 1.0) -> numpy.ndarray:
    """Softmax of ``X / temperature`` along the last axis (each row of a 2d array).

    Numerically stable: the row maximum is subtracted before ``exp``. The dtype
    is kept (float32 in, float32 out); a temperature of 1 changes no bit.

    X (numpy.ndarray): Logits, one row per doc (or one 1d row).
    temperature (float): Divides the logits (> 0).
    RETURNS (numpy.ndarray): Probabilities, the same shape; each row sums to 1.
    """
    Z = X / temperature
    Z = Z - Z.max(axis=-1, keepdims=True)
    E = numpy.exp(Z)
    return E / E.sum(axis=-1, keepdims=True)


def sigmoid(X: numpy.ndarray, temperature: float = 1.0) -> numpy.ndarray:
    """Element-wise logistic function of ``X / temperature``.

    X (numpy.ndarray): Logits.
    temperature (float): Divides the logits (> 0).
    RETURNS (numpy.ndarray): Probabilities in (0, 1), the same shape and dtype.
    """
    return 1.0 / (1.0 + numpy.exp(-X / temperature))


def logits_from_probs(probs: Union[Sequence[float], Sequence[Sequence[float]], numpy.ndarray], exclusive_classes: bool) -> numpy.ndarray:
    """Logits of a classifier that exposes only probabilities.

    Softmax classes get ``log p`` (the logits up to a per-doc constant, which
    the softmax and every distillation loss ignore); sigmoid classes get the
    log-odds ``log p - log(1 - p)`` (the logits exactly). Probabilities are
    clipped to ``[PROB_EPS, 1 - PROB_EPS]`` first, so a 0 or 1 gives a finite logit.

    probs (Union[Sequence[float], Sequence[Sequence[float]], numpy.ndarray]):
        Probability per label, or one row of them per doc.
    exclusive_classes (bool): Softmax (True) or sigmoid (False) outputs.
    RETURNS (numpy.ndarray): Logits, the same shape (float64).
    """
    p = numpy.clip(numpy.asarray(probs, dtype="f8"), PROB_EPS, 1 - PROB_EPS)
    return numpy.log(p) if exclusive_classes else numpy.log(p) - numpy.log1p(-p)
