"""How robust is the teacher head's epoch choice? (``scripts/teacher_head_selection.py``)

The head is trained for hundreds of cheap epochs and one is kept by a dev measure
(``[head_training] select``). Two checks of a rule, both on the teacher dev set only:

* **split half**: the dev docs are split in two halves A and B (stratified by
  language and label, seeded); an epoch is chosen on A and scored on B. A rule
  that picks noise on A scores lower on B.
* **perturbation**: the same docs encoded twice (e.g. two machines, or two batch
  layouts, whose vectors differ by float rounding): a robust rule picks an
  equivalent epoch from both.

The training trajectory does not depend on the dev set, so one run with no early
stopping gives every epoch's dev scores; early stopping with a patience is then
replayed on those histories (:func:`choose_epoch`).
"""

from typing import Any, Dict, List, Sequence, Tuple

import numpy
from thinc.api import Model, fix_random_seed

from .train import SELECT_KEYS, train_head


def stratified_halves(gold: Sequence[Tuple[str, str]], seed: int) -> Tuple[List[int], List[int]]:
    """Split dev rows in two halves with the same languages and labels.

    gold (Sequence[Tuple[str, str]]): (lang, label) per dev doc.
    seed (int): Shuffling seed.
    RETURNS (Tuple[List[int], List[int]]): Row indices of halves A and B, sorted.
    """
    rng = numpy.random.RandomState(seed)
    a: List[int] = []
    for key in sorted(set(gold)):
        rows = [i for i, g in enumerate(gold) if g == key]
        rng.shuffle(rows)
        a.extend(rows[: len(rows) // 2])
    a_set = set(a)
    return sorted(a), [i for i in range(len(gold)) if i not in a_set]


def choose_epoch(history: Sequence[Dict[str, float]], select: str, patience: int) -> int:
    """The epoch (1-based) that ``train_head`` keeps with ``select`` and ``patience``.

    history (Sequence[Dict[str, float]]): Dev ``macro_f`` and ``loss`` per epoch.
    select (str): A key of ``SELECT_KEYS``.
    patience (int): Epochs without improvement before training stops.
    RETURNS (int): The chosen epoch.
    """
    rank = SELECT_KEYS[select]
    best = 0
    for epoch, scores in enumerate(history, start=1):
        if best == 0 or rank(scores) > rank(history[best - 1]):
            best = epoch
        if epoch - best >= patience:
            break
    return best


def dev_histories(
    head: Model,
    initial: bytes,
    X: numpy.ndarray,
    Y: numpy.ndarray,
    X_dev: numpy.ndarray,
    gold: Sequence[Tuple[str, str]],
    labels: List[str],
    settings: Dict[str, Any],
    parts: Dict[str, List[int]],
) -> Dict[str, List[Dict[str, float]]]:
    """Dev scores per epoch on each part of the dev set, for one seeded training run.

    head (Model): The teacher head (vectors → probabilities).
    initial (bytes): Its initial weights (``head.to_bytes()`` after initialization).
    X (numpy.ndarray): Train vectors.
    Y (numpy.ndarray): One-hot train targets.
    X_dev (numpy.ndarray): Dev vectors.
    gold (Sequence[Tuple[str, str]]): (lang, label) per dev doc.
    labels (List[str]): Labels, in column order.
    settings (Dict[str, Any]): ``[head_training]``; its seed orders the batches and the dropout.
    parts (Dict[str, List[int]]): Named row subsets of the dev set.
    RETURNS (Dict[str, List[Dict[str, float]]]): Per part, ``macro_f`` and ``loss`` per epoch.
    """
    run = {**settings, "patience": int(settings["max_epochs"]), "select": "loss"}
    out = {}
    for name, rows in parts.items():
        # Same weights, same seed: every part sees the same training trajectory.
        head.from_bytes(initial)
        fix_random_seed(int(settings["seed"]))
        report = train_head(head, X, Y, X_dev[rows], [gold[i] for i in rows], labels, run)
        out[name] = [{"macro_f": f, "loss": loss} for f, loss in zip(report["dev_macro_f_by_epoch"], report["dev_loss_by_epoch"])]
    return out


def split_half_table(histories: Dict[str, List[Dict[str, float]]], patience: int) -> Dict[str, Dict[str, float]]:
    """For each rule: the epoch it chooses on half A, and that epoch's score on half B.

    histories (Dict[str, List[Dict[str, float]]]): From :func:`dev_histories`, with parts "A" and "B".
    patience (int): The config's patience.
    RETURNS (Dict[str, Dict[str, float]]): Per rule: ``epoch``, ``B_macro_f``, ``B_loss``.
    """
    table = {}
    for select in sorted(SELECT_KEYS):
        epoch = choose_epoch(histories["A"], select, patience)
        table[select] = {"epoch": epoch, **{f"B_{k}": v for k, v in histories["B"][epoch - 1].items()}}
    return table



__all__ = ["choose_epoch", "dev_histories", "split_half_table", "stratified_halves"]
