"""Plot accuracy (mean macro-F) against speed (tokens/s, log scale) from results.json,
with the Pareto front (batched speed) marked."""

import json
from pathlib import Path
from typing import Dict, List, Tuple

import typer
from common import atomic_path, run


def pareto_front(points: Dict[str, Tuple[float, float]]) -> List[str]:
    """The systems no other system beats on both speed and accuracy.

    points (Dict[str, Tuple[float, float]]): Name → (tokens/s, macro-F).
    RETURNS (List[str]): Names on the front, fastest first.
    """
    front = [
        name
        for name, (x, y) in points.items()
        if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for n2, (x2, y2) in points.items() if n2 != name)
    ]
    return sorted(front, key=lambda n: -points[n][0])


def main(
    results_path: Path = typer.Argument(..., help="metrics/results.json"),
    output_path: Path = typer.Argument(..., help="Output PNG (metrics/accuracy_vs_speed.png)"),
) -> None:
    """Write the accuracy-vs-speed scatter plot.

    results_path (Path): Results JSON of scripts/evaluate_systems.py.
    output_path (Path): PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(results_path.read_text(encoding="utf8"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results["systems"].items():
        for mode, marker in (("batch", "o"), ("single", "x")):
            x = r["speed"][mode]["tokens_per_s"]
            y = r["mean"]["macro_f"]
            ax.scatter([x], [y], marker=marker, color="C0" if mode == "batch" else "C1")
            if mode == "batch":
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    batch = {name: (r["speed"]["batch"]["tokens_per_s"], r["mean"]["macro_f"]) for name, r in results["systems"].items()}
    front = pareto_front(batch)
    ax.plot([batch[n][0] for n in front], [batch[n][1] for n in front], color="C3", linestyle="--", linewidth=1,
            marker="o", markerfacecolor="none", markersize=11, label="Pareto front (batched): " + ", ".join(front))
    ax.legend(loc="lower left", fontsize=8)
    typer.echo("Pareto front (batched speed, mean macro-F): " + ", ".join(front))
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s (log scale; o = batched, x = one doc at a time)")
    ax.set_ylabel("mean macro-F over languages (test)")
    ax.set_title("Review sentiment: accuracy vs speed (" + ", ".join(results["langs"]) + ")")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(output_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)


if __name__ == "__main__":
    run(main)
