"""Probe: the log-odds of two trained pipelines mixed, (1 - w) * A + w * B, for a grid of w.

Scores every w on the gold dev set (where w is chosen), the test set and the
out-of-domain sets (reported only): mean macro-F over languages. Used to measure the
jointly trained BiLSTM student (A) mixed with its character n-gram block fitted to
convergence (B, ``spacy-distill.fit_char_ngrams.v1``) in metrics/student_mean_vectors.md.

    python benchmarks/probe_logit_mix.py training/student/model-best PIPELINE_B \
        corpus/dev.spacy corpus/test.spacy ../shared/data/ood [--weights 0,0.2,...,1]
"""

from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import spacy
import typer

from spacy_distill.evaluation.data import read_ood, read_test
from spacy_distill.evaluation.scoring import score

LABELS = ["NEGATIVE", "POSITIVE"]
LANGS = ["de", "en", "es", "fr", "ja", "zh"]


def log_odds(nlp: spacy.language.Language, texts: List[str]) -> numpy.ndarray:
    """log P(POSITIVE) / P(NEGATIVE) of each text."""
    p = numpy.asarray([doc.cats["POSITIVE"] for doc in nlp.pipe(texts, batch_size=256)], dtype="f8")
    p = numpy.clip(p, 1e-7, 1 - 1e-7)
    return numpy.log(p / (1 - p))


def main(
    a: Path = typer.Argument(..., exists=True, help="Pipeline A"),
    b: Path = typer.Argument(..., exists=True, help="Pipeline B"),
    dev: Path = typer.Argument(..., exists=True, help="Gold dev DocBin"),
    test: Path = typer.Argument(..., exists=True, help="Gold test DocBin"),
    ood_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Out-of-domain .tsv sets"),
    weights: str = typer.Option("0,0.2,0.3,0.4,0.5,0.6,0.7,0.8,1", "--weights", help="Weights of B, comma-separated"),
) -> None:
    """Print the mean macro-F of each mix on each set."""
    nlp_a, nlp_b = spacy.load(a), spacy.load(b)
    sets: Dict[str, Tuple[List[str], List[Tuple[str, str]]]] = {"dev": read_test(dev, LANGS), "test": read_test(test, LANGS)}
    for path in sorted(ood_dir.glob("*.tsv")):
        sets[path.stem] = read_ood(path)
    odds = {name: (log_odds(nlp_a, texts), log_odds(nlp_b, texts)) for name, (texts, _) in sets.items()}
    for w in [float(x) for x in weights.split(",")]:
        parts = []
        for name, (_, gold) in sets.items():
            mixed = (1 - w) * odds[name][0] + w * odds[name][1]
            pred = [LABELS[int(x > 0)] for x in mixed]
            langs = sorted({lang for lang, _ in gold})
            parts.append(f"{name} {score(gold, pred, langs, LABELS)['mean']['macro_f']:.2f}")
        typer.echo(f"w={w}: " + "  ".join(parts))


if __name__ == "__main__":
    typer.run(main)
