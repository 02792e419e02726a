"""The student's linear blocks fitted jointly (``spacy-distill.fit_linear_blocks.v1``): the
blocks' summed log-odds equal scikit-learn's logistic regression over [char features | scale x
mean vector], on the teacher's labels as the student's reader corrects them; errors; and the
fold of the fitted blocks into the student (``spacy-distill.fold_linear_mix.v1``)."""

import copy
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy
import pytest
import spacy
from scipy.sparse import csr_matrix, hstack, vstack
from spacy.language import Language
from spacy.tokens import DocBin

from spacy_distill.pipeline.mix import (
    create_fold_char_mix,
    create_fold_linear_mix,
    create_init_logit_mix,
)
from spacy_distill.pipeline.readers import create_teacher_labelled_reader_v2
from spacy_distill.pipeline.teacher_scores import get_teacher_probs
from spacy_distill.pipeline.weights import (
    _char_blocks,
    _mean_vector_blocks,
    create_fit_linear_blocks,
    create_fit_linear_blocks_v2,
    hashed_design,
)

from .test_mean_vectors import with_vectors
from .util import SOFT_DATA, STUDENT_CHARS_CONFIG, blank_xx, soft_examples, train, write_labelled

sklearn_linear = pytest.importorskip("sklearn.linear_model")

CHARS = {**STUDENT_CHARS_CONFIG["model"]["bow"]["*"]["chars"], "no_output_layer": True}
VECTORS = {"@architectures": "spacy-distill.MeanVectorsBOW.v1", "nO": None}
BLOCKS = {"chars": {"chars": CHARS}, "vectors": {"vectors": VECTORS}, "both": {"chars": CHARS, "vectors": VECTORS}}
# The student with its mean-vectors block (configs/student.cfg's shape, small).
STUDENT = copy.deepcopy(STUDENT_CHARS_CONFIG)
STUDENT["model"]["bow"]["*"]["vectors"] = VECTORS
TEXTS = [text for text, _ in SOFT_DATA]


def linear_model(blocks: str) -> Dict[str, Any]:
    """configs/student_chars.cfg's model, small: the chosen blocks alone, summed."""
    parts = copy.deepcopy(BLOCKS[blocks])
    bow = {"@layers": "add.v1", "*": parts} if len(parts) > 1 else next(iter(parts.values()))
    return {"model": {"@architectures": "spacy-distill.NgramTextCat.v1", "bow": bow}}


def pipeline(config: Dict[str, Any]) -> Language:
    nlp = with_vectors(blank_xx())
    nlp.add_pipe("distill_textcat", name="textcat", config=copy.deepcopy(config))
    nlp.initialize(lambda: soft_examples(nlp))
    return nlp


def labelled(root: Path, data=SOFT_DATA, part: str = "transfer") -> Path:
    """A labelled corpus of one part: the teacher's scores, no gold cats (the prior is corrected)."""
    write_labelled(root / part / "docs.spacy", data, logits=True, lang="en")
    return root


def log_odds(nlp: Language, texts: List[str]) -> numpy.ndarray:
    pipe = nlp.get_pipe("textcat")
    scores = pipe.model.predict([nlp.make_doc(t) for t in texts])
    labels = list(pipe.labels)
    return numpy.asarray(scores[:, labels.index("POSITIVE")] - scores[:, labels.index("NEGATIVE")])


def reference(nlp: Language, p: numpy.ndarray, texts: List[str], scale: float, train_texts: List[str] = TEXTS) -> Tuple[Any, Any]:
    """scikit-learn's regression over the blocks' features of ``train_texts``, and its decision function on ``texts``."""
    model = nlp.get_pipe("textcat").model
    chars, vectors = _char_blocks(model), _mean_vector_blocks(model)

    def design(batch: List[str]):
        docs = [nlp.make_doc(t) for t in batch]
        parts = [hashed_design(extractor, linear.get_dim("length"), docs) for extractor, linear in chars]
        parts += [csr_matrix(scale * numpy.asarray(mean.predict(docs), dtype="f8")) for mean, _ in vectors]
        return hstack(parts).tocsr()

    X = design(train_texts)
    regression = sklearn_linear.LogisticRegression(C=10.0, max_iter=2000, tol=1e-6).fit(
        vstack([X, X]).tocsr(), numpy.r_[numpy.ones(len(p)), numpy.zeros(len(p))], sample_weight=numpy.r_[p, 1 - p]
    )
    return regression, regression.decision_function(design(texts))


@pytest.mark.parametrize("blocks", ["chars", "vectors", "both"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_fitted_blocks_give_the_regressions_log_odds(tmp_path, blocks, scale):
    nlp = pipeline(linear_model(blocks))
    create_fit_linear_blocks(labelled(tmp_path), component="textcat", prior_correction=False, vectors_scale=scale)(nlp)
    texts = [*TEXTS, "great broke", "Great, terrible.", "nothing known"]
    p = numpy.asarray([p for _, p in SOFT_DATA])
    _, expected = reference(nlp, p, texts, scale)
    numpy.testing.assert_allclose(log_odds(nlp, texts), expected, rtol=1e-4, atol=1e-4)
    if blocks == "vectors":
        # 3 weights cannot fit the 12 texts; the vectors alone still order "great" over "terrible".
        assert log_odds(nlp, ["great"])[0] > log_odds(nlp, ["terrible"])[0]
    else:
        assert ((log_odds(nlp, TEXTS) > 0) == (p > 0.5)).all()


def test_prior_correction_fits_the_readers_labels(tmp_path):
    # A teacher that calls most text POSITIVE: the reader shifts its logits to a uniform prior.
    data = [(text, min(0.97, p + 0.3)) for text, p in SOFT_DATA]
    root = labelled(tmp_path, data)
    corrected, plain = pipeline(linear_model("both")), pipeline(linear_model("both"))
    create_fit_linear_blocks(root, component="textcat", prior_correction=True)(corrected)
    create_fit_linear_blocks(root, component="textcat", prior_correction=False)(plain)
    read = create_teacher_labelled_reader_v2(str(root), prior_correction=True)
    q = numpy.asarray([get_teacher_probs(eg.reference)["POSITIVE"] for eg in read(corrected)])
    # One step of the correction (TeacherLabelled.v2) moves the mean towards 1/2.
    p = numpy.asarray([p for _, p in data])
    assert p.mean() > 0.7 and abs(q.mean() - 0.5) < abs(p.mean() - 0.5) / 2
    _, expected = reference(corrected, q, TEXTS, 1.0)
    numpy.testing.assert_allclose(log_odds(corrected, TEXTS), expected, rtol=1e-4, atol=1e-4)
    # The uncorrected fit leans POSITIVE: a higher log-odds on every text.
    assert (log_odds(plain, TEXTS) > log_odds(corrected, TEXTS)).all()


# Reviews only the linear blocks see (fit_linear_blocks.v2's extra_path), in another part folder.
MORE_DATA = [
    ("Absolutely love it, five stars.", 0.97),
    ("Waste of money, stopped working.", 0.04),
    ("Sehr gute Qualität, gerne wieder.", 0.88),
    ("Produit cassé, très déçu.", 0.07),
]


def test_v2_fits_the_extra_docs_too(tmp_path):
    both, alone = pipeline(linear_model("both")), pipeline(linear_model("both"))
    root, more = labelled(tmp_path / "labelled"), labelled(tmp_path / "more", MORE_DATA, part="transfer_more")
    create_fit_linear_blocks_v2(root, extra_path=more, component="textcat", prior_correction=False)(both)
    create_fit_linear_blocks_v2(root, component="textcat", prior_correction=False)(alone)
    texts = [*TEXTS, *(t for t, _ in MORE_DATA), "great broke"]
    # One regression over the docs of both corpora, in order.
    p = numpy.asarray([p for _, p in [*SOFT_DATA, *MORE_DATA]])
    _, expected = reference(both, p, texts, 1.0, train_texts=[*TEXTS, *(t for t, _ in MORE_DATA)])
    numpy.testing.assert_allclose(log_odds(both, texts), expected, rtol=1e-4, atol=1e-4)
    # Without extra_path, v2 is v1: the same weights.
    v1 = pipeline(linear_model("both"))
    create_fit_linear_blocks(root, component="textcat", prior_correction=False)(v1)
    numpy.testing.assert_array_equal(log_odds(alone, texts), log_odds(v1, texts))
    assert not numpy.allclose(log_odds(both, texts), log_odds(alone, texts))


@pytest.mark.parametrize("prior_correction", [True, False])
def test_v2_extra_docbins_without_docs_add_nothing(tmp_path, prior_correction):
    # What `label-more` writes when vars.n_transfer_more is 0: one DocBin of no docs.
    (tmp_path / "more" / "transfer_more").mkdir(parents=True)
    DocBin(store_user_data=True).to_disk(tmp_path / "more" / "transfer_more" / "shard-00000.spacy")
    root = labelled(tmp_path / "labelled")
    with_extra, without = pipeline(linear_model("both")), pipeline(linear_model("both"))
    create_fit_linear_blocks_v2(root, extra_path=tmp_path / "more", component="textcat", prior_correction=prior_correction)(with_extra)
    create_fit_linear_blocks(root, component="textcat", prior_correction=prior_correction)(without)
    numpy.testing.assert_array_equal(log_odds(with_extra, TEXTS), log_odds(without, TEXTS))


def test_v2_names_an_extra_path_without_docbins(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"fit_linear_blocks\.v2 \(.*empty, textcat\): TeacherLabelled: no \.spacy files under .*empty"):
        create_fit_linear_blocks_v2(labelled(tmp_path / "labelled"), extra_path=tmp_path / "empty", component="textcat")(
            pipeline(linear_model("both"))
        )


@pytest.mark.parametrize(
    "config,kwargs,message",
    [
        (linear_model("both"), {"vectors_scale": 0.0}, "vectors_scale must be > 0"),
        ({"model": {**STUDENT_CHARS_CONFIG["model"], "bow": None}}, {}, "no linear block to fit"),
        (linear_model("both"), {"component": "other"}, "has no 'other'"),
    ],
)
def test_callback_names_what_is_wrong(tmp_path, config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_fit_linear_blocks(labelled(tmp_path), **{"component": "textcat", **kwargs})(pipeline(config))


def test_callback_refuses_other_labels(tmp_path):
    nlp = with_vectors(blank_xx())
    nlp.add_pipe("distill_textcat", name="textcat", config=linear_model("both")).add_label("MAYBE")
    with pytest.raises(ValueError, match="needs the labels NEGATIVE and POSITIVE"):
        create_fit_linear_blocks(labelled(tmp_path), component="textcat")(nlp)


@pytest.fixture(scope="module")
def fold_parts(tmp_path_factory) -> Tuple[Path, Path]:
    """The student with char and mean-vectors blocks, trained; the two blocks alone, fitted."""
    root = tmp_path_factory.mktemp("fold_linear")
    student = with_vectors(blank_xx())
    student.add_pipe("distill_textcat", name="textcat", config=copy.deepcopy(STUDENT))
    train(student, soft_examples(student), n_iter=15, seed=0)
    student.to_disk(root / "student")
    fitted = pipeline(linear_model("both"))
    create_fit_linear_blocks(labelled(root / "labelled"), component="textcat")(fitted)
    fitted.to_disk(root / "linear")
    return root / "student", root / "linear"


def folded(parts: Tuple[Path, Path], fold=create_fold_linear_mix, **kwargs: Any) -> Language:
    nlp = pipeline(STUDENT)
    fold(*parts, **kwargs)(nlp)
    return nlp


@pytest.mark.parametrize("weight", [0.0, 0.4, 0.9, 1.0])
def test_fold_predicts_the_mix(fold_parts, weight):
    nlp = folded(fold_parts, weight=weight)
    texts = [*TEXTS, "great broke", "", "x"]
    student, fitted = (spacy.load(p) for p in fold_parts)
    expected = (1 - weight) * log_odds(student, texts) + weight * log_odds(fitted, texts)
    numpy.testing.assert_allclose(log_odds(nlp, texts), expected, rtol=1e-5, atol=1e-5)
    # The same as the general LogitMix of the two pipelines.
    mix = with_vectors(blank_xx())
    config = {"model": {"@architectures": "spacy-distill.LogitMix.v1", "weight": weight, "first": copy.deepcopy(STUDENT["model"]), "second": linear_model("both")["model"]}}
    mix.add_pipe("distill_textcat", name="textcat", config=config)
    mix.initialize(lambda: soft_examples(mix))
    create_init_logit_mix(*fold_parts)(mix)
    for doc, text in zip(nlp.pipe(texts, batch_size=3), texts):
        assert doc.cats == pytest.approx(mix(text).cats, abs=1e-5)


def test_fold_round_trips(fold_parts, tmp_path):
    nlp = folded(fold_parts, weight=0.7)
    nlp.to_disk(tmp_path / "folded")
    loaded = spacy.load(tmp_path / "folded")
    numpy.testing.assert_allclose(log_odds(loaded, TEXTS), log_odds(nlp, TEXTS), rtol=1e-6)
    assert loaded.meta["mix_weight"]["weight"] == pytest.approx(0.7)


def test_the_char_fold_refuses_a_block_it_cannot_fold(fold_parts):
    with pytest.raises(ValueError, match="summands this fold cannot match"):
        folded(fold_parts, fold=create_fold_char_mix, weight=0.5)
    # A fitted model with a mean-vectors block but a student without one.
    nlp = pipeline(STUDENT_CHARS_CONFIG)
    with pytest.raises(ValueError, match="first from|exactly one mean-vectors block"):
        create_fold_linear_mix(*fold_parts, weight=0.5)(nlp)



# The shipped shape since the LSTM trains (spacy-distill.LSTM.v1): the BiLSTM student
# alone, and the pipeline it is folded into, the BiLSTM plus the fitted blocks alone.
ALONE = {"model": {**copy.deepcopy(STUDENT["model"]), "bow": None}}
ALONE_MIXED = {"model": {**copy.deepcopy(STUDENT["model"]), "bow": {"@layers": "add.v1", "*": copy.deepcopy(BLOCKS["both"])}}}


@pytest.fixture(scope="module")
def alone_parts(tmp_path_factory, fold_parts) -> Tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fold_alone")
    student = with_vectors(blank_xx())
    student.add_pipe("distill_textcat", name="textcat", config=copy.deepcopy(ALONE))
    train(student, soft_examples(student), n_iter=15, seed=0)
    student.to_disk(root / "student")
    return root / "student", fold_parts[1]


@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
def test_fold_of_the_bilstm_alone_predicts_the_mix(alone_parts, weight, tmp_path):
    nlp = pipeline(ALONE_MIXED)
    create_fold_linear_mix(*alone_parts, weight=weight)(nlp)
    texts = [*TEXTS, "great broke", "", "x"]
    student, fitted = (spacy.load(p) for p in alone_parts)
    # The BiLSTM alone is not constant: its LSTM trains.
    assert numpy.std(log_odds(student, TEXTS)) > 1e-3
    expected = (1 - weight) * log_odds(student, texts) + weight * log_odds(fitted, texts)
    numpy.testing.assert_allclose(log_odds(nlp, texts), expected, rtol=1e-5, atol=1e-5)
    nlp.to_disk(tmp_path / "folded")
    numpy.testing.assert_allclose(log_odds(spacy.load(tmp_path / "folded"), texts), expected, rtol=1e-5, atol=1e-5)
    assert [d.cats for d in nlp.pipe(texts, batch_size=2)] == [nlp(t).cats for t in texts]
