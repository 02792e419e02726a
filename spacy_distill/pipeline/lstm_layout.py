"""thinc's LSTM params layout, shared by the layer (``lstm.py``) and its compiled
inference (``lstm_numba.py``)."""

from typing import Tuple

# The four gates of a hidden unit, in the order of thinc's fused kernels (the last
# axis of its gate arrays): forget, input, output (sigmoids), candidate cell (tanh).
N_GATES = 4


def layer_slices(nO: int, nI: int, offset: int) -> Tuple[slice, slice, slice, slice, int]:
    """Where one layer-direction's Wx, bx, Wh, bh lie in the flat params (thinc's layout).

    Each is gate-major (4 blocks of nO rows): Wx (4 nO, nI), bx (4 nO), Wh (4 nO, nO), bh (4 nO).

    nO (int): Units of the direction.
    nI (int): Width of the layer's input.
    offset (int): Where the layer-direction's params start.
    RETURNS (Tuple[slice, slice, slice, slice, int]): The four slices and the next offset.
    """
    sizes = (N_GATES * nO * nI, N_GATES * nO, N_GATES * nO * nO, N_GATES * nO)
    slices = []
    for size in sizes:
        slices.append(slice(offset, offset + size))
        offset += size
    return slices[0], slices[1], slices[2], slices[3], offset
