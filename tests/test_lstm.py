"""spacy-distill.LSTM.v1: thinc's LSTM with the gradient of its forward pass.

The gradients are checked against central finite differences of the loss; the forward
pass and the weights are thinc's own; a BiLSTMTextCat.v3 student learns a task that
needs word order (a bag of words cannot), with its LSTM's weights kept alive."""

from typing import List

import numpy
import pytest
import spacy
from spacy.training import Example
from spacy.util import registry
from thinc.api import LSTM as ThincLSTM
from thinc.api import Adam, NumpyOps, fix_random_seed, with_padded
from thinc.layers.lstm import _packed_to_padded as thinc_packed_to_padded
from thinc.layers.lstm import _padded_to_packed as thinc_padded_to_packed

from spacy_distill.pipeline.lstm import (
    FUSED_MAX_BATCH,
    LSTM,
    _packed_to_padded,
    _padded_to_packed,
    fused_inference,
)
from spacy_distill.pipeline.lstm_numba import KERNEL_ENV, use_numba

from .util import LABELS

GRADIENT_CASES = [(1, True), (1, False), (2, True), (2, False)]


def _sequences(seed: int, lengths=(5, 3, 7, 1), width: int = 3) -> List[numpy.ndarray]:
    rng = numpy.random.default_rng(seed)
    return [rng.normal(size=(n, width)).astype("f") for n in lengths]


def _layer(depth: int, bi: bool, seed: int = 0):
    lstm = LSTM(nO=4, nI=3, bi=bi, depth=depth)
    model = with_padded(lstm)
    model.initialize(X=_sequences(seed))
    # Larger weights than the initialization, so that every gate is off its linear range.
    rng = numpy.random.default_rng(seed + 1)
    lstm.set_param("LSTM", (rng.normal(size=lstm.get_param("LSTM").shape) * 0.5).astype("f"))
    return lstm, model


def _loss(model, Xs, targets) -> float:
    Ys = model.predict(Xs)
    return sum(float(((y.astype("float64") - t) ** 2).sum()) for y, t in zip(Ys, targets)) / 2


@pytest.mark.parametrize("depth,bi", GRADIENT_CASES)
def test_gradients_equal_finite_differences(depth, bi):
    lstm, model = _layer(depth, bi)
    Xs = _sequences(2)
    targets = [numpy.random.default_rng(3).normal(size=(len(x), 4)) for x in Xs]
    Ys, backprop = model.begin_update(Xs)
    dXs = backprop([(y - t).astype("f") for y, t in zip(Ys, targets)])
    analytic = lstm.get_grad("LSTM").copy()
    params = lstm.get_param("LSTM").copy()
    eps = 1e-2
    numeric = numpy.zeros(params.shape)
    for i in range(params.size):
        for sign in (1, -1):
            shifted = params.copy()
            shifted[i] += sign * eps
            lstm.set_param("LSTM", shifted)
            numeric[i] += sign * _loss(model, Xs, targets) / (2 * eps)
    lstm.set_param("LSTM", params)
    assert numpy.abs(analytic - numeric).max() <= 1e-3 * numpy.abs(numeric).max()
    # The input's gradient too: every row of the longest sequence (both directions' ends).
    for row in range(len(Xs[2])):
        numeric_x = numpy.zeros(3)
        for j in range(3):
            for sign in (1, -1):
                original = Xs[2][row, j]
                Xs[2][row, j] = original + sign * eps
                numeric_x[j] += sign * _loss(model, Xs, targets) / (2 * eps)
                Xs[2][row, j] = original
        numpy.testing.assert_allclose(dXs[2][row], numeric_x, atol=2e-3)


def test_thincs_own_gradient_is_wrong():
    # Why this layer exists: thinc 8.3's CPU kernel returns the weights plus the
    # gradient. If this fails, thinc's LSTM backward has been fixed and
    # BiLSTMTextCat.v2 students train their LSTM again.
    ours, model = _layer(1, True)
    theirs = ThincLSTM(nO=4, nI=3, bi=True)
    stock = with_padded(theirs)
    stock.initialize(X=_sequences(0))
    stock.from_bytes(model.to_bytes())
    grads = []
    for layer, wrapped in ((ours, model), (theirs, stock)):
        Ys, backprop = wrapped.begin_update(_sequences(2))
        backprop([numpy.ones_like(y) for y in Ys])
        grads.append(layer.get_grad("LSTM"))
    error = numpy.abs(grads[1] - grads[0]).max() / numpy.abs(grads[0]).max()
    assert error > 0.5


# Small batches run both directions in one pass at inference, large ones thinc's two.
@pytest.mark.parametrize("n_seqs", [4, FUSED_MAX_BATCH + 1])
@pytest.mark.parametrize("depth,bi", GRADIENT_CASES)
def test_forward_and_weights_are_thincs(depth, bi, n_seqs, monkeypatch):
    # thinc's kernel at inference (numba's, when installed, is tests/test_lstm_numba.py's).
    monkeypatch.setenv(KERNEL_ENV, "thinc")
    ours, model = _layer(depth, bi)
    theirs = ThincLSTM(nO=4, nI=3, bi=bi, depth=depth)
    stock = with_padded(theirs)
    stock.initialize(X=_sequences(0))
    stock.from_bytes(model.to_bytes())
    Xs = _sequences(4, lengths=[1 + (7 * i) % 11 for i in range(n_seqs)])
    for is_train in (False, True):
        ours_Y, _ = model(Xs, is_train=is_train)
        theirs_Y, _ = stock(Xs, is_train=is_train)
        for a, b in zip(ours_Y, theirs_Y):
            numpy.testing.assert_array_equal(a, b)



# Batches as the student sees them: one doc (every step full), equal lengths, ties,
# one-token sequences beside long ones, and a batch above FUSED_MAX_BATCH.
BATCH_LENGTHS = [(1,), (9,), (4, 4, 4), (7, 5, 5, 2, 1), (1, 1), (12, 3), (30, 29, 1, 1, 16),
                 tuple(1 + (5 * i) % 13 for i in range(70))]


def _packed_batch(lengths, width: int, seed: int):
    ops = NumpyOps()
    Xp = ops.list2padded(_sequences(seed, lengths, width))
    return ops, Xp


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("lengths", BATCH_LENGTHS)
def test_fused_inference_is_thincs_kernel_to_the_bit(depth, lengths):
    # Both directions in one pass of thinc's kernel: the same floats as thinc's own
    # bidirectional inference, with non-zero initial states and weights off their range.
    lstm, _ = _layer(depth, True, seed=len(lengths))
    ops, Xp = _packed_batch(lengths, 3, seed=depth)
    Xr = thinc_padded_to_packed(ops, Xp)
    params = lstm.get_param("LSTM")
    # nO=4 split between the two directions: 2 units each.
    H0, C0 = numpy.random.default_rng(5).normal(size=(2, depth, 2, 2)).astype("f")
    expected = ops.lstm_forward_inference(params, H0, C0, Xr.data, Xr.lengths)
    got = fused_inference(ops, params, H0, C0, Xr.data, Xr.lengths)
    assert got.shape == expected.shape == (sum(lengths), 4)
    numpy.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("lengths", BATCH_LENGTHS)
def test_packing_is_thincs_without_its_loop(lengths):
    ops, Xp = _packed_batch(lengths, 5, seed=7)
    ours, theirs = _padded_to_packed(ops, Xp), thinc_padded_to_packed(ops, Xp)
    numpy.testing.assert_array_equal(ours.data, theirs.data)
    numpy.testing.assert_array_equal(ours.lengths, theirs.lengths)
    assert ours.data.dtype == numpy.float32 and ours.data.base is not Xp.data
    back, thinc_back = _packed_to_padded(ops, ours, Xp), thinc_packed_to_padded(ops, theirs, Xp)
    numpy.testing.assert_array_equal(back.data, thinc_back.data)
    # Round trip: the padded input, zeros where a sequence has ended.
    numpy.testing.assert_array_equal(back.data, Xp.data)


@pytest.mark.parametrize("kernel", ["thinc", "auto"])
def test_inference_follows_the_weights(kernel, monkeypatch):
    # Nothing about the weights is kept between calls: new params, new outputs (thinc's,
    # or numba's within its tolerance when numba is installed).
    monkeypatch.setenv(KERNEL_ENV, kernel)
    lstm, model = _layer(1, True)
    Xs = _sequences(4)
    before = model.predict(Xs)
    lstm.set_param("LSTM", lstm.get_param("LSTM") * 0.5)
    after = model.predict(Xs)
    ops = NumpyOps()
    Xr = thinc_padded_to_packed(ops, ops.list2padded(Xs))
    HC0 = lstm.get_param("HC0")
    expected = ops.padded2list(
        thinc_packed_to_padded(ops, type(Xr)(ops.lstm_forward_inference(lstm.get_param("LSTM"), HC0[0], HC0[1], Xr.data, Xr.lengths), Xr.lengths), ops.list2padded(Xs))
    )
    for a, b, y in zip(before, after, expected):
        assert not numpy.array_equal(a, b)
        if use_numba():
            numpy.testing.assert_allclose(b, y, rtol=0, atol=1e-6)
        else:
            numpy.testing.assert_array_equal(b, y)


def test_dropout_mask_reaches_the_gradient():
    # thinc's scheme: dropout over the weights; a dropped weight gets no gradient.
    fix_random_seed(0)
    lstm = LSTM(nO=4, nI=3, bi=True, dropout=0.5)
    model = with_padded(lstm)
    model.initialize(X=_sequences(0))
    Ys, backprop = model.begin_update(_sequences(1))
    backprop([numpy.ones_like(y) for y in Ys])
    grad = lstm.get_grad("LSTM")
    assert 0.3 < float(numpy.mean(grad == 0)) < 0.7


def test_backprop_after_inference_is_an_error():
    _, model = _layer(1, True)
    Ys, backprop = model(_sequences(1), is_train=False)
    with pytest.raises(ValueError, match="is_train=False"):
        backprop(Ys)


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        LSTM(nO=4, nI=3, depth=0)


def _order_nlp(architecture: str):
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "distill_textcat",
        config={
            "model": {
                "@architectures": architecture,
                "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 8, "attrs": ["NORM"],
                          "rows": [64], "include_static_vectors": False},
                "bow": None,
            },
        },
    )
    return nlp


# The label is which of two words comes first: every doc has the same bag of words.
ORDER_DATA = [("good bad", "POSITIVE"), ("bad good", "NEGATIVE"), ("fine bad good", "NEGATIVE"),
              ("good fine bad", "POSITIVE"), ("good bad fine", "POSITIVE"), ("bad fine good", "NEGATIVE")]


def test_bilstm_student_learns_word_order():
    # A task only word order solves: the BiLSTM overfits it, empty docs included.
    fix_random_seed(0)
    nlp = _order_nlp("spacy-distill.BiLSTMTextCat.v3")
    examples = [
        Example.from_dict(nlp.make_doc(text), {"cats": {label: float(label == gold) for label in LABELS}})
        for text, gold in ORDER_DATA
    ]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    for _ in range(150):
        nlp.update(examples, sgd=optimizer, drop=0.0)
    correct = sum(
        max(doc.cats, key=doc.cats.get) == gold for doc, (_, gold) in zip(nlp.pipe(t for t, _ in ORDER_DATA), ORDER_DATA)
    )
    assert correct == len(ORDER_DATA)
    texts = [t for t, _ in ORDER_DATA] + [""]
    assert [d.cats for d in nlp.pipe(texts)] == [nlp(t).cats for t in texts]


def test_v3_is_registered_and_loads_v2_weights(monkeypatch):
    # v2's LSTM is thinc's: the same floats from thinc's kernel (numba's is within rounding).
    monkeypatch.setenv(KERNEL_ENV, "thinc")
    v3 = registry.architectures.get("spacy-distill.BiLSTMTextCat.v3")
    assert v3.__name__ == "build_bilstm_textcat_v3"
    v2_nlp, v3_nlp = _order_nlp("spacy-distill.BiLSTMTextCat.v2"), _order_nlp("spacy-distill.BiLSTMTextCat.v3")
    examples = [Example.from_dict(v2_nlp.make_doc(t), {"cats": {lab: float(lab == g) for lab in LABELS}})
                for t, g in ORDER_DATA]
    v2_nlp.initialize(lambda: examples)
    v3_nlp.initialize(lambda: examples)
    v3_nlp.from_bytes(v2_nlp.to_bytes())
    texts = [t for t, _ in ORDER_DATA] + [""]
    for a, b in zip(v2_nlp.pipe(texts), v3_nlp.pipe(texts)):
        assert a.cats == b.cats
