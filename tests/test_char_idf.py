"""Character n-grams weighted by idf (``spacy-distill.extract_char_ngrams.v2``,
``spacy-distill.CharNgramBOW.v2``) and the idf fitted on the training docs
(``spacy-distill.char_ngram_idf.v1``): exact values against scikit-learn, the table
saved and loaded, never trained, empty docs, errors, and a `spacy train` run."""

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.strings import hash_string
from spacy.tokens import DocBin
from spacy.util import registry
from thinc.api import Adam

from spacy_distill.pipeline.char_ngrams import (
    doc_char_ngram_keys,
    extract_char_ngrams,
    extract_char_ngrams_v2,
    fit_char_idf,
    idf_buckets,
)
from spacy_distill.pipeline.weights import create_char_ngram_idf

from .util import (
    SOFT_DATA,
    STUDENT_CHARS_CONFIG,
    assert_fits_soft_data,
    blank_xx,
    soft_examples,
    train,
    write_labelled,
)

TEXTS = ["good good bad", "good", "bad movie", ""]


@pytest.fixture(scope="module")
def nlp_xx():
    return blank_xx()


@pytest.mark.parametrize("rows,expected", [(1, 1), (3, 4), (4, 4), (5, 8), (262144, 262144)])
def test_idf_table_rows_round_up_to_a_power_of_two(rows, expected):
    layer = extract_char_ngrams_v2(idf_rows=rows)
    assert layer.get_param("idf").shape == (expected,)
    assert (layer.get_param("idf") == 1).all()


@pytest.mark.parametrize("min_n,max_n,rows", [(0, 2, 8), (3, 2, 8), (1, 2, 0)])
def test_bad_settings_raise(min_n, max_n, rows):
    with pytest.raises(ValueError):
        extract_char_ngrams_v2(min_n=min_n, max_n=max_n, idf_rows=rows)


def test_unfitted_idf_gives_v1_values(nlp_xx):
    docs = [nlp_xx.make_doc(t) for t in SOFT_DATA[0][0:1] + ("", "とても良い")]
    v1, _ = extract_char_ngrams()(docs, is_train=False)
    v2, _ = extract_char_ngrams_v2()(docs, is_train=False)
    for a, b in zip(v1, v2):
        numpy.testing.assert_array_equal(a, b)


def test_fitted_idf_is_scikit_learns_smoothed_idf():
    # A table as large as 2**20 rows: no two n-grams of these texts share a bucket.
    layer = extract_char_ngrams_v2(min_n=1, max_n=2, idf_rows=2**20)
    assert fit_char_idf(layer, TEXTS) == 4
    idf = layer.get_param("idf")
    n = len(TEXTS)
    for ngram, df in [("g", 2), ("oo", 2), (" b", 2), ("mo", 1), (" ", 3)]:
        key = numpy.asarray([hash_string(ngram)], dtype=numpy.uint64)
        assert idf[idf_buckets(key, len(idf))[0]] == pytest.approx(math.log((1 + n) / (1 + df)) + 1, rel=1e-6), ngram
    # A bucket no n-gram fell in: df 0.
    assert idf.max() == pytest.approx(math.log(1 + n) + 1, rel=1e-6)


def test_values_are_tf_idf_l2_normalized_as_scikit_learn(nlp_xx):
    sklearn = pytest.importorskip("sklearn.feature_extraction.text")
    layer = extract_char_ngrams_v2(min_n=1, max_n=3, idf_rows=2**20)
    fit_char_idf(layer, TEXTS)
    vectorizer = sklearn.TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, lowercase=True)
    matrix = vectorizer.fit_transform(TEXTS)
    vocab = vectorizer.get_feature_names_out()
    for i, text in enumerate(TEXTS):
        (keys, vals, _), _ = layer([nlp_xx.make_doc(text)], is_train=False)
        got = dict(zip(keys.tolist(), vals.tolist()))
        row = matrix[i].tocoo()
        expected = {hash_string(str(vocab[j])): v for j, v in zip(row.col, row.data)}
        assert got == pytest.approx(expected, rel=1e-5), text


def test_no_texts_is_an_error():
    with pytest.raises(ValueError, match="no training texts"):
        fit_char_idf(extract_char_ngrams_v2(), [])


BOW_V2 = {"@architectures": "spacy-distill.CharNgramBOW.v2", "exclusive_classes": True, "length": 16384, "idf_rows": 4096, "nO": None}


def student_v2():
    config = copy.deepcopy(STUDENT_CHARS_CONFIG)
    config["model"]["bow"]["*"]["chars"] = dict(BOW_V2)
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=config)
    return nlp


def _docbin(tmp_path, texts):
    nlp = blank_xx()
    path = tmp_path / "train"
    (path / "part").mkdir(parents=True)
    DocBin(docs=[nlp.make_doc(t) for t in texts]).to_disk(path / "part" / "docs.spacy")
    return path


def _idf(nlp):
    return next(n for n in nlp.get_pipe("distill_textcat").model.walk() if n.name == "extract_char_ngrams").get_param("idf")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    nlp = student_v2()
    examples = soft_examples(nlp)
    path = _docbin(tmp_path_factory.mktemp("idf"), [eg.reference.text for eg in examples])
    losses = train(nlp, examples, n_iter=1)
    create_char_ngram_idf(path, component="distill_textcat")(nlp)
    fitted = _idf(nlp).copy()
    optimizer = Adam(0.01, L2=0.01, L2_is_weight_decay=True)
    for _ in range(60):
        losses = nlp.update(examples, sgd=optimizer)
    return nlp, losses, fitted


def test_callback_fits_the_table_and_training_never_changes_it(trained):
    nlp, losses, fitted = trained
    assert not (fitted == 1).all()
    numpy.testing.assert_array_equal(_idf(nlp), fitted)
    assert_fits_soft_data(nlp, losses)


def test_round_trip_keeps_the_idf_and_the_predictions(trained, tmp_path):
    nlp, _, fitted = trained
    texts = [t for t, _ in SOFT_DATA] + ["", "  "]
    expected = [nlp(t).cats for t in texts]
    nlp.to_disk(tmp_path / "student")
    loaded = spacy.load(tmp_path / "student")
    numpy.testing.assert_array_equal(_idf(loaded), fitted)
    for text, cats, doc in zip(texts, expected, loaded.pipe(texts, batch_size=3)):
        assert doc.cats == pytest.approx(cats, abs=1e-6), text
    other = student_v2()
    other.initialize(lambda: soft_examples(other))
    other.get_pipe("distill_textcat").from_bytes(nlp.get_pipe("distill_textcat").to_bytes())
    numpy.testing.assert_array_equal(_idf(other), fitted)


@pytest.mark.parametrize(
    "setup,component,message",
    [
        (lambda nlp: nlp, "textcat", "has no 'textcat'"),
        (lambda nlp: nlp, "distill_textcat", "no .spacy files"),
    ],
)
def test_callback_names_what_is_missing(tmp_path, setup, component, message):
    nlp = setup(student_v2())
    nlp.initialize(lambda: soft_examples(nlp))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=message):
        create_char_ngram_idf(tmp_path / "empty", component=component)(nlp)


def test_callback_without_a_path_needs_the_configs_train_path():
    nlp = student_v2()
    nlp.initialize(lambda: soft_examples(nlp))
    assert nlp.config["paths"]["train"] is None
    with pytest.raises(ValueError, match=r"no path, and the config has no \[paths\] train"):
        create_char_ngram_idf(component="distill_textcat")(nlp)


def test_callback_refuses_a_model_without_an_idf_layer(tmp_path):
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=STUDENT_CHARS_CONFIG)
    nlp.initialize(lambda: soft_examples(nlp))
    path = _docbin(tmp_path, ["good"])
    with pytest.raises(ValueError, match="no extract_char_ngrams.v2 layer"):
        create_char_ngram_idf(path, component="distill_textcat")(nlp)


def test_keys_match_the_v1_extractor(nlp_xx):
    layer = registry.resolve({"x": {"@layers": "spacy-distill.extract_char_ngrams.v2", "max_n": 2}})["x"]
    (keys, _, lengths), _ = layer([nlp_xx.make_doc("Ab ab")], is_train=False)
    assert keys.tolist() == numpy.unique(doc_char_ngram_keys("Ab ab", 1, 2)).tolist() and lengths.tolist() == [6]


def test_spacy_train_fits_the_idf_from_the_config(tmp_path):
    """`spacy train` (no --code) with CharNgramBOW.v2 and the callback in [initialize.after_init]."""
    from thinc.api import Config

    nlp = blank_xx()
    dev_docs = []
    for text, p in SOFT_DATA:
        gold = nlp.make_doc(text)
        gold.cats = {"POSITIVE": float(p > 0.5), "NEGATIVE": float(p <= 0.5)}
        dev_docs.append(gold)
    write_labelled(tmp_path / "train" / "gold.spacy", SOFT_DATA, lang="en")
    DocBin(docs=dev_docs).to_disk(tmp_path / "dev.spacy")
    config = Config().from_disk(Path(__file__).parent.parent / "configs" / "student.cfg", interpolate=False)
    model = config["components"]["textcat"]["model"]
    # configs/student.cfg is the BiLSTM alone: give it the char block.
    model["bow"] = {**BOW_V2}
    model["embed"]["include_static_vectors"] = False
    config["initialize"]["vectors"] = None
    # No path: the callback reads the config's [paths] train, which --paths.train sets.
    config["initialize"]["after_init"] = {"@callbacks": "spacy-distill.char_ngram_idf.v1", "component": "textcat"}
    config.to_disk(tmp_path / "student.cfg", interpolate=False)
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(tmp_path / "student.cfg"), "--output", str(tmp_path / "out"),
         "--paths.train", str(tmp_path / "train"), "--paths.dev", str(tmp_path / "dev.spacy"),
         "--training.max_steps", "4", "--training.eval_frequency", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = spacy.load(tmp_path / "out" / "model-last")
    idf = next(n for n in trained.get_pipe("textcat").model.walk() if n.name == "extract_char_ngrams").get_param("idf")
    layer = extract_char_ngrams_v2(idf_rows=BOW_V2["idf_rows"])
    fit_char_idf(layer, [text for text, _ in SOFT_DATA])
    numpy.testing.assert_array_equal(idf, layer.get_param("idf"))
