"""thinc's LSTM with a correct backward pass on CPU.

thinc 8.3's ``NumpyOps.backprop_lstm`` (the Cython kernel every CPU model uses) fills
its weight-gradient buffers from the *parameters* instead of zeros
(``_split_weights(params, ...)`` where ``d_params`` was meant), so the gradient it
returns is roughly the weights plus the true gradient, and the generic
``Ops.backprop_lstm`` returns zeros. Under Adam, a gradient dominated by the weights
is a step towards zero at the learning rate: the student's LSTM weights fell from
0.25 to ~1e-5 (mean absolute value) within a few hundred updates, and every BiLSTM
student trained here had a dead LSTM whose output was a constant
(``tests/test_lstm.py`` checks the gradients against finite differences).

This layer is thinc's ``LSTM`` — the same parameters ("LSTM", "HC0") in the same
layout, the same initialization, thinc's own Cython forward passes — with the backward
pass written here in numpy over the forward pass's saved state. Weights trained with
either layer load into the other.

At inference on CPU a bidirectional layer runs both directions in one pass of thinc's
kernel (:func:`fused_inference`): one direction of twice the units, whose weights are
block-diagonal and whose input is each sequence beside its reversal. The kernel's cost
is mostly per time step (numpy calls at every step), so half the steps, with the
padded/packed conversions done without thinc's loop over steps, took a 50-token doc one
at a time from ~480 to ~290 µs in this layer; in large batches, where each step serves
many docs, it gains nothing, and thinc's two passes are kept (``FUSED_MAX_BATCH``). The
outputs are thinc's to the bit: the added weights are zeros, and adding a zero product
changes no float (``tests/test_lstm.py``).
"""

from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple, cast

import numpy
from spacy.util import registry
from thinc.api import Model, NumpyOps, Ops, glorot_uniform_init, zero_init
from thinc.layers.lstm import _packed_to_padded as _thinc_packed_to_padded
from thinc.layers.lstm import _padded_to_packed as _thinc_padded_to_packed
from thinc.layers.lstm import init as lstm_init
from thinc.types import Floats1d, Floats2d, Floats4d, Ints1d, Padded, Ragged

from .lstm_layout import N_GATES, layer_slices
from .lstm_numba import lstm_inference as numba_inference
from .lstm_numba import use_numba

# Batches of at most this many sequences run both directions in one pass at inference
# (fused_inference). The fused pass has half the time steps but, its weights being
# block-diagonal, twice the multiplications: with the shipped student's LSTM on the test
# docs it took 35 % off one doc at a time (benchmarks/bench_lstm.py,
# metrics/lstm_inference.md), 27 % off batches of 8, 12 % off 64, 5 % off 128 and
# added 2 % to 300 (the passes in alternating order), so larger batches keep thinc's.
FUSED_MAX_BATCH = 64


@registry.layers("spacy-distill.LSTM.v1")
def LSTM(
    nO: Optional[int] = None,
    nI: Optional[int] = None,
    *,
    bi: bool = False,
    depth: int = 1,
    dropout: float = 0.0,
) -> Model[Padded, Padded]:
    """thinc's ``LSTM.v1`` with a correct gradient for its weights on CPU.

    nO (Optional[int]): Output width (split between the directions if ``bi``).
    nI (Optional[int]): Input width.
    bi (bool): Bidirectional.
    depth (int): Number of stacked layers, at least 1.
    dropout (float): Dropout over the weights during training (thinc's scheme).
    RETURNS (Model[Padded, Padded]): The layer.
    """
    if depth < 1:
        raise ValueError(f"spacy-distill.LSTM: depth must be at least 1, got {depth}")
    return Model(
        "lstm",
        forward,
        dims={"nO": nO, "nI": nI, "depth": depth, "dirs": 1 + int(bi)},
        attrs={"registry_name": "spacy-distill.LSTM.v1", "dropout_rate": dropout},
        params={"LSTM": None, "HC0": None},
        init=partial(lstm_init, glorot_uniform_init, zero_init),
    )


def forward(model: Model[Padded, Padded], Xp: Padded, is_train: bool) -> Tuple[Padded, Callable]:
    """thinc's LSTM forward pass; the backward pass is :func:`backprop_lstm`."""
    ops = model.ops
    params = cast(Floats1d, model.get_param("LSTM"))
    HC0 = cast(Floats4d, model.get_param("HC0"))
    # thinc's layer passes (H0, C0) where its kernels name the arguments (c_init,
    # h_init); kept as is, so that the outputs are thinc's to the bit (HC0 is zeros).
    H0, C0 = HC0[0], HC0[1]
    compiled = not is_train and isinstance(ops, NumpyOps) and use_numba()
    n_steps, batch = Xp.data.shape[0], Xp.data.shape[1]
    if compiled and batch == 1 and n_steps:
        # One sequence (one doc at a time): its padded rows are its packed rows.
        Y = numba_inference(ops, params, H0, C0, cast(Floats2d, Xp.data.reshape((n_steps, -1))), Xp.size_at_t)
        return Padded(Y.reshape((n_steps, 1, -1)), size_at_t=Xp.size_at_t, lengths=Xp.lengths, indices=Xp.indices), _no_backprop
    Xr = _padded_to_packed(ops, Xp)
    if not is_train:
        if compiled and len(Xr.data):
            Y = numba_inference(ops, params, H0, C0, cast(Floats2d, Xr.data), Xr.lengths)
        elif model.get_dim("dirs") == 2 and len(Xr.data) and _one_pass(ops, int(Xr.lengths[0])):
            Y = fused_inference(ops, params, H0, C0, cast(Floats2d, Xr.data), Xr.lengths)
        else:
            Y = ops.lstm_forward_inference(params, H0, C0, cast(Floats2d, Xr.data), Xr.lengths)
        return _packed_to_padded(ops, Ragged(Y, Xr.lengths), Xp), _no_backprop
    mask = cast(Floats1d, ops.get_dropout_mask(params.shape, model.attrs["dropout_rate"]))
    params = cast(Floats1d, params * mask)
    Y, fwd_state = ops.lstm_forward_training(params, H0, C0, cast(Floats2d, Xr.data), Xr.lengths)

    def backprop(dYp: Padded) -> Padded:
        dYr = _padded_to_packed(ops, dYp)
        dX, d_params = backprop_lstm(ops, cast(Floats2d, dYr.data), dYr.lengths, params, fwd_state, H0, C0)
        model.inc_grad("LSTM", cast(Floats1d, d_params * mask))
        return _packed_to_padded(ops, Ragged(dX, dYr.lengths), dYp)

    return _packed_to_padded(ops, Ragged(Y, Xr.lengths), Xp), backprop


def _one_pass(ops: Ops, batch: int) -> bool:
    """Whether a batch of ``batch`` sequences takes the one-pass paths (see FUSED_MAX_BATCH)."""
    return isinstance(ops, NumpyOps) and batch <= FUSED_MAX_BATCH


def _padded_to_packed(ops: Ops, Xp: Padded) -> Ragged:
    """thinc's conversion (each step's rows of the sequences alive at it), without its loop.

    thinc's copies one step at a time in Python (~1 µs a step: 50 µs for a 50-token doc
    one at a time, and as much again back); a mask over (step, sequence) picks the same
    rows in the same order. In large batches a step's rows are many and thinc's copies
    are faster than the mask (0.7 vs 1.1 ms for 300 docs): those keep thinc's.
    """
    if not _one_pass(ops, Xp.data.shape[1]):
        return _thinc_padded_to_packed(ops, Xp)
    return Ragged(numpy.asarray(Xp.data[_alive(Xp)], dtype="f"), Xp.size_at_t)


def _packed_to_padded(ops: Ops, Xr: Ragged, Xp: Padded) -> Padded:
    """thinc's inverse conversion (zeros where a sequence has ended), without its loop."""
    if not _one_pass(ops, Xp.data.shape[1]):
        return _thinc_packed_to_padded(ops, Xr, Xp)
    Y = ops.alloc3f(Xp.data.shape[0], Xp.data.shape[1], Xr.data.shape[1])
    Y[_alive(Xp)] = Xr.data
    return Padded(Y, size_at_t=Xp.size_at_t, lengths=Xp.lengths, indices=Xp.indices)


def _alive(Xp: Padded) -> numpy.ndarray:
    """(steps, sequences) mask of the padded rows that hold a sequence's step."""
    return numpy.arange(Xp.data.shape[1])[None, :] < numpy.asarray(Xp.size_at_t)[:, None]


def fused_inference(
    ops: Ops, params: Floats1d, H0: numpy.ndarray, C0: numpy.ndarray, X: Floats2d, lengths: Ints1d
) -> Floats2d:
    """A bidirectional LSTM's inference as one forward direction per layer, in thinc's kernel.

    At each time step t, sequence b's forward direction reads its row t and its backward
    direction its row L_b - 1 - t (L_b its length), and both are alive for the same L_b
    steps. So one direction of 2 nO units whose input is [x_t, x_(L_b-1-t)], with
    block-diagonal weights, computes both at once: its first nO outputs at step t are
    the forward states, its last nO the backward states of row L_b - 1 - t. Half the
    kernel's time steps, each a little wider; the floats are those of
    ``ops.lstm_forward_inference``, as ``tests/test_lstm.py`` checks.

    ops (Ops): NumpyOps (the kernel whose cost is per step).
    params (Floats1d): The layer's flat params (thinc's layout, two directions).
    H0 (numpy.ndarray): The first initial-state argument, (depth, 2, nO).
    C0 (numpy.ndarray): The second, (depth, 2, nO).
    X (Floats2d): Packed, time-major input (N, nI), N > 0.
    lengths (Ints1d): Sequences alive at each step (non-increasing).
    RETURNS (Floats2d): The output (N, 2 nO): each row's forward then backward state.
    """
    depth, dirs, nO = H0.shape
    rev = _reversed_rows(numpy.asarray(lengths))
    offset = 0
    for i in range(depth):
        nI = X.shape[1]
        fused, offset = _fuse_directions(params, nO, nI, offset)
        # (depth=1, dirs=1, 2 nO): the two directions' start states side by side.
        h0 = numpy.ascontiguousarray(H0[i].reshape((1, 1, 2 * nO)))
        c0 = numpy.ascontiguousarray(C0[i].reshape((1, 1, 2 * nO)))
        Xf = numpy.ascontiguousarray(numpy.hstack((X, X[rev])))
        Y = ops.lstm_forward_inference(cast(Floats1d, fused), h0, c0, cast(Floats2d, Xf), lengths)
        X = cast(Floats2d, numpy.ascontiguousarray(numpy.hstack((Y[:, :nO], Y[rev, nO:]))))
    return X


def _fuse_directions(params: Floats1d, nO: int, nI: int, offset: int) -> Tuple[numpy.ndarray, int]:
    """One layer's two directions as the params of one direction of 2 nO units.

    thinc's layout per direction is Wx (4 nO, nI), bx (4 nO), Wh (4 nO, nO), bh (4 nO),
    each gate-major (4 blocks of nO rows). The fused direction keeps the gate-major
    layout with each gate's 2 nO rows the forward units then the backward ones; its
    input is [x, reversed x], so Wx and Wh are block-diagonal.
    """
    blocks = []
    for _ in range(2):
        sWx, sbx, sWh, sbh, offset = layer_slices(nO, nI, offset)
        blocks.append(
            (
                params[sWx].reshape((N_GATES, nO, nI)),
                params[sbx].reshape((N_GATES, nO)),
                params[sWh].reshape((N_GATES, nO, nO)),
                params[sbh].reshape((N_GATES, nO)),
            )
        )
    (Wx_f, bx_f, Wh_f, bh_f), (Wx_b, bx_b, Wh_b, bh_b) = blocks
    Wx = numpy.zeros((N_GATES, 2 * nO, 2 * nI), dtype="f")
    Wx[:, :nO, :nI] = Wx_f
    Wx[:, nO:, nI:] = Wx_b
    Wh = numpy.zeros((N_GATES, 2 * nO, 2 * nO), dtype="f")
    Wh[:, :nO, :nO] = Wh_f
    Wh[:, nO:, nO:] = Wh_b
    bx = numpy.concatenate((bx_f, bx_b), axis=1)
    bh = numpy.concatenate((bh_f, bh_b), axis=1)
    return numpy.concatenate((Wx.ravel(), bx.ravel(), Wh.ravel(), bh.ravel())), offset


def _reversed_rows(lengths: numpy.ndarray) -> numpy.ndarray:
    """For each row (b, t) of a packed batch, the row of (b, L_b - 1 - t)."""
    n_steps, batch = len(lengths), int(lengths[0])
    if int(lengths[-1]) == batch:
        # Equal lengths (one doc at a time): the steps in reverse order.
        return numpy.arange(n_steps * batch).reshape((n_steps, batch))[::-1].ravel()
    starts = numpy.concatenate(([0], numpy.cumsum(lengths)[:-1]))
    step = numpy.repeat(numpy.arange(n_steps), lengths)
    seq = numpy.arange(len(step)) - starts[step]
    seq_lengths = (lengths[None, :] > numpy.arange(batch)[:, None]).sum(axis=1)
    return starts[seq_lengths[seq] - 1 - step] + seq


def _no_backprop(dYp: Padded) -> Padded:
    raise ValueError("spacy-distill.LSTM: backprop called after a forward pass with is_train=False")


def _unit_major(W: numpy.ndarray, nO: int) -> numpy.ndarray:
    # thinc stores each weight gate-major (4 blocks of nO rows) and its kernels run
    # unit-major (a hidden unit's 4 gates side by side): (4 nO, k) -> (nO * 4, k).
    return W.reshape((N_GATES, nO, -1)).transpose((1, 0, 2)).reshape((N_GATES * nO, -1))


def _gate_major(W: numpy.ndarray, nO: int) -> numpy.ndarray:
    return W.reshape((nO, N_GATES, -1)).transpose((1, 0, 2)).reshape((N_GATES * nO, -1))


def backprop_lstm(
    ops: Ops,
    dY: Floats2d,
    lengths: Sequence[int],
    params: Floats1d,
    fwd_state: Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray, numpy.ndarray],
    H0: numpy.ndarray,
    C0: numpy.ndarray,
) -> Tuple[Floats2d, Floats1d]:
    """The gradients of thinc's LSTM forward pass, for its input and its flat params.

    The forward state is the one ``ops.lstm_forward_training`` returns: per layer and
    direction the hidden states Y, the activated gates G (unit-major: forget, input,
    output, candidate) and the cells C, and the input X, all in packed time-major
    order (``lengths`` = sequences alive at each step, non-increasing). Direction 0
    runs forward in time, direction 1 backward from each sequence's end; both start
    from the initial states (``H0``/``C0`` as the forward pass was given them).

    ops (Ops): The ops (numpy arrays).
    dY (Floats2d): Gradient of the output, (N, dirs * nO).
    lengths (Sequence[int]): Batch size at each time step.
    params (Floats1d): The flat parameters the forward pass used.
    fwd_state (Tuple): (Y, G, C, X) of the forward pass.
    H0 (numpy.ndarray): The forward pass's first initial-state argument, (depth, dirs, nO).
    C0 (numpy.ndarray): Its second, (depth, dirs, nO).
    RETURNS (Tuple[Floats2d, Floats1d]): dX (N, nI) and d_params (the params' shape).
    """
    xp = ops.xp
    Y, G, C, X = fwd_state
    depth, dirs, N, nO = C.shape
    lengths = [int(n) for n in lengths]
    starts = numpy.concatenate([[0], numpy.cumsum(lengths)[:-1]]).astype(int).tolist()
    nT = len(lengths)
    d_params = xp.zeros(params.shape, dtype="f")
    # Each layer's input and where its params start.
    inputs = [X] + [Y[i].transpose((1, 0, 2)).reshape((N, -1)) for i in range(depth - 1)]
    offsets = []
    offset = 0
    for i in range(depth):
        layer_offsets = []
        for _ in range(dirs):
            layer_offsets.append(offset)
            offset = layer_slices(nO, inputs[i].shape[1], offset)[4]
        offsets.append(layer_offsets)
    dY_layer = xp.asarray(dY, dtype="f").reshape((N, dirs, nO))
    for i in reversed(range(depth)):
        X_i = inputs[i]
        nI = X_i.shape[1]
        dX_i = xp.zeros((N, nI), dtype="f")
        for d in range(dirs):
            sWx, sbx, sWh, sbh, _ = layer_slices(nO, nI, offsets[i][d])
            Wx = _unit_major(params[sWx].reshape((N_GATES * nO, nI)), nO)
            Wh = _unit_major(params[sWh].reshape((N_GATES * nO, nO)), nO)
            # The forward pass's "c_init" argument holds its cells' start, "h_init" its
            # hidden states' start (see forward()).
            h_start = C0[i, d].reshape((1, nO))
            c_start = H0[i, d].reshape((1, nO))
            dG = _backprop_direction(
                xp, d, dY_layer[:, d], Y[i, d], G[i, d], C[i, d], Wh, lengths, starts, nT, h_start, c_start
            )
            dWx = dG.T @ X_i
            dWh = _backprop_recurrent_weights(xp, d, dG, Y[i, d], lengths, starts, nT, h_start)
            d_bias = _gate_major(dG.sum(axis=0).reshape((-1, 1)), nO).ravel()
            d_params[sWx] = _gate_major(dWx, nO).ravel()
            d_params[sWh] = _gate_major(dWh, nO).ravel()
            # The kernels add bx and bh into one bias: both get its gradient.
            d_params[sbx] = d_bias
            d_params[sbh] = d_bias
            dX_i += dG @ Wx
        if i:
            # The layer below's output gradient (after layer 0, dX_i is the input's).
            dY_layer = dX_i.reshape((N, dirs, nO))
    return cast(Floats2d, dX_i), cast(Floats1d, d_params)


def _step_order(d: int, nT: int) -> List[int]:
    # Direction 0 runs t = 0 .. nT-1; direction 1 runs t = nT-1 .. 0 (each sequence
    # from its own end: sequences are sorted longest first, so the ones alive at t
    # are the first lengths[t] rows of every step).
    return list(range(nT)) if d == 0 else list(range(nT - 1, -1, -1))


def _previous_rows(
    xp, states: numpy.ndarray, start_state: numpy.ndarray, prev_t: Optional[int], size: int, lengths, starts
) -> numpy.ndarray:
    """The state each of the ``size`` rows of a step continues from."""
    if prev_t is None:
        return xp.repeat(start_state, size, axis=0)
    n_prev = min(size, lengths[prev_t])
    rows = states[starts[prev_t] : starts[prev_t] + n_prev]
    if n_prev == size:
        return rows
    # Sequences that start at this step (direction 1 only) continue from the start state.
    return xp.concatenate([rows, xp.repeat(start_state, size - n_prev, axis=0)])


def _backprop_direction(
    xp, d, dY, Y, G, C, Wh, lengths, starts, nT, h_start, c_start
) -> numpy.ndarray:
    """Backpropagation through time for one layer-direction: the gates' pre-activation gradients."""
    nO = C.shape[1]
    order = _step_order(d, nT)
    dG = xp.zeros(G.shape, dtype="f")
    # The gradient flowing into the previous step's hidden state and cell: the first
    # rows of two buffers, reused at every step (zeros where no gradient flows).
    dh_next = xp.zeros((lengths[0], nO), dtype="f")
    dc_next = xp.zeros((lengths[0], nO), dtype="f")
    for k in range(nT - 1, -1, -1):
        t = order[k]
        prev_t = order[k - 1] if k else None
        size, s = lengths[t], starts[t]
        gates = G[s : s + size].reshape((size, nO, N_GATES))
        hf, hi, ho, hc = gates[..., 0], gates[..., 1], gates[..., 2], gates[..., 3]
        tanh_c = xp.tanh(C[s : s + size])
        c_prev = _previous_rows(xp, C, c_start, prev_t, size, lengths, starts)
        dh = dY[s : s + size] + dh_next[:size]
        dc = dc_next[:size] + dh * ho * (1.0 - tanh_c**2)
        dgates = xp.stack(
            (
                dc * c_prev * hf * (1.0 - hf),
                dc * hc * hi * (1.0 - hi),
                dh * tanh_c * ho * (1.0 - ho),
                dc * hi * (1.0 - hc**2),
            ),
            axis=-1,
        ).reshape((size, N_GATES * nO))
        dG[s : s + size] = dgates
        if prev_t is not None:
            n_prev, prev_size = min(size, lengths[prev_t]), lengths[prev_t]
            dh_next[:n_prev] = (dgates @ Wh)[:n_prev]
            dc_next[:n_prev] = (dc * hf)[:n_prev]
            # Rows of the previous step that this one does not continue (direction 0).
            dh_next[n_prev:prev_size] = 0.0
            dc_next[n_prev:prev_size] = 0.0
    return dG


def _backprop_recurrent_weights(xp, d, dG, Y, lengths, starts, nT, h_start) -> numpy.ndarray:
    """The gradient of the hidden-to-gates weights (unit-major), one product per step."""
    order = _step_order(d, nT)
    nO = Y.shape[1]
    dWh = xp.zeros((N_GATES * nO, nO), dtype="f")
    for k, t in enumerate(order):
        prev_t = order[k - 1] if k else None
        size, s = lengths[t], starts[t]
        dWh += dG[s : s + size].T @ _previous_rows(xp, Y, h_start, prev_t, size, lengths, starts)
    return dWh
