"""One-off surgery on the frozen encoder's transformer, for the compressed teachers:
torch dynamic int8 quantization, export to ONNX (optionally int8 by ONNX Runtime),
and writing a loaded transformer back out as a Hugging Face folder.

The registered layers that run the results live in ``teacher/encoders/``
(``quantized.py``, ``onnx.py``); vocabulary and layer pruning in ``teacher/prune.py``;
rebuilding a teacher pipeline around another encoder in ``teacher/compress.py``.

Needs torch and transformers (the teacher extra; ONNX: the ``onnx`` extra). The
student never imports this module.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

#: Weight files of a Hugging Face folder (rewritten, never copied, by the pruning steps).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")


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


# ------------------------------------------------------------------ ONNX export
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
        chmod_shared(tmp)
    return Path(output_dir)


def chmod_shared(folder: Path) -> None:
    """Make a written Hugging Face folder and its files readable by all.

    folder (Path): The folder (its direct files are changed, not subfolders).
    """
    # mkdtemp makes a 0700 folder; the outputs are meant to be shared.
    os.chmod(folder, 0o755)
    for child in folder.iterdir():
        if child.is_file():
            os.chmod(child, 0o644)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy a Hugging Face folder's files other than weights and config (the tokenizer's).

    src (Path): The source folder.
    dst (Path): The folder being written.
    """
    for path in src.iterdir():
        if path.is_file() and path.name not in WEIGHT_FILES and not path.name.endswith((".safetensors", ".bin", ".onnx")):
            shutil.copy2(path, dst / path.name)


__all__ = [
    "WEIGHT_FILES",
    "chmod_shared",
    "copy_tokenizer_files",
    "export_onnx",
    "float_matcher",
    "is_quantized",
    "quantize_transformer",
    "save_hf_folder",
]
