"""The accuracy-vs-speed plot of ``results.json`` (mean macro-F against tokens/s, log
scale), with the Pareto front (batched speed) marked. matplotlib is imported only
when a plot is drawn."""

from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..io import atomic_path


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


def plot_accuracy_vs_speed(results: Dict[str, Any], output_path: Path) -> List[str]:
    """Write the accuracy-vs-speed scatter plot of every system (batched and one doc at a time).

    results (Dict[str, Any]): As written to results.json by ``scripts/evaluate_systems.py``.
    output_path (Path): PNG to write.
    RETURNS (List[str]): The Pareto front (batched speed, mean macro-F), fastest first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s (log scale; o = batched, x = one doc at a time)")
    ax.set_ylabel("mean macro-F over languages (test)")
    ax.set_title("Review sentiment: accuracy vs speed (" + ", ".join(results["langs"]) + ")")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(output_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return front


__all__ = ["pareto_front", "plot_accuracy_vs_speed"]
