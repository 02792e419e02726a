"""Distillation losses on logits, as thinc ``Loss`` classes.

All losses take the student's *logits* (``guesses``, shape ``(n_docs, n_labels)``)
and a :class:`DistillTargets` (``truths``) holding the teacher's logits, the gold
labels and masks saying which docs have which. Whether classes are exclusive
(softmax) or independent (sigmoid) comes with the targets, from the component,
so it is configured once.

Teachers that only expose probabilities (a stock spacy-transformers ``textcat``)
are labelled with log-probabilities in place of logits (see
``spacy_distill.teacher.label``). For exclusive classes that is exact up to a constant
per doc: ``softmax(log p) == p``. :class:`LogitMSE` therefore compares
*mean-centred* logits for exclusive classes, which removes that constant, and
:class:`SoftCrossEntropy` is shift-invariant anyway. For sigmoid outputs the
log-odds ``log p - log(1 - p)`` are the teacher's logits exactly.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy
from spacy.util import registry
from thinc.loss import Loss
from thinc.types import Floats1d, Floats2d

from .activations import sigmoid, softmax


@dataclass
class DistillTargets:
    """What a batch of docs should be pulled towards.

    teacher_logits (Floats2d): Teacher logits (zeros on rows without them).
    teacher_mask (Floats1d): 1.0 where a doc has teacher scores.
    gold (Floats2d): Gold labels as 0/1 (zeros on rows without them).
    gold_mask (Floats1d): 1.0 where a doc has gold cats.
    exclusive_classes (bool): Softmax (True) or independent sigmoids (False).
    """

    teacher_logits: Floats2d
    teacher_mask: Floats1d
    gold: Floats2d
    gold_mask: Floats1d
    exclusive_classes: bool = True


def _xlogy(x: Floats2d, y: Floats2d) -> Floats2d:
    # 0 * log 0 = 0: a teacher probability of exactly 0 contributes nothing.
    return numpy.where(x > 0, x * numpy.log(numpy.maximum(y, 1e-30)), 0.0)


def _n_rows(guesses: Floats2d, normalize: bool) -> float:
    return float(max(len(guesses), 1)) if normalize else 1.0


class LogitMSE(Loss):
    """Squared error between student and teacher logits (Tang et al. 2019).

    Per doc, the loss is the sum over labels of the squared difference; the
    batch loss is the mean over docs that have teacher scores (the sum over
    them divided by the batch size, with ``normalize``). For exclusive classes
    both sides are mean-centred first (see the module docstring).
    """

    def __init__(self, *, normalize: bool = True):
        self.normalize = normalize

    def __call__(self, guesses: Floats2d, truths: DistillTargets) -> Tuple[Floats2d, float]:
        return self.get_grad(guesses, truths), self.get_loss(guesses, truths)

    def _diff(self, guesses: Floats2d, truths: DistillTargets) -> Floats2d:
        student, teacher = guesses, truths.teacher_logits
        if truths.exclusive_classes:
            student = student - student.mean(axis=1, keepdims=True)
            teacher = teacher - teacher.mean(axis=1, keepdims=True)
        return student - teacher

    def get_grad(self, guesses: Floats2d, truths: DistillTargets) -> Floats2d:
        # Centring is an orthogonal projection P with P^T = P, and the centred
        # difference is already in P's range, so the gradient needs no extra step.
        d = 2.0 * self._diff(guesses, truths) * truths.teacher_mask[:, None]
        return (d / _n_rows(guesses, self.normalize)).astype("f")

    def get_loss(self, guesses: Floats2d, truths: DistillTargets) -> float:
        sq = (self._diff(guesses, truths) ** 2).sum(axis=1) * truths.teacher_mask
        return float(sq.sum() / _n_rows(guesses, self.normalize))


class SoftCrossEntropy(Loss):
    """Cross-entropy with temperature-softened teacher distributions (Hinton et al. 2015).

    The reported value is the KL divergence KL(p_teacher || p_student) at
    temperature T, times T² so gradients keep their size across temperatures
    (Hinton et al.). The gradient is that of the cross-entropy, which differs
    from the KL's only by the teacher's entropy, a constant. For sigmoid outputs
    each label is a two-class distribution and the KLs are summed over labels.
    """

    def __init__(self, *, temperature: float = 1.0, normalize: bool = True):
        if temperature <= 0:
            raise ValueError(f"SoftCrossEntropy: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.normalize = normalize

    def __call__(self, guesses: Floats2d, truths: DistillTargets) -> Tuple[Floats2d, float]:
        return self.get_grad(guesses, truths), self.get_loss(guesses, truths)

    def _probs(self, guesses: Floats2d, truths: DistillTargets) -> Tuple[Floats2d, Floats2d]:
        act = softmax if truths.exclusive_classes else sigmoid
        T = self.temperature
        return act(guesses, T), act(truths.teacher_logits, T)

    def get_grad(self, guesses: Floats2d, truths: DistillTargets) -> Floats2d:
        p_s, p_t = self._probs(guesses, truths)
        T = self.temperature
        # d/dz of T² · CE(p_t, softmax(z / T)) is T · (p_s − p_t).
        d = T * (p_s - p_t) * truths.teacher_mask[:, None]
        return (d / _n_rows(guesses, self.normalize)).astype("f")

    def get_loss(self, guesses: Floats2d, truths: DistillTargets) -> float:
        p_s, p_t = self._probs(guesses, truths)
        kl = _xlogy(p_t, p_t) - _xlogy(p_t, p_s)
        if not truths.exclusive_classes:
            kl = kl + _xlogy(1 - p_t, 1 - p_t) - _xlogy(1 - p_t, 1 - p_s)
        kl = kl.sum(axis=1) * truths.teacher_mask
        return float(self.temperature**2 * kl.sum() / _n_rows(guesses, self.normalize))


class HardCrossEntropy(Loss):
    """Cross-entropy against gold 0/1 labels, on logits (softmax or sigmoid)."""

    def __init__(self, *, normalize: bool = True):
        self.normalize = normalize

    def __call__(self, guesses: Floats2d, truths: DistillTargets) -> Tuple[Floats2d, float]:
        return self.get_grad(guesses, truths), self.get_loss(guesses, truths)

    def get_grad(self, guesses: Floats2d, truths: DistillTargets) -> Floats2d:
        act = softmax if truths.exclusive_classes else sigmoid
        d = (act(guesses) - truths.gold) * truths.gold_mask[:, None]
        return (d / _n_rows(guesses, self.normalize)).astype("f")

    def get_loss(self, guesses: Floats2d, truths: DistillTargets) -> float:
        act = softmax if truths.exclusive_classes else sigmoid
        p = act(guesses)
        ce = -_xlogy(truths.gold, p)
        if not truths.exclusive_classes:
            ce = ce - _xlogy(1 - truths.gold, 1 - p)
        ce = ce.sum(axis=1) * truths.gold_mask
        return float(ce.sum() / _n_rows(guesses, self.normalize))


class DistillLoss(Loss):
    """A soft (teacher) loss mixed with the hard-label cross-entropy.

    Per doc: ``alpha · hard + (1 − alpha) · soft`` when it has gold cats and
    teacher scores; only the soft loss when it has no gold cats; only the hard
    loss when it has no teacher scores. So gold-only and teacher-only docs can
    share a batch whatever ``alpha`` is.
    """

    def __init__(self, *, soft_loss: Loss, alpha: float = 0.5, normalize: bool = True):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DistillLoss: alpha must be in [0, 1], got {alpha}")
        self.soft_loss = soft_loss
        self.hard_loss = HardCrossEntropy(normalize=normalize)
        self.alpha = alpha

    def _weights(self, truths: DistillTargets) -> Tuple[Floats1d, Floats1d]:
        both = truths.teacher_mask * truths.gold_mask
        w_soft = truths.teacher_mask * (1.0 - self.alpha * both)
        w_hard = truths.gold_mask * (1.0 - (1.0 - self.alpha) * both)
        return w_soft, w_hard

    def __call__(self, guesses: Floats2d, truths: DistillTargets) -> Tuple[Floats2d, float]:
        return self.get_grad(guesses, truths), self.get_loss(guesses, truths)

    def _split(self, truths: DistillTargets) -> Tuple[DistillTargets, DistillTargets]:
        w_soft, w_hard = self._weights(truths)
        soft = DistillTargets(
            truths.teacher_logits, w_soft, truths.gold, truths.gold_mask, truths.exclusive_classes
        )
        hard = DistillTargets(
            truths.teacher_logits, truths.teacher_mask, truths.gold, w_hard, truths.exclusive_classes
        )
        return soft, hard

    def get_grad(self, guesses: Floats2d, truths: DistillTargets) -> Floats2d:
        soft, hard = self._split(truths)
        return self.soft_loss.get_grad(guesses, soft) + self.hard_loss.get_grad(guesses, hard)

    def get_loss(self, guesses: Floats2d, truths: DistillTargets) -> float:
        soft, hard = self._split(truths)
        return self.soft_loss.get_loss(guesses, soft) + self.hard_loss.get_loss(guesses, hard)


@registry.losses("spacy-distill.LogitMSE.v1")
def configure_logit_mse(*, normalize: bool = True) -> LogitMSE:
    """Squared error on (centred, for exclusive classes) logits.

    normalize (bool): Divide by the number of docs in the batch.
    RETURNS (LogitMSE): The loss.
    """
    return LogitMSE(normalize=normalize)


@registry.losses("spacy-distill.SoftCrossEntropy.v1")
def configure_soft_cross_entropy(
    *, temperature: float = 1.0, normalize: bool = True
) -> SoftCrossEntropy:
    """Soft cross-entropy / KL at a temperature, scaled by T².

    temperature (float): Softening temperature T (> 0).
    normalize (bool): Divide by the number of docs in the batch.
    RETURNS (SoftCrossEntropy): The loss.
    """
    return SoftCrossEntropy(temperature=temperature, normalize=normalize)


@registry.losses("spacy-distill.DistillLoss.v1")
def configure_distill_loss(
    *, soft_loss: Optional[Loss] = None, alpha: float = 0.5, normalize: bool = True
) -> DistillLoss:
    """A soft loss mixed with hard-label cross-entropy by ``alpha``.

    soft_loss (Optional[Loss]): The teacher loss; SoftCrossEntropy(T=1) if None.
    alpha (float): Weight of the hard-label loss on docs with both targets.
    normalize (bool): Divide by the number of docs in the batch.
    RETURNS (DistillLoss): The loss.
    """
    if soft_loss is None:
        soft_loss = SoftCrossEntropy(normalize=normalize)
    return DistillLoss(soft_loss=soft_loss, alpha=alpha, normalize=normalize)
