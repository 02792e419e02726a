"""Predictions of a system (a spaCy pipeline or a rule baseline folder) and their scores."""

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import spacy
from spacy.language import Language

from ..progress import progress_bar
from ..teacher.label import find_textcat
from .baselines import load_rule_classifier
from .scoring import score


def load_system(path: Path) -> Any:
    """Load a spaCy pipeline, or a rule baseline folder (``model.json``).

    path (Path): The system's folder.
    RETURNS (Any): An object with ``__call__(text)`` and ``pipe(texts, batch_size)``.
    """
    if (path / "model.json").exists():
        return load_rule_classifier(path)
    return spacy.load(path)


def predict_cats(nlp: Any, texts: List[str], batch_size: int, desc: Optional[str] = None) -> List[Dict[str, float]]:
    """Every text's ``doc.cats``, from one pass of the system.

    nlp (Any): The system.
    texts (List[str]): The texts.
    batch_size (int): Batch size.
    desc (Optional[str]): Show progress under this name (the teacher takes minutes).
    RETURNS (List[Dict[str, float]]): Label → probability per text.
    """
    bar = progress_bar(len(texts), desc or "", unit="doc", enabled=desc is not None)
    cats = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        cats.append(dict(doc.cats))
        bar.update(1)
    bar.close()
    return cats


def score_cats(cats: List[Dict[str, float]], gold: List[Tuple[str, str]], langs: List[str]) -> Dict[str, Any]:
    """Score predicted cats (the argmax is the prediction; no cats: none).

    cats (List[Dict[str, float]]): Label → probability per doc.
    gold (List[Tuple[str, str]]): (lang, label) per doc.
    langs (List[str]): Languages to report.
    RETURNS (Dict[str, Any]): Scores (see ``score``).
    """
    labels = sorted({label for _, label in gold})
    pred = [max(c, key=c.get) if c else "" for c in cats]
    return score(gold, pred, langs, labels)


def evaluate_system(nlp: Any, texts: List[str], gold: List[Tuple[str, str]], langs: List[str], batch_size: int) -> Dict[str, Any]:
    """Predict the test texts and score them.

    nlp (Any): The system.
    texts (List[str]): Test texts.
    gold (List[Tuple[str, str]]): (lang, label) per text.
    langs (List[str]): Languages to report.
    batch_size (int): Batch size.
    RETURNS (Dict[str, Any]): Scores (see ``score``).
    """
    return score_cats(predict_cats(nlp, texts, batch_size), gold, langs)


def exclusive_classes(nlp: Any, cats: List[Dict[str, float]]) -> bool:
    """Whether a system's classes are exclusive (softmax), which ECE of the top class needs.

    nlp (Any): A spaCy pipeline (its text classifier decides) or a rule baseline
        (one label per doc: exclusive).
    cats (List[Dict[str, float]]): Its predictions, which decide for a pipeline
        without a known text classifier: exclusive if every doc's probabilities
        sum to 1 (a compressed teacher may wrap its classifier in another factory).
    RETURNS (bool): Exclusive classes.
    """
    if isinstance(nlp, Language):
        try:
            return find_textcat(nlp)[1]
        except ValueError:
            return all(abs(sum(c.values()) - 1.0) < 1e-3 for c in cats)
    return True


__all__ = ["evaluate_system", "exclusive_classes", "load_system", "predict_cats", "score_cats"]
