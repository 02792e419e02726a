"""The shared activations (``spacy_distill.pipeline.activations``): a table of values.

Expected values are written out (worked by hand where they are simple: ln 4 is
the log-odds of 0.8, softmax of (ln 2, 0) is (2/3, 1/3)); they compare to
1e-12 relative, not bit for bit, since libm's log and exp may differ in the
last bit between platforms.
"""

import math

import numpy
import pytest

from spacy_distill import cascade
from spacy_distill.pipeline import activations, calibration, component, losses, readers
from spacy_distill.pipeline.activations import PROB_EPS, logits_from_probs, sigmoid, softmax

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def close(expected):
    # pytest.approx compares nested lists only as an array.
    return pytest.approx(numpy.asarray(expected, dtype="f8"), rel=1e-12, abs=0.0)


@pytest.mark.parametrize(
    "X, temperature, expected",
    [
        ([[0.0, 0.0]], 1.0, [[0.5, 0.5]]),
        ([[0.0, 0.0, 0.0, 0.0]], 1.0, [[0.25, 0.25, 0.25, 0.25]]),
        ([[LN2, 0.0]], 1.0, [[2 / 3, 1 / 3]]),
        # Rows are independent.
        ([[0.0, 0.0], [LN3, 0.0]], 1.0, [[0.5, 0.5], [0.75, 0.25]]),
        # Shift-invariant per row, and no overflow: the row maximum is subtracted first.
        ([[1000.0 + LN3, 1000.0]], 1.0, [[0.75, 0.25]]),
        ([[-1000.0, -1000.0]], 1.0, [[0.5, 0.5]]),
        # The temperature divides the logits.
        ([[2 * LN3, 0.0]], 2.0, [[0.75, 0.25]]),
        ([[LN3, 0.0]], 0.5, [[0.9, 0.1]]),
        # One 1d row (a calibration applied to one doc).
        ([LN4, 0.0, 0.0], 1.0, [2 / 3, 1 / 6, 1 / 6]),
    ],
)
def test_softmax(X, temperature, expected):
    got = softmax(numpy.asarray(X, dtype="f8"), temperature)
    assert got.shape == numpy.asarray(expected).shape
    assert got == close(expected)


@pytest.mark.parametrize(
    "X, temperature, expected",
    [
        ([0.0], 1.0, [0.5]),
        ([LN4, -LN4], 1.0, [0.8, 0.2]),
        ([[LN4, 0.0], [-LN3, LN3]], 1.0, [[0.8, 0.5], [0.25, 0.75]]),
        ([2 * LN4], 2.0, [0.8]),
        ([1.0], 1.0, [math.e / (1 + math.e)]),
        # Saturates without an overflow warning: e^-40 vanishes next to 1.
        ([40.0, -40.0], 1.0, [1.0, 1 / (1 + math.exp(40))]),
    ],
)
def test_sigmoid(X, temperature, expected):
    assert sigmoid(numpy.asarray(X, dtype="f8"), temperature) == close(expected)


@pytest.mark.parametrize(
    "probs, exclusive, expected",
    [
        # Exclusive classes: log p.
        ([0.8, 0.2], True, [math.log(0.8), math.log(0.2)]),
        ([0.5, 0.5], True, [-LN2, -LN2]),
        # 1 and 0 are clipped to 1 − PROB_EPS and PROB_EPS: finite logits.
        ([1.0, 0.0], True, [-1.0000000494736474e-07, -16.11809565095832]),
        # Multi-label classes: the log-odds log p − log(1 − p).
        ([0.8, 0.2, 0.5], False, [LN4, -LN4, 0.0]),
        ([1.0, 0.0], False, [16.11809555148467, -16.118095550958316]),
        # One row per doc.
        ([[0.8, 0.2], [1.0, 0.0]], True, [[math.log(0.8), math.log(0.2)], [-1.0000000494736474e-07, -16.11809565095832]]),
    ],
)
def test_logits_from_probs(probs, exclusive, expected):
    got = logits_from_probs(probs, exclusive)
    assert got.dtype == numpy.float64
    assert got == close(expected)


def test_clip_and_dtypes():
    assert PROB_EPS == 1e-7
    assert logits_from_probs([1.0, 0.0], True) == close([math.log(1 - PROB_EPS), math.log(PROB_EPS)])
    # The student's float32 logits stay float32 (a temperature of 1 included).
    X = numpy.asarray([[1.0, 2.0]], dtype="f")
    assert softmax(X).dtype == numpy.float32 and sigmoid(X).dtype == numpy.float32
    assert softmax(X, 2.0).dtype == numpy.float32 and sigmoid(X, 2.0).dtype == numpy.float32
    # Dividing by a temperature of 1 changes no bit.
    X = numpy.random.default_rng(0).normal(scale=5, size=(20, 4))
    assert softmax(X).tobytes() == softmax(X, 1.0).tobytes()
    assert softmax(X).tobytes() == softmax(X / 1.0).tobytes()


def test_one_copy():
    # The modules that apply an activation use these functions, not copies of them.
    assert losses.softmax is component.softmax is calibration.softmax is readers.softmax is cascade.softmax is activations.softmax
    assert losses.sigmoid is component.sigmoid is calibration.sigmoid is activations.sigmoid
    assert component.logits_from_probs is calibration.logits_from_probs is readers.logits_from_probs is logits_from_probs
    for module in (losses, component, calibration, readers):
        assert not hasattr(module, "PROB_EPS") or module.PROB_EPS is PROB_EPS
