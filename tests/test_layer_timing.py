"""time_layers: wall time per layer of a thinc model, on real thinc layers."""

import time

import numpy
import pytest
from thinc.api import Linear, Model, Relu, chain, concatenate

from spacy_distill.evaluation.timing import time_layers

SLEEP_S = 0.01


def _sleepy() -> Model:
    def forward(model: Model, X, is_train: bool):
        time.sleep(SLEEP_S)
        return X, lambda dY: dY

    return Model("sleepy", forward)


def _model() -> Model:
    model = chain(Relu(nO=4, nI=3), _sleepy(), Linear(nO=2, nI=4))
    model.initialize()
    return model


def test_every_layer_gets_a_row_in_walk_order_with_its_calls():
    model = _model()
    X = numpy.ones((5, 3), dtype="f")
    rows = time_layers(model, lambda: model.predict(X), repeats=2)
    assert [row["name"] for row in rows] == [node.name for node in model.walk()]
    assert [row["path"] for row in rows] == ["", "0", "1", "2"]
    assert [row["depth"] for row in rows] == [0, 1, 1, 1]
    # Per call of run: the chain once, each child once.
    assert [row["calls"] for row in rows] == [1, 1, 1, 1]


def test_time_lands_on_the_layer_that_spends_it():
    model = _model()
    X = numpy.ones((5, 3), dtype="f")
    rows = {row["name"]: row for row in time_layers(model, lambda: model.predict(X), repeats=3)}
    root = rows[model.name]
    assert rows["sleepy"]["seconds"] >= SLEEP_S
    assert rows["sleepy"]["self_seconds"] == rows["sleepy"]["seconds"]
    assert root["seconds"] >= rows["sleepy"]["seconds"]
    # The chain's own code is its children's calls: almost none of the sleep is its own.
    assert root["self_seconds"] < SLEEP_S / 2
    assert all(row["self_seconds"] >= 0.0 for row in rows.values())


def test_forward_functions_are_restored_and_outputs_unchanged():
    model = _model()
    X = numpy.random.default_rng(0).random((5, 3), dtype="f")
    before = {node.id: node._func for node in model.walk()}
    expected = model.predict(X)
    time_layers(model, lambda: model.predict(X))
    assert {node.id: node._func for node in model.walk()} == before
    numpy.testing.assert_array_equal(model.predict(X), expected)


def test_forward_functions_are_restored_when_run_fails():
    def failing_forward(model: Model, X, is_train: bool):
        raise RuntimeError("boom")

    model = chain(Relu(nO=4, nI=3), Model("failing", failing_forward))
    model.initialize()
    before = {node.id: node._func for node in model.walk()}
    with pytest.raises(RuntimeError, match="boom"):
        time_layers(model, lambda: model.predict(numpy.ones((5, 3), dtype="f")))
    assert {node.id: node._func for node in model.walk()} == before


def test_a_shared_layer_is_timed_once():
    shared = Relu(nO=2, nI=3)
    model = concatenate(shared, chain(shared, Linear(nO=2, nI=2)))
    model.initialize()
    rows = time_layers(model, lambda: model.predict(numpy.ones((4, 3), dtype="f")))
    assert [row["name"] for row in rows].count(shared.name) == 1
    assert next(row for row in rows if row["name"] == shared.name)["calls"] == 2


def test_repeats_must_be_positive():
    model = _model()
    with pytest.raises(ValueError, match="repeats"):
        time_layers(model, lambda: None, repeats=0)
