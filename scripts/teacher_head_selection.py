"""How robust is the teacher head's epoch choice? Split-half and perturbation checks of
the ``[head_training] select`` rules on the teacher dev set (spacy_distill/teacher/selection.py).

    python scripts/teacher_head_selection.py configs/teacher.cfg metrics/teacher_head_selection \
        --paths.train corpus/train.spacy --paths.dev corpus/dev_teacher.spacy \
        --vectors encode=training/teacher_cache/train-<hash>.npy,training/teacher_cache/dev-<hash>.npy \
        --vectors states=OTHER_TRAIN.npy,OTHER_DEV.npy --seeds 4

Each ``--vectors NAME=TRAIN,DEV`` is one encoding of the config's train and dev docs
(the teacher step's cache holds one); two encodings of the same docs show whether a
rule picks equivalent epochs from float-level differences. Nothing is read from test.
"""

import shlex
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.training import Example
from spacy.util import fix_random_seed, load_config, load_model_from_config

from spacy_distill.io import write_json, write_text
from spacy_distill.project import run
from spacy_distill.teacher.selection import (
    choose_epoch,
    dev_histories,
    split_half_table,
    stratified_halves,
)
from spacy_distill.teacher.train import SELECT_KEYS, read_gold, targets


def _vectors(spec: str) -> Tuple[str, numpy.ndarray, numpy.ndarray]:
    name, _, paths = spec.partition("=")
    train, _, dev = paths.partition(",")
    if not (name and train and dev):
        raise typer.BadParameter(f"--vectors {spec!r}: expected NAME=TRAIN.npy,DEV.npy")
    return name, numpy.load(train), numpy.load(dev)


def _markdown(report: Dict) -> str:
    lines = [
        "## Teacher head: how robust is the epoch choice? (teacher dev set only)",
        "",
        f"`{report['command']}`",
        "",
        f"Split half: {report['n_dev']} teacher-dev docs in halves A/B (stratified by language and label, seed 0); "
        f"the epoch is chosen on A with patience {report['patience']} (max {report['max_epochs']} epochs), scored on B. "
        "Seeds order the batches and the dropout; the head's initial weights are the same.",
        "",
        "| vectors | seed | rule | epoch (on A) | B macro-F | B loss |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, seeds in report["split_half"].items():
        for seed, table in seeds.items():
            for rule, row in table.items():
                lines.append(f"| {name} | {seed} | {rule} | {row['epoch']} | {row['B_macro_f']:.2f} | {row['B_loss']:.4f} |")
    lines += ["", "| vectors | rule | mean B macro-F | sd | mean epoch |", "|---|---|---:|---:|---:|"]
    for name, rules in report["summary"].items():
        for rule, row in rules.items():
            lines.append(f"| {name} | {rule} | **{row['mean_B_macro_f']:.2f}** | {row['sd_B_macro_f']:.2f} | {row['mean_epoch']:.1f} |")
    lines += ["", "Whole dev set (the teacher step's choice), per encoding, seed of the config:", "", "| rule | " + " | ".join(report["full_dev"]) + " |", "|---|" + "---|" * len(report["full_dev"])]
    for rule in sorted(SELECT_KEYS):
        cells = [f"epoch {v[rule]['epoch']}: {v[rule]['macro_f']:.2f} / {v[rule]['loss']:.4f}" for v in report["full_dev"].values()]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Teacher config (configs/teacher.cfg)"),
    output: Path = typer.Argument(..., help="Output stem: OUTPUT.json and OUTPUT.md"),
    vectors: List[str] = typer.Option(..., "--vectors", help="NAME=TRAIN.npy,DEV.npy: one encoding of the train and dev docs (repeatable)"),
    seeds: int = typer.Option(4, "--seeds", help="Training seeds 0..N-1 for the split-half check"),
) -> None:
    """Split-half and perturbation checks of the head's epoch-selection rules.

    ctx (typer.Context): Dotted overrides, e.g. --paths.train corpus/train.spacy.
    config_path (Path): The teacher config.
    output (Path): Output stem.
    vectors (List[str]): Encodings, NAME=TRAIN.npy,DEV.npy.
    seeds (int): Number of seeds.
    """
    overrides = parse_config_overrides(ctx.args)
    config = load_config(config_path, overrides=overrides, interpolate=False)
    resolved = config.interpolate()
    settings = dict(resolved["head_training"])
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    train_docs = read_gold(nlp, Path(resolved["paths"]["train"]))
    dev_docs = read_gold(nlp, Path(resolved["paths"]["dev"]))
    nlp.initialize(lambda: [Example(nlp.make_doc(d.text), d) for d in train_docs[:8]])
    textcat = nlp.get_pipe("textcat")
    labels = list(textcat.labels)
    head = textcat.model.get_ref("head")
    Y = targets(train_docs, labels)
    gold = [(d.user_data.get("lang", "xx"), max(d.cats, key=d.cats.get)) for d in dev_docs]
    a, b = stratified_halves(gold, 0)
    patience = int(settings["patience"])
    report: Dict = {
        # As typed: the dotted overrides are not all in ctx.args once parsed.
        "command": "python " + " ".join(shlex.quote(arg) for arg in sys.argv),
        "n_dev": len(gold), "patience": patience, "max_epochs": int(settings["max_epochs"]),
        "split_half": {}, "summary": {}, "full_dev": {},
    }
    for spec in vectors:
        name, X, X_dev = _vectors(spec)
        if len(X) != len(train_docs) or len(X_dev) != len(dev_docs):
            raise typer.BadParameter(f"--vectors {name}: {len(X)}/{len(X_dev)} rows for {len(train_docs)} train / {len(dev_docs)} dev docs")
        # Same initial weights for every run and every encoding (from the config's seed):
        # only the training seed (batch order, dropout) varies.
        fix_random_seed(int(settings["seed"]))
        head.initialize(X=head.ops.asarray2f(X[:8]))
        initial = head.to_bytes()
        report["split_half"][name] = {}
        for seed in range(seeds):
            histories = dev_histories(head, initial, X, Y, X_dev, gold, labels, {**settings, "seed": seed}, {"A": a, "B": b, "all": list(range(len(gold)))})
            report["split_half"][name][seed] = split_half_table(histories, patience)
            if seed == int(settings["seed"]):
                report["full_dev"][name] = {
                    rule: {"epoch": (e := choose_epoch(histories["all"], rule, patience)), **histories["all"][e - 1]} for rule in sorted(SELECT_KEYS)
                }
            typer.echo(f"{name} seed {seed}: " + ", ".join(f"{r} epoch {t['epoch']} B {t['B_macro_f']:.2f}" for r, t in report["split_half"][name][seed].items()))
        report["summary"][name] = {
            rule: {
                "mean_B_macro_f": float(numpy.mean([t[rule]["B_macro_f"] for t in report["split_half"][name].values()])),
                "sd_B_macro_f": float(numpy.std([t[rule]["B_macro_f"] for t in report["split_half"][name].values()])),
                "mean_epoch": float(numpy.mean([t[rule]["epoch"] for t in report["split_half"][name].values()])),
            }
            for rule in sorted(SELECT_KEYS)
        }
    write_json(output.with_suffix(".json"), report)
    write_text(output.with_suffix(".md"), _markdown(report))


if __name__ == "__main__":
    run(main)
