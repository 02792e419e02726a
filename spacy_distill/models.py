"""The student architectures: hash embeddings → thinc BiLSTM → pooling → logits,
optionally plus a sparse bag-of-n-grams linear model (v2).

Everything here is numpy/thinc: a pipeline using it loads and predicts without
torch installed.
"""

from typing import List, Optional

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import LSTM, Linear, Model, add, chain, with_padded
from thinc.types import Floats2d

from .layers import MeanMaxPool, output_width, with_nonempty, with_nonempty_docs


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
    (Tang et al. 2019 match logits directly).

    embed (Model[List[Doc], List[Floats2d]]): Token embedding, usually the
        stock ``spacy.MultiHashEmbed.v2``. Its width is the LSTM's width.
    depth (int): Number of stacked BiLSTM layers.
    dropout (float): Dropout between the LSTM layers (thinc LSTM's own).
    pooling (str): "mean", "max" or "meanmax".
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    width = output_width(embed)
    if width % 2:
        raise ValueError(f"BiLSTMTextCat: the embedding width must be even (two directions), got {width}")
    # thinc's LSTM with bi=True splits nO between the two directions, so the
    # encoder keeps the embedding width.
    lstm = LSTM(nO=width, nI=width, bi=True, depth=depth, dropout=dropout)
    pool = MeanMaxPool(pooling)
    pool.set_dim("nI", width)
    pool.set_dim("nO", width * (2 if pooling == "meanmax" else 1))
    output = Linear(nO=nO, nI=pool.get_dim("nO"))
    encoder = chain(embed, with_nonempty(with_padded(lstm)))
    head = chain(pool, output)
    model: Model[List[Doc], Floats2d] = chain(encoder, head)
    # The component runs encoder and head separately at prediction time, to
    # keep the BiLSTM's token vectors as doc.tensor (for /encode, similarity).
    model.set_ref("encoder", encoder)
    model.set_ref("head", head)
    model.set_ref("embed", embed)
    model.set_ref("output_layer", output)
    model.attrs["outputs"] = "logits"
    if nO is not None:
        model.set_dim("nO", nO)
    return model


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
    for almost no time: the n-gram model runs at ~600k tokens/s here.

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
    bilstm = build_bilstm_textcat(embed, depth=depth, dropout=dropout, pooling=pooling, nO=nO)
    if bow is None:
        return bilstm
    if nO is not None:
        bow.set_dim("nO", nO)
    bow = with_nonempty_docs(bow)
    model: Model[List[Doc], Floats2d] = add(bilstm, bow)
    # Keep v1's refs (encoder, head, ...); the component adds the bow logits to
    # head(encoder(docs)) when it keeps the encoder's token vectors (store_tensor).
    for name in bilstm.ref_names:
        model.set_ref(name, bilstm.get_ref(name))
    model.set_ref("bow", bow)
    model.attrs["outputs"] = "logits"
    if nO is not None:
        model.set_dim("nO", nO)
    return model
