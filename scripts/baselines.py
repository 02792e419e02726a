"""Fit the trivial baselines (random, majority) on the train split.

Each is written as a folder holding ``model.json``; ``scripts/evaluate_systems.py``
loads such folders as pipelines (CJK-aware ``xx`` tokenizer + the rule).
"""

import random
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import spacy
import typer
from common import LABELS, run, write_json
from spacy.language import Language
from spacy.tokens import Doc, DocBin


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
    """Load a baseline folder written by this script.

    path (Path): Folder with model.json.
    RETURNS (RuleClassifier): The baseline.
    """
    data = spacy.util.srsly.read_json(path / "model.json")
    return RuleClassifier(data["kind"], data["labels"], data.get("label"), data.get("seed", 0))


def main(
    train_path: Path = typer.Argument(..., help="Gold train DocBin (corpus/train.spacy)"),
    random_dir: Path = typer.Argument(..., help="Output folder of the random baseline"),
    majority_dir: Path = typer.Argument(..., help="Output folder of the majority baseline"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline"),
) -> None:
    """Write ``model.json`` for the random and majority baselines.

    train_path (Path): Train DocBin.
    random_dir (Path): Random baseline folder.
    majority_dir (Path): Majority baseline folder.
    seed (int): Random seed.
    """
    vocab = spacy.blank("xx").vocab
    counts: Counter = Counter()
    for doc in DocBin().from_disk(train_path).get_docs(vocab):
        if doc.cats:
            counts[max(doc.cats, key=doc.cats.get)] += 1
    labels = sorted(set(counts) | set(LABELS))
    # Most frequent train label; ties (the balanced default) go to the first label in sorted order.
    majority = sorted(labels, key=lambda lab: (-counts[lab], lab))[0]
    info: Dict[str, Any] = {"labels": labels, "train_counts": dict(counts)}
    write_json(random_dir / "model.json", {"kind": "random", "seed": seed, **info})
    write_json(majority_dir / "model.json", {"kind": "majority", "label": majority, **info})
    typer.echo(f"train label counts {dict(counts)}; majority = {majority}")


if __name__ == "__main__":
    run(main)
