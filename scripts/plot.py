"""Plot accuracy (mean macro-F) against speed (tokens/s, log scale) from results.json,
with the Pareto front (batched speed) marked (``spacy_distill.evaluation.plots``)."""

import json
from pathlib import Path

import typer

from spacy_distill.evaluation.plots import plot_accuracy_vs_speed
from spacy_distill.project import run


def main(
    results_path: Path = typer.Argument(..., help="metrics/results.json"),
    output_path: Path = typer.Argument(..., help="Output PNG (metrics/accuracy_vs_speed.png)"),
) -> None:
    """Write the accuracy-vs-speed scatter plot.

    results_path (Path): Results JSON of scripts/evaluate_systems.py.
    output_path (Path): PNG to write.
    """
    results = json.loads(results_path.read_text(encoding="utf8"))
    front = plot_accuracy_vs_speed(results, output_path)
    typer.echo("Pareto front (batched speed, mean macro-F): " + ", ".join(front))


if __name__ == "__main__":
    run(main)
