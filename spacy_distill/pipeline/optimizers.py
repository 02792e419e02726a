"""Adam whose gradient clipping gives the same bits on every CPU.

thinc's ``Ops.clip_gradient`` takes the gradient's norm with ``numpy.linalg.norm``, which
for a float32 array is a BLAS call (OpenBLAS picks its kernel for the CPU it runs on:
AVX-512, AVX2, ...). Different kernels sum in different orders, so the norm, and with it
the clipped update, differs in its last bits from one machine to the next; over a training
run the weights drift apart. The POS taggers the augmenter uses are trained with clipped
Adam, so two machines trained different taggers from the same data and seed (UPOS 0.1-0.7
points apart) and wrote different augmented texts. With clipping off the same tagger
training is bit-identical whichever OpenBLAS kernel runs (``metrics/reproducibility.md``).

``spacy-distill.Adam.v1`` is thinc's ``Adam.v1`` with the norm summed by numpy's own
reduction in float64: every square of a float32 is exact in float64, and the rounding
left in the sum is ~1e-16 relative, far below what could move the float32 scale factor.
"""

import math
from typing import Any, Tuple

from spacy.util import registry
from thinc.api import Optimizer, get_array_module
from thinc.optimizers import ADAM_DEFAULTS, FloatOrSeq
from thinc.types import FloatsXd


def clip_gradient(gradient: FloatsXd, threshold: float) -> FloatsXd:
    """Scale a gradient, in place, to an L2 norm of at most ``threshold``.

    What thinc's ``Ops.clip_gradient`` does, with the norm computed without BLAS.

    gradient (FloatsXd): The gradient; changed in place.
    threshold (float): The largest norm kept.
    RETURNS (FloatsXd): The same array.
    """
    xp = get_array_module(gradient)
    norm = math.sqrt(float(xp.square(gradient, dtype="float64").sum()))
    if norm >= threshold:
        gradient *= gradient.dtype.type(threshold / norm)
    return gradient


class ReproducibleClipOptimizer(Optimizer):
    """thinc's ``Optimizer`` with :func:`clip_gradient` in place of ``Ops.clip_gradient``."""

    def __init__(self, learn_rate: FloatOrSeq, *, grad_clip: float, **kwargs: Any) -> None:
        """Initialize.

        learn_rate (FloatOrSeq): The learning rate or its schedule.
        grad_clip (float): Gradients are scaled to at most this norm (0 = no clipping).
        kwargs (Any): The other arguments of thinc's ``Optimizer``.
        """
        if grad_clip and kwargs.get("L2") and not kwargs.get("L2_is_weight_decay", True):
            # thinc adds the L2 term to the gradient before it clips; clipping first here
            # would change the update, so this combination is refused rather than changed.
            raise ValueError(
                "spacy-distill.Adam.v1: grad_clip with L2 as a gradient term "
                "(L2_is_weight_decay = false) is not supported; set L2_is_weight_decay = true"
            )
        super().__init__(learn_rate, grad_clip=0.0, **kwargs)
        self.clip_threshold = float(grad_clip)

    def __call__(
        self, key: Tuple[int, str], weights: FloatsXd, gradient: FloatsXd, *, lr_scale: float = 1.0
    ) -> Tuple[FloatsXd, FloatsXd]:
        """Clip the gradient, then update the weights as thinc's ``Optimizer`` does.

        key (Tuple[int, str]): The parameter's id (node id, name).
        weights (FloatsXd): The parameter.
        gradient (FloatsXd): Its gradient.
        lr_scale (float): Factor on the learning rate.
        RETURNS (Tuple[FloatsXd, FloatsXd]): The updated weights and the zeroed gradient.
        """
        if len(gradient) >= 1 and self.clip_threshold:
            gradient = clip_gradient(gradient, self.clip_threshold)
        return super().__call__(key, weights, gradient, lr_scale=lr_scale)


@registry.optimizers("spacy-distill.Adam.v1")
def create_adam(
    learn_rate: FloatOrSeq = ADAM_DEFAULTS["learn_rate"],
    *,
    L2: FloatOrSeq = ADAM_DEFAULTS["L2"],
    beta1: FloatOrSeq = ADAM_DEFAULTS["beta1"],
    beta2: FloatOrSeq = ADAM_DEFAULTS["beta2"],
    eps: FloatOrSeq = ADAM_DEFAULTS["eps"],
    grad_clip: float = ADAM_DEFAULTS["grad_clip"],
    L2_is_weight_decay: bool = bool(ADAM_DEFAULTS["L2_is_weight_decay"]),
    use_averages: bool = True,
) -> Optimizer:
    """thinc's ``Adam.v1`` with a gradient norm that is the same on every CPU.

    learn_rate (FloatOrSeq): The learning rate or its schedule.
    L2 (FloatOrSeq): L2 regularisation.
    beta1 (FloatOrSeq): First-moment decay.
    beta2 (FloatOrSeq): Second-moment decay.
    eps (FloatOrSeq): Adam's epsilon.
    grad_clip (float): Gradients are scaled to at most this norm (0 = no clipping).
    L2_is_weight_decay (bool): L2 as decoupled weight decay (must be true when clipping with L2).
    use_averages (bool): Keep parameter averages.
    RETURNS (Optimizer): The optimizer.
    """
    return ReproducibleClipOptimizer(
        learn_rate,
        L2=L2,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        grad_clip=grad_clip,
        L2_is_weight_decay=L2_is_weight_decay,
        use_averages=use_averages,
        use_radam=False,
    )
