"""A cascade: the student answers the texts it is sure of, the teacher the rest.

Per text, the student's top-class probability (optionally rescaled by a
temperature, as ``distill_calibration`` or ``spacy-distill calibrate`` fit it)
is compared with a threshold; below it the text is *deferred* to the teacher,
which runs once over all deferred texts of a batch. The threshold can be set
directly or chosen on dev for a share of deferred texts (:func:`threshold_for_share`).

The decision is numpy only; :class:`Cascade` runs two loaded spaCy pipelines and
needs whatever each of them needs (a torch-free student and, say, an ONNX or
fp32 teacher). The offline ``classify --cascade`` command and the workflow's
``cascade`` step use this module.
"""

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy

#: The ``model`` field of a cascade result.
STUDENT = "student"
TEACHER = "teacher"


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
        z = numpy.log(numpy.clip(P, 1e-12, 1.0)) / temperature
        z -= z.max(axis=1, keepdims=True)
        P = numpy.exp(z)
        P /= P.sum(axis=1, keepdims=True)
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


def combine(
    student_cats: Sequence[Dict[str, float]], teacher_cats: Dict[int, Dict[str, float]], deferred: Sequence[bool]
) -> List[Tuple[Dict[str, float], str]]:
    """The cascade's answer per text: the teacher's cats where deferred, else the student's.

    student_cats (Sequence[Dict[str, float]]): The student's cats per text.
    teacher_cats (Dict[int, Dict[str, float]]): The teacher's cats by text index (deferred ones).
    deferred (Sequence[bool]): The deferral mask.
    RETURNS (List[Tuple[Dict[str, float], str]]): (cats, model) per text.
    """
    out = []
    for i, (cats, d) in enumerate(zip(student_cats, deferred)):
        out.append((dict(teacher_cats[i]), TEACHER) if d else (dict(cats), STUDENT))
    return out


def cascade_throughput(student_docs_per_s: float, teacher_docs_per_s: float, share: float) -> float:
    """Docs/s of a cascade from its parts' measured rates: every doc pays the student,
    the deferred share also pays the teacher.

    student_docs_per_s (float): The student's rate.
    teacher_docs_per_s (float): The teacher's rate.
    share (float): Share of docs deferred.
    RETURNS (float): The cascade's rate.
    """
    return 1.0 / (1.0 / student_docs_per_s + share / teacher_docs_per_s)


@dataclass
class CascadeResult:
    """One text's cascade answer.

    cats (Dict[str, float]): The answering model's cats.
    model (str): "student" or "teacher".
    confidence (float): The student's (scaled) confidence.
    teacher_failed (bool): The teacher was asked but failed: the student's answer stands.
    """

    cats: Dict[str, float]
    model: str
    confidence: float
    teacher_failed: bool = False


class Cascade:
    """Two loaded spaCy pipelines as one classifier: the student first, the teacher for the rest.

    student (Any): A pipeline whose ``doc.cats`` are class probabilities.
    teacher (Any): A pipeline with the same labels.
    threshold (float): Defer texts whose confidence is below this.
    temperature (float): Temperature applied to the student's probabilities
        before the decision (1 = as they are; a ``distill_calibration``
        component in the student already calibrates them).
    batch_size (int): ``nlp.pipe`` batch size of both pipelines.
    """

    def __init__(self, student: Any, teacher: Any, *, threshold: float, temperature: float = 1.0, batch_size: int = 64) -> None:
        self.student = student
        self.teacher = teacher
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def __call__(self, texts: Iterable[str]) -> List[CascadeResult]:
        """Classify texts: the student on all, the teacher on the deferred ones in one pass.

        texts (Iterable[str]): The texts.
        RETURNS (List[CascadeResult]): One result per text, in order.
        """
        texts = list(texts)
        student_cats = [dict(doc.cats) for doc in self.student.pipe(texts, batch_size=self.batch_size)]
        labels = sorted({label for cats in student_cats for label in cats})
        conf = confidence([[c.get(k, 0.0) for k in labels] for c in student_cats], self.temperature) if labels else numpy.zeros(len(texts))
        # A text the student gives no cats (no tokens) has confidence 0 and goes to the teacher.
        mask = defer(conf, self.threshold) if labels else numpy.ones(len(texts), dtype=bool)
        idx = [i for i, d in enumerate(mask) if d]
        teacher_cats: Dict[int, Dict[str, float]] = {}
        failed = False
        if idx:
            try:
                docs = self.teacher.pipe([texts[i] for i in idx], batch_size=self.batch_size)
                teacher_cats = {i: dict(doc.cats) for i, doc in zip(idx, docs)}
            except Exception:  # noqa: BLE001 - any teacher failure degrades to the student's answer
                failed = True
        results = []
        for i, cats in enumerate(student_cats):
            if mask[i] and not failed:
                results.append(CascadeResult(teacher_cats[i], TEACHER, float(conf[i])))
            else:
                results.append(CascadeResult(cats, STUDENT, float(conf[i]), teacher_failed=bool(mask[i] and failed)))
        return results


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
    labels = sorted(student[0]["cats"]) if student else []
    conf = confidence([[r["cats"].get(k, 0.0) for k in labels] for r in student], temperature)
    mask = defer(conf, threshold)
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
    labels = sorted(student[0]["cats"]) if student else []
    return confidence([[r["cats"].get(k, 0.0) for k in labels] for r in student], temperature)


def choose_threshold(dev_student: List[Dict[str, Any]], share: float, temperature: float = 1.0) -> float:
    """The threshold that defers ``share`` of the dev docs.

    dev_student (List[Dict[str, Any]]): The student's dev predictions.
    share (float): The deferral budget.
    temperature (float): The student's temperature.
    RETURNS (float): The threshold.
    """
    return threshold_for_share(student_confidences(dev_student, temperature), share)


__all__ = [
    "Cascade",
    "CascadeResult",
    "cascade_throughput",
    "choose_threshold",
    "combine",
    "confidence",
    "defer",
    "evaluate_budget",
    "macro_f",
    "threshold_for_share",
]

