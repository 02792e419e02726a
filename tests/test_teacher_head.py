"""The teacher head's epoch choice (``spacy_distill.teacher.train``): dev scores, the
``select`` measure (dev macro-F or dev log-loss) and the restored weights."""

import math

import numpy
import pytest
from thinc.api import Softmax, fix_random_seed

from spacy_distill.teacher.selection import (
    choose_epoch,
    dev_histories,
    split_half_table,
    stratified_halves,
)
from spacy_distill.teacher.train import dev_scores, train_head

LABELS = ["NEGATIVE", "POSITIVE"]


def _data(n: int, seed: int, noise: float):
    """Two noisy clusters in 4-d; a quarter of the labels flipped so dev scores wander."""
    rng = numpy.random.RandomState(seed)
    y = rng.randint(0, 2, size=n)
    X = (rng.normal(size=(n, 4)) * noise + numpy.where(y[:, None], 1.0, -1.0)).astype("f")
    flip = rng.rand(n) < 0.25
    y = numpy.where(flip, 1 - y, y)
    Y = numpy.eye(2, dtype="f")[y]
    gold = [("de" if i % 2 else "en", LABELS[k]) for i, k in enumerate(y)]
    return X, Y, gold


SETTINGS = {
    "seed": 0, "batch_size": 16, "max_epochs": 30, "patience": 30,
    "optimizer": {"@optimizers": "Adam.v1", "learn_rate": 0.05, "use_averages": False},
}


def _head():
    fix_random_seed(0)
    head = Softmax(nO=2, nI=4)
    head.initialize()
    return head


def test_dev_scores_are_exact():
    head = _head()
    head.set_param("W", numpy.asarray([[-1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype="f"))
    head.set_param("b", numpy.zeros((2,), dtype="f"))
    X = numpy.asarray([[1, 0, 0, 0], [-1, 0, 0, 0], [2, 0, 0, 0], [0.5, 0, 0, 0]], dtype="f")
    gold = [("en", "POSITIVE"), ("en", "NEGATIVE"), ("de", "NEGATIVE"), ("de", "POSITIVE")]
    scores = dev_scores(head, X, gold, LABELS)
    p_pos = [1 / (1 + math.exp(-2 * x)) for x in (1.0, -1.0, 2.0, 0.5)]
    p_gold = [p_pos[0], 1 - p_pos[1], 1 - p_pos[2], p_pos[3]]
    assert scores["loss"] == pytest.approx(-sum(math.log(p) for p in p_gold) / 4, rel=1e-5)
    # en: both right (100); de: one POSITIVE predicted for a NEGATIVE doc, one right (33.3).
    assert scores["macro_f"] == pytest.approx((100.0 + 100 / 3) / 2, rel=1e-6)


@pytest.mark.parametrize("select,pick", [("macro_f", lambda r: int(numpy.argmax(r["dev_macro_f_by_epoch"]))), ("loss", lambda r: int(numpy.argmin(r["dev_loss_by_epoch"])))])
def test_the_chosen_epoch_is_the_best_by_the_select_measure_and_its_weights_are_kept(select, pick):
    X, Y, _ = _data(200, 0, 1.5)
    X_dev, _, gold = _data(120, 1, 1.5)
    head = _head()
    report = train_head(head, X, Y, X_dev, gold, LABELS, {**SETTINGS, "select": select})
    assert report["select"] == select
    assert report["best_epoch"] == pick(report) + 1
    assert len(report["dev_loss_by_epoch"]) == len(report["dev_macro_f_by_epoch"]) == SETTINGS["max_epochs"]
    restored = dev_scores(head, X_dev, gold, LABELS)
    assert restored["macro_f"] == pytest.approx(report["best_dev_macro_f"])
    assert restored["loss"] == pytest.approx(report["best_dev_loss"], rel=1e-6)


def test_default_select_is_macro_f_and_the_same_seed_gives_the_same_history():
    X, Y, _ = _data(200, 0, 1.5)
    X_dev, _, gold = _data(120, 1, 1.5)
    first = train_head(_head(), X, Y, X_dev, gold, LABELS, SETTINGS)
    again = train_head(_head(), X, Y, X_dev, gold, LABELS, {**SETTINGS, "select": "macro_f"})
    assert first == again
    assert first["select"] == "macro_f"


def test_loss_selection_stops_on_patience_of_the_loss():
    X, Y, _ = _data(200, 0, 1.5)
    X_dev, _, gold = _data(120, 1, 1.5)
    report = train_head(_head(), X, Y, X_dev, gold, LABELS, {**SETTINGS, "select": "loss", "max_epochs": 200, "patience": 5})
    assert len(report["dev_loss_by_epoch"]) == report["best_epoch"] + 5 or len(report["dev_loss_by_epoch"]) == 200


def test_unknown_select_is_an_error():
    with pytest.raises(ValueError, match=r"\[head_training\] select must be one of \['loss', 'macro_f'\], got 'auc'"):
        train_head(_head(), *_data(10, 0, 1.0)[:2], *(_data(10, 1, 1.0)[0], _data(10, 1, 1.0)[2]), LABELS, {**SETTINGS, "select": "auc"})


H = [{"macro_f": f, "loss": loss} for f, loss in [(70, 0.60), (75, 0.50), (74, 0.45), (76, 0.47), (73, 0.52), (77, 0.55)]]


@pytest.mark.parametrize(
    "select,patience,epoch",
    [("macro_f", 10, 6), ("macro_f", 1, 2), ("macro_f", 2, 6), ("loss", 10, 3), ("loss", 1, 3), ("loss", 3, 3)],
)
def test_choose_epoch_replays_early_stopping(select, patience, epoch):
    assert choose_epoch(H, select, patience) == epoch


def test_stratified_halves_split_every_language_and_label():
    gold = [(lang, label) for lang in ("de", "ja") for label in LABELS for _ in range(5)]
    a, b = stratified_halves(gold, 0)
    assert sorted(a + b) == list(range(len(gold))) and not set(a) & set(b)
    for key in set(gold):
        assert sum(gold[i] == key for i in a) == 2 and sum(gold[i] == key for i in b) == 3
    assert stratified_halves(gold, 0) == (a, b) and stratified_halves(gold, 1) != (a, b)


def test_dev_histories_share_one_trajectory_and_match_train_head():
    X, Y, _ = _data(200, 0, 1.5)
    X_dev, _, gold = _data(120, 1, 1.5)
    head = _head()
    initial = head.to_bytes()
    a, b = stratified_halves(gold, 0)
    settings = {**SETTINGS, "max_epochs": 12}
    histories = dev_histories(head, initial, X, Y, X_dev, gold, LABELS, settings, {"A": a, "B": b, "all": list(range(len(gold)))})
    # The run on the whole dev set is train_head's own history (same weights, same seed).
    head.from_bytes(initial)
    fix_random_seed(0)
    report = train_head(head, X, Y, X_dev, gold, LABELS, {**settings, "patience": 12})
    assert [h["macro_f"] for h in histories["all"]] == report["dev_macro_f_by_epoch"]
    # Half B's scores at each epoch are those of the same weights on B's rows.
    table = split_half_table(histories, patience=12)
    assert set(table) == {"loss", "macro_f"}
    for rule, row in table.items():
        assert row["epoch"] == choose_epoch(histories["A"], rule, 12)
        assert row["B_macro_f"] == histories["B"][row["epoch"] - 1]["macro_f"]
