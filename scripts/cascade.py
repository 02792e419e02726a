"""Cascade report: the student answers what it is sure of, the teacher the rest.

Reads the per-doc predictions that ``evaluate --predictions`` wrote (the student's
and teacher's dev and test probabilities) and ``metrics/results.json`` (their
measured batched speed and the student's dev-fitted temperature). On dev it
chooses the threshold for each deferral budget; on test it reports macro-F per
language, the share deferred and the throughput with the teacher's cost included
(computed from the measured rates: every doc pays the student, the deferred ones
the teacher too). Writes ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png``.
"""

import json
from pathlib import Path
from typing import Any, Dict, List

import typer
from spacy.cli._util import parse_config_overrides

from spacy_distill.cascade import cascade_throughput, choose_threshold, evaluate_budget
from spacy_distill.io import atomic_path, write_json, write_text
from spacy_distill.project import load_section, run, split_langs


def read_predictions(path: Path) -> List[Dict[str, Any]]:
    """Per-doc predictions ``{"lang", "gold", "cats"}`` from a JSONL file (errors name file:line).

    path (Path): ``<system>.<split>.jsonl`` from ``evaluate --predictions``.
    RETURNS (List[Dict[str, Any]]): One row per doc, in doc order.
    """
    if not path.exists():
        raise typer.BadParameter(f"{path}: no such file (run `evaluate` with --predictions first)")
    rows = []
    with path.open(encoding="utf8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise typer.BadParameter(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("cats"), dict) or not row.get("lang") or not row.get("gold"):
                raise typer.BadParameter(f"{path}:{line_no}: expected an object with 'lang', 'gold' and 'cats'")
            rows.append(row)
    return rows


def front(points: Dict[str, tuple]) -> List[str]:
    """Names on the Pareto front of (speed, accuracy): no other point is faster and at least as accurate.

    points (Dict[str, tuple]): Name → (docs/s, mean macro-F).
    RETURNS (List[str]): The names on the front, fastest first.
    """
    best = float("-inf")
    names = []
    for name, (_speed, acc) in sorted(points.items(), key=lambda kv: (-kv[1][0], -kv[1][1])):
        if acc > best:
            names.append(name)
            best = acc
    return names


def main(
    ctx: typer.Context,
    predictions: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder from evaluate --predictions"),
    results: Path = typer.Argument(..., exists=True, dir_okay=False, help="metrics/results.json"),
    output_prefix: Path = typer.Argument(..., help="Writes <prefix>.json, .md and .png"),
    config: Path = typer.Option(Path("configs/cascade.cfg"), "--config", exists=True, help="Config with [cascade]"),
    student: str = typer.Option("student", "--student", help="Student system name in results.json"),
    teacher: str = typer.Option("teacher", "--teacher", help="Teacher system name in results.json"),
) -> None:
    """Choose the cascade thresholds on dev, report them on test.

    ctx (typer.Context): Dotted overrides, e.g. --cascade.budgets "[0.1]".
    predictions (Path): The predictions folder.
    results (Path): The evaluation results.
    output_prefix (Path): Output prefix.
    config (Path): The cascade config.
    student (str): The student's name.
    teacher (str): The teacher's name.
    """
    settings = load_section(config, "cascade", parse_config_overrides(ctx.args))
    langs = split_langs(settings["langs"])
    try:
        info = json.loads(results.read_text(encoding="utf8"))["systems"]
    except (ValueError, KeyError, TypeError) as err:
        raise typer.BadParameter(f"{results}: not an evaluate results file ({type(err).__name__}: {err})") from None
    for name in (student, teacher):
        if name not in info:
            raise typer.BadParameter(f"{results}: no system {name!r} (has {sorted(info)})")
    try:
        # The temperature evaluate fitted on dev (None for systems it could not fit one for).
        temperature = float(info[student].get("calibration", {}).get("temperature") or 1.0)
        rates = {name: float(info[name]["speed"]["batch"]["docs_per_s"]) for name in (student, teacher)}
    except (KeyError, TypeError, ValueError) as err:
        raise typer.BadParameter(f"{results}: no batched speed (systems.<name>.speed.batch.docs_per_s) for the student and teacher ({err})") from None
    dev_s = read_predictions(predictions / f"{student}.dev.jsonl")
    test_s = read_predictions(predictions / f"{student}.test.jsonl")
    test_t = read_predictions(predictions / f"{teacher}.test.jsonl")
    missing = sorted(set(langs) - {r["lang"] for r in test_s})
    if missing:
        raise typer.BadParameter(f"{predictions}: no test predictions in {', '.join(missing)} (langs: {', '.join(langs)})")
    try:
        rows = [{"name": "student", "budget": 0.0, "threshold": 0.0, **evaluate_budget(test_s, test_t, 0.0, temperature, langs)}]
        for budget in [float(b) for b in settings["budgets"]]:
            threshold = choose_threshold(dev_s, budget, temperature)
            rows.append({"name": f"cascade_{round(100 * budget)}", "budget": budget, "threshold": threshold,
                         **evaluate_budget(test_s, test_t, threshold, temperature, langs)})
        # A threshold above every probability: the teacher answers all.
        rows.append({"name": "teacher", "budget": 1.0, "threshold": 2.0, **evaluate_budget(test_s, test_t, 2.0, temperature, langs)})
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    for row in rows:
        row["docs_per_s"] = cascade_throughput(rates[student], rates[teacher], row["deferred"])
        row["vs_teacher_speed"] = row["docs_per_s"] / rates[teacher]
    teacher_f = rows[-1]["mean"]
    default = next((r for r in rows[1:-1] if r["budget"] == float(settings["default_budget"])), None)
    if default is None:
        raise typer.BadParameter(f"{config}: default_budget {settings['default_budget']} is not one of the budgets {settings['budgets']}")
    out = {"langs": langs, "temperature": temperature, "rates_docs_per_s": rates, "default": default["name"],
           "dev_docs": len(dev_s), "test_docs": len(test_s), "rows": rows}
    write_json(output_prefix.with_suffix(".json"), out)
    lines = [
        f"Thresholds chosen on {len(dev_s):,} dev docs (the student's top-class probability at temperature "
        f"{temperature:.3f}, fitted on dev by `evaluate`); scored on {len(test_s):,} test docs. Throughput: "
        f"1 / (1/{rates[student]:,.1f} + share/{rates[teacher]:,.2f}) docs/s, from the batched rates `evaluate` measured.",
        "",
        "| system | dev budget | threshold | deferred (test) | " + " | ".join(langs) + " | mean | vs teacher | docs/s (batch) | × teacher |",
        "|---|---:|---:|---:|" + "---:|" * len(langs) + "---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r['per_lang'][lg]['macro_f']:.1f}" for lg in langs]
        lines.append(
            f"| {r['name']} | {100 * r['budget']:.0f} % | {r['threshold']:.3f} | {100 * r['deferred']:.1f} % | " + " | ".join(cells)
            + f" | **{r['mean']:.1f}** | {r['mean'] - teacher_f:+.1f} | {r['docs_per_s']:,.1f} | {r['vs_teacher_speed']:.1f}× |"
        )
    # Which threshold for which need: the cheapest budget that comes within half a point of the teacher.
    close = [r for r in rows[1:-1] if r["mean"] >= teacher_f - 0.5]
    lines.append("")
    if close:
        best = min(close, key=lambda r: r["deferred"])
        lines.append(f"Cheapest cascade within 0.5 points of the teacher's mean: **{best['name']}** (threshold "
                     f"{best['threshold']:.3f}, {100 * best['deferred']:.1f} % of the test docs deferred, "
                     f"{best['vs_teacher_speed']:.1f}× the teacher's docs/s).")
    else:
        lines.append("No budget comes within 0.5 points of the teacher's mean.")
    lines.append(f"Default (`default_budget`): {default['name']}, threshold {default['threshold']:.3f} at temperature {temperature:.3f} "
                 "(`serve --cascade TEACHER --cascade-report metrics/cascade.json` and `classify --cascade` read it).")
    write_text(output_prefix.with_suffix(".md"), "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {r["name"]: (r["docs_per_s"], r["mean"]) for r in rows}
    on_front = set(front(points))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs, ys = zip(*[points[r["name"]] for r in rows])
    ax.plot(xs, ys, "-", color="0.8", zorder=1)
    fx, fy = zip(*sorted(points[name] for name in on_front))
    ax.plot(fx, fy, "--", color="C3", zorder=1, label="Pareto front")
    for name, (x, y) in points.items():
        ax.scatter([x], [y], color="C3" if name in on_front else "C0", zorder=2)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("docs/s, batched (teacher cost included)")
    ax.set_ylabel("mean test macro-F")
    ax.set_title("Cascade: accuracy vs cost")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(output_prefix.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    typer.echo(f"cascade: default {default['name']}: {default['mean']:.1f} mean macro-F ({default['mean'] - teacher_f:+.1f} vs teacher), "
               f"{100 * default['deferred']:.1f} % deferred, {default['vs_teacher_speed']:.1f}x the teacher's docs/s")


if __name__ == "__main__":
    run(main)
