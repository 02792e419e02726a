"""Student ablation: one change at a time against the default student, each trained on
the teacher-labelled corpus, chosen on dev, and reported on dev and test.

Each variant of ``[ablation.variants]`` (configs/experiments.cfg) is a list of dotted
overrides of the student config: features, loss, width, and which labelled text it
reads (``corpora.train.max_per_lang`` caps the docs per language of each part of the
labelled corpus: gold, augmented, transfer, ud; ``corpora.train.prior_correction``).
All variants read the same labelled folder, and are scored and timed in one process,
so their speed ratios hold. Variants can be trained in parallel processes with
``--only`` and then scored and timed together with ``--reuse``.
"""

import random
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.cli.train import train
from spacy.util import load_config

from spacy_distill.evaluation.data import read_test
from spacy_distill.evaluation.predict import evaluate_system
from spacy_distill.evaluation.timing import time_systems
from spacy_distill.io import write_json, write_text
from spacy_distill.pipeline.readers import iter_labelled_docs
from spacy_distill.project import dir_size, load_section, run, split_langs, variant_overrides


def count_train_docs(student_config: Path, overrides: Dict[str, Any]) -> Dict[str, int]:
    """Docs per part of the labelled corpus that a variant's train reader yields.

    student_config (Path): The student config.
    overrides (Dict[str, Any]): The variant's overrides (with paths.train).
    RETURNS (Dict[str, int]): Part -> docs.
    """
    reader = dict(load_config(student_config, overrides=overrides, interpolate=True)["corpora"]["train"])
    counts: Counter = Counter()
    docs = iter_labelled_docs(
        Path(str(overrides["paths.train"])), spacy.blank("xx").vocab,
        langs=reader.get("langs"), max_per_lang=reader.get("max_per_lang"), require_teacher=False,
    )
    for part, _ in docs:
        counts[part] += 1
    return dict(sorted(counts.items()))


def same_training(model_best: Path, student_config: Path, overrides: Dict[str, Any]) -> bool:
    """Whether a saved variant was trained with this config: the same paths, training
    and components sections (model and loss).

    model_best (Path): The saved variant.
    student_config (Path): The student config.
    overrides (Dict[str, Any]): The variant's overrides.
    RETURNS (bool): Whether it can be reused.
    """
    if not (model_best / "meta.json").exists():
        return False
    wanted = load_config(student_config, overrides=overrides)
    saved = load_config(model_best / "config.cfg")
    return all(wanted[section] == saved[section] for section in ("paths", "training", "components"))


def main(
    ctx: typer.Context,
    labelled: Path = typer.Argument(..., help="corpus/labelled (teacher-labelled DocBins)"),
    dev_path: Path = typer.Argument(..., help="Gold dev DocBin (early stopping, choice)"),
    test_path: Path = typer.Argument(..., help="Gold test DocBin (reported)"),
    output_prefix: Path = typer.Argument(..., help="Writes <prefix>.json and <prefix>.md"),
    student_config: Path = typer.Option(Path("configs/student.cfg"), "--student-config", help="Student training config"),
    config: Path = typer.Option(Path("configs/experiments.cfg"), "--config", help="Config with [ablation]"),
    work_dir: Path = typer.Option(Path("training/ablation"), "--work-dir", help="Training sets and trained variants"),
    only: str = typer.Option("", "--only", help="Comma-separated variant names (default: all)"),
    reuse: bool = typer.Option(False, "--reuse", help="Skip training a variant whose model-best was trained with the same config and data (re-scored and re-timed); an interrupted run resumes"),
    vectors: Optional[Path] = typer.Option(None, "--vectors", exists=True, file_okay=False, help="Static vectors pipeline for the student (paths.vectors)"),
) -> None:
    """Train, score and time each variant; write a table.

    ctx (typer.Context): Extra args are dotted overrides of the config, e.g. --ablation.max_steps 500.
    labelled (Path): Labelled corpus folder (gold/, augmented/, transfer/).
    dev_path (Path): Dev DocBin.
    test_path (Path): Test DocBin.
    output_prefix (Path): Output prefix.
    student_config (Path): Student config.
    config (Path): Experiments config.
    work_dir (Path): Work folder.
    only (str): Variants to run.
    reuse (bool): Reuse trained variants.
    vectors (Optional[Path]): The static vectors (training/teacher_vectors).
    """
    settings = load_section(config, "ablation", parse_config_overrides(ctx.args))
    langs = split_langs(settings["langs"])
    variants: Dict[str, Dict[str, Any]] = dict(settings["variants"])
    if only:
        unknown = [n for n in only.split(",") if n not in variants]
        if unknown:
            raise typer.BadParameter(f"{config}: no [ablation.variants] named {unknown}; known: {sorted(variants)}")
        variants = {n: variants[n] for n in only.split(",")}
    texts, gold = read_test(test_path, langs)
    rng = random.Random(f"{settings['seed']}:speed")
    speed_texts: List[str] = []
    for lang in langs:
        idx = [i for i, (lg, _) in enumerate(gold) if lg == lang]
        speed_texts.extend(texts[i] for i in rng.sample(idx, min(int(settings["n_speed"]), len(idx))))
    rows: List[Dict[str, Any]] = []
    loaded: Dict[str, Any] = {}
    for name, variant in variants.items():
        overrides: Dict[str, Any] = {"paths.train": str(labelled), "paths.dev": str(dev_path), "system.seed": int(settings["seed"])}
        if vectors is not None:
            overrides["paths.vectors"] = str(vectors)
        # The workflow passes the student step's max_steps, patience and eval_frequency
        # (project vars); 0 keeps the student config's own value.
        training = load_config(student_config)["training"]
        factor = float(variant.get("steps_factor", 1))
        for key in ("max_steps", "patience", "eval_frequency"):
            value = int(settings[key]) or int(training[key])
            overrides[f"training.{key}"] = value if key == "eval_frequency" else int(value * factor)
        overrides.update(variant_overrides(variant))
        model_dir = work_dir / name
        if reuse and same_training(model_dir / "model-best", student_config, overrides):
            typer.echo(f"{name}: reusing {model_dir / 'model-best'}")
        else:
            # Fails early and clearly on a bad override.
            load_config(student_config, overrides=overrides)
            train(student_config, model_dir, overrides=overrides)
        counts = count_train_docs(student_config, overrides)
        nlp = spacy.load(model_dir / "model-best")
        loaded[name] = nlp
        dev_f = 100 * float(nlp.meta.get("performance", {}).get("cats_score", float("nan")))
        scores = evaluate_system(nlp, texts, gold, langs, 256)
        rows.append(
            {"name": name, "description": variant.get("description", ""), "train_docs": counts, "dev_macro_f": dev_f,
             "size_bytes": dir_size(model_dir / "model-best"), **scores}
        )
        typer.echo(f"{name}: dev {dev_f:.1f}, test {scores['mean']['macro_f']:.1f}")
    # Timed together at the end, passes interleaved, so the speed column compares like with like.
    speeds = time_systems(loaded, speed_texts, 64, 16, float(settings["min_seconds"]), int(settings["rounds"]))
    for row in rows:
        row["speed"] = speeds[row["name"]]
    write_json(output_prefix.with_suffix(".json"), {"langs": langs, "settings": settings, "variants": rows})
    lines = [
        "| variant | change | train docs | size (MB) | tokens/s (batch) | dev macro-F | test macro-F | " + " | ".join(langs) + " |",
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(langs),
    ]
    for r in rows:
        cells = [f"{r['per_lang'][lg]['macro_f']:.1f}" for lg in langs]
        lines.append(
            f"| {r['name']} | {r['description']} | {sum(r['train_docs'].values()):,} | {r['size_bytes'] / 1e6:.2f} | "
            f"{r['speed']['batch']['tokens_per_s']:,.0f} | {r['dev_macro_f']:.1f} | **{r['mean']['macro_f']:.1f}** | " + " | ".join(cells) + " |"
        )
    write_text(output_prefix.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    run(main)
