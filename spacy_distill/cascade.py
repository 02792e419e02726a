"""A cascade: the student answers the texts it is sure of, the teacher the rest.

Per text, the student's top-class probability (optionally rescaled by a
temperature, as ``distill_calibration`` or ``spacy-distill calibrate`` fit it)
is compared with a threshold; below it the text is *deferred* to the teacher,
which runs once over all deferred texts of a batch. The threshold can be set
directly or chosen on dev for a share of deferred texts (:func:`threshold_for_share`).

The decision is numpy only; :class:`spacy_distill.serving.cascade.Cascade` runs two loaded spaCy pipelines and
needs whatever each of them needs (a torch-free student and, say, an ONNX or
fp32 teacher). The offline ``classify --cascade`` command and the workflow's
``cascade`` step use this module.
"""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy

from .pipeline.activations import softmax

logger = logging.getLogger("spacy_distill.cascade")

#: The ``model`` field of a cascade result.
STUDENT = "student"
TEACHER = "teacher"
#: The threshold when none is given and no cascade report is read: defers texts the
#: student gives less than 90 % (at its temperature). Replace it by the dev-chosen
#: value of ``metrics/cascade.json`` (``threshold_from_report``) once the step has run.
DEFAULT_THRESHOLD = 0.9


def confidence(probs: Sequence[Sequence[float]], temperature: float = 1.0) -> numpy.ndarray:
    """The top-class probability of each row after temperature scaling.

    Rows are class probabilities (softmax outputs); scaling divides their logs
    by ``temperature`` and renormalises, which is what a fitted temperature does
    to the logits (the log of a softmax differs from the logits by a per-row
    constant). A temperature of 1 returns the top probability as it is.

    probs (Sequence[Sequence[float]]): One row of class probabilities per text.
    temperature (float): The temperature (> 0).
    RETURNS (numpy.ndarray): One confidence per row (float64).
    """
    if temperature <= 0:
        raise ValueError(f"cascade: temperature must be > 0, got {temperature}")
    P = numpy.asarray(probs, dtype="f8")
    if P.ndim != 2 or P.shape[1] < 2:
        raise ValueError(f"cascade: need one row of at least 2 class probabilities per text, got shape {P.shape}")
    if not len(P):
        return numpy.zeros((0,), dtype="f8")
    if temperature != 1.0:
        # Clipped to [1e-12, 1], not [PROB_EPS, 1 - PROB_EPS] as logits_from_probs
        # does: the confidences (and the dev-chosen thresholds on them) stay as they were.
        P = softmax(numpy.log(numpy.clip(P, 1e-12, 1.0)), temperature)
    return P.max(axis=1)


def defer(conf: Sequence[float], threshold: float) -> numpy.ndarray:
    """Which texts go to the teacher: those whose confidence is below the threshold.

    conf (Sequence[float]): The student's confidence per text.
    threshold (float): Texts with confidence < threshold are deferred (0: none; > 1: all).
    RETURNS (numpy.ndarray): A boolean mask, True = deferred.
    """
    return numpy.asarray(conf, dtype="f8") < threshold


def threshold_for_share(conf: Sequence[float], share: float) -> float:
    """The threshold that defers (at most) ``share`` of the texts: the least confident ones.

    Ties at the cut are kept with the student, so the deferred share never
    exceeds the budget.

    conf (Sequence[float]): Confidences on dev.
    share (float): Target share in [0, 1].
    RETURNS (float): A threshold for :func:`defer` (0.0 defers nothing).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"cascade: share must be in [0, 1], got {share}")
    c = numpy.sort(numpy.asarray(conf, dtype="f8"))
    k = int(numpy.floor(share * len(c) + 1e-9))
    if k == 0:
        return 0.0
    if k >= len(c):
        return float(numpy.nextafter(c[-1], numpy.inf))
    # Defer the k least confident: threshold = the (k+1)-th smallest; texts tied with it stay.
    return float(c[k])


def cascade_throughput(student_docs_per_s: float, teacher_docs_per_s: float, share: float) -> float:
    """Docs/s of a cascade from its parts' measured rates: every doc pays the student,
    the deferred share also pays the teacher.

    student_docs_per_s (float): The student's rate.
    teacher_docs_per_s (float): The teacher's rate.
    share (float): Share of docs deferred.
    RETURNS (float): The cascade's rate.
    """
    return 1.0 / (1.0 / student_docs_per_s + share / teacher_docs_per_s)


def result_confidences(results: Sequence[Dict[str, Any]], temperature: float = 1.0) -> List[Optional[float]]:
    """The student's confidence per ``/classify``-style result (``{"cats": ...}``).

    A result without cats (a text without tokens, which no model is run on) has
    no confidence: None.

    results (Sequence[Dict[str, Any]]): One result per text.
    temperature (float): The student's temperature.
    RETURNS (List[Optional[float]]): One confidence (or None) per result.
    """
    with_cats = [i for i, r in enumerate(results) if r.get("cats")]
    out: List[Optional[float]] = [None] * len(results)
    if not with_cats:
        return out
    # One label order for all rows: the rows of one student share its labels.
    labels = sorted(results[with_cats[0]]["cats"])
    conf = confidence([[float(results[i]["cats"].get(k, 0.0)) for k in labels] for i in with_cats], temperature)
    for i, c in zip(with_cats, conf):
        out[i] = float(c)
    return out


def plan(results: Sequence[Dict[str, Any]], threshold: float, temperature: float = 1.0) -> Tuple[List[Optional[float]], List[int]]:
    """The cascade's decision over a batch of student results: the one code path of
    :class:`spacy_distill.serving.cascade.Cascade`, ``classify --cascade`` and the server.

    Texts without cats (no tokens) are never deferred: the teacher is not run on
    them either, so it could not answer better.

    results (Sequence[Dict[str, Any]]): The student's results (``{"cats", ...}``).
    threshold (float): Defer texts whose confidence is below this.
    temperature (float): The student's temperature.
    RETURNS (Tuple[List[Optional[float]], List[int]]): Confidence per text and
        the indices of the deferred texts, in order.
    """
    conf = result_confidences(results, temperature)
    return conf, [i for i, c in enumerate(conf) if c is not None and c < threshold]


def merge(
    student_results: Sequence[Dict[str, Any]],
    conf: Sequence[Optional[float]],
    deferred: Sequence[int],
    teacher_results: Optional[Sequence[Dict[str, Any]]],
) -> List[Dict[str, Any]]:
    """The cascade's answer per text: the teacher's where deferred, else the student's.

    Each result gets ``model`` ("student" or "teacher") and ``confidence`` (the
    student's); when the teacher failed (``teacher_results`` None), deferred
    texts keep the student's answer with ``teacher_failed: true``.

    student_results (Sequence[Dict[str, Any]]): The student's results.
    conf (Sequence[Optional[float]]): From :func:`plan`.
    deferred (Sequence[int]): From :func:`plan`.
    teacher_results (Optional[Sequence[Dict[str, Any]]]): The teacher's results
        for the deferred texts, in their order, or None if the teacher failed.
    RETURNS (List[Dict[str, Any]]): One result per text, in order.
    """
    if teacher_results is not None and len(teacher_results) != len(deferred):
        raise ValueError(f"cascade: {len(deferred)} texts deferred but {len(teacher_results)} teacher results")
    out = [{**r, "model": STUDENT, "confidence": c} for r, c in zip(student_results, conf)]
    for k, i in enumerate(deferred):
        if teacher_results is None:
            out[i]["teacher_failed"] = True
        else:
            out[i] = {**teacher_results[k], "model": TEACHER, "confidence": conf[i]}
    return out


def count_models(results: Iterable[Dict[str, Any]]) -> Dict[str, int]:
    """How many results each model answered, and how many fell back after a teacher failure.

    results (Iterable[Dict[str, Any]]): :func:`merge` output.
    RETURNS (Dict[str, int]): ``{"student": n, "teacher": n, "teacher_failed": n}``.
    """
    counts = {STUDENT: 0, TEACHER: 0, "teacher_failed": 0}
    for r in results:
        counts[r["model"]] += 1
        counts["teacher_failed"] += int(bool(r.get("teacher_failed")))
    return counts


def resolve_temperature(
    pipe_names: Sequence[str], *, temperature: Optional[float] = None, calibration: Optional[Path] = None
) -> float:
    """The temperature the decision applies to the student's probabilities.

    A given temperature wins; else a calibration file's (``spacy-distill
    calibrate``: temperature = 1 / scale); else 1, which is right both for a
    student with a ``distill_calibration`` component (its ``doc.cats`` are
    calibrated already, and scaling them again would count the temperature
    twice) and for raw probabilities.

    pipe_names (Sequence[str]): The student's ``nlp.pipe_names``.
    temperature (Optional[float]): A given temperature (> 0).
    calibration (Optional[Path]): A calibration JSON.
    RETURNS (float): The temperature.
    """
    if temperature is not None:
        if not temperature > 0:
            raise ValueError(f"cascade: temperature must be > 0, got {temperature}")
        return float(temperature)
    if calibration is not None:
        from .teacher.calibrate import read_calibration

        cal = read_calibration(Path(calibration))
        if any(abs(b) > 0 for b in cal.bias.values()):
            # With per-label biases the calibrated top class is no longer a function of one temperature.
            raise ValueError(f"{calibration}: the calibration has per-label biases; add it to the student with "
                             "`spacy-distill calibrate-pipeline` instead")
        if "distill_calibration" in pipe_names:
            raise ValueError(f"{calibration}: the student already has a distill_calibration component; "
                             "a calibration file would scale its probabilities twice")
        return 1.0 / cal.scale
    return 1.0


def threshold_from_report(path: Path, share: Optional[float] = None) -> Tuple[float, float]:
    """The dev-chosen threshold (and the temperature it is on) from a cascade report.

    path (Path): ``metrics/cascade.json`` (``scripts/cascade.py``).
    share (Optional[float]): The deferral budget (one of the report's); None: its default.
    RETURNS (Tuple[float, float]): The threshold and the temperature.
    """
    import json

    try:
        report = json.loads(Path(path).read_text(encoding="utf8"))
        rows = [r for r in report["rows"] if r["name"].startswith("cascade_")]
        temperature = float(report["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a cascade report ({type(err).__name__}: {err})") from None
    if share is None:
        match = [r for r in rows if r["name"] == report.get("default")]
    else:
        match = [r for r in rows if abs(float(r["budget"]) - share) < 1e-9]
    if not match:
        budgets = ", ".join(f"{float(r['budget']):g}" for r in rows)
        raise ValueError(f"{path}: no dev-chosen threshold for a deferral share of {share} (it has {budgets})")
    return float(match[0]["threshold"]), temperature


def resolve_settings(
    pipe_names: Sequence[str],
    *,
    threshold: Optional[float] = None,
    defer_share: Optional[float] = None,
    report: Optional[Path] = None,
    temperature: Optional[float] = None,
    calibration: Optional[Path] = None,
) -> Tuple[float, float]:
    """The threshold and temperature of a cascade from what the user gave
    (``classify --cascade`` and ``serve --cascade`` share this).

    A threshold is taken as given; a deferral share is looked up in the cascade
    report (the threshold chosen on dev for that budget, and the temperature it
    is on); with a report and neither, the report's default budget; with
    nothing, :data:`DEFAULT_THRESHOLD`.

    pipe_names (Sequence[str]): The student's ``nlp.pipe_names``.
    threshold (Optional[float]): A given threshold.
    defer_share (Optional[float]): A deferral budget of the report.
    report (Optional[Path]): ``metrics/cascade.json``.
    temperature (Optional[float]): A given temperature.
    calibration (Optional[Path]): A calibration JSON (its temperature).
    RETURNS (Tuple[float, float]): The threshold and the temperature.
    """
    if threshold is not None and defer_share is not None:
        raise ValueError("cascade: give a threshold or a deferral share, not both")
    if defer_share is not None and report is None:
        raise ValueError("cascade: a deferral share needs the cascade report (metrics/cascade.json) that chose its threshold on dev")
    if temperature is not None and calibration is not None:
        raise ValueError("cascade: give a temperature or a calibration file, not both")
    temp = resolve_temperature(pipe_names, temperature=temperature, calibration=calibration)
    if threshold is not None:
        return float(threshold), temp
    if report is None:
        return DEFAULT_THRESHOLD, temp
    thr, report_temp = threshold_from_report(report, defer_share)
    # The report's thresholds are on its temperature; a calibrated student is on its own already.
    if temperature is None and calibration is None and "distill_calibration" not in pipe_names:
        temp = report_temp
    return thr, temp


@dataclass(frozen=True)
class CascadeOptions:
    """What the user gave for a cascade's threshold and temperature: the options
    that ``classify --cascade`` and ``serve --cascade`` share, by their CLI names.

    threshold (Optional[float]): A given threshold.
    defer_share (Optional[float]): A deferral budget of the report.
    cascade_report (Optional[Path]): ``metrics/cascade.json``.
    temperature (Optional[float]): A given temperature.
    calibration (Optional[Path]): A calibration JSON (its temperature).
    """

    threshold: Optional[float] = None
    defer_share: Optional[float] = None
    cascade_report: Optional[Path] = None
    temperature: Optional[float] = None
    calibration: Optional[Path] = None

    @classmethod
    def pop_from(cls, options: Dict[str, Any]) -> "CascadeOptions":
        """Take the cascade's options out of a command's keyword arguments.

        options (Dict[str, Any]): The arguments; the cascade's are removed.
        RETURNS (CascadeOptions): Them.
        """
        return cls(**{f.name: options.pop(f.name) for f in dataclasses.fields(cls) if f.name in options})

    def resolve(self, pipe_names: Sequence[str]) -> Tuple[float, float]:
        """The threshold and temperature (:func:`resolve_settings`).

        pipe_names (Sequence[str]): The student's ``nlp.pipe_names``.
        RETURNS (Tuple[float, float]): The threshold and the temperature.
        """
        return resolve_settings(pipe_names, threshold=self.threshold, defer_share=self.defer_share,
                                report=self.cascade_report, temperature=self.temperature, calibration=self.calibration)


def macro_f(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Macro-averaged F1 (percent) over the gold labels.

    gold (Sequence[str]): Gold label per doc.
    pred (Sequence[str]): Predicted label per doc.
    RETURNS (float): Macro-F in percent.
    """
    scores = []
    for label in sorted(set(gold)):
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def evaluate_budget(
    student: List[Dict[str, Any]], teacher: List[Dict[str, Any]], threshold: float, temperature: float, langs: List[str]
) -> Dict[str, Any]:
    """Score a cascade on stored per-doc predictions (``evaluate --predictions``).

    student (List[Dict[str, Any]]): Per doc ``{"lang", "gold", "cats"}`` of the student.
    teacher (List[Dict[str, Any]]): The same docs, the teacher's.
    threshold (float): The deferral threshold.
    temperature (float): The student's temperature.
    langs (List[str]): Languages to report.
    RETURNS (Dict[str, Any]): ``per_lang`` macro-F, ``mean`` (over languages), ``deferred`` share.
    """
    if len(student) != len(teacher):
        raise ValueError(f"cascade: {len(student)} student predictions but {len(teacher)} teacher predictions")
    for i, (s, t) in enumerate(zip(student, teacher)):
        if (s["lang"], s["gold"]) != (t["lang"], t["gold"]):
            raise ValueError(f"cascade: doc {i}: the student and teacher predictions are of different docs")
    # The same decision as the server's and classify's.
    _conf, deferred = plan(student, threshold, temperature)
    mask = numpy.zeros(len(student), dtype=bool)
    mask[deferred] = True
    pred = [max((t if d else s)["cats"].items(), key=lambda kv: kv[1])[0] for s, t, d in zip(student, teacher, mask)]
    per_lang = {}
    for lang in langs:
        idx = [i for i, r in enumerate(student) if r["lang"] == lang]
        per_lang[lang] = {
            "macro_f": macro_f([student[i]["gold"] for i in idx], [pred[i] for i in idx]),
            "deferred": float(mask[idx].mean()) if idx else 0.0,
        }
    return {
        "per_lang": per_lang,
        "mean": sum(v["macro_f"] for v in per_lang.values()) / len(per_lang),
        "deferred": float(mask.mean()) if len(mask) else 0.0,
    }


def student_confidences(student: List[Dict[str, Any]], temperature: float) -> numpy.ndarray:
    """The student's confidences on stored predictions (for :func:`threshold_for_share`).

    student (List[Dict[str, Any]]): Per doc ``{"cats": ...}``.
    temperature (float): The student's temperature.
    RETURNS (numpy.ndarray): One confidence per doc.
    """
    conf = result_confidences(student, temperature)
    # A doc without cats is never deferred: it ranks as the most confident.
    return numpy.asarray([2.0 if c is None else c for c in conf], dtype="f8")


def choose_threshold(dev_student: List[Dict[str, Any]], share: float, temperature: float = 1.0) -> float:
    """The threshold that defers ``share`` of the dev docs.

    dev_student (List[Dict[str, Any]]): The student's dev predictions.
    share (float): The deferral budget.
    temperature (float): The student's temperature.
    RETURNS (float): The threshold.
    """
    return threshold_for_share(student_confidences(dev_student, temperature), share)


__all__ = [
    "DEFAULT_THRESHOLD",
    "STUDENT",
    "TEACHER",
        "cascade_throughput",
    "choose_threshold",
    "confidence",
    "count_models",
    "defer",
    "evaluate_budget",
    "macro_f",
    "merge",
    "plan",
    "resolve_settings",
    "resolve_temperature",
    "result_confidences",
    "threshold_for_share",
    "threshold_from_report",
]

