"""The character n-gram block fitted to convergence (``spacy-distill.fit_char_ngrams.v1``):
thinc's hashed rows reproduced exactly, the block's log-odds equal to scikit-learn's
logistic regression, the errors, and a frozen fitted block through `spacy train`."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import DocBin
from thinc.api import Config, SparseLinear_v2

from spacy_distill.pipeline.weights import _char_blocks, create_fit_char_ngrams, hashed_rows

from .util import SOFT_DATA, STUDENT_CHARS_CONFIG, blank_xx, soft_examples, write_labelled

sklearn_linear = pytest.importorskip("sklearn.linear_model")
pytest.importorskip("scipy.sparse")


@pytest.mark.parametrize("key", [0, 1, 12345, 2**40 + 7, 2**64 - 1])
@pytest.mark.parametrize("length", [16, 1000, 2**20])
def test_hashed_rows_are_thincs(key, length):
    layer = SparseLinear_v2(nO=2, length=length)
    layer.initialize()
    # Each weight its own index, so the score names the rows used.
    W = numpy.arange(2 * length, dtype="f")
    layer.set_param("W", W)
    keys = numpy.asarray([key], dtype=numpy.uint64)
    scores = layer.predict((keys, numpy.asarray([1.0], dtype="f"), numpy.asarray([1], dtype="i")))
    r0, r1 = hashed_rows(keys, length)[:, 0]
    assert scores[0, 0] == W[r0] + W[r1]
    assert scores[0, 1] == W[length + r0] + W[length + r1]


def labelled_dir(tmp_path, data=SOFT_DATA, with_scores=True):
    write_labelled(tmp_path / "labelled" / "gold" / "docs.spacy", data if with_scores else [(text, None) for text, _ in data])
    return tmp_path / "labelled"


def chars_student(frozen=True):
    config = copy.deepcopy(STUDENT_CHARS_CONFIG)
    chars = config["model"]["bow"]["*"]["chars"]
    config["model"]["bow"]["*"]["chars"] = {"@layers": "spacy-distill.frozen.v1", "layer": chars} if frozen else chars
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=config)
    nlp.initialize(lambda: soft_examples(nlp))
    return nlp


def test_fitted_block_gives_the_regressions_log_odds(tmp_path):
    nlp = chars_student()
    create_fit_char_ngrams(labelled_dir(tmp_path), component="distill_textcat", C=10.0)(nlp)
    (extractor, linear), = _char_blocks(nlp.get_pipe("distill_textcat").model)
    texts = [text for text, _ in SOFT_DATA] + ["Great, terrible."]
    scores = linear.predict(extractor.predict([nlp.make_doc(t) for t in texts]))
    labels = list(nlp.get_pipe("distill_textcat").labels)
    log_odds = scores[:, labels.index("POSITIVE")] - scores[:, labels.index("NEGATIVE")]
    # The same regression, fitted here on the same design (the block's values in both hashed rows).
    from scipy.sparse import csr_matrix, vstack

    length = linear.get_dim("length")

    def design(batch):
        (keys, values, lengths), _ = extractor([nlp.make_doc(t) for t in batch], is_train=False)
        rows = hashed_rows(numpy.asarray(keys), length)
        owner = numpy.repeat(numpy.arange(len(batch)), lengths)
        return csr_matrix((numpy.r_[values, values], (numpy.r_[owner, owner], numpy.r_[rows[0], rows[1]])), shape=(len(batch), length))

    X = design([text for text, _ in SOFT_DATA])
    p = numpy.asarray([p for _, p in SOFT_DATA])
    reference = sklearn_linear.LogisticRegression(C=10.0, max_iter=2000).fit(
        vstack([X, X]).tocsr(), numpy.r_[numpy.ones(len(p)), numpy.zeros(len(p))], sample_weight=numpy.r_[p, 1 - p]
    )
    numpy.testing.assert_allclose(log_odds, reference.decision_function(design(texts)), rtol=1e-4, atol=1e-4)
    # Fitted on soft labels to convergence: every text on the teacher's side.
    assert ((log_odds[: len(SOFT_DATA)] > 0) == (p > 0.5)).all()


def test_frozen_fitted_block_stays_fitted_while_the_rest_trains(tmp_path):
    from thinc.api import Adam

    nlp = chars_student()
    create_fit_char_ngrams(labelled_dir(tmp_path), component="distill_textcat")(nlp)
    (_, linear), = _char_blocks(nlp.get_pipe("distill_textcat").model)
    fitted = linear.get_param("W").copy()
    examples = soft_examples(nlp)
    optimizer = Adam(0.01, L2=0.01, L2_is_weight_decay=True)
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    numpy.testing.assert_array_equal(linear.get_param("W"), fitted)


@pytest.mark.parametrize(
    "make,component,path,message",
    [
        (chars_student, "textcat", "dir", "has no 'textcat'"),
        (chars_student, "distill_textcat", None, r"no path, and the config has no \[paths\] train"),
        (chars_student, "distill_textcat", "empty", "no .spacy files"),
        (chars_student, "distill_textcat", "unlabelled", r"docs\.spacy, doc 0 has no teacher scores"),
    ],
)
def test_callback_names_what_is_wrong(tmp_path, make, component, path, message):
    nlp = make()
    paths = {
        "dir": labelled_dir(tmp_path / "a"),
        "empty": tmp_path / "empty",
        "unlabelled": labelled_dir(tmp_path / "b", with_scores=False),
        None: None,
    }
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=message):
        create_fit_char_ngrams(paths[path], component=component)(nlp)


def test_callback_refuses_other_labels_and_models_without_the_block(tmp_path):
    nlp = blank_xx()
    config = copy.deepcopy(STUDENT_CHARS_CONFIG)
    config["model"]["bow"] = None
    nlp.add_pipe("distill_textcat", config=config)
    nlp.initialize(lambda: soft_examples(nlp))
    with pytest.raises(ValueError, match="no character n-gram block"):
        create_fit_char_ngrams(labelled_dir(tmp_path), component="distill_textcat")(nlp)
    other = blank_xx()
    other.add_pipe("distill_textcat", config=STUDENT_CHARS_CONFIG).add_label("MAYBE")
    with pytest.raises(ValueError, match="needs the labels NEGATIVE and POSITIVE"):
        create_fit_char_ngrams(labelled_dir(tmp_path / "c"), component="distill_textcat")(other)


def test_spacy_train_fits_and_keeps_the_block(tmp_path):
    """`spacy train` (no --code): the callback reads [paths] train; the saved block is the fit."""
    train = labelled_dir(tmp_path)
    nlp = blank_xx()
    dev = []
    for text, p in SOFT_DATA:
        doc = nlp.make_doc(text)
        doc.cats = {"POSITIVE": float(p > 0.5), "NEGATIVE": float(p <= 0.5)}
        doc.user_data["lang"] = "en"
        dev.append(doc)
    DocBin(docs=dev, store_user_data=True).to_disk(tmp_path / "dev.spacy")
    config = Config().from_disk(Path(__file__).parent.parent / "configs" / "student.cfg", interpolate=False)
    model = config["components"]["textcat"]["model"]
    chars = {"@architectures": "spacy-distill.CharNgramBOW.v1", "exclusive_classes": True, "length": 4096, "nO": None}
    # configs/student.cfg is the BiLSTM alone: give it the (frozen) char block.
    model["bow"] = {"@layers": "spacy-distill.frozen.v1", "layer": chars}
    model["embed"]["include_static_vectors"] = False
    config["initialize"]["vectors"] = None
    config["initialize"]["after_init"] = {"@callbacks": "spacy-distill.fit_char_ngrams.v1", "component": "textcat", "C": 10.0}
    config.to_disk(tmp_path / "student.cfg", interpolate=False)
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(tmp_path / "student.cfg"), "--output", str(tmp_path / "out"),
         "--paths.train", str(train), "--paths.dev", str(tmp_path / "dev.spacy"),
         "--training.max_steps", "6", "--training.eval_frequency", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = spacy.load(tmp_path / "out" / "model-last")
    (_, linear), = _char_blocks(trained.get_pipe("textcat").model)
    reference = blank_xx()
    reference.add_pipe("distill_textcat", config={"model": {**STUDENT_CHARS_CONFIG["model"], "bow": {"@layers": "spacy-distill.frozen.v1", "layer": chars}}})
    reference.initialize(lambda: soft_examples(reference))
    create_fit_char_ngrams(train, component="distill_textcat", C=10.0)(reference)
    (_, expected), = _char_blocks(reference.get_pipe("distill_textcat").model)
    numpy.testing.assert_allclose(linear.get_param("W"), expected.get_param("W"), atol=1e-6)
