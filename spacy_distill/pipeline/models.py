"""The student architectures: hash embeddings → thinc BiLSTM → pooling → logits,
optionally plus a sparse bag-of-n-grams linear model (v2).

The models expose the BiLSTM's token vectors themselves: their top layer's
``attrs[FORWARD_WITH_TOKEN_VECTORS]`` runs the very forward pass that gives
the logits and returns the token vectors with them (see
:func:`predict_with_token_vectors`). The ``distill_textcat`` component keeps
them as ``doc.tensor`` without knowing how any architecture is built.

Everything here is numpy/thinc: a pipeline using it loads and predicts without
torch installed.
"""

from typing import Callable, Dict, List, Optional, Tuple

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import LSTM, Linear, Model, chain, with_padded
from thinc.layers.add import init as add_init
from thinc.layers.chain import init as chain_init
from thinc.types import Floats2d

from .layers import MeanMaxPool, output_width, with_nonempty, with_nonempty_docs
from .lstm import LSTM as LSTMWithGradients

# The model attribute through which a model exposes its token vectors: a function
# ``(model, docs, is_train) -> ((logits, token_vectors), backprop)``, where
# ``backprop`` takes d_logits. A function in ``attrs`` is not serialized (thinc
# skips attrs it cannot serialize, as for spaCy's ``resize_output``), so the
# constructor's value stays in place when saved weights are loaded.
FORWARD_WITH_TOKEN_VECTORS = "forward_with_token_vectors"

TokenVectorsOutput = Tuple[Floats2d, List[Floats2d]]


def predict_with_token_vectors(
    model: Model[List[Doc], Floats2d], docs: List[Doc]
) -> Tuple[Floats2d, Optional[List[Floats2d]]]:
    """A model's logits and, from the same forward pass, its token vectors.

    The logits are those of ``model.predict(docs)`` whatever the model. Models
    that expose no token vectors (no ``attrs[FORWARD_WITH_TOKEN_VECTORS]``)
    give None for them.

    model (Model[List[Doc], Floats2d]): A model from docs to logits.
    docs (List[Doc]): The documents.
    RETURNS (Tuple[Floats2d, Optional[List[Floats2d]]]): The logits, one row
        per doc, and the token vectors, one array per doc (one row per token).
    """
    forward = model.attrs.get(FORWARD_WITH_TOKEN_VECTORS)
    if forward is None:
        return model.predict(docs), None
    (logits, vectors), _ = forward(model, docs, False)
    return logits, vectors


def logits_forward(
    model: Model[List[Doc], Floats2d], docs: List[Doc], is_train: bool
) -> Tuple[Floats2d, Callable[[Floats2d], List[Doc]]]:
    """The forward pass of a model that exposes its token vectors: its logits.

    One function computes both, so ``model.predict`` and
    :func:`predict_with_token_vectors` cannot disagree on the logits.
    """
    (logits, _), backprop = model.attrs[FORWARD_WITH_TOKEN_VECTORS](model, docs, is_train)
    return logits, backprop


def encode_classify(
    encoder: Model[List[Doc], List[Floats2d]], head: Model[List[Floats2d], Floats2d]
) -> Model[List[Doc], Floats2d]:
    """``head(encoder(docs))``, exposing ``encoder(docs)`` as the token vectors.

    The layer tree, dims and initialization are those of ``chain(encoder,
    head)``, so weights saved from that chain load into it unchanged.

    encoder (Model[List[Doc], List[Floats2d]]): Docs to token vectors.
    head (Model[List[Floats2d], Floats2d]): Token vectors to logits.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    # chain's dims: nI only if the first layer can have one, nO of the last layer.
    dims: Dict[str, Optional[int]] = {"nO": head.maybe_get_dim("nO")}
    if encoder.has_dim("nI") is not False:
        dims["nI"] = encoder.maybe_get_dim("nI")
    return Model(
        "encode_classify",
        logits_forward,
        # chain's own shape inference, so a new model initializes (and draws its
        # random weights) exactly as the chain did.
        init=chain_init,
        dims=dims,
        layers=[encoder, head],
        attrs={FORWARD_WITH_TOKEN_VECTORS: encode_classify_forward},
    )


def encode_classify_forward(
    model: Model[List[Doc], Floats2d], docs: List[Doc], is_train: bool
) -> Tuple[TokenVectorsOutput, Callable[[Floats2d], List[Doc]]]:
    """Encode, then classify; return the logits and the encoder's output."""
    encoder, head = model.layers
    if docs and not any(len(doc) for doc in docs) and encoder.has_dim("nO"):
        # A batch of only empty docs: the encoder would give zero-row vectors, but
        # spaCy's StaticVectors (include_static_vectors) fails on a batch without
        # tokens. Zero rows of the encoder's width are what it would return.
        vectors = [model.ops.alloc2f(0, encoder.get_dim("nO")) for _ in docs]
        logits, backprop_head = head(vectors, is_train)

        def backprop_empty(d_logits: Floats2d) -> List[Doc]:
            backprop_head(d_logits)
            return docs

        return (logits, vectors), backprop_empty
    vectors, backprop_encoder = encoder(docs, is_train)
    logits, backprop_head = head(vectors, is_train)

    def backprop(d_logits: Floats2d) -> List[Doc]:
        return backprop_encoder(backprop_head(d_logits))

    return (logits, vectors), backprop


def add_logits(
    textcat: Model[List[Doc], Floats2d], *others: Model[List[Doc], Floats2d]
) -> Model[List[Doc], Floats2d]:
    """The sum of the logits of ``textcat`` and ``others``, exposing ``textcat``'s token vectors.

    The layer tree, dims and initialization are those of ``add(textcat,
    *others)``, so weights saved from that sum load into it unchanged.

    textcat (Model[List[Doc], Floats2d]): A model that exposes token vectors
        (``attrs[FORWARD_WITH_TOKEN_VECTORS]``).
    others (Model[List[Doc], Floats2d]): Models from docs to logits.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    if FORWARD_WITH_TOKEN_VECTORS not in textcat.attrs:
        raise ValueError(f"add_logits: {textcat.name!r} exposes no token vectors")
    layers = [textcat, *others]
    # add's dims: nI only if every layer can have one.
    dims: Dict[str, Optional[int]] = {"nO": None}
    if all(layer.has_dim("nI") is not False for layer in layers):
        dims["nI"] = None
    return Model(
        "add_logits",
        logits_forward,
        init=add_init,
        dims=dims,
        layers=layers,
        attrs={FORWARD_WITH_TOKEN_VECTORS: add_logits_forward},
    )


def add_logits_forward(
    model: Model[List[Doc], Floats2d], docs: List[Doc], is_train: bool
) -> Tuple[TokenVectorsOutput, Callable[[Floats2d], List[Doc]]]:
    """Sum the layers' logits (in place, as thinc's add); keep the first layer's token vectors."""
    textcat, *others = model.layers
    (logits, vectors), backprop_textcat = textcat.attrs[FORWARD_WITH_TOKEN_VECTORS](textcat, docs, is_train)
    callbacks = []
    for layer in others:
        layer_logits, callback = layer(docs, is_train)
        logits += layer_logits
        callbacks.append(callback)

    def backprop(d_logits: Floats2d) -> List[Doc]:
        d_docs = backprop_textcat(d_logits)
        for callback in callbacks:
            callback(d_logits)
        return d_docs

    return (logits, vectors), backprop


def _build_bilstm(
    embed: Model[List[Doc], List[Floats2d]],
    lstm_layer: Callable[..., Model],
    depth: int,
    dropout: float,
    pooling: str,
    nO: Optional[int],
) -> Model[List[Doc], Floats2d]:
    # The BiLSTM classifier of v1 (thinc's LSTM) and v3 (spacy-distill.LSTM.v1).
    width = output_width(embed)
    if width % 2:
        raise ValueError(f"BiLSTMTextCat: the embedding width must be even (two directions), got {width}")
    # thinc's LSTM with bi=True splits nO between the two directions, so the
    # encoder keeps the embedding width.
    lstm = lstm_layer(nO=width, nI=width, bi=True, depth=depth, dropout=dropout)
    pool = MeanMaxPool(pooling)
    pool.set_dim("nI", width)
    pool.set_dim("nO", width * (2 if pooling == "meanmax" else 1))
    output = Linear(nO=nO, nI=pool.get_dim("nO"))
    encoder = chain(embed, with_nonempty(with_padded(lstm)))
    head = chain(pool, output)
    model = encode_classify(encoder, head)
    # Refs for scripts and tests that look at the parts (the component does not).
    model.set_ref("encoder", encoder)
    model.set_ref("head", head)
    model.set_ref("embed", embed)
    model.set_ref("output_layer", output)
    model.attrs["outputs"] = "logits"
    if nO is not None:
        model.set_dim("nO", nO)
    return model


@registry.architectures("spacy-distill.BiLSTMTextCat.v1")
def build_bilstm_textcat(
    embed: Model[List[Doc], List[Floats2d]],
    depth: int = 1,
    dropout: float = 0.0,
    pooling: str = "meanmax",
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """Build a BiLSTM text classifier whose output is *logits*.

    The output layer has no activation: the ``distill_textcat`` component
    applies softmax or sigmoid, and its distillation losses work on the logits
    (Tang et al. 2019 match logits directly). The BiLSTM's outputs are the
    model's token vectors (:func:`predict_with_token_vectors`).

    embed (Model[List[Doc], List[Floats2d]]): Token embedding, usually the
        stock ``spacy.MultiHashEmbed.v2``. Its width is the LSTM's width.
    depth (int): Number of stacked BiLSTM layers.
    dropout (float): Dropout between the LSTM layers (thinc LSTM's own).
    pooling (str): "mean", "max" or "meanmax".
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    return _build_bilstm(embed, LSTM, depth, dropout, pooling, nO)


@registry.architectures("spacy-distill.BiLSTMTextCat.v2")
def build_bilstm_textcat_v2(
    embed: Model[List[Doc], List[Floats2d]],
    bow: Optional[Model[List[Doc], Floats2d]] = None,
    depth: int = 1,
    dropout: float = 0.0,
    pooling: str = "meanmax",
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """Build a BiLSTM text classifier, optionally summed with a bag-of-n-grams model.

    With ``bow`` (e.g. the stock ``spacy.TextCatBOW.v3`` with
    ``no_output_layer = true``, whose output is a sparse linear model's logits)
    the logits are the sum of the BiLSTM's and the bag-of-n-grams' logits.
    The sparse n-gram weights remember exact word and (for ja/zh, whose tokens
    are characters) character n-grams that a small hash-embedded BiLSTM blurs,
    for almost no time: the n-gram model runs at ~600k tokens/s here. The
    token vectors are the BiLSTM's (:func:`predict_with_token_vectors`).

    embed (Model[List[Doc], List[Floats2d]]): Token embedding, usually the
        stock ``spacy.MultiHashEmbed.v2``. Its width is the LSTM's width.
    bow (Optional[Model[List[Doc], Floats2d]]): A model mapping docs to
        logits, added to the BiLSTM's; None gives v1's model.
    depth (int): Number of stacked BiLSTM layers.
    dropout (float): Dropout between the LSTM layers (thinc LSTM's own).
    pooling (str): "mean", "max" or "meanmax".
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    return _add_bow(_build_bilstm(embed, LSTM, depth, dropout, pooling, nO), bow, nO)


def _add_bow(
    bilstm: Model[List[Doc], Floats2d], bow: Optional[Model[List[Doc], Floats2d]], nO: Optional[int]
) -> Model[List[Doc], Floats2d]:
    # v2 and v3: the BiLSTM's logits plus the bow block's, empty docs guarded.
    if bow is None:
        return bilstm
    if nO is not None:
        bow.set_dim("nO", nO)
    bow = with_nonempty_docs(bow)
    model = add_logits(bilstm, bow)
    for name in bilstm.ref_names:
        model.set_ref(name, bilstm.get_ref(name))
    model.set_ref("bow", bow)
    model.attrs["outputs"] = "logits"
    if nO is not None:
        model.set_dim("nO", nO)
    return model


@registry.architectures("spacy-distill.BiLSTMTextCat.v3")
def build_bilstm_textcat_v3(
    embed: Model[List[Doc], List[Floats2d]],
    bow: Optional[Model[List[Doc], Floats2d]] = None,
    depth: int = 1,
    dropout: float = 0.0,
    pooling: str = "meanmax",
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """``BiLSTMTextCat.v2`` whose LSTM trains: ``spacy-distill.LSTM.v1`` for thinc's LSTM.

    thinc 8.3's CPU backward pass of the LSTM returns roughly the weights as their
    gradient (``spacy_distill/pipeline/lstm.py``), so under v1 and v2 the LSTM's
    weights decay to zero during training and its output is a constant: those
    students are their linear blocks. v3 is the same model (same layer tree,
    parameters and forward pass: v2 weights load into it and predict the same) with
    the LSTM's true gradient.

    embed (Model[List[Doc], List[Floats2d]]): Token embedding, usually the
        stock ``spacy.MultiHashEmbed.v2``. Its width is the LSTM's width.
    bow (Optional[Model[List[Doc], Floats2d]]): A model mapping docs to
        logits, added to the BiLSTM's; None gives the BiLSTM alone.
    depth (int): Number of stacked BiLSTM layers.
    dropout (float): Dropout over the LSTM's weights during training.
    pooling (str): "mean", "max" or "meanmax".
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    return _add_bow(_build_bilstm(embed, LSTMWithGradients, depth, dropout, pooling, nO), bow, nO)


@registry.architectures("spacy-distill.NgramTextCat.v1")
def build_ngram_textcat(
    bow: Model[List[Doc], Floats2d],
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """Build a text classifier from sparse n-gram models alone, outputting logits.

    The student's ``bow`` block on its own (e.g. the stock ``spacy.TextCatBOW.v3``
    and ``spacy-distill.CharNgramBOW.v1`` summed by ``add.v1``, with
    ``no_output_layer = true``), empty docs guarded as in
    ``spacy-distill.BiLSTMTextCat.v2``. Trained first with ``distill_textcat``
    to convergence at its own learning rate and steps (``configs/student_ngrams.cfg``),
    its weights then go into the student's ``bow`` block
    (``spacy-distill.init_layer_from.v1``), where ``spacy-distill.frozen.v1`` can
    keep them: the sparse weights no longer share the BiLSTM's schedule, under
    which they overfit in the second epoch (metrics/student_sparse_lr.md).

    bow (Model[List[Doc], Floats2d]): A model mapping docs to logits.
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    if nO is not None:
        bow.set_dim("nO", nO)
    model = with_nonempty_docs(bow)
    # The same ref as in BiLSTMTextCat.v2, so that init_layer_from finds the
    # block under one name in both.
    model.set_ref("bow", model)
    model.attrs["outputs"] = "logits"
    return model
