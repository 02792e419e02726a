"""The rule baselines (random, majority): folders holding ``model.json``, written by
``scripts/baselines.py`` and loaded as pipeline-like objects (CJK-aware ``xx``
tokenizer + the rule) wherever a system is evaluated."""

import random
from pathlib import Path
from typing import Iterable, List, Optional

import spacy
from spacy.language import Language
from spacy.tokens import Doc


class RuleClassifier:
    """A pipeline-like object: tokenize with the CJK-aware ``xx`` tokenizer, set cats by a rule.

    kind (str): "random" (seeded uniform draw per doc) or "majority".
    labels (List[str]): The labels.
    label (Optional[str]): The majority label.
    seed (int): Seed of the random baseline.
    """

    def __init__(self, kind: str, labels: List[str], label: Optional[str] = None, seed: int = 0) -> None:
        self.kind = kind
        self.labels = list(labels)
        self.label = label
        self.rng = random.Random(seed)
        self.tokenizer_nlp: Language = spacy.blank("xx", config={"nlp": {"tokenizer": {"@tokenizers": "spacy-distill.CJKCharTokenizer.v1"}}})

    def _classify(self, doc: Doc) -> Doc:
        chosen = self.rng.choice(self.labels) if self.kind == "random" else self.label
        doc.cats = {name: float(name == chosen) for name in self.labels}
        return doc

    def __call__(self, text: str) -> Doc:
        return self._classify(self.tokenizer_nlp.make_doc(text))

    def pipe(self, texts: Iterable[str], batch_size: int = 256) -> Iterable[Doc]:
        for text in texts:
            yield self(text)


def load_rule_classifier(path: Path) -> RuleClassifier:
    """Load a baseline folder written by ``scripts/baselines.py``.

    path (Path): Folder with model.json.
    RETURNS (RuleClassifier): The baseline.
    """
    data = spacy.util.srsly.read_json(path / "model.json")
    return RuleClassifier(data["kind"], data["labels"], data.get("label"), data.get("seed", 0))


__all__ = ["RuleClassifier", "load_rule_classifier"]
