"""``spacy-distill.OnnxSentenceEncoder.v1``: the frozen sentence encoder exported to
ONNX and run by ONNX Runtime on the CPU, optionally int8
(``onnxruntime.quantization.quantize_dynamic``). The pipeline stores the ONNX graph
and the fast tokenizer; at run time the encoder calls only onnxruntime and
tokenizers (torch is needed to export it, ``teacher/surgery.py``).

Needs the ``onnx`` extra. The student never imports this module.
"""

from typing import Any, Callable, List, Optional, Tuple

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model
from thinc.shims import Shim
from thinc.types import Floats2d

from ..encoder import encode_in_batches, encoder_attrs, pad_ids, pool
from ..surgery import export_onnx, float_matcher


class OnnxShim(Shim):
    """Holds an ONNX encoder graph and its fast tokenizer, (de)serialized with the
    pipeline; the ONNX Runtime session is created on first use.

    threads (int): ONNX Runtime intra-op threads (0 = its default, one per core).
    spin (bool): Let idle ONNX Runtime threads spin (lower latency, but they burn
        CPU that other threads of the process could use).
    """

    def __init__(self, threads: int = 0, spin: bool = False) -> None:
        super().__init__(None, config={"threads": int(threads), "spin": bool(spin)})
        self.onnx: Optional[bytes] = None
        self.tokenizer_json: Optional[str] = None
        self.pad_id = 0
        self._session = None
        self._tokenizer = None

    @property
    def ready(self) -> bool:
        """Whether the shim holds a graph (exported, or loaded with the pipeline)."""
        return self.onnx is not None

    def set(self, onnx: bytes, tokenizer_json: str, pad_id: int) -> None:
        """Hold a new graph and tokenizer (the session and tokenizer are rebuilt on use).

        onnx (bytes): The ONNX model.
        tokenizer_json (str): The fast tokenizer's ``tokenizer.json`` text.
        pad_id (int): The padding piece id.
        """
        self.onnx, self.tokenizer_json, self.pad_id = onnx, tokenizer_json, int(pad_id)
        self._session = self._tokenizer = None

    def session(self) -> Any:
        """The ONNX Runtime session of the graph, created on first use.

        RETURNS (onnxruntime.InferenceSession): The session (CPU).
        """
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if self.cfg["threads"] > 0:
                options.intra_op_num_threads = self.cfg["threads"]
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.cfg["spin"] else "0")
            self._session = onnxruntime.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
        return self._session

    def tokenizer(self, max_length: int) -> Any:
        """The fast tokenizer, without padding and truncating, created on first use.

        max_length (int): Pieces per text (only the first call's value counts).
        RETURNS (tokenizers.Tokenizer): The tokenizer.
        """
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self.tokenizer_json)
            # A tokenizer.json may carry its own fixed padding / truncation (MiniLM:
            # pad to 128): the encoder pads per length batch itself.
            tok.no_padding()
            tok.enable_truncation(max_length)
            self._tokenizer = tok
        return self._tokenizer

    def to_bytes(self) -> bytes:
        """The graph, tokenizer and pad id (empty before initialization).

        RETURNS (bytes): msgpack bytes.
        """
        import srsly

        msg = {"onnx": self.onnx, "tokenizer": self.tokenizer_json, "pad_id": self.pad_id} if self.ready else {}
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, data: bytes) -> "OnnxShim":
        """Load what :meth:`to_bytes` wrote.

        data (bytes): msgpack bytes.
        RETURNS (OnnxShim): This shim.
        """
        import srsly

        msg = srsly.msgpack_loads(data)
        if msg:
            self.set(msg["onnx"], msg["tokenizer"], msg["pad_id"])
        return self

    def to_device(self, device_type: str, device_id: int) -> None:
        """Refuse any device but the CPU.

        device_type (str): "cpu" (anything else raises).
        device_id (int): Unused.
        """
        if device_type != "cpu":
            raise ValueError("OnnxSentenceEncoder runs on the CPU only")

    def finish_update(self, optimizer: Any) -> None:
        """Nothing to update.

        optimizer (Any): Unused.
        """
        # Frozen: nothing to update.
        return None


@registry.layers("spacy-distill.OnnxSentenceEncoder.v1")
def OnnxSentenceEncoder(
    name: str,
    prefix: str = "query: ",
    pooling: str = "mean",
    normalize: bool = True,
    max_length: int = 256,
    max_batch_tokens: int = 8192,
    quantize: bool = True,
    per_channel: bool = True,
    keep_float: Optional[List[str]] = None,
    threads: int = 0,
    spin: bool = False,
    opset: int = 17,
) -> Model[List[Doc], Floats2d]:
    """``SentenceEncoder.v1`` run by ONNX Runtime on the CPU (no torch code at run time).

    At initialization the transformer ``name`` is loaded with torch, exported to
    ONNX (input ids and attention mask → last hidden state) and, if ``quantize``,
    quantized to int8 by ONNX Runtime's dynamic quantization (linear weights and
    the embedding table). Pooling and normalisation run in numpy, as in
    ``SentenceEncoder.v1``.

    name (str): A Hugging Face model name or local folder.
    prefix (str): Prepended to every text.
    pooling (str): "mean" or "cls".
    normalize (bool): L2-normalise the vectors.
    max_length (int): Pieces per text, including the prefix and special pieces.
    max_batch_tokens (int): Padded pieces per forward pass.
    quantize (bool): int8 weights (ONNX Runtime dynamic quantization).
    per_channel (bool): One scale per output channel of each weight.
    keep_float (Optional[List[str]]): Regexes of module names (as in torch, e.g.
        ``encoder.layer.3.output.dense``) whose ONNX nodes stay float.
    threads (int): ONNX Runtime intra-op threads (0 = one per core).
    spin (bool): Let idle ONNX Runtime threads spin.
    opset (int): ONNX opset of the export.
    RETURNS (Model[List[Doc], Floats2d]): One row per doc.
    """
    attrs = encoder_attrs("OnnxSentenceEncoder", name, prefix, pooling, normalize, max_length, max_batch_tokens)
    if threads < 0:
        raise ValueError(f"OnnxSentenceEncoder: threads must be >= 0, got {threads}")
    float_matcher(keep_float)
    attrs["onnx"] = {"quantize": quantize, "per_channel": per_channel, "keep_float": list(keep_float or []), "opset": opset}
    return Model("onnx_sentence_encoder", onnx_forward, init=onnx_init, shims=[OnnxShim(threads, spin)], dims={"nO": None}, attrs=attrs)


def onnx_init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    """Export ``name`` to ONNX (unless loaded from disk) and set the width.

    model (Model): An ``OnnxSentenceEncoder.v1`` layer.
    X (Optional[List[Doc]]): Unused (the width is the graph's).
    Y (Optional[Floats2d]): Unused.
    """
    shim: OnnxShim = model.shims[0]
    if not shim.ready:
        settings = model.attrs["onnx"]
        shim.set(*export_onnx(model.attrs["name"], settings["quantize"], settings["per_channel"], settings["opset"], settings["keep_float"]))
    width = shim.session().get_outputs()[0].shape[-1]
    if not isinstance(width, int):
        raise ValueError(f"OnnxSentenceEncoder: the ONNX graph of {model.attrs['name']} has no fixed hidden size")
    model.set_dim("nO", width)


def onnx_forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[Floats2d, Callable]:
    """The encoder's vectors, one row per doc (frozen: the backprop returns the docs).

    model (Model): An initialized ``OnnxSentenceEncoder.v1`` layer.
    docs (List[Doc]): The docs.
    is_train (bool): Unused (nothing trains).
    RETURNS (Tuple[Floats2d, Callable]): The vectors and the backprop.
    """
    shim: OnnxShim = model.shims[0]
    if not shim.ready:
        raise ValueError("OnnxSentenceEncoder: the model is not initialized (no ONNX graph)")

    def tokenize(texts: List[str]) -> List[List[int]]:
        return [e.ids for e in shim.tokenizer(model.attrs["max_length"]).encode_batch(texts)]

    def embed(ids: List[List[int]]) -> numpy.ndarray:
        input_ids, mask = pad_ids(ids, shim.pad_id)
        hidden = shim.session().run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
        return pool(hidden, mask, model.attrs["pooling"], model.attrs["normalize"])

    return encode_in_batches(model, docs, tokenize, embed)


__all__ = ["OnnxSentenceEncoder", "OnnxShim"]
