"""``spacy-distill.with_learn_rate_scale.v1``: a layer trained at a multiple of the
optimizer's learning rate (outputs and gradients scaled, Adam's steps unchanged)."""

import copy

import numpy
import pytest
import spacy
from spacy.util import registry
from thinc.api import Adam, Linear, fix_random_seed

from spacy_distill.pipeline.layers import with_learn_rate_scale

from .util import STUDENT_CHARS_CONFIG, blank_xx, soft_examples, train

X = numpy.asarray([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], dtype="f")
D_Y = numpy.asarray([[0.25, -1.0], [2.0, 0.5]], dtype="f")


def _pair(scale: float):
    """The scaled layer, initialized, and a copy of its inner layer (same weights)."""
    fix_random_seed(0)
    model = with_learn_rate_scale(Linear(nO=2, nI=3), scale=scale)
    model.initialize(X=X)
    return model, copy.deepcopy(model.layers[0])


@pytest.mark.parametrize("scale", [0.5, 1.0, 4.0])
def test_output_and_gradient_are_scaled_exactly(scale):
    model, inner = _pair(scale)
    Y, backprop = model(X, is_train=True)
    Y_inner, backprop_inner = inner(X, is_train=True)
    numpy.testing.assert_allclose(Y, scale * Y_inner, rtol=1e-6)
    numpy.testing.assert_allclose(backprop(D_Y), backprop_inner(scale * D_Y), rtol=1e-6)
    # The inner layer's gradient is the plain layer's for the scaled output gradient.
    numpy.testing.assert_allclose(model.layers[0].get_grad("W"), inner.get_grad("W"), rtol=1e-6)
    assert model.get_dim("nO") == 2


@pytest.mark.parametrize("scale", [2.0, 8.0])
def test_an_adam_step_moves_the_output_scale_times_as_far(scale):
    """Adam's step ignores the gradient's scale: the weights move as the plain layer's do."""
    scaled, plain = _pair(scale)
    start = copy.deepcopy(plain)
    for model in (plain, scaled):
        optimizer = Adam(0.01, grad_clip=0.0, L2=0.0)
        Y, backprop = model(X, is_train=True)
        backprop(numpy.sign(Y) * D_Y)
        model.finish_update(optimizer)
    numpy.testing.assert_allclose(scaled.layers[0].get_param("W"), plain.get_param("W"), rtol=1e-5, atol=1e-7)
    moved_plain = plain(X, is_train=False)[0] - start(X, is_train=False)[0]
    moved_scaled = scaled(X, is_train=False)[0] - scale * start(X, is_train=False)[0]
    numpy.testing.assert_allclose(moved_scaled, scale * moved_plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_scale_must_be_positive(scale):
    with pytest.raises(ValueError, match="scale must be > 0"):
        with_learn_rate_scale(Linear(nO=2, nI=3), scale=scale)


def _student_config(scale: float) -> dict:
    config = copy.deepcopy(STUDENT_CHARS_CONFIG)
    config["model"]["bow"] = {
        "@layers": "spacy-distill.with_learn_rate_scale.v1",
        "scale": scale,
        "layer": config["model"]["bow"],
    }
    return config


def test_student_with_scaled_ngrams_overfits_round_trips_and_handles_empty_docs(tmp_path):
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=_student_config(4.0))
    examples = soft_examples(nlp)
    losses = train(nlp, examples, n_iter=40)
    assert losses["distill_textcat"] < 0.05
    texts = [eg.reference.text for eg in examples] + ["", " "]
    cats = [doc.cats for doc in nlp.pipe(texts, batch_size=3)]
    assert cats == [nlp(text).cats for text in texts]
    assert sum(cats[-2].values()) == pytest.approx(1.0)  # the empty doc
    nlp.to_disk(tmp_path / "student")
    loaded = spacy.load(tmp_path / "student")
    assert [loaded(text).cats for text in texts] == [nlp(text).cats for text in texts]
    bow = loaded.get_pipe("distill_textcat").model.get_ref("bow")
    assert bow.layers[0].name.startswith("learn_rate_scale") and bow.layers[0].attrs["scale"] == 4.0


def test_scale_moves_the_ngram_logits_further_in_the_same_steps():
    """Same seed, same steps: the n-gram part's logits grow more with a larger scale."""
    spans = {}
    for scale in (1.0, 8.0):
        nlp = blank_xx()
        nlp.add_pipe("distill_textcat", config=_student_config(scale))
        examples = soft_examples(nlp)
        train(nlp, examples, n_iter=3)
        bow = nlp.get_pipe("distill_textcat").model.get_ref("bow")
        logits = bow.predict([eg.predicted for eg in examples])
        spans[scale] = float(numpy.abs(logits[:, 1] - logits[:, 0]).mean())
    assert spans[8.0] > 4 * spans[1.0]


def test_registered_by_name():
    layer = registry.resolve(
        {"x": {"@layers": "spacy-distill.with_learn_rate_scale.v1", "layer": {"@layers": "Linear.v1", "nO": 2, "nI": 3}, "scale": 2.0}}
    )["x"]
    assert layer.attrs["scale"] == 2.0
