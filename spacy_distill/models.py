"""The student architecture: hash embeddings → thinc BiLSTM → pooling → logits.

Everything here is numpy/thinc: a pipeline using it loads and predicts without
torch installed.
"""

from typing import List, Optional

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import LSTM, Linear, Model, chain, with_padded
from thinc.types import Floats2d

from .layers import MeanMaxPool, with_nonempty


def _output_width(model: Model) -> int:
    """The output width of a (possibly uninitialized) layer chain.

    Stock embedding chains such as MultiHashEmbed only set nO on their inner
    layers until initialization, so look for the last layer that knows it.
    """
    if model.has_dim("nO") is True:
        return model.get_dim("nO")
    for layer in reversed(model.layers):
        try:
            return _output_width(layer)
        except ValueError:
            continue
    raise ValueError(f"Cannot tell the output width of the embedding layer {model.name!r}")


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
    width = _output_width(embed)
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
