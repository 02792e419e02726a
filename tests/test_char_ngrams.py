"""The hashed character n-gram bag of words: exact n-grams and values, the
registered layer and architecture, and the shipped student (BiLSTM + word
n-grams + char n-grams, summed with thinc's ``add.v1``) trained end to end."""

import math
import subprocess
import sys
import textwrap
from collections import Counter

import numpy
import pytest
import spacy
from spacy.strings import hash_string
from spacy.util import load_config_from_str, load_model_from_config
from thinc.api import fix_random_seed

from spacy_distill.pipeline.char_ngrams import (
    WORD_CACHE_SIZE,
    _word_keys,
    build_char_ngram_bow,
    char_wb_ngrams,
    doc_char_ngram_keys,
    extract_char_ngrams,
)

from .util import SOFT_DATA, blank_xx, soft_examples

# (text, min_n, max_n, lowercase, the n-grams expected, repeats included)
NGRAM_CASES = [
    ("ab", 1, 3, True, [" ", "a", "b", " ", " a", "ab", "b ", " ab", "ab "]),
    ("Ab", 1, 2, False, [" ", "A", "b", " ", " A", "Ab", "b "]),
    ("Ab", 1, 2, True, [" ", "a", "b", " ", " a", "ab", "b "]),
    ("Ab aB", 2, 2, True, [" a", "ab", "b ", " a", "ab", "b "]),
    ("Ab aB", 2, 2, False, [" A", "Ab", "b ", " a", "aB", "B "]),
    # A padded word no longer than n is one n-gram, the whole padded word, and
    # longer n-grams stop there (scikit-learn's char_wb).
    ("a", 2, 4, True, [" a", "a ", " a "]),
    ("a", 4, 5, True, [" a "]),
    ("abc", 3, 5, True, [" ab", "abc", "bc ", " abc", "abc ", " abc "]),
    # Chinese/Japanese: no spaces, so the whole run is one word.
    ("很好吃", 1, 2, True, [" ", "很", "好", "吃", " ", " 很", "很好", "好吃", "吃 "]),
    ("とても良い", 3, 3, True, [" とて", "とても", "ても良", "も良い", "良い "]),
    # Runs of spaces, tabs, newlines and the ideographic space all split words.
    ("x  y\n\nz\t", 2, 2, True, [" x", "x ", " y", "y ", " z", "z "]),
    ("好\u3000吃", 1, 1, True, [" ", "好", " ", " ", "吃", " "]),
    ("", 1, 4, True, []),
    (" \n\t ", 1, 4, True, []),
]


def _ids(case):
    text, min_n, max_n, lowercase, _ = case
    return f"{text!r}-{min_n}-{max_n}-{'lower' if lowercase else 'cased'}"


@pytest.fixture(scope="module")
def nlp_xx():
    return blank_xx()


@pytest.mark.parametrize("case", NGRAM_CASES, ids=[_ids(c) for c in NGRAM_CASES])
def test_char_ngrams_are_exact(case, nlp_xx):
    text, min_n, max_n, lowercase, expected = case
    words = (text.lower() if lowercase else text).split()
    assert [g for w in words for g in char_wb_ngrams(w, min_n, max_n)] == expected
    keys = doc_char_ngram_keys(text, min_n, max_n, lowercase)
    assert keys.dtype == numpy.uint64
    assert Counter(keys.tolist()) == Counter(hash_string(g) for g in expected)
    # Through the layer: each distinct n-gram once, in one doc.
    model = extract_char_ngrams(min_n=min_n, max_n=max_n, lowercase=lowercase)
    (out_keys, vals, lengths), _ = model([nlp_xx.make_doc(text)], is_train=False)
    assert sorted(out_keys.tolist()) == sorted({hash_string(g) for g in expected})
    assert lengths.tolist() == [len(set(expected))]


@pytest.mark.parametrize("case", NGRAM_CASES, ids=[_ids(c) for c in NGRAM_CASES])
def test_char_ngrams_match_scikit_learn_char_wb(case):
    text_mod = pytest.importorskip("sklearn.feature_extraction.text")
    text, min_n, max_n, lowercase, expected = case
    analyzer = text_mod.CountVectorizer(
        analyzer="char_wb", ngram_range=(min_n, max_n), lowercase=lowercase
    ).build_analyzer()
    assert analyzer(text) == expected


def test_values_are_sublinear_counts_l2_normalized(nlp_xx):
    # "Aa a": " aa " and " a " give " " x4 and "a" x3 (unigrams only).
    model = extract_char_ngrams(min_n=1, max_n=1)
    (keys, vals, lengths), backprop = model([nlp_xx.make_doc("Aa a")], is_train=True)
    assert keys.dtype == numpy.uint64 and vals.dtype == numpy.float32 and lengths.dtype == numpy.int32
    raw = {hash_string(" "): 1 + math.log(4), hash_string("a"): 1 + math.log(3)}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    got = dict(zip(keys.tolist(), vals.tolist()))
    assert got == pytest.approx({k: v / norm for k, v in raw.items()}, abs=1e-7)
    assert backprop(numpy.zeros((1, 2), dtype="f")) == []


def test_batch_with_empty_docs_keeps_alignment(nlp_xx):
    texts = ["", "Great product!", " \n ", "とても良い商品です。", "\t", "great product!"]
    model = extract_char_ngrams()
    (keys, vals, lengths), _ = model([nlp_xx.make_doc(t) for t in texts], is_train=False)
    assert lengths.tolist()[0::2] == [0, 0, 0] and all(n > 0 for n in lengths.tolist()[1::2])
    assert len(keys) == len(vals) == int(lengths.sum())
    starts = numpy.concatenate([[0], numpy.cumsum(lengths)])
    per_doc = [(keys[a:b], vals[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    for (doc_keys, doc_vals), text in zip(per_doc, texts):
        alone_keys, alone_vals, _ = model([nlp_xx.make_doc(text)], is_train=False)[0]
        assert doc_keys.tolist() == alone_keys.tolist()
        assert doc_vals.tolist() == alone_vals.tolist()
        if len(doc_vals):
            assert float(numpy.dot(doc_vals, doc_vals)) == pytest.approx(1.0, abs=1e-6)
    # Lowercased: "Great" and "great" give the same doc.
    assert per_doc[1][0].tolist() == per_doc[5][0].tolist()
    (_, _, only_empty), _ = model([nlp_xx.make_doc(""), nlp_xx.make_doc("  ")], is_train=False)
    assert only_empty.tolist() == [0, 0]
    (k0, v0, l0), _ = model([], is_train=False)
    assert (len(k0), len(v0), len(l0)) == (0, 0, 0)


def test_word_keys_are_cached_and_bounded():
    assert _word_keys.cache_info().maxsize == WORD_CACHE_SIZE
    doc_char_ngram_keys("cachedword cachedword", 1, 4)
    hits = _word_keys.cache_info().hits
    doc_char_ngram_keys("cachedword", 1, 4)
    assert _word_keys.cache_info().hits == hits + 1


@pytest.mark.parametrize("min_n,max_n", [(0, 2), (3, 2), (-1, 1)])
def test_invalid_ngram_range_raises(min_n, max_n):
    with pytest.raises(ValueError, match=r"min_n.*max_n"):
        extract_char_ngrams(min_n=min_n, max_n=max_n)
    with pytest.raises(ValueError, match=r"min_n.*max_n"):
        build_char_ngram_bow(exclusive_classes=True, min_n=min_n, max_n=max_n)
    with pytest.raises(ValueError, match="length"):
        build_char_ngram_bow(exclusive_classes=True, length=0)


def test_architecture_mirrors_textcat_bow(nlp_xx):
    model = build_char_ngram_bow(exclusive_classes=False, length=1000, no_output_layer=False, nO=3)
    sparse = model.get_ref("output_layer")
    assert sparse.name == "sparse_linear" and sparse.get_dim("length") == 1024
    assert model.attrs["multi_label"] is True
    docs = [nlp_xx.make_doc(t) for t, _ in SOFT_DATA[:3]] + [nlp_xx.make_doc("")]
    model.initialize(X=docs)
    probs = model.predict(docs)
    assert probs.shape == (4, 3) and ((probs > 0) & (probs < 1)).all()
    model = model.attrs["resize_output"](model, 4)
    assert model.get_dim("nO") == 4 and model.predict(docs).shape == (4, 4)
    assert model.get_ref("output_layer").get_dim("nO") == 4


# The student config we ship: BiLSTM + stock word n-grams + char n-grams, the
# two n-gram models' logits summed by thinc's registered add.v1 (positional
# arguments as `*` blocks).
STUDENT_CHARS_CFG = """
[nlp]
lang = "xx"
pipeline = ["textcat"]

[nlp.tokenizer]
@tokenizers = "spacy-distill.CJKCharTokenizer.v1"

[components]

[components.textcat]
factory = "distill_textcat"

[components.textcat.model]
@architectures = "spacy-distill.BiLSTMTextCat.v3"
depth = 1
dropout = 0.0
pooling = "meanmax"
nO = null

[components.textcat.model.bow]
@layers = "add.v1"

[components.textcat.model.bow.*.words]
@architectures = "spacy.TextCatBOW.v3"
exclusive_classes = true
ngram_size = 2
no_output_layer = true
length = 262144
nO = null

[components.textcat.model.bow.*.chars]
@architectures = "spacy-distill.CharNgramBOW.v1"
exclusive_classes = true
min_n = 1
max_n = 4
length = 1048576
nO = null

[components.textcat.model.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 16
attrs = ["NORM","PREFIX","SUFFIX","SHAPE"]
rows = [5000,2500,2500,2500]
include_static_vectors = false
"""

CHARS_ONLY_CFG = STUDENT_CHARS_CFG.split("[components.textcat.model]")[0] + """
[components.textcat.model]
@architectures = "spacy-distill.CharNgramBOW.v1"
exclusive_classes = true
length = 65536
nO = null
"""

N_UPDATES = 40
# After N_UPDATES on 12 docs, every P(POSITIVE) within this of the teacher's.
OVERFIT_TOL = 0.05


def _build(cfg: str):
    return load_model_from_config(load_config_from_str(cfg), auto_fill=True)


@pytest.fixture(scope="module", params=["chars", "bilstm+words+chars"])
def trained(request):
    nlp = _build(CHARS_ONLY_CFG if request.param == "chars" else STUDENT_CHARS_CFG)
    examples = soft_examples(nlp)
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    # The default Adam (0.001) moves a sparse weight by ~0.04 in 40 steps: too
    # slow for the char-only model to fit in a few dozen updates.
    optimizer.learn_rate = 0.01
    history = [nlp.update(examples, sgd=optimizer)["textcat"] for _ in range(N_UPDATES)]
    return request.param, nlp, history


def test_builds_with_add_and_infers_nO(trained):
    name, nlp, _ = trained
    model = nlp.get_pipe("textcat").model
    assert model.get_dim("nO") == 2
    names = [layer.name for layer in model.walk()]
    assert "extract_char_ngrams" in names
    if name == "bilstm+words+chars":
        bow = model.get_ref("bow")
        assert [layer.name for layer in bow.layers[0].layers] == [
            "with_cpu(extract_ngrams>>resizable(sparse_linear))",
            "with_cpu(extract_char_ngrams>>resizable(sparse_linear))",
        ]
        assert "lstm" in names
        chars = [n for n in model.walk() if n.name == "sparse_linear"][1]
        assert chars.get_dim("length") == 1048576 and chars.get_dim("nO") == 2


def test_overfits_teacher_scores(trained):
    _, nlp, history = trained
    assert history[-1] < history[0] / 10, history
    for text, p in SOFT_DATA:
        assert nlp(text).cats["POSITIVE"] == pytest.approx(p, abs=OVERFIT_TOL), text


def _predict(nlp, texts):
    return nlp.get_pipe("textcat").predict([nlp.make_doc(t) for t in texts])


def test_round_trips_give_identical_predictions(trained, tmp_path):
    _, nlp, _ = trained
    texts = [t for t, _ in SOFT_DATA] + [""]
    expected = _predict(nlp, texts)
    nlp.to_disk(tmp_path / "student")
    loaded = spacy.load(tmp_path / "student")
    numpy.testing.assert_array_equal(_predict(loaded, texts), expected)
    from_bytes = load_model_from_config(nlp.config, auto_fill=True).from_bytes(nlp.to_bytes())
    numpy.testing.assert_array_equal(_predict(from_bytes, texts), expected)


def test_pipe_equals_call_and_handles_empty_docs(trained):
    _, nlp, _ = trained
    texts = [t for t, _ in SOFT_DATA] + ["", "   ", "\n"]
    for text, doc in zip(texts, nlp.pipe(texts, batch_size=5)):
        assert doc.cats == pytest.approx(nlp(text).cats, abs=1e-6), text
        assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
    only_empty = list(nlp.pipe(["", ""]))
    assert only_empty[0].cats == pytest.approx(nlp("").cats, abs=1e-6)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_entry_points_register_without_importing_the_package():
    code = """
    import sys
    import spacy
    from spacy.util import registry
    assert "spacy_distill" not in sys.modules
    layer = registry.resolve({"x": {"@layers": "spacy-distill.extract_char_ngrams.v1", "max_n": 2}})["x"]
    build = registry.architectures.get("spacy-distill.CharNgramBOW.v1")
    assert build.__module__ == "spacy_distill.pipeline.char_ngrams", build.__module__
    (keys, vals, lengths), _ = layer([spacy.blank("en")("ab")], is_train=False)
    print(layer.name, lengths.tolist())
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr
    # " ab ": " ", "a", "b", " a", "ab", "b ".
    assert "extract_char_ngrams [6]" in result.stdout
