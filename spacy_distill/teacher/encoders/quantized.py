"""``spacy-distill.QuantizedSentenceEncoder.v1``: ``SentenceEncoder.v1`` whose
transformer is quantized with torch's own dynamic quantization
(``torch.ao.quantization.quantize_dynamic``): int8 ``nn.Linear`` weights
(activations quantized on the fly) and, optionally, 8-bit word-embedding rows.
The int8 weights are what the pipeline stores.

Needs torch and transformers (the teacher extra). The student never imports this
module.
"""

from typing import Any, Dict, List, Optional

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model
from thinc.types import Floats2d

from ..encoder import SentenceEncoder, encoder_forward, encoder_init
from ..surgery import float_matcher, is_quantized, quantize_transformer


class QuantizingAutoModel:
    """``model_cls`` for spacy-transformers' ``HFShim``: ``HFShim.from_bytes`` builds
    the model from its config and loads the saved state dict into it; a quantized
    state dict needs the quantized module structure, so it is built here first.

    settings (Dict[str, Any]): Keyword arguments of ``quantize_transformer``.
    """

    def __init__(self, settings: Dict[str, Any]) -> None:
        self.settings = dict(settings)

    def from_config(self, config: Any) -> Any:
        """The quantized module structure for ``config`` (weights still random).

        config (Any): A ``transformers`` ``PretrainedConfig``.
        RETURNS (Any): The quantized ``PreTrainedModel``.
        """
        from transformers import AutoModel

        return quantize_transformer(AutoModel.from_config(config), **self.settings)


@registry.layers("spacy-distill.QuantizedSentenceEncoder.v1")
def QuantizedSentenceEncoder(
    name: str,
    prefix: str = "query: ",
    pooling: str = "mean",
    normalize: bool = True,
    max_length: int = 256,
    max_batch_tokens: int = 8192,
    tokenizer_config: Optional[Dict] = None,
    transformer_config: Optional[Dict] = None,
    linear: bool = True,
    embeddings: bool = True,
    per_channel: bool = True,
    keep_float: Optional[List[str]] = None,
) -> Model[List[Doc], Floats2d]:
    """``SentenceEncoder.v1`` with a dynamically quantized transformer (torch).

    The transformer is quantized when the layer is initialized (after loading
    ``name``); the pipeline then stores the quantized weights, and ``spacy.load``
    rebuilds the quantized structure before loading them.

    name (str): A Hugging Face model name or local folder (float weights),
        loaded at initialization.
    prefix (str): Prepended to every text.
    pooling (str): "mean" or "cls".
    normalize (bool): L2-normalise the vectors.
    max_length (int): Pieces per text, including the prefix and special pieces.
    max_batch_tokens (int): Padded pieces per forward pass.
    tokenizer_config (Dict): Keyword arguments for ``AutoTokenizer.from_pretrained``.
    transformer_config (Dict): Keyword arguments for ``AutoConfig.from_pretrained``.
    linear (bool): int8 ``nn.Linear`` weights.
    embeddings (bool): 8-bit word embeddings.
    per_channel (bool): One scale per output row of each linear weight.
    keep_float (Optional[List[str]]): Regexes of linear-layer names left float.
    RETURNS (Model[List[Doc], Floats2d]): One row per doc.
    """
    float_matcher(keep_float)
    if not (linear or embeddings):
        raise ValueError("QuantizedSentenceEncoder: linear and embeddings are both false (use SentenceEncoder.v1)")
    # The float layer checks the shared arguments and builds the shim; only the
    # way the shim builds (and, at init, converts) the transformer differs.
    base = SentenceEncoder(name, prefix, pooling, normalize, max_length, max_batch_tokens, tokenizer_config, transformer_config)
    settings = {"linear": linear, "embeddings": embeddings, "per_channel": per_channel, "keep_float": list(keep_float or [])}
    shim = base.shims[0]
    shim.model_cls = QuantizingAutoModel(settings)
    # The settings are attrs so that cached encoder outputs (train_teacher.encode)
    # are keyed by them too.
    return Model("quantized_sentence_encoder", encoder_forward, init=quantized_encoder_init, shims=[shim], dims={"nO": None}, attrs={**base.attrs, "quantize": settings})


def quantized_encoder_init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    """Load the float transformer (as ``SentenceEncoder.v1``) and quantize it.

    model (Model): A ``QuantizedSentenceEncoder.v1`` layer.
    X (Optional[List[Doc]]): Unused (the width is the transformer's).
    Y (Optional[Floats2d]): Unused.
    """
    encoder_init(model, X, Y)
    transformer = model.shims[0]._hfmodel.transformer
    # Loaded from disk, the transformer is already quantized (QuantizingAutoModel).
    if not is_quantized(transformer):
        quantize_transformer(transformer, **model.attrs["quantize"])


__all__ = ["QuantizedSentenceEncoder", "QuantizingAutoModel"]
