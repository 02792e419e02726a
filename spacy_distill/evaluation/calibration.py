"""How far confidence is from accuracy: the expected calibration error, reliability
diagrams, and a system's calibration report before and after temperature scaling.

* :func:`reliability` / :func:`expected_calibration_error`: the expected
  calibration error (ECE, Guo et al. 2017) and the data of a reliability
  diagram. The confidence of a prediction is its top class's probability; it
  is correct when that class (the argmax) is the gold class. Confidences go
  into ``n_bins`` equal-width bins, ``(i / n, (i + 1) / n]`` with 0.0 in the
  first bin; ECE is the mean over bins of ``|accuracy − mean confidence|``,
  weighted by the share of predictions in the bin.
* :func:`calibration_report`: a system's test ECE before and after a
  temperature fitted on dev docs (``spacy_distill.teacher.calibrate``; the
  ``distill_calibration`` component in ``spacy_distill.pipeline.calibration``
  applies one);
  :func:`plot_reliability` draws the diagrams of every system.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy

from ..io import atomic_path
from ..pipeline.calibration import calibrate_probs
from ..teacher.calibrate import fit_calibration
from ..teacher.label import probs_to_logits

DEFAULT_N_BINS = 15


@dataclass
class ReliabilityBin:
    """One confidence bin of a reliability diagram.

    lower (float): Lower edge (exclusive, except 0.0 for the first bin).
    upper (float): Upper edge (inclusive).
    count (int): Predictions in the bin.
    confidence (Optional[float]): Their mean confidence; None if the bin is empty.
    accuracy (Optional[float]): The share of them that is correct; None if empty.
    """

    lower: float
    upper: float
    count: int
    confidence: Optional[float]
    accuracy: Optional[float]


@dataclass
class Reliability:
    """Expected calibration error and the reliability diagram it comes from.

    ece (float): Expected calibration error, in [0, 1].
    n (int): Number of predictions.
    accuracy (float): Share of correct predictions.
    confidence (float): Mean confidence.
    bins (List[ReliabilityBin]): Every bin, empty ones included.
    """

    ece: float
    n: int
    accuracy: float
    confidence: float
    bins: List[ReliabilityBin]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serializable form."""
        return asdict(self)


def _as_matrix(probs: Union[numpy.ndarray, Sequence[Sequence[float]]]) -> numpy.ndarray:
    P = numpy.asarray(probs, dtype="f8")
    if P.ndim != 2 or P.shape[0] == 0 or P.shape[1] == 0:
        raise ValueError(
            f"calibration needs a (docs × classes) matrix of probabilities with at least one doc "
            f"and one class, got shape {P.shape}"
        )
    if not numpy.isfinite(P).all() or (P < 0).any() or (P > 1).any():
        raise ValueError("probabilities must be finite and within [0, 1]")
    return P


def reliability(
    probs: Union[numpy.ndarray, Sequence[Sequence[float]]],
    gold: Union[numpy.ndarray, Sequence[int]],
    n_bins: int = DEFAULT_N_BINS,
) -> Reliability:
    """Expected calibration error and reliability-diagram bins of predictions.

    probs (Union[numpy.ndarray, Sequence[Sequence[float]]]): Probabilities,
        one row per doc, one column per class.
    gold (Union[numpy.ndarray, Sequence[int]]): The gold class's column per doc.
    n_bins (int): Number of equal-width confidence bins.
    RETURNS (Reliability): ECE, overall accuracy and confidence, and the bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    P = _as_matrix(probs)
    y = numpy.asarray(gold)
    if y.shape != (P.shape[0],) or not numpy.issubdtype(y.dtype, numpy.integer):
        raise ValueError(f"gold must hold one class index per doc ({P.shape[0]}), got shape {y.shape} of {y.dtype}")
    if (y < 0).any() or (y >= P.shape[1]).any():
        raise ValueError(f"gold class indices must be within [0, {P.shape[1] - 1}]")
    confidence = P.max(axis=1)
    correct = (P.argmax(axis=1) == y).astype("f8")
    # ceil(c · n) − 1 puts an edge value i / n into the bin it closes (right-closed
    # bins); clipping puts 0.0 into the first bin.
    index = numpy.clip(numpy.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins: List[ReliabilityBin] = []
    ece = 0.0
    for i in range(n_bins):
        mask = index == i
        count = int(mask.sum())
        conf = float(confidence[mask].mean()) if count else None
        acc = float(correct[mask].mean()) if count else None
        if count:
            ece += count / len(P) * abs(acc - conf)
        bins.append(ReliabilityBin(lower=i / n_bins, upper=(i + 1) / n_bins, count=count, confidence=conf, accuracy=acc))
    return Reliability(
        ece=float(ece), n=len(P), accuracy=float(correct.mean()), confidence=float(confidence.mean()), bins=bins
    )


def expected_calibration_error(
    probs: Union[numpy.ndarray, Sequence[Sequence[float]]],
    gold: Union[numpy.ndarray, Sequence[int]],
    n_bins: int = DEFAULT_N_BINS,
) -> float:
    """Expected calibration error (see :func:`reliability`).

    probs (Union[numpy.ndarray, Sequence[Sequence[float]]]): Probabilities per doc and class.
    gold (Union[numpy.ndarray, Sequence[int]]): The gold class's column per doc.
    n_bins (int): Number of equal-width confidence bins.
    RETURNS (float): ECE, in [0, 1].
    """
    return reliability(probs, gold, n_bins).ece


def probs_matrix(cats: List[Dict[str, float]], gold: List[Tuple[str, str]]) -> Tuple[List[str], numpy.ndarray, numpy.ndarray]:
    """Probabilities as a (docs × labels) matrix and the gold label's column per doc.

    cats (List[Dict[str, float]]): Label → probability per doc (a missing label: 0).
    gold (List[Tuple[str, str]]): (lang, label) per doc.
    RETURNS (Tuple[List[str], numpy.ndarray, numpy.ndarray]): Labels (columns), matrix, gold columns.
    """
    labels = sorted({label for c in cats for label in c})
    missing = sorted({label for _, label in gold} - set(labels))
    if missing:
        raise ValueError(f"the system predicts no probability for the gold labels {missing} (its labels: {labels})")
    P = numpy.asarray([[c.get(label, 0.0) for label in labels] for c in cats], dtype="f8")
    y = numpy.asarray([labels.index(label) for _, label in gold], dtype=int)
    return labels, P, y


def calibration_report(
    test_cats: List[Dict[str, float]],
    test_gold: List[Tuple[str, str]],
    langs: List[str],
    n_bins: int,
    exclusive: bool = True,
    dev_cats: Optional[List[Dict[str, float]]] = None,
    dev_gold: Optional[List[Tuple[str, str]]] = None,
) -> Dict[str, Any]:
    """Test ECE of one system before and (with dev docs) after temperature scaling.

    The temperature is fitted on the dev docs with ``fit_calibration`` (scale
    only) on the log-probabilities, which equal the logits up to a per-doc
    constant that the softmax ignores; it is applied to the test probabilities
    as the ``distill_calibration`` component would (``calibrate_probs``). The
    rule baselines' cats are 0/1: their confidence is always 1, so their ECE is
    100 − accuracy, and scaling can only give every doc one confidence (fitted
    to the dev accuracy); their temperature then only reflects the clipping of
    probabilities to [1e-7, 1 − 1e-7] (``hard_labels``).

    test_cats (List[Dict[str, float]]): The system's test probabilities.
    test_gold (List[Tuple[str, str]]): (lang, label) per test doc.
    langs (List[str]): Languages to report.
    n_bins (int): ECE bins.
    exclusive (bool): The system's classes are exclusive (else not measured).
    dev_cats (Optional[List[Dict[str, float]]]): The system's dev probabilities (None: no fit).
    dev_gold (Optional[List[Tuple[str, str]]]): (lang, label) per dev doc.
    RETURNS (Dict[str, Any]): ECE (percent), temperature, dev NLL, reliability bins.
    """
    if not exclusive:
        return {"measured": False, "reason": "multi-label classes: the top-class ECE and the softmax temperature need exclusive classes"}
    labels, P, y = probs_matrix(test_cats, test_gold)
    test_langs = numpy.asarray([lang for lang, _ in test_gold])

    def ece_per_lang(Q: numpy.ndarray) -> Dict[str, float]:
        return {lang: 100 * reliability(Q[test_langs == lang], y[test_langs == lang], n_bins).ece for lang in langs if (test_langs == lang).any()}

    before = reliability(P, y, n_bins)
    out: Dict[str, Any] = {
        "ece_before": 100 * before.ece,
        "ece_after": None,
        "temperature": None,
        "measured": False,
        "reason": "no dev docs (--dev) to fit a temperature on",
        "hard_labels": bool(numpy.isin(P, (0.0, 1.0)).all()),
        "per_lang": {lang: {"ece_before": e, "ece_after": None} for lang, e in ece_per_lang(P).items()},
        "reliability": {"before": before.to_dict(), "after": None},
    }
    if dev_cats is None or dev_gold is None:
        return out
    dev_labels, D, dy = probs_matrix(dev_cats, dev_gold)
    if dev_labels != labels:
        raise ValueError(f"the system's dev labels {dev_labels} differ from its test labels {labels}")
    calibration = fit_calibration(
        [probs_to_logits(dict(zip(labels, row)), True) for row in D],
        [{label: float(j == g) for j, label in enumerate(labels)} for g in dy],
        True,
        fit_bias=False,
    )
    Q = calibrate_probs(P, calibration.scale, [calibration.bias[label] for label in labels], True)
    after = reliability(Q, y, n_bins)
    out.update({
        "ece_after": 100 * after.ece,
        "temperature": 1 / calibration.scale,
        "scale": calibration.scale,
        "measured": True,
        "reason": None,
        "hard_labels": out["hard_labels"] and bool(numpy.isin(D, (0.0, 1.0)).all()),
        "n_dev_docs": len(D),
        "dev_nll_before": calibration.report["nll_before"],
        "dev_nll_after": calibration.report["nll_after"],
    })
    for lang, e in ece_per_lang(Q).items():
        out["per_lang"][lang]["ece_after"] = e
    out["reliability"]["after"] = after.to_dict()
    return out


def plot_reliability(results: Dict[str, Any], path: Path) -> None:
    """Reliability diagrams of every system, before and after temperature scaling, in one PNG.

    results (Dict[str, Any]): As written to results.json.
    path (Path): The PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [(name, r["calibration"]) for name, r in results["systems"].items() if r["calibration"].get("ece_before") is not None]
    ncols = max(1, min(3, len(systems)))
    nrows = max(1, -(-len(systems) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(systems):]:
        ax.set_visible(False)
    for ax, (name, cal) in zip(axes.flat, systems):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
        for key, color, text in (("before", "C0", "before"), ("after", "C1", "temperature-scaled")):
            rel = cal["reliability"][key]
            if rel is None:
                continue
            full = [b for b in rel["bins"] if b["count"]]
            # Marker area shows the share of docs in the bin.
            sizes = [8 + 300 * b["count"] / rel["n"] for b in full]
            x, y = [b["confidence"] for b in full], [b["accuracy"] for b in full]
            ax.plot(x, y, color=color, linewidth=1, marker="o", markersize=3, label=f"{text}: ECE {100 * rel['ece']:.1f} %")
            ax.scatter(x, y, s=sizes, color=color, alpha=0.5)
        if cal["hard_labels"]:
            title = f"{name} (0/1 outputs)"
        else:
            title = name if cal["temperature"] is None else f"{name} (T = {cal['temperature']:.3g})"
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    n_bins = results["calibration"]["n_bins"]
    fig.suptitle(f"Reliability on the test split ({n_bins} bins; marker area = share of docs)", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


__all__ = [
    "DEFAULT_N_BINS",
    "Reliability",
    "ReliabilityBin",
    "calibration_report",
    "expected_calibration_error",
    "plot_reliability",
    "probs_matrix",
    "reliability",
]
