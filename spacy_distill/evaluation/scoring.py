"""Accuracy and macro-F per language, and their mean over languages: the measure
every table of the project reports (test, dev, out of domain)."""

from typing import Any, Dict, List, Tuple


def macro_f(gold: List[str], pred: List[str], labels: List[str]) -> float:
    """Macro-averaged F1 over labels, in percent.

    gold (List[str]): Gold labels.
    pred (List[str]): Predicted labels.
    labels (List[str]): All labels.
    RETURNS (float): Macro-F.
    """
    fs = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        fs.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100 * sum(fs) / len(fs)


def score(gold: List[Tuple[str, str]], pred: List[str], langs: List[str], labels: List[str]) -> Dict[str, Any]:
    """Accuracy and macro-F per language and their mean.

    gold (List[Tuple[str, str]]): (lang, label) per test doc.
    pred (List[str]): Predicted label per doc.
    langs (List[str]): Languages to report.
    labels (List[str]): All labels.
    RETURNS (Dict[str, Any]): {"per_lang": {lang: {...}}, "mean": {...}}.
    """
    per_lang: Dict[str, Dict[str, float]] = {}
    for lang in langs:
        idx = [i for i, (lg, _) in enumerate(gold) if lg == lang]
        g = [gold[i][1] for i in idx]
        p = [pred[i] for i in idx]
        per_lang[lang] = {
            "n": len(idx),
            "acc": 100 * sum(a == b for a, b in zip(g, p)) / len(idx) if idx else 0.0,
            "macro_f": macro_f(g, p, labels) if idx else 0.0,
        }
    mean = {k: sum(v[k] for v in per_lang.values()) / len(per_lang) for k in ("acc", "macro_f")}
    return {"per_lang": per_lang, "mean": mean}


__all__ = ["macro_f", "score"]
