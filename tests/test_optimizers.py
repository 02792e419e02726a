"""spacy-distill.Adam.v1: thinc's Adam with a gradient norm that is the same on every CPU."""

import os
import subprocess
import sys

import numpy
import pytest
from spacy.util import registry
from thinc.api import Adam, NumpyOps

from spacy_distill.pipeline.optimizers import ReproducibleClipOptimizer, clip_gradient


@pytest.mark.parametrize(
    "values,threshold,expected",
    [
        ([3.0, 4.0], 1.0, [0.6, 0.8]),  # norm 5 -> 1
        ([3.0, 4.0], 5.0, [3.0, 4.0]),  # norm == threshold: scaled by 1, as thinc does
        ([3.0, 4.0], 10.0, [3.0, 4.0]),  # below: unchanged
        ([0.0, 0.0, 0.0], 1.0, [0.0, 0.0, 0.0]),
        ([[1.0, 1.0], [1.0, 1.0]], 1.0, [[0.5, 0.5], [0.5, 0.5]]),  # any shape: the norm of all entries
    ],
)
def test_clip_gradient_table(values, threshold, expected):
    gradient = numpy.asarray(values, dtype="float32")
    out = clip_gradient(gradient, threshold)
    assert out is gradient and out.dtype == numpy.float32
    numpy.testing.assert_allclose(out, numpy.asarray(expected, dtype="float32"), rtol=1e-6)


def test_clip_gradient_matches_thinc():
    rng = numpy.random.default_rng(0)
    for scale in (1e-3, 1.0, 50.0):
        gradient = (rng.standard_normal((300, 64)) * scale).astype("float32")
        ours = clip_gradient(gradient.copy(), 1.0)
        thinc = NumpyOps().clip_gradient(gradient.copy(), 1.0)
        numpy.testing.assert_allclose(ours, thinc, rtol=2e-6, atol=0)
        assert float(numpy.linalg.norm(ours.astype("float64"))) <= 1.0 + 1e-6


def _updates(optimizer, steps=20, seed=0):
    """Weights after `steps` updates of one (5, 4) parameter with seeded gradients."""
    rng = numpy.random.default_rng(seed)
    weights = rng.standard_normal((5, 4)).astype("float32").ravel()
    for _ in range(steps):
        gradient = (rng.standard_normal(weights.shape) * 3).astype("float32")
        weights, _ = optimizer((1, "W"), weights, gradient)
    return weights


@pytest.mark.parametrize("grad_clip", [0.0, 1.0, 100.0])
def test_updates_are_thincs_adam(grad_clip):
    settings = dict(L2=0.01, grad_clip=grad_clip, use_averages=False)
    ours = registry.resolve({"o": {"@optimizers": "spacy-distill.Adam.v1", "learn_rate": 0.01, **settings}})["o"]
    assert isinstance(ours, ReproducibleClipOptimizer)
    numpy.testing.assert_allclose(_updates(ours), _updates(Adam(0.01, **settings)), rtol=1e-5, atol=1e-7)


def test_empty_gradient_is_left_alone():
    optimizer = registry.resolve({"o": {"@optimizers": "spacy-distill.Adam.v1", "grad_clip": 1.0}})["o"]
    weights, gradient = optimizer((1, "W"), numpy.zeros((0,), dtype="float32"), numpy.zeros((0,), dtype="float32"))
    assert weights.shape == gradient.shape == (0,)


def test_l2_as_gradient_term_with_clipping_is_refused():
    config = {"o": {"@optimizers": "spacy-distill.Adam.v1", "L2": 0.01, "L2_is_weight_decay": False, "grad_clip": 1.0}}
    with pytest.raises(ValueError, match="L2_is_weight_decay"):
        registry.resolve(config)
    config["o"]["grad_clip"] = 0.0
    assert registry.resolve(config)["o"].clip_threshold == 0.0


PROBE = """
import hashlib, numpy
from spacy.util import registry
rng = numpy.random.default_rng(0)
opt = registry.resolve({"o": {"@optimizers": "spacy-distill.Adam.v1", "grad_clip": 1.0, "use_averages": False}})["o"]
w = rng.standard_normal(200_003).astype("float32")
for _ in range(30):
    w, _ = opt((1, "W"), w, (rng.standard_normal(w.shape) * 10).astype("float32"))
print(hashlib.md5(w.tobytes()).hexdigest())
"""


def test_same_bits_whichever_openblas_kernel_runs():
    """The updates of a large, always-clipped parameter are bit-identical whether OpenBLAS
    runs its default kernel for this CPU or its Haswell (AVX2) one; the registered name
    resolves in a fresh process without importing the package (entry point). With thinc's
    Adam.v1 in PROBE the two digests differ on this project's (AVX-512) machine."""
    digests = []
    for coretype in (None, "Haswell"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
        digests.append(result.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 32
