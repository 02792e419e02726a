import math

import numpy
import pytest
from spacy.util import registry

from spacy_distill.pipeline.losses import (
    DistillLoss,
    DistillTargets,
    HardCrossEntropy,
    LogitMSE,
    SoftCrossEntropy,
)

LN = math.log


def targets(teacher, gold=None, exclusive=True, teacher_mask=None, gold_mask=None):
    teacher = numpy.asarray(teacher, dtype="f")
    n = len(teacher)
    gold = numpy.zeros_like(teacher) if gold is None else numpy.asarray(gold, dtype="f")
    return DistillTargets(
        teacher_logits=teacher,
        teacher_mask=numpy.ones(n, "f") if teacher_mask is None else numpy.asarray(teacher_mask, "f"),
        gold=gold,
        gold_mask=numpy.zeros(n, "f") if gold_mask is None else numpy.asarray(gold_mask, "f"),
        exclusive_classes=exclusive,
    )


# (loss, guesses, teacher logits, exclusive, expected loss, expected gradient), by hand:
# - MSE, exclusive: logits are centred first: [1,3] -> [-1,1]; teacher [0,0] -> [0,0];
#   loss = 1 + 1 = 2, grad = 2 * [-1, 1]. A constant shift of the teacher changes nothing.
# - MSE, multi-label: diff [1, 2] -> loss 5, grad [2, 4].
# - soft CE, T=1: p_t = [.8, .2], p_s = [.5, .5]:
#   KL = .8 ln(.8/.5) + .2 ln(.2/.5) = 0.1927448, grad = p_s - p_t = [-.3, .3].
# - soft CE, T=2: p_t = softmax(log p / 2) = [2/3, 1/3]; KL = 2/3 ln(4/3) + 1/3 ln(2/3)
#   = 0.0566330, times T² = 0.2265321; grad = T (p_s - p_t) = [-1/3, 1/3].
# - soft CE, multi-label: one sigmoid label, teacher logit ln 4 (p = .8), student 0
#   (p = .5): the binary KL is again 0.1927448, grad = -.3.
KL_8_5 = 0.8 * LN(0.8 / 0.5) + 0.2 * LN(0.2 / 0.5)
LOSS_CASES = [
    (LogitMSE(), [[1.0, 3.0]], [[0.0, 0.0]], True, 2.0, [[-2.0, 2.0]]),
    (LogitMSE(), [[1.0, 3.0]], [[5.0, 5.0]], True, 2.0, [[-2.0, 2.0]]),
    (LogitMSE(), [[1.0, 3.0], [2.0, 0.0]], [[0.0, 0.0], [LN(0.5), LN(0.5)]], True, 2.0, [[-1.0, 1.0], [1.0, -1.0]]),
    (LogitMSE(), [[1.0, 3.0]], [[0.0, 1.0]], False, 5.0, [[2.0, 4.0]]),
    (SoftCrossEntropy(temperature=1.0), [[0.0, 0.0]], [[LN(0.8), LN(0.2)]], True, KL_8_5, [[-0.3, 0.3]]),
    (
        SoftCrossEntropy(temperature=2.0),
        [[0.0, 0.0]],
        [[LN(0.8), LN(0.2)]],
        True,
        4 * (2 / 3 * LN(4 / 3) + 1 / 3 * LN(2 / 3)),
        [[-1 / 3, 1 / 3]],
    ),
    (SoftCrossEntropy(temperature=1.0), [[0.0]], [[LN(4.0)]], False, KL_8_5, [[-0.3]]),
]


@pytest.mark.parametrize("loss,guesses,teacher,exclusive,expected,grad", LOSS_CASES)
def test_soft_losses_match_hand_computed_values(loss, guesses, teacher, exclusive, expected, grad):
    d, value = loss(numpy.asarray(guesses, "f"), targets(teacher, exclusive=exclusive))
    assert value == pytest.approx(expected, abs=1e-5)
    numpy.testing.assert_allclose(d, grad, atol=1e-5)


@pytest.mark.parametrize(
    "guesses,gold,exclusive,expected,grad",
    [
        ([[0.0, 0.0]], [[1.0, 0.0]], True, LN(2), [[-0.5, 0.5]]),
        ([[0.0, 0.0]], [[1.0, 0.0]], False, 2 * LN(2), [[-0.5, 0.5]]),
        ([[LN(3.0), 0.0]], [[1.0, 0.0]], True, -LN(0.75), [[-0.25, 0.25]]),
    ],
)
def test_hard_cross_entropy(guesses, gold, exclusive, expected, grad):
    t = targets(numpy.zeros_like(numpy.asarray(gold)), gold, exclusive, teacher_mask=[0], gold_mask=[1])
    d, value = HardCrossEntropy()(numpy.asarray(guesses, "f"), t)
    assert value == pytest.approx(expected, abs=1e-5)
    numpy.testing.assert_allclose(d, grad, atol=1e-5)


def test_distill_loss_mixes_per_doc():
    # Row 0: teacher and gold (alpha mix); row 1: teacher only; row 2: gold only.
    guesses = numpy.zeros((3, 2), "f")
    t = targets(
        [[LN(0.8), LN(0.2)], [LN(0.8), LN(0.2)], [0.0, 0.0]],
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]],
        teacher_mask=[1, 1, 0],
        gold_mask=[1, 0, 1],
    )
    loss = DistillLoss(soft_loss=SoftCrossEntropy(), alpha=0.5)
    d, value = loss(guesses, t)
    expected = (0.5 * KL_8_5 + 0.5 * LN(2) + KL_8_5 + LN(2)) / 3
    assert value == pytest.approx(expected, abs=1e-5)
    # Gradients: row 0 = .5 * [-.3, .3] + .5 * [-.5, .5]; row 1 = [-.3, .3]; row 2 = [.5, -.5]; all / 3.
    numpy.testing.assert_allclose(d, numpy.asarray([[-0.4, 0.4], [-0.3, 0.3], [0.5, -0.5]]) / 3, atol=1e-6)


def test_distill_loss_with_alpha_zero_ignores_gold_when_teacher_present():
    guesses = numpy.zeros((1, 2), "f")
    t = targets([[LN(0.8), LN(0.2)]], [[0.0, 1.0]], gold_mask=[1])
    _, value = DistillLoss(soft_loss=SoftCrossEntropy(), alpha=0.0)(guesses, t)
    assert value == pytest.approx(KL_8_5, abs=1e-6)


def test_gradient_matches_finite_differences():
    rng = numpy.random.default_rng(0)
    guesses = rng.normal(size=(4, 3)).astype("f8")
    t = targets(rng.normal(size=(4, 3)), numpy.eye(3)[[0, 1, 2, 0]], gold_mask=[1, 0, 1, 1])
    for loss in (LogitMSE(), SoftCrossEntropy(temperature=3.0), DistillLoss(soft_loss=LogitMSE(), alpha=0.3)):
        d = loss.get_grad(guesses, t)
        eps = 1e-5
        for i, j in [(0, 0), (1, 2), (3, 1)]:
            g = guesses.copy()
            g[i, j] += eps
            up = loss.get_loss(g, t)
            g[i, j] -= 2 * eps
            down = loss.get_loss(g, t)
            assert d[i, j] == pytest.approx((up - down) / (2 * eps), abs=1e-4), type(loss).__name__


@pytest.mark.parametrize(
    "name,args,cls",
    [
        ("spacy-distill.LogitMSE.v1", {}, LogitMSE),
        ("spacy-distill.SoftCrossEntropy.v1", {"temperature": 2.0}, SoftCrossEntropy),
        ("spacy-distill.DistillLoss.v1", {"alpha": 0.3}, DistillLoss),
    ],
)
def test_losses_resolve_from_config(name, args, cls):
    loss = registry.resolve({"loss": {"@losses": name, **args}})["loss"]
    assert isinstance(loss, cls)


def test_bad_loss_settings_raise():
    with pytest.raises(ValueError, match="temperature"):
        SoftCrossEntropy(temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        DistillLoss(soft_loss=LogitMSE(), alpha=1.5)
