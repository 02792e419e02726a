"""The mean of a doc's static vectors (``spacy-distill.MeanStaticVectors.v1``) and the
linear model over it (``spacy-distill.MeanVectorsBOW.v1``) in the student's ``bow`` sum:
exact means, empty docs, errors, overfit, round trips, ``pipe == __call__``, a
torch-free load."""

import copy

import numpy
import pytest
import spacy
from spacy.util import registry
from spacy.vectors import Vectors

from spacy_distill.pipeline.mean_vectors import MeanStaticVectors, build_mean_vectors_bow

from .util import (
    SOFT_DATA,
    STUDENT_CHARS_CONFIG,
    assert_fits_soft_data,
    blank_xx,
    run_without_torch,
    soft_examples,
    train,
)

# Words of SOFT_DATA with made-up 3-dim vectors: a sentiment axis (dim 0) and two others.
TABLE = {
    "great": [1.0, 0.0, 0.5],
    "perfectly": [0.5, 1.0, 0.0],
    "terrible": [-1.0, 0.0, 0.5],
    "broke": [-0.5, -1.0, 0.0],
    "super": [1.0, 0.5, 0.0],
    "kaputt": [-1.0, 0.5, 0.0],
    "buena": [0.5, 0.0, 1.0],
    "funciona": [0.0, 0.5, -1.0],
}


def with_vectors(nlp, table=TABLE):
    keys = [nlp.vocab.strings.add(word) for word in table]
    nlp.vocab.vectors = Vectors(strings=nlp.vocab.strings, data=numpy.asarray(list(table.values()), dtype="f"), keys=keys)
    return nlp


@pytest.fixture
def nlp_vectors():
    return with_vectors(blank_xx())


MEAN_CASES = [
    # (text, expected mean vector): tokens without a vector are left out of the mean.
    ("great", [1.0, 0.0, 0.5]),
    ("great terrible", [0.0, 0.0, 0.5]),
    ("great , terrible !", [0.0, 0.0, 0.5]),
    ("great great broke", [0.5, -1 / 3, 1 / 3]),
    ("Great", [0.0, 0.0, 0.0]),  # keys are exact forms (ORTH): the table has no "Great"
    ("nothing here", [0.0, 0.0, 0.0]),
    ("", [0.0, 0.0, 0.0]),
]


@pytest.mark.parametrize("text,expected", MEAN_CASES)
def test_mean_of_the_found_vectors_is_exact(nlp_vectors, text, expected):
    layer = MeanStaticVectors()
    layer.initialize(X=[nlp_vectors.make_doc("great")])
    Y = layer.predict([nlp_vectors.make_doc(text)])
    assert Y.dtype == numpy.float32 and Y.shape == (1, 3)
    numpy.testing.assert_allclose(Y[0], expected, rtol=1e-6, atol=1e-7)


def test_a_batch_gives_each_doc_its_own_row(nlp_vectors):
    texts = [text for text, _ in MEAN_CASES]
    layer = MeanStaticVectors()
    layer.initialize(X=[nlp_vectors.make_doc("great")])
    docs = [nlp_vectors.make_doc(text) for text in texts]
    batch = layer.predict(docs)
    for i, doc in enumerate(docs):
        numpy.testing.assert_array_equal(batch[i], layer.predict([doc])[0])
    assert layer.predict([]).shape == (0, 3)
    Y, backprop = layer(docs, is_train=True)
    assert backprop(numpy.ones_like(Y)) == [] and layer.param_names == ()


def test_no_vectors_is_an_error_that_says_what_to_give():
    nlp = blank_xx()
    with pytest.raises(ValueError, match=r"no static vectors.*\[initialize\] vectors"):
        MeanStaticVectors().initialize(X=[nlp.make_doc("great")])


def test_vectors_of_another_width_are_an_error(nlp_vectors):
    layer = MeanStaticVectors()
    layer.initialize(X=[nlp_vectors.make_doc("great")])
    other = with_vectors(blank_xx(), {"great": [1.0, 2.0]})
    with pytest.raises(ValueError, match="2 dims, the layer was initialized with 3"):
        layer.predict([other.make_doc("great")])


def test_architecture_is_a_linear_model_over_the_mean(nlp_vectors):
    model = registry.resolve({"x": {"@architectures": "spacy-distill.MeanVectorsBOW.v1", "nO": 2}})["x"]
    docs = [nlp_vectors.make_doc(text) for text in ("great broke", "terrible", "")]
    model.initialize(X=docs)
    output = model.get_ref("output_layer")
    W = numpy.arange(6, dtype="f").reshape(2, 3) / 10
    b = numpy.asarray([0.5, -0.5], dtype="f")
    output.set_param("W", W)
    output.set_param("b", b)
    means = numpy.asarray([[0.25, -0.5, 0.25], [-1.0, 0.0, 0.5], [0.0, 0.0, 0.0]], dtype="f")
    numpy.testing.assert_allclose(model.predict(docs), means @ W.T + b, rtol=1e-6)
    assert model.get_dim("nO") == 2 and model.attrs["outputs"] == "logits"
    assert build_mean_vectors_bow().get_ref("output_layer").name == "linear"


# The shipped student's shape with the mean-vectors block added to the n-gram sum.
STUDENT_MEAN_VECTORS_CONFIG = copy.deepcopy(STUDENT_CHARS_CONFIG)
STUDENT_MEAN_VECTORS_CONFIG["model"]["bow"]["*"]["vectors"] = {"@architectures": "spacy-distill.MeanVectorsBOW.v1", "nO": None}


def student():
    nlp = with_vectors(blank_xx())
    nlp.add_pipe("distill_textcat", config=STUDENT_MEAN_VECTORS_CONFIG)
    return nlp


@pytest.fixture(scope="module")
def trained():
    nlp = student()
    losses = train(nlp, soft_examples(nlp), n_iter=60)
    return nlp, losses


def test_student_with_the_block_overfits(trained):
    nlp, losses = trained
    assert_fits_soft_data(nlp, losses)


def test_the_block_learns_and_counts_in_the_logits(trained):
    nlp, _ = trained
    block = next(node for node in nlp.get_pipe("distill_textcat").model.walk() if node.name == "mean_static_vectors")
    assert block.get_dim("nO") == 3
    linear = next(node for node in nlp.get_pipe("distill_textcat").model.walk() if node.name == "linear" and node.get_dim("nI") == 3)
    # Trained on the sentiment axis: POSITIVE's weight on dim 0 above NEGATIVE's.
    W = linear.get_param("W")
    assert W[1, 0] > W[0, 0]
    # A text whose only known words are positive moves when the table is zeroed.
    text = "super great"
    before = nlp(text).cats["POSITIVE"]
    table = nlp.vocab.vectors
    try:
        with_vectors(nlp, {word: [0.0, 0.0, 0.0] for word in TABLE})
        assert nlp(text).cats["POSITIVE"] < before
    finally:
        nlp.vocab.vectors = table


def test_round_trips_pipe_and_empty_docs(trained, tmp_path):
    nlp, _ = trained
    texts = [text for text, _ in SOFT_DATA] + ["", "   ", "great"]
    expected = [nlp(text).cats for text in texts]
    for doc, cats in zip(nlp.pipe(texts, batch_size=4), expected):
        assert doc.cats == pytest.approx(cats, abs=1e-6)
    nlp.to_disk(tmp_path / "student")
    loaded = spacy.load(tmp_path / "student")
    for text, cats in zip(texts, expected):
        assert loaded(text).cats == pytest.approx(cats, abs=1e-6)
    other = with_vectors(blank_xx())
    other.add_pipe("distill_textcat", config=STUDENT_MEAN_VECTORS_CONFIG)
    other.get_pipe("distill_textcat").from_bytes(nlp.get_pipe("distill_textcat").to_bytes())
    for text, cats in zip(texts, expected):
        assert other(text).cats == pytest.approx(cats, abs=1e-6)


def test_same_seed_same_student():
    first, second = student(), student()
    train(first, soft_examples(first), n_iter=5)
    train(second, soft_examples(second), n_iter=5)
    assert first.get_pipe("distill_textcat").to_bytes() == second.get_pipe("distill_textcat").to_bytes()


def test_student_with_the_block_loads_without_torch(trained, tmp_path):
    nlp, _ = trained
    nlp.to_disk(tmp_path / "student")
    expected = nlp(SOFT_DATA[0][0]).cats["POSITIVE"]
    result = run_without_torch(f"""
    import spacy
    nlp = spacy.load({str(tmp_path / "student")!r})
    print(round(nlp({SOFT_DATA[0][0]!r}).cats["POSITIVE"], 6))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout) == pytest.approx(expected, abs=1e-5)
