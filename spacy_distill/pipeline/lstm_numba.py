"""The LSTM's inference recurrence compiled with numba, used when numba is installed.

At inference thinc's CPU kernel (``NumpyOps.lstm_forward_inference``) costs ~7 µs per
time step whatever the batch: each step slices a numpy array, adds the bias with a numpy
call and calls BLIS for a product of a few rows (metrics/lstm_inference.md). A review
of 50 tokens is 50 steps per direction, so one doc at a time the student's LSTM is
about a third of its time. Here the whole recurrence of a layer-direction is one
compiled loop: the hidden-to-gates product of a row, its gates and its cell, with no
call per step. The input-to-gates product of all rows stays one BLAS call (BLIS, as thinc's).

The arithmetic is thinc's: gates = (x Wx + h Wh) + (bx + bh), forget / input / output
gates 1 / (1 + exp(-g)) (float32 exp, the division in double, as thinc's kernel),
candidate tanh(g), c = f c' + i g, h = tanh(c) o, and thinc's start states (its layer
passes (H0, C0) where the kernel names them (c_init, h_init)). The input product is
BLIS's call, as thinc's; the hidden product is summed in order over the units, as BLIS
summed it on the host of the committed run (AMD EPYC): there the outputs are thinc's
to the bit (the student's logits on 6,802 reviews, and ``tests/test_lstm_numba.py``'s
table), and the tests allow float32 rounding for a CPU whose BLIS kernel sums
otherwise. A row's outputs do not depend on the rest of its batch (``pipe`` and
``__call__`` agree to the bit). Like ``thinc-apple-ops`` for thinc, it is an optional
accelerator (the ``fast`` extra): without numba, or with
``SPACY_DISTILL_LSTM_KERNEL=thinc``, the
layer runs thinc's kernel. numba compiles the loop on first use and caches it on disk.
"""

import importlib.util
import math
import os
from typing import Optional

import numpy
from thinc.api import NumpyOps
from thinc.types import Floats1d, Floats2d, Ints1d

from .lstm_layout import N_GATES, layer_slices

# Whether numba is installed; None until first asked. numba itself is imported at the
# first prediction: importing it takes ~1.4 s, which every `spacy.load` of a
# spacy-distill pipeline and every CLI call would otherwise pay.
_available: Optional[bool] = None

# "auto": numba's kernel when numba is installed; "thinc": always thinc's kernel.
KERNEL_ENV = "SPACY_DISTILL_LSTM_KERNEL"
KERNELS = ("auto", "thinc")


def kernel_choice() -> str:
    """The kernel setting of ``SPACY_DISTILL_LSTM_KERNEL`` ("auto" if unset).

    RETURNS (str): "auto" or "thinc".
    """
    value = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if value not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={value!r}: expected one of {', '.join(KERNELS)}")
    return value


def numba_available() -> bool:
    """Whether numba can be imported (looked up once, without importing it).

    RETURNS (bool): True when numba is installed.
    """
    global _available
    if _available is None:
        try:
            _available = importlib.util.find_spec("numba") is not None
        except (ImportError, ValueError):
            # ValueError: a module set to None in sys.modules (import blocked).
            _available = False
    return _available


def use_numba() -> bool:
    """Whether the LSTM's inference runs this module's kernel (numba installed, not turned off).

    RETURNS (bool): True when ``lstm_inference`` is used.
    """
    return kernel_choice() == "auto" and numba_available()


def _recurrence(G, WhT, bias, lengths, starts, h_init, c_init, Y):  # pragma: no cover - compiled
    """One layer over packed, time-major rows, every direction (gate-major: f, i, o, c).

    G (N, dirs * 4 nO): the rows' input-to-gates products, direction d's in columns
    d * 4 nO onwards. WhT (dirs, nO, 4 nO): the hidden-to-gates weights, transposed.
    bias (dirs, 4 nO). h_init, c_init (dirs, nO): the start states. lengths[t]: the
    sequences alive at step t (non-increasing), whose rows start at starts[t]. Writes
    each row's hidden states to Y (N, dirs * nO). Direction 1 runs the steps in
    reverse, each sequence from its own end.
    """
    n_steps = lengths.shape[0]
    dirs = WhT.shape[0]
    nO = WhT.shape[1]
    n_gates = WhT.shape[2]
    batch = lengths[0]
    h_prev = numpy.empty((batch, nO), numpy.float32)
    c_prev = numpy.empty((batch, nO), numpy.float32)
    acc = numpy.empty(n_gates, numpy.float32)
    gates = numpy.empty(n_gates, numpy.float32)
    one = numpy.float32(1.0)
    for d in range(dirs):
        g_col = d * n_gates
        y_col = d * nO
        for b in range(batch):
            for j in range(nO):
                h_prev[b, j] = h_init[d, j]
                c_prev[b, j] = c_init[d, j]
        for k in range(n_steps):
            t = n_steps - 1 - k if d == 1 else k
            start = starts[t]
            for b in range(lengths[t]):
                row = start + b
                for u in range(n_gates):
                    acc[u] = 0.0
                # Over j outside, the gates inside: contiguous, so the loop is vectorized.
                for j in range(nO):
                    h_j = h_prev[b, j]
                    for u in range(n_gates):
                        acc[u] += h_j * WhT[d, j, u]
                for u in range(n_gates):
                    gates[u] = (G[row, g_col + u] + acc[u]) + bias[d, u]
                for u in range(3 * nO):
                    gates[u] = numpy.float32(1.0 / (one + numpy.float32(math.exp(-gates[u]))))
                for u in range(3 * nO, n_gates):
                    gates[u] = math.tanh(gates[u])
                for u in range(nO):
                    c = gates[u] * c_prev[b, u] + gates[nO + u] * gates[3 * nO + u]
                    h = numpy.float32(math.tanh(c)) * gates[2 * nO + u]
                    c_prev[b, u] = c
                    h_prev[b, u] = h
                    Y[row, y_col + u] = h
    return 0


_compiled: Optional[object] = None


def _kernel():
    # Compiled on first use (not at import: a pipeline that never predicts, or runs
    # thinc's kernel, pays nothing), cached on disk by numba for the next process.
    global _compiled
    if _compiled is None:
        import numba

        _compiled = numba.njit(cache=True, nogil=True)(_recurrence)
    return _compiled


def lstm_inference(
    ops: NumpyOps, params: Floats1d, H0: numpy.ndarray, C0: numpy.ndarray, X: Floats2d, lengths: Ints1d
) -> Floats2d:
    """thinc's LSTM inference (``ops.lstm_forward_inference``) with the recurrence compiled.

    The same arguments and layout as thinc's: flat params per layer and direction
    Wx (4 nO, nI), bx (4 nO), Wh (4 nO, nO), bh (4 nO), gate-major.

    ops (NumpyOps): The layer's ops (BLIS's gemm for the input products).
    params (Floats1d): The layer's flat params.
    H0 (numpy.ndarray): The first initial-state argument, (depth, dirs, nO).
    C0 (numpy.ndarray): The second, (depth, dirs, nO).
    X (Floats2d): Packed, time-major input (N, nI), N > 0.
    lengths (Ints1d): Sequences alive at each step (non-increasing).
    RETURNS (Floats2d): (N, dirs * nO): each row's forward then backward state.
    """
    if not numba_available():
        raise RuntimeError("lstm_inference needs numba (pip install 'spacy-distill[fast]')")
    kernel = _kernel()
    depth, dirs, nO = H0.shape
    steps = numpy.ascontiguousarray(lengths, dtype=numpy.int64)
    starts = numpy.zeros(len(steps), dtype=numpy.int64)
    numpy.cumsum(steps[:-1], out=starts[1:])
    params = numpy.asarray(params, dtype=numpy.float32)
    offset = 0
    for i in range(depth):
        n_rows, nI = X.shape
        Wx, WhT, bias = [], [], []
        for _ in range(dirs):
            sWx, sbx, sWh, sbh, offset = layer_slices(nO, nI, offset)
            Wx.append(params[sWx].reshape((N_GATES * nO, nI)))
            WhT.append(params[sWh].reshape((N_GATES * nO, nO)).T)
            bias.append(params[sbx] + params[sbh])
        # One BLIS call for the directions' input products, as thinc's kernel calls it
        # (numpy's BLAS rounds a row differently in batches of other shapes): a row's
        # gates, and so its outputs, do not depend on its batch.
        G = ops.gemm(numpy.ascontiguousarray(X, dtype=numpy.float32), numpy.concatenate(Wx), trans2=True)
        Y = numpy.zeros((n_rows, dirs * nO), dtype=numpy.float32)
        kernel(
            G,
            numpy.ascontiguousarray(numpy.stack(WhT)),
            numpy.stack(bias),
            steps,
            starts,
            numpy.ascontiguousarray(C0[i], dtype=numpy.float32),
            numpy.ascontiguousarray(H0[i], dtype=numpy.float32),
            Y,
        )
        X = Y
    return X
