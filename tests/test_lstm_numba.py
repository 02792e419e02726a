"""The LSTM's compiled inference recurrence (spacy_distill/pipeline/lstm_numba.py).

It replaces thinc's kernel at inference when numba is installed (the ``fast`` extra,
which ``scripts/setup.sh`` installs), so these tests run in CI; without numba they
are skipped and the layer runs thinc's kernel (tests/test_lstm.py).
"""

import subprocess
import sys

import numpy
import pytest
from thinc.api import NumpyOps, with_padded
from thinc.layers.lstm import _padded_to_packed as thinc_padded_to_packed

from spacy_distill.pipeline import lstm_numba
from spacy_distill.pipeline.lstm import LSTM
from spacy_distill.pipeline.lstm_numba import KERNEL_ENV, kernel_choice, lstm_inference, use_numba

pytest.importorskip("numba")

# One doc (every step full), equal lengths, ties, one-token sequences beside long ones,
# and a batch of 70.
BATCH_LENGTHS = [(1,), (9,), (4, 4, 4), (7, 5, 5, 2, 1), (1, 1), (12, 3), (30, 29, 1, 1, 16),
                 tuple(1 + (5 * i) % 13 for i in range(70))]
# The student's LSTM: 32 wide in and out (16 units a direction); thinc's random weights
# are small, so they are scaled to the trained student's range (|w| up to ~2).
WIDTH = 32


def _sequences(lengths, width, seed):
    rng = numpy.random.default_rng(seed)
    return [rng.normal(size=(n, width)).astype("f") for n in lengths]


def _layer(depth: int, bi: bool, width: int = WIDTH, seed: int = 0):
    lstm = LSTM(nO=width, nI=width, bi=bi, depth=depth)
    model = with_padded(lstm)
    model.initialize(X=_sequences([3, 2], width, 0))
    rng = numpy.random.default_rng(seed)
    params = lstm.get_param("LSTM")
    lstm.set_param("LSTM", (params * 4 + rng.normal(scale=0.3, size=params.shape)).astype("f"))
    return lstm, model


def _run_fresh(code: str) -> str:
    """Run ``code`` in a fresh Python process; its stripped stdout (it must exit 0)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def _packed(lengths, width, seed):
    ops = NumpyOps()
    Xp = ops.list2padded(_sequences(lengths, width, seed))
    return ops, thinc_padded_to_packed(ops, Xp)


@pytest.mark.parametrize("depth,bi", [(1, True), (1, False), (2, True), (2, False)])
@pytest.mark.parametrize("lengths", BATCH_LENGTHS)
def test_kernel_matches_thincs_within_float_rounding(depth, bi, lengths):
    lstm, _ = _layer(depth, bi, seed=len(lengths))
    ops, Xr = _packed(lengths, WIDTH, seed=depth)
    params = lstm.get_param("LSTM")
    dirs = 2 if bi else 1
    nO = WIDTH // dirs
    # Non-zero initial states, so that thinc's order of them (its kernel reads the
    # layer's H0 as the cells' start) is checked too.
    H0, C0 = numpy.random.default_rng(5).normal(size=(2, depth, dirs, nO)).astype("f")
    expected = ops.lstm_forward_inference(params, H0, C0, Xr.data, Xr.lengths)
    got = lstm_inference(ops, params, H0, C0, Xr.data, Xr.lengths)
    assert got.shape == expected.shape == (sum(lengths), WIDTH) and got.dtype == numpy.float32
    # Where BLIS's kernel for the CPU sums h Wh in another order (FMA), float32 rounding
    # that the recurrence carries on; thinc's to the bit on the hosts measured.
    numpy.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    assert numpy.abs(expected).max() > 0.5


@pytest.mark.parametrize("lengths", BATCH_LENGTHS[3:])
def test_a_sequence_gets_the_same_floats_alone_and_in_a_batch(lengths):
    # Each row's recurrence is its own loop and BLIS rounds a row's input product alike
    # in any batch: pipe() and __call__ agree to the bit.
    lstm, model = _layer(1, True)
    Xs = _sequences(lengths, WIDTH, seed=3)
    together = model.predict(Xs)
    for X, Y in zip(Xs, together):
        numpy.testing.assert_array_equal(model.predict([X])[0], Y)


def test_the_layer_runs_the_kernel_unless_turned_off(monkeypatch):
    from spacy_distill.pipeline import lstm as lstm_module

    calls = []

    def counted(*args):
        calls.append(1)
        return lstm_inference(*args)

    # A spy that calls the real kernel: which kernel ran is not visible in the floats
    # where BLIS sums as this loop does (thinc's to the bit on the hosts measured).
    monkeypatch.setattr(lstm_module, "numba_inference", counted)
    lstm, model = _layer(1, True)
    Xs = _sequences((6, 2), WIDTH, seed=1)
    ops = NumpyOps()
    Xp = ops.list2padded(Xs)
    Xr = thinc_padded_to_packed(ops, Xp)
    HC0 = lstm.get_param("HC0")
    thincs = ops.lstm_forward_inference(lstm.get_param("LSTM"), HC0[0], HC0[1], Xr.data, Xr.lengths)
    for setting, runs in (("auto", True), ("thinc", False), ("", True)):
        monkeypatch.setenv(KERNEL_ENV, setting)
        assert use_numba() == runs
        del calls[:]
        Yp = lstm.predict(Xp)
        assert len(calls) == int(runs)
        numpy.testing.assert_allclose(thinc_padded_to_packed(ops, Yp).data, thincs, rtol=0, atol=2e-6)
    # One sequence (one doc at a time) skips the packing; the same kernel and floats.
    monkeypatch.setenv(KERNEL_ENV, "auto")
    del calls[:]
    one = lstm.predict(ops.list2padded(Xs[:1]))
    assert len(calls) == 1 and one.data.shape == (6, 1, WIDTH)
    numpy.testing.assert_array_equal(ops.padded2list(one)[0], model.predict(Xs)[0])
    # Training runs thinc's forward pass whatever the setting (its state feeds backprop).
    del calls[:]
    Yp, _ = lstm(Xp, is_train=True)
    assert not calls
    numpy.testing.assert_array_equal(thinc_padded_to_packed(ops, Yp).data, thincs)


@pytest.mark.parametrize("value", ["numba", "fast", "1"])
def test_an_unknown_kernel_setting_is_an_error(value, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, value)
    with pytest.raises(ValueError, match=KERNEL_ENV):
        kernel_choice()


def test_without_numba_the_kernel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(lstm_numba, "_available", False)
    assert not use_numba()
    with pytest.raises(RuntimeError, match="spacy-distill\\[fast\\]"):
        lstm_inference(NumpyOps(), numpy.zeros(4, "f"), numpy.zeros((1, 1, 1), "f"), numpy.zeros((1, 1, 1), "f"), numpy.zeros((1, 1), "f"), numpy.ones(1, "i"))


def test_a_pipeline_without_numba_runs_thincs_kernel(tmp_path):
    # A fresh process where numba cannot be imported (as in a torch-free, numba-free
    # install of the packaged student): the layer loads and predicts with thinc's kernel.
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy\n"
        "from thinc.api import with_padded\n"
        "from spacy_distill.pipeline import lstm_numba\n"
        "from spacy_distill.pipeline.lstm import LSTM\n"
        "assert not lstm_numba.numba_available() and not lstm_numba.use_numba()\n"
        "model = with_padded(LSTM(nO=4, nI=3, bi=True))\n"
        "X = [numpy.ones((5, 3), 'f'), numpy.ones((2, 3), 'f')]\n"
        "model.initialize(X=X)\n"
        "Y = model.predict(X)\n"
        "assert [y.shape for y in Y] == [(5, 4), (2, 4)]\n"
        "assert 'numba' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    assert _run_fresh(code) == "ok"


def test_importing_the_plugin_does_not_import_numba():
    # numba costs ~1.4 s to import: only a prediction through the LSTM pays it.
    code = (
        "import sys, spacy_distill, spacy_distill.pipeline.lstm, spacy_distill.pipeline.models\n"
        "from spacy_distill.pipeline import lstm_numba\n"
        "assert lstm_numba.numba_available()\n"
        "print('numba' in sys.modules)\n"
    )
    assert _run_fresh(code) == "False"
