"""spacy-distill.MeanMaxPool.v1: mean / max pooling, empty sequences, inference == training."""

import numpy
import pytest
from thinc.api import NumpyOps

from spacy_distill.pipeline.layers import MeanMaxPool

SEQUENCES = [numpy.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 0.5]], dtype="f"), numpy.zeros((0, 2), dtype="f"),
             numpy.array([[0.25, 7.0]], dtype="f")]


@pytest.mark.parametrize(
    "pooling,expected",
    [
        ("mean", [[1.0, -1.0 / 3.0], [0.0, 0.0], [0.25, 7.0]]),
        ("max", [[3.0, 0.5], [0.0, 0.0], [0.25, 7.0]]),
        ("meanmax", [[1.0, -1.0 / 3.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0], [0.25, 7.0, 0.25, 7.0]]),
    ],
)
def test_pools_and_inference_equals_training(pooling, expected):
    pool = MeanMaxPool(pooling)
    pool.initialize(X=SEQUENCES)
    Y_train, _ = pool(SEQUENCES, is_train=True)
    Y_infer, _ = pool(SEQUENCES, is_train=False)
    numpy.testing.assert_allclose(Y_train, numpy.asarray(expected, dtype="f"), rtol=1e-6)
    numpy.testing.assert_array_equal(Y_infer, Y_train)


def test_max_gradient_goes_to_the_max_rows_and_mean_gradient_spreads():
    pool = MeanMaxPool("meanmax")
    pool.initialize(X=SEQUENCES)
    _, backprop = pool(SEQUENCES, is_train=True)
    dXs = backprop(NumpyOps().asarray2f([[3.0, 3.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]]))
    numpy.testing.assert_allclose(dXs[0], [[1.0, 1.0], [2.0, 3.0], [1.0, 1.0]])
    assert dXs[1].shape == (0, 2)
    numpy.testing.assert_allclose(dXs[2], [[2.0, 2.0]])


@pytest.mark.parametrize("pooling", ["max", "meanmax"])
def test_backprop_after_inference_is_an_error(pooling):
    pool = MeanMaxPool(pooling)
    pool.initialize(X=SEQUENCES)
    Y, backprop = pool(SEQUENCES, is_train=False)
    with pytest.raises(ValueError, match="is_train=False"):
        backprop(Y)
