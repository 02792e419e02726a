"""Compressing the frozen-encoder teacher (``SentenceEncoder.v1`` + ``EncoderTextCat.v1``):
quantization, vocabulary pruning and layer pruning, so the three ways to make a
transformer affordable (quantization, pruning, distillation) can be compared on
the same reviews (``scripts/compress_teacher.py``, docs/compression.md).

* :func:`QuantizedSentenceEncoder` (``spacy-distill.QuantizedSentenceEncoder.v1``):
  ``SentenceEncoder.v1`` whose transformer is quantized with torch's own dynamic
  quantization (``torch.ao.quantization.quantize_dynamic``): int8 ``nn.Linear``
  weights (activations quantized on the fly) and, optionally, 8-bit word-embedding
  rows. The int8 weights are what the pipeline stores.
* :func:`OnnxSentenceEncoder` (``spacy-distill.OnnxSentenceEncoder.v1``): the same
  encoder exported to ONNX and run by ONNX Runtime, optionally int8
  (``onnxruntime.quantization.quantize_dynamic``). The pipeline stores the ONNX
  graph and the fast tokenizer; at run time the encoder calls only onnxruntime and
  tokenizers (torch is needed to export it).
* :func:`prune_vocab`: keep only the pieces a corpus uses (plus special pieces and
  the single characters that occur) and slice the embedding matrix to match.
* :func:`prune_layers`: keep the bottom ``k`` transformer layers.
* :func:`rebuild_with_encoder`: a copy of a teacher pipeline with another encoder
  and the same head.

Needs torch and transformers (the teacher extra; ONNX Runtime: the ``onnx``
extra). The student never imports this module.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import load_model_from_config, registry
from thinc.api import Model
from thinc.shims import Shim
from thinc.types import Floats2d

from .encoder import (
    POOLINGS,
    SentenceEncoder,
    encoder_forward,
    encoder_init,
    length_batches,
)

#: Weight files of a Hugging Face folder (rewritten, never copied, by the pruning steps).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")
#: SentencePiece's visible space marker (Metaspace pre-tokenizer).
META = "\u2581"


# ------------------------------------------------------------------ torch int8
def float_matcher(keep_float: Optional[Sequence[str]]) -> Callable[[str], bool]:
    """A test of module names against ``keep_float`` regexes, each matching a whole name.

    keep_float (Optional[Sequence[str]]): Regexes, e.g. ``encoder\\.layer\\.\\d+\\.output\\.dense``.
    RETURNS (Callable[[str], bool]): True for a module that stays float.
    """
    patterns = []
    for pattern in keep_float or ():
        try:
            patterns.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"keep_float: {pattern!r} is not a regular expression ({err})") from None
    return lambda name: any(p.fullmatch(name) for p in patterns)


def quantize_transformer(
    transformer: Any, linear: bool = True, embeddings: bool = True, per_channel: bool = True, keep_float: Optional[Sequence[str]] = None
) -> Any:
    """Dynamically quantize a Hugging Face transformer in place.

    ``nn.Linear`` weights become int8 (activations are quantized per batch at run
    time); the word-embedding matrix (most of a multilingual model's parameters)
    becomes 8-bit rows with a float scale and offset each. Position and
    token-type embeddings stay float: HF passes them non-contiguous index
    tensors, which the quantized embedding kernel rejects, and they are small.

    transformer (Any): A ``transformers`` ``PreTrainedModel``.
    linear (bool): Quantize the ``nn.Linear`` layers to int8.
    embeddings (bool): Quantize the word embeddings to 8 bits per value.
    per_channel (bool): One int8 scale per output row of each linear weight
        (closer to float than one scale per matrix; measured on the teacher's
        dev texts: min cosine to the float vectors 0.979 vs 0.962).
    keep_float (Optional[Sequence[str]]): Regexes of linear-layer names (whole
        names) that stay float, e.g. ``encoder\\.layer\\.\\d+\\.output\\.dense`` (BERT's feed-forward output,
        whose GELU inputs have outliers that 8-bit activations clip).
    RETURNS (Any): The same module, quantized.
    """
    import torch
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    if not (linear or embeddings):
        raise ValueError("quantize_transformer: nothing to quantize (linear and embeddings are both false)")
    spec: Dict[Any, Any] = {}
    if linear:
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        is_float = float_matcher(keep_float)
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and not is_float(name):
                spec[name] = qconfig
    if embeddings:
        name = _word_embeddings_name(transformer)
        spec[name] = float_qparams_weight_only_qconfig
    transformer.eval()
    return quantize_dynamic(transformer, spec, inplace=True)


def _word_embeddings_name(transformer: Any) -> str:
    target = transformer.get_input_embeddings()
    for name, module in transformer.named_modules():
        if module is target:
            return name
    raise ValueError(f"quantize_transformer: {type(transformer).__name__} has no word-embedding module")


def is_quantized(transformer: Any) -> bool:
    """Whether a module holds any dynamically quantized submodule.

    transformer (Any): A torch module.
    RETURNS (bool): True once :func:`quantize_transformer` has run on it.
    """
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in transformer.modules())


class QuantizingAutoModel:
    """``model_cls`` for spacy-transformers' ``HFShim``: ``HFShim.from_bytes`` builds
    the model from its config and loads the saved state dict into it; a quantized
    state dict needs the quantized module structure, so it is built here first.

    settings (Dict[str, Any]): Keyword arguments of :func:`quantize_transformer`.
    """

    def __init__(self, settings: Dict[str, Any]) -> None:
        self.settings = dict(settings)

    def from_config(self, config: Any) -> Any:
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
    base = SentenceEncoder(name, prefix, pooling, normalize, max_length, max_batch_tokens, tokenizer_config, transformer_config)
    settings = {"linear": linear, "embeddings": embeddings, "per_channel": per_channel, "keep_float": list(keep_float or [])}
    shim = base.shims[0]
    shim.model_cls = QuantizingAutoModel(settings)
    # The settings are attrs so that cached encoder outputs (train_teacher.encode)
    # are keyed by them too.
    return Model("quantized_sentence_encoder", encoder_forward, init=quantized_encoder_init, shims=[shim], dims={"nO": None}, attrs={**base.attrs, "quantize": settings})


def quantized_encoder_init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    encoder_init(model, X, Y)
    transformer = model.shims[0]._hfmodel.transformer
    # Loaded from disk, the transformer is already quantized (QuantizingAutoModel).
    if not is_quantized(transformer):
        quantize_transformer(transformer, **model.attrs["quantize"])


# ------------------------------------------------------------------ ONNX Runtime
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
        return self.onnx is not None

    def set(self, onnx: bytes, tokenizer_json: str, pad_id: int) -> None:
        self.onnx, self.tokenizer_json, self.pad_id = onnx, tokenizer_json, int(pad_id)
        self._session = self._tokenizer = None

    def session(self) -> Any:
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
        import srsly

        msg = {"onnx": self.onnx, "tokenizer": self.tokenizer_json, "pad_id": self.pad_id} if self.ready else {}
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, data: bytes) -> "OnnxShim":
        import srsly

        msg = srsly.msgpack_loads(data)
        if msg:
            self.set(msg["onnx"], msg["tokenizer"], msg["pad_id"])
        return self

    def to_device(self, device_type: str, device_id: int) -> None:
        if device_type != "cpu":
            raise ValueError("OnnxSentenceEncoder runs on the CPU only")

    def finish_update(self, optimizer: Any) -> None:
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
    if pooling not in POOLINGS:
        raise ValueError(f"OnnxSentenceEncoder: pooling must be one of {POOLINGS}, got {pooling!r}")
    if max_length < 8 or max_batch_tokens < max_length:
        raise ValueError(f"OnnxSentenceEncoder: need max_length >= 8 and max_batch_tokens >= max_length, got {max_length} and {max_batch_tokens}")
    if threads < 0:
        raise ValueError(f"OnnxSentenceEncoder: threads must be >= 0, got {threads}")
    float_matcher(keep_float)
    attrs = {
        "name": name,
        "prefix": prefix,
        "pooling": pooling,
        "normalize": normalize,
        "max_length": max_length,
        "max_batch_tokens": max_batch_tokens,
        "onnx": {"quantize": quantize, "per_channel": per_channel, "keep_float": list(keep_float or []), "opset": opset},
    }
    return Model("onnx_sentence_encoder", onnx_forward, init=onnx_init, shims=[OnnxShim(threads, spin)], dims={"nO": None}, attrs=attrs)


def onnx_init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    shim: OnnxShim = model.shims[0]
    if not shim.ready:
        settings = model.attrs["onnx"]
        shim.set(*export_onnx(model.attrs["name"], settings["quantize"], settings["per_channel"], settings["opset"], settings["keep_float"]))
    width = shim.session().get_outputs()[0].shape[-1]
    if not isinstance(width, int):
        raise ValueError(f"OnnxSentenceEncoder: the ONNX graph of {model.attrs['name']} has no fixed hidden size")
    model.set_dim("nO", width)


def export_onnx(name: str, quantize: bool = True, per_channel: bool = True, opset: int = 17, keep_float: Optional[Sequence[str]] = None) -> Tuple[bytes, str, int]:
    """Export a Hugging Face encoder to ONNX (int8 if ``quantize``).

    name (str): A Hugging Face model name or local folder.
    quantize (bool): ONNX Runtime dynamic int8 quantization.
    per_channel (bool): One scale per output channel.
    opset (int): ONNX opset.
    keep_float (Optional[Sequence[str]]): Regexes of module names whose nodes are
        not quantized.
    RETURNS (Tuple[bytes, str, int]): The ONNX model, the tokenizer.json text and the pad id.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if not tokenizer.is_fast:
        raise ValueError(f"OnnxSentenceEncoder: {name} has no fast tokenizer (tokenizer.json)")
    transformer = AutoModel.from_pretrained(name).eval()

    class _Encoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.onnx"
        ids = torch.ones((2, 8), dtype=torch.long)
        axes = {0: "batch", 1: "pieces"}
        with torch.no_grad():
            # The TorchScript exporter (dynamo=False): it needs no extra packages and
            # handles HF's attention-mask code with dynamic batch and length.
            torch.onnx.export(
                _Encoder(transformer),
                (ids, torch.ones_like(ids)),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                opset_version=opset,
                dynamo=False,
            )
        if quantize:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # The exporter names nodes by module scope: "/inner/encoder/layer.3/output/
            # dense/MatMul" belongs to module "encoder.layer.3.output.dense".
            is_float = float_matcher(keep_float)
            graph = onnx.load(str(path), load_external_data=False).graph
            excluded = [n.name for n in graph.node if is_float(".".join(n.name.strip("/").split("/")[1:-1]))]
            qpath = Path(tmp) / "encoder-int8.onnx"
            quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_exclude=excluded)
            path = qpath
        data = path.read_bytes()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return data, tokenizer.backend_tokenizer.to_str(), pad_id


def onnx_forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[Floats2d, Callable]:
    shim: OnnxShim = model.shims[0]
    if not shim.ready:
        raise ValueError("OnnxSentenceEncoder: the model is not initialized (no ONNX graph)")
    output = model.ops.alloc2f(len(docs), model.get_dim("nO"))
    if docs:
        tokenizer = shim.tokenizer(model.attrs["max_length"])
        session = shim.session()
        ids = [e.ids for e in tokenizer.encode_batch([model.attrs["prefix"] + doc.text for doc in docs])]
        for batch in length_batches([len(x) for x in ids], model.attrs["max_batch_tokens"]):
            n = max(len(ids[i]) for i in batch)
            input_ids = numpy.full((len(batch), n), shim.pad_id, dtype=numpy.int64)
            mask = numpy.zeros((len(batch), n), dtype=numpy.int64)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            hidden = session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
            output[batch] = model.ops.asarray2f(pool(hidden, mask, model.attrs["pooling"], model.attrs["normalize"]))

    def backprop(dY: Floats2d) -> List[Doc]:
        return docs

    return output, backprop


def pool(hidden: numpy.ndarray, mask: numpy.ndarray, pooling: str, normalize: bool) -> numpy.ndarray:
    """Sentence vectors from hidden states, as ``SentenceEncoder.v1`` computes them.

    hidden (numpy.ndarray): (batch, pieces, width).
    mask (numpy.ndarray): (batch, pieces), 1 for real pieces.
    pooling (str): "mean" (over the mask) or "cls" (first piece).
    normalize (bool): L2-normalise.
    RETURNS (numpy.ndarray): (batch, width) float32.
    """
    if pooling == "cls":
        vectors = hidden[:, 0]
    else:
        m = mask[..., None].astype(hidden.dtype)
        vectors = (hidden * m).sum(axis=1) / numpy.maximum(m.sum(axis=1), 1.0)
    if normalize:
        vectors = vectors / numpy.maximum(numpy.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return vectors.astype("float32")


# ------------------------------------------------------------------ HF folders
def save_hf_folder(hf: Any, output_dir: Path) -> Path:
    """Write a loaded transformer and its tokenizer as a Hugging Face folder.

    hf (Any): spacy-transformers ``HFObjects`` (from an encoder's ``HFShim``).
    output_dir (Path): The folder to create (written atomically).
    RETURNS (Path): ``output_dir``.
    """
    from ..io import atomic_path

    if hf.transformer is None:
        raise ValueError("save_hf_folder: the encoder is not initialized")
    if is_quantized(hf.transformer):
        raise ValueError("save_hf_folder: the transformer is quantized; export the float teacher")
    with atomic_path(Path(output_dir), is_dir=True) as tmp:
        hf.transformer.save_pretrained(str(tmp))
        tokenizer = hf.tokenizer
        if hasattr(tokenizer, "vocab_file") and hf.vocab_file_contents:
            # As HFShim.to_bytes: the slow tokenizer's vocab file lives only in the
            # pipeline's bytes; save_pretrained copies it from tokenizer.vocab_file.
            with tempfile.TemporaryDirectory() as vocab_dir:
                vocab = Path(vocab_dir) / tokenizer.vocab_files_names["vocab_file"]
                vocab.write_bytes(hf.vocab_file_contents)
                tokenizer.vocab_file = str(vocab)
                tokenizer.save_pretrained(str(tmp))
        else:
            tokenizer.save_pretrained(str(tmp))
        _chmod_shared(tmp)
    return Path(output_dir)


def _chmod_shared(folder: Path) -> None:
    # mkdtemp makes a 0700 folder; the outputs are meant to be shared.
    os.chmod(folder, 0o755)
    for child in folder.iterdir():
        if child.is_file():
            os.chmod(child, 0o644)


def _copy_tokenizer_files(src: Path, dst: Path) -> None:
    for path in src.iterdir():
        if path.is_file() and path.name not in WEIGHT_FILES and not path.name.endswith((".safetensors", ".bin", ".onnx")):
            shutil.copy2(path, dst / path.name)


def prune_layers(src: Path, output_dir: Path, keep: int) -> Dict[str, Any]:
    """Keep the bottom ``keep`` layers of a BERT-style encoder (structured pruning).

    The embeddings and the kept layers are unchanged, so the pruned model's output
    is the full model's hidden state after layer ``keep``; a head trained on the
    full model's output needs re-training (``scripts/compress_teacher.py``).

    src (Path): A Hugging Face folder.
    output_dir (Path): The pruned folder (written atomically).
    keep (int): Layers to keep, 1 .. the model's layer count.
    RETURNS (Dict[str, Any]): layers_before, layers_after, params_before, params_after.
    """
    import torch
    from transformers import AutoModel

    from ..io import atomic_path

    src = Path(src)
    model = AutoModel.from_pretrained(str(src))
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{src}: prune_layers needs a BERT-style model with encoder.layer ({type(model).__name__} has none)")
    n = len(layers)
    if not 1 <= keep <= n:
        raise ValueError(f"{src}: cannot keep {keep} of {n} layers (keep must be 1..{n})")
    before = sum(p.numel() for p in model.parameters())
    encoder.layer = torch.nn.ModuleList(list(layers)[:keep])
    model.config.num_hidden_layers = keep
    with atomic_path(Path(output_dir), is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        _copy_tokenizer_files(src, tmp)
        _chmod_shared(tmp)
    return {"layers_before": n, "layers_after": keep, "params_before": before, "params_after": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------ vocabulary pruning
def prune_vocab(src: Path, output_dir: Path, texts: Iterable[str], prefix: str = "", batch_size: int = 1000) -> Dict[str, Any]:
    """Keep only the pieces that ``texts`` use, and slice the embedding matrix to match.

    Kept: every piece the tokenizer produces for ``prefix + text`` (no truncation),
    the special pieces, every single-character piece whose character occurs in the
    normalized texts (for WordPiece also its ``##`` form), and, for Unigram, the
    lowest-scoring piece (the unknown-piece penalty is the minimum score minus 10,
    so keeping it keeps that penalty). Kept pieces keep their order; ids are
    renumbered.

    Outputs: for a text whose segmentation uses only kept pieces (every text
    of ``texts``), the pruned tokenizer yields the same pieces (checked here for
    all of ``texts``) and the model the same vectors: a Unigram's best
    segmentation over a subset of pieces that contains the full vocabulary's best
    is that one, and WordPiece's greedy longest match finds the same pieces. Other
    texts fall back: Unigram re-segments a word into the kept pieces with the best
    score, down to single characters; a character with no kept piece becomes
    ``<unk>`` (a run of them one ``<unk>``). WordPiece splits a word into the
    longest kept pieces, down to characters; a word it cannot split becomes
    ``[UNK]`` as a whole.

    src (Path): A Hugging Face folder with a fast tokenizer (``tokenizer.json``,
        Unigram or WordPiece).
    output_dir (Path): The pruned folder (written atomically).
    texts (Iterable[str]): The corpus whose pieces are kept (never test texts).
    prefix (str): The encoder's prefix (its pieces are kept too).
    batch_size (int): Texts per tokenizer call.
    RETURNS (Dict[str, Any]): Counts (texts, pieces before/after, kept by reason).
    """
    from tokenizers import Tokenizer

    from ..io import atomic_path

    src = Path(src)
    tok_path = src / "tokenizer.json"
    if not tok_path.is_file():
        raise ValueError(f"{tok_path}: no such file (vocabulary pruning needs a fast tokenizer)")
    spec = json.loads(tok_path.read_text(encoding="utf8"))
    kind = spec.get("model", {}).get("type")
    if kind not in ("Unigram", "WordPiece"):
        raise ValueError(f"{tok_path}: model.type {kind!r} is not supported (Unigram or WordPiece)")
    tokenizer = Tokenizer.from_file(str(tok_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if kind == "Unigram":
        pieces = [p for p, _ in spec["model"]["vocab"]]
        scores = [float(s) for _, s in spec["model"]["vocab"]]
    else:
        pieces = [""] * len(spec["model"]["vocab"])
        for piece, i in spec["model"]["vocab"].items():
            pieces[i] = piece
    used: set = set()
    chars: set = set()
    n_texts = 0
    originals: List[List[int]] = []
    batches: List[List[str]] = []
    batch: List[str] = []
    for text in texts:
        batch.append(prefix + text)
        if len(batch) >= batch_size:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    for batch in batches:
        n_texts += len(batch)
        for encoding in tokenizer.encode_batch(batch):
            used.update(encoding.ids)
            originals.append(encoding.ids)
        for text in batch:
            chars.update(tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer else text)
    if not n_texts:
        raise ValueError(f"{src}: prune_vocab got no texts")
    index = {p: i for i, p in enumerate(pieces)}
    special = {t["id"] for t in spec.get("added_tokens", [])}
    if kind == "Unigram":
        special.add(int(spec["model"]["unk_id"]))
        special.add(min(range(len(scores)), key=scores.__getitem__))
        char_pieces = {index[c] for c in chars | {META} if c in index}
    else:
        special.add(index[spec["model"]["unk_token"]])
        cont = spec["model"].get("continuing_subword_prefix", "##")
        char_pieces = {index[p] for c in chars for p in (c, cont + c) if p in index}
    kept = sorted(used | special | char_pieces)
    remap = {old: new for new, old in enumerate(kept)}
    new_spec = _remap_tokenizer_spec(spec, kept, remap, tok_path)

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(src))
    old_emb = model.get_input_embeddings()
    if old_emb.weight.shape[0] < len(pieces):
        raise ValueError(f"{src}: the embedding matrix has {old_emb.weight.shape[0]} rows for {len(pieces)} pieces")
    pad = model.config.pad_token_id
    new_emb = torch.nn.Embedding(len(kept), old_emb.weight.shape[1], padding_idx=remap.get(pad) if pad is not None else None)
    with torch.no_grad():
        new_emb.weight.copy_(old_emb.weight[torch.tensor(kept, dtype=torch.long)])
    model.set_input_embeddings(new_emb)
    model.config.vocab_size = len(kept)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int):
            if value not in remap:
                raise ValueError(f"{src}/config.json: {attr} {value} is not a kept piece")
            setattr(model.config, attr, remap[value])

    with atomic_path(Path(output_dir), is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        _copy_tokenizer_files(src, tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(new_spec, ensure_ascii=False), encoding="utf8")
        _rewrite_tokenizer_config(tmp / "tokenizer_config.json", remap)
        new_pieces = [pieces[i] for i in kept]
        if (tmp / "sentencepiece.bpe.model").exists():
            (tmp / "sentencepiece.bpe.model").write_bytes(_sentencepiece_model(new_pieces, [scores[i] for i in kept], tok_path))
        if (tmp / "vocab.txt").exists():
            (tmp / "vocab.txt").write_text("".join(p + "\n" for p in new_pieces), encoding="utf8")
        # Every corpus text must be segmented as before (else the pruned teacher
        # would not be the teacher on its own training data).
        pruned = Tokenizer.from_file(str(tmp / "tokenizer.json"))
        pruned.no_padding()
        pruned.no_truncation()
        start = 0
        for batch in batches:
            for j, encoding in enumerate(pruned.encode_batch(batch)):
                expected = [remap[i] for i in originals[start + j]]
                if encoding.ids != expected:
                    raise RuntimeError(f"prune_vocab: {batch[j][:60]!r} is segmented differently after pruning")
            start += len(batch)
        _chmod_shared(tmp)
    return {
        "tokenizer": kind,
        "texts": n_texts,
        "pieces_before": len(pieces),
        "embedding_rows_before": int(old_emb.weight.shape[0]),
        "pieces_after": len(kept),
        "pieces_used": len(used),
        "single_char_pieces": len(char_pieces - used),
        "special_pieces": len(special - used - char_pieces),
    }


def _remap_tokenizer_spec(spec: Dict[str, Any], kept: List[int], remap: Dict[int, int], path: Path) -> Dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept]
        model["unk_id"] = remap[int(model["unk_id"])]
    else:
        by_id = {i: p for p, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for new, old in enumerate(kept)}
    for token in spec.get("added_tokens", []):
        token["id"] = remap[token["id"]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = remap[spec["padding"]["pad_id"]]
    _remap_processor(spec.get("post_processor"), remap, path)
    return spec


def _remap_processor(proc: Optional[Dict[str, Any]], remap: Dict[int, int], path: Path) -> None:
    if not proc:
        return
    kind = proc.get("type")
    if kind == "Sequence":
        for inner in proc.get("processors", []):
            _remap_processor(inner, remap, path)
    elif kind == "TemplateProcessing":
        for token in proc.get("special_tokens", {}).values():
            token["ids"] = [remap[i] for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], remap[proc[key][1]]]
    elif kind != "ByteLevel":
        raise ValueError(f"{path}: post_processor type {kind!r} is not supported by vocabulary pruning")


def _rewrite_tokenizer_config(path: Path, remap: Dict[int, int]) -> None:
    if not path.exists():
        return
    config = json.loads(path.read_text(encoding="utf8"))
    decoder = config.get("added_tokens_decoder")
    if decoder:
        config["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in decoder.items()}
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf8")


def _sentencepiece_model(pieces: List[str], scores: List[float], path: Path) -> bytes:
    from .e5 import E5Tokenizer, build_sentencepiece_model

    # build_sentencepiece_model writes XLM-R's fairseq layout: <s> <pad> </s> <unk>
    # first, <mask> last.
    if pieces[:4] != ["<s>", "<pad>", "</s>", "<unk>"] or pieces[-1] != "<mask>":
        raise ValueError(f"{path}: a sentencepiece.bpe.model is only rewritten for XLM-R's layout (<s> <pad> </s> <unk> ... <mask>)")
    tok = E5Tokenizer(pieces, numpy.asarray(scores, dtype="float32"), bos=0, eos=2, pad=1, unk=3, norm_map={})
    return build_sentencepiece_model(tok)


# ------------------------------------------------------------------ pipelines
def encoder_of(nlp: Language) -> Model:
    """The encoder layer of a teacher pipeline (``textcat`` with ``EncoderTextCat.v1``).

    nlp (Language): The pipeline.
    RETURNS (Model): The encoder (``get_ref("encoder")``).
    """
    if "textcat" not in nlp.pipe_names:
        raise ValueError(f"the pipeline has no 'textcat' component (components: {nlp.pipe_names})")
    model = nlp.get_pipe("textcat").model
    if not model.has_ref("encoder") or not model.has_ref("head"):
        raise ValueError("the textcat model is not an encoder + head (spacy-distill.EncoderTextCat.v1)")
    return model.get_ref("encoder")


def rebuild_with_encoder(source: Language, encoder: Dict[str, Any], sample: List[str], head_from: Optional[Language] = None) -> Language:
    """A copy of a teacher pipeline with another encoder and the same head.

    The new encoder is initialized from its config (``name`` = a HF folder), so
    the head must have been trained on the vectors it produces, or ones close to
    them (a quantized or vocabulary-pruned encoder: the same model).

    source (Language): The teacher pipeline (config, labels, meta).
    encoder (Dict[str, Any]): The new ``[components.textcat.model.encoder]`` block.
    sample (List[str]): A few texts for shape inference at initialization.
    head_from (Optional[Language]): Take the head weights from this pipeline
        instead of ``source`` (same labels).
    RETURNS (Language): The new pipeline, initialized.
    """
    head_source = head_from if head_from is not None else source
    encoder_of(source)
    encoder_of(head_source)
    labels = list(head_source.get_pipe("textcat").labels)
    config = source.config.copy()
    config["components"]["textcat"]["model"]["encoder"] = dict(encoder)
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    if not sample:
        raise ValueError("rebuild_with_encoder: need at least one sample text")
    examples = [Example.from_dict(nlp.make_doc(text), {"cats": {label: float(i == j % len(labels)) for i, label in enumerate(labels)}}) for j, text in enumerate(sample)]
    nlp.initialize(lambda: examples)
    textcat = nlp.get_pipe("textcat")
    if list(textcat.labels) != labels:
        raise ValueError(f"rebuild_with_encoder: labels {list(textcat.labels)} != the head's {labels}")
    textcat.model.get_ref("head").from_bytes(head_source.get_pipe("textcat").model.get_ref("head").to_bytes())
    return nlp


__all__ = [
    "OnnxSentenceEncoder",
    "QuantizedSentenceEncoder",
    "encoder_of",
    "export_onnx",
    "is_quantized",
    "pool",
    "prune_layers",
    "prune_vocab",
    "quantize_transformer",
    "rebuild_with_encoder",
    "save_hf_folder",
]
