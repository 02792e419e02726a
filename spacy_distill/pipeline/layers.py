"""Thinc layers the stock library lacks: empty-safe pooling, empty-input guards and a
per-layer learning-rate scale."""

from typing import Callable, List, Optional, Tuple, TypeVar, cast

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model
from thinc.types import Floats2d, Ints1d

InT = TypeVar("InT")


@registry.layers("spacy-distill.MeanMaxPool.v1")
def MeanMaxPool(pooling: str = "meanmax") -> Model[List[Floats2d], Floats2d]:
    """Pool each sequence of vectors into one vector, by mean, max or both.

    Unlike thinc's ``reduce_max``, a zero-length sequence (an empty doc) is
    allowed and pools to a zero vector, so empty docs need no special case
    upstream.

    pooling (str): "mean", "max" or "meanmax" (the two concatenated).
    RETURNS (Model[List[Floats2d], Floats2d]): The pooling layer. Its nO is nI
        for "mean"/"max" and 2 * nI for "meanmax".
    """
    if pooling not in ("mean", "max", "meanmax"):
        raise ValueError(f"pooling must be 'mean', 'max' or 'meanmax', not {pooling!r}")
    return Model(
        f"{pooling}_pool",
        meanmax_forward,
        init=meanmax_init,
        dims={"nI": None, "nO": None},
        attrs={"pooling": pooling},
    )


def _n_parts(model: Model) -> int:
    return 2 if model.attrs["pooling"] == "meanmax" else 1


def meanmax_init(
    model: Model, X: Optional[List[Floats2d]] = None, Y: Optional[Floats2d] = None
) -> None:
    """Infer nI (and so nO) from sample input."""
    if X is not None and len(X) and not model.has_dim("nI"):
        model.set_dim("nI", X[0].shape[1])
    if model.has_dim("nI"):
        model.set_dim("nO", model.get_dim("nI") * _n_parts(model))


def meanmax_forward(
    model: Model, Xs: List[Floats2d], is_train: bool
) -> Tuple[Floats2d, Callable[[Floats2d], List[Floats2d]]]:
    """Mean and/or max over each sequence; empty sequences give zeros."""
    ops = model.ops
    nI = model.get_dim("nI")
    pooling = model.attrs["pooling"]
    lengths = [len(x) for x in Xs]
    parts = []
    # Rows of the max per sequence, to route the gradient back (argmax).
    which: List[Optional[Ints1d]] = []
    if pooling in ("mean", "meanmax"):
        means = ops.alloc2f(len(Xs), nI)
        for i, x in enumerate(Xs):
            if lengths[i]:
                means[i] = x.mean(axis=0)
        parts.append(means)
    if pooling in ("max", "meanmax"):
        maxes = ops.alloc2f(len(Xs), nI)
        for i, x in enumerate(Xs):
            if not lengths[i]:
                which.append(None)
            elif is_train:
                idx = cast(Ints1d, x.argmax(axis=0))
                maxes[i] = x[idx, ops.xp.arange(nI)]
                which.append(idx)
            else:
                # The same values; the rows of the maxes are needed only for backprop.
                maxes[i] = x.max(axis=0)
        parts.append(maxes)
    Y = cast(Floats2d, ops.xp.hstack(parts) if len(parts) > 1 else parts[0])

    def backprop(dY: Floats2d) -> List[Floats2d]:
        if not is_train and pooling != "mean":
            raise ValueError(f"{model.name}: backprop called after a forward pass with is_train=False")
        dXs = [ops.alloc2f(n, nI) for n in lengths]
        col = 0
        if pooling in ("mean", "meanmax"):
            d_mean = dY[:, col : col + nI]
            for i, n in enumerate(lengths):
                if n:
                    dXs[i] += d_mean[i] / n
            col += nI
        if pooling in ("max", "meanmax"):
            d_max = dY[:, col : col + nI]
            cols = ops.xp.arange(nI)
            for i, n in enumerate(lengths):
                idx = which[i]
                if n and idx is not None:
                    dXs[i][idx, cols] += d_max[i]
        return dXs

    return Y, backprop


def with_nonempty(layer: Model[List[Floats2d], List[Floats2d]]) -> Model[List[Floats2d], List[Floats2d]]:
    """Run a sequence layer unless every sequence in the batch is empty.

    thinc's LSTM handles empty sequences inside a batch but fails on a batch of
    only empty ones (a batch of empty docs), so such a batch is answered with
    zero-row outputs of the layer's width without calling it.

    layer (Model[List[Floats2d], List[Floats2d]]): The wrapped layer. Must have
        its nO dimension set (or inferable at initialization).
    RETURNS (Model[List[Floats2d], List[Floats2d]]): The guarded layer.
    """
    return Model(
        f"nonempty({layer.name})",
        nonempty_forward,
        init=nonempty_init,
        layers=[layer],
        dims={"nO": layer.maybe_get_dim("nO"), "nI": layer.maybe_get_dim("nI")},
    )


def nonempty_init(model: Model, X: Optional[List[Floats2d]] = None, Y=None) -> None:
    """Initialize the wrapped layer and copy its dims."""
    layer = model.layers[0]
    if X is not None and not any(len(x) for x in X):
        X = None
    layer.initialize(X=X, Y=Y)
    for dim in ("nO", "nI"):
        if layer.has_dim(dim):
            model.set_dim(dim, layer.get_dim(dim))


def nonempty_forward(
    model: Model, Xs: List[Floats2d], is_train: bool
) -> Tuple[List[Floats2d], Callable[[List[Floats2d]], List[Floats2d]]]:
    """Call the layer, or return empty outputs for an all-empty batch."""
    layer = model.layers[0]
    if any(len(x) for x in Xs):
        return layer(Xs, is_train)
    nO = layer.get_dim("nO")
    nI = layer.get_dim("nI")
    Ys = [model.ops.alloc2f(0, nO) for _ in Xs]

    def backprop(dYs: List[Floats2d]) -> List[Floats2d]:
        return [model.ops.alloc2f(0, nI) for _ in dYs]

    return Ys, backprop


def output_width(model: Model) -> int:
    """The output width of a layer chain, from the last layer that knows it.

    Stock chains such as MultiHashEmbed only set nO on their inner layers until
    initialization, and wrappers such as ``with_cpu`` never set it.

    model (Model): The layer.
    RETURNS (int): Its output width.
    """
    if model.has_dim("nO") is True:
        return model.get_dim("nO")
    for layer in reversed(model.layers):
        try:
            return output_width(layer)
        except ValueError:
            continue
    raise ValueError(f"Cannot tell the output width of the layer {model.name!r}")


def with_nonempty_docs(layer: Model[List[Doc], Floats2d]) -> Model[List[Doc], Floats2d]:
    """Run a docs → rows layer on the non-empty docs only; empty docs get zero rows.

    spaCy's ``extract_ngrams`` (inside the stock ``TextCatBOW``) fails on a
    zero-token doc when n-grams of size > 1 are extracted, so a batch with an
    empty review would crash; here such docs contribute zero logits instead.

    layer (Model[List[Doc], Floats2d]): The wrapped layer.
    RETURNS (Model[List[Doc], Floats2d]): The guarded layer.
    """
    return Model(
        f"nonempty_docs({layer.name})",
        nonempty_docs_forward,
        init=nonempty_docs_init,
        layers=[layer],
        dims={"nO": layer.maybe_get_dim("nO")},
    )


def nonempty_docs_init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    """Initialize the wrapped layer on the non-empty sample docs and copy its nO."""
    layer = model.layers[0]
    if X is not None:
        keep = [i for i, doc in enumerate(X) if len(doc)]
        X = [X[i] for i in keep] or None
        if Y is not None:
            Y = Y[keep] if X is not None else None
    layer.initialize(X=X, Y=Y)
    model.set_dim("nO", output_width(layer))


def nonempty_docs_forward(
    model: Model, docs: List[Doc], is_train: bool
) -> Tuple[Floats2d, Callable[[Floats2d], List[Doc]]]:
    """Scatter the layer's rows for the non-empty docs into a zero matrix."""
    layer = model.layers[0]
    Y = model.ops.alloc2f(len(docs), model.get_dim("nO"))
    keep = [i for i, doc in enumerate(docs) if len(doc)]
    if not keep:
        return Y, lambda dY: []
    if len(keep) == len(docs):
        return layer(docs, is_train)
    rows = model.ops.asarray1i(keep)
    Y_keep, backprop_keep = layer([docs[i] for i in keep], is_train)
    Y[rows] = Y_keep

    def backprop(dY: Floats2d) -> List[Doc]:
        backprop_keep(model.ops.as_contig(dY[rows]))
        return []

    return Y, backprop


@registry.layers("spacy-distill.with_learn_rate_scale.v1")
def with_learn_rate_scale(layer: Model[InT, Floats2d], scale: float = 1.0) -> Model[InT, Floats2d]:
    """Train ``layer`` at ``scale`` times the optimizer's learning rate.

    The output and the gradient that reaches the layer are both multiplied by
    ``scale``. Adam's step on a weight does not depend on the gradient's scale
    (it divides by the gradient's running RMS), so the weights move as before
    while the output they give moves ``scale`` times as far: the layer's own
    learning rate, under one optimizer for the whole pipeline. This is meant
    for sparse n-gram weights, which get a gradient only in the batches that
    contain their n-gram and so are far from converged after a few epochs at
    the BiLSTM's learning rate. The weights learned are the wrapped layer's
    weights divided by ``scale``, so a saved model keeps its scale in the config.

    layer (Model[InT, Floats2d]): The wrapped layer (e.g. an n-gram model's logits).
    scale (float): The learning-rate multiplier (> 0); 1.0 is the layer itself.
    RETURNS (Model[InT, Floats2d]): The layer with outputs scaled by ``scale``.
    """
    if not scale > 0:
        raise ValueError(f"with_learn_rate_scale: scale must be > 0, got {scale}")
    return Model(
        f"learn_rate_scale({layer.name})",
        learn_rate_scale_forward,
        init=learn_rate_scale_init,
        layers=[layer],
        dims={"nO": layer.maybe_get_dim("nO")},
        attrs={"scale": float(scale)},
    )


def learn_rate_scale_init(model: Model, X: Optional[InT] = None, Y: Optional[Floats2d] = None) -> None:
    """Initialize the wrapped layer and copy its nO."""
    layer = model.layers[0]
    if model.has_dim("nO") is True and layer.has_dim("nO") is None:
        layer.set_dim("nO", model.get_dim("nO"))
    layer.initialize(X=X, Y=Y)
    model.set_dim("nO", output_width(layer))


def learn_rate_scale_forward(model: Model, X: InT, is_train: bool) -> Tuple[Floats2d, Callable[[Floats2d], InT]]:
    """The layer's output times the scale; its gradient times the scale too."""
    scale = model.attrs["scale"]
    Y, backprop_layer = model.layers[0](X, is_train)

    def backprop(dY: Floats2d) -> InT:
        return backprop_layer(dY * scale)

    return Y * scale, backprop


@registry.layers("spacy-distill.frozen.v1")
def frozen(layer: Model[List[Doc], Floats2d]) -> Model[List[Doc], Floats2d]:
    """Use a trained docs → rows layer without training it further.

    The forward pass is the layer's prediction (``is_train=False``: no dropout,
    nothing kept for a backward pass) and the backward pass stops here, so the
    layer gets no gradient and the optimizer leaves its weights as they are:
    thinc updates only the parameters that have a gradient, so neither Adam's
    step nor its weight decay touches them. Meant for a sparse n-gram model
    fitted to convergence first (``spacy-distill.NgramTextCat.v1``) and then
    added to the BiLSTM's logits, which learn what the n-grams miss. The weights
    are saved and loaded with the model as any others.

    layer (Model[List[Doc], Floats2d]): The layer to keep as it is.
    RETURNS (Model[List[Doc], Floats2d]): The layer, without updates.
    """
    return Model(
        f"frozen({layer.name})",
        frozen_forward,
        init=frozen_init,
        layers=[layer],
        dims={"nO": layer.maybe_get_dim("nO")},
    )


def frozen_init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    """Initialize the wrapped layer and copy its nO."""
    layer = model.layers[0]
    if model.has_dim("nO") is True and layer.has_dim("nO") is None:
        layer.set_dim("nO", model.get_dim("nO"))
    layer.initialize(X=X, Y=Y)
    model.set_dim("nO", output_width(layer))


def frozen_forward(
    model: Model, docs: List[Doc], is_train: bool
) -> Tuple[Floats2d, Callable[[Floats2d], List[Doc]]]:
    """The layer's prediction; the gradient goes no further."""
    Y = model.layers[0].predict(docs)

    def backprop(dY: Floats2d) -> List[Doc]:
        return []

    return Y, backprop
