"""Fit the trivial baselines (random, majority) on the train split.

Each is written as a folder holding ``model.json``; ``scripts/evaluate_systems.py``
loads such folders as pipelines (CJK-aware ``xx`` tokenizer + the rule:
``spacy_distill.evaluation.baselines``).
"""

from collections import Counter
from pathlib import Path
from typing import Any, Dict

import spacy
import typer
from spacy.tokens import DocBin

from spacy_distill.io import write_json
from spacy_distill.project import LABELS, run


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
