"""Student embedding width / hash-rows / n-gram trade-off: test macro-F, size and speed.

Each variant overrides the student config's embedding width (the BiLSTM keeps the
embedding width), scales its hash-embedding rows and sets the length of its
bag-of-n-grams table (0 = no n-gram model: the BiLSTM alone), trains on the
labelled corpus and is scored and timed on the test split.
"""

import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.cli.train import train
from spacy.util import load_config

from spacy_distill.evaluation.data import read_test
from spacy_distill.evaluation.predict import evaluate_system
from spacy_distill.evaluation.timing import time_system
from spacy_distill.io import write_json, write_text
from spacy_distill.project import dir_size, load_section, run, split_langs


def main(
    ctx: typer.Context,
    labelled: Path = typer.Argument(..., help="corpus/labelled (teacher-labelled DocBins)"),
    dev_path: Path = typer.Argument(..., help="Gold dev DocBin (early stopping)"),
    test_path: Path = typer.Argument(..., help="Gold test DocBin"),
    output_prefix: Path = typer.Argument(..., help="Writes <prefix>.json and <prefix>.md"),
    student_config: Path = typer.Option(Path("configs/student.cfg"), "--student-config", help="Student training config"),
    config: Path = typer.Option(Path("configs/experiments.cfg"), "--config", help="Config with [tradeoff]"),
    work_dir: Path = typer.Option(Path("training/tradeoff"), "--work-dir", help="Trained variants"),
    reuse: bool = typer.Option(False, "--reuse", help="Skip training a variant whose model-best exists with the same model and training config"),
    vectors: Optional[Path] = typer.Option(None, "--vectors", exists=True, file_okay=False, help="Static vectors pipeline for the student (paths.vectors)"),
) -> None:
    """Train, score and time each variant; write a table.

    ctx (typer.Context): Extra args are dotted overrides, e.g. --tradeoff.widths "[32]".
    labelled (Path): Labelled corpus folder.
    dev_path (Path): Dev DocBin.
    test_path (Path): Test DocBin.
    output_prefix (Path): Output prefix.
    student_config (Path): Student config.
    config (Path): Experiments config.
    work_dir (Path): Work folder.
    vectors (Optional[Path]): The static vectors (training/teacher_vectors).
    reuse (bool): Reuse trained variants (an interrupted run resumes; all are re-scored and re-timed
        in this one process, so their speed ratios hold).
    """
    settings = load_section(config, "tradeoff", parse_config_overrides(ctx.args))
    langs = split_langs(settings["langs"])
    widths = [int(w) for w in settings["widths"]]
    scales = [float(s) for s in settings["row_scales"]]
    bow_lengths = [int(n) for n in settings["bow_lengths"]]
    if not len(widths) == len(scales) == len(bow_lengths):
        raise typer.BadParameter(f"{config}: [tradeoff] widths, row_scales and bow_lengths differ in length")
    model_cfg = load_config(student_config)["components"]["textcat"]["model"]
    if any(bow_lengths) and not model_cfg.get("bow"):
        raise typer.BadParameter(
            f"{student_config}: [components.textcat.model] has no bow section, but [tradeoff] bow_lengths "
            f"asks for n-gram models ({bow_lengths}); use spacy-distill.BiLSTMTextCat.v2 with a bow block"
        )
    base_rows = list(model_cfg["embed"]["rows"])
    texts, gold = read_test(test_path, langs)
    rng = random.Random(f"{settings['seed']}:speed")
    speed_texts: List[str] = []
    for lang in langs:
        idx = [i for i, (lg, _) in enumerate(gold) if lg == lang]
        speed_texts.extend(texts[i] for i in rng.sample(idx, min(int(settings["n_speed"]), len(idx))))
    rows: List[Dict[str, Any]] = []
    for width, scale, bow_length in zip(widths, scales, bow_lengths):
        emb_rows = [max(16, int(r * scale)) for r in base_rows]
        name = f"w{width}-r{scale:g}-bow{bow_length}"
        overrides: Dict[str, Any] = {
            "paths.train": str(labelled),
            "paths.dev": str(dev_path),
            "system.seed": int(settings["seed"]),
            "components.textcat.model.embed.width": width,
            "components.textcat.model.embed.rows": emb_rows,
        }
        if vectors is not None:
            overrides["paths.vectors"] = str(vectors)
        if bow_length:
            overrides["components.textcat.model.bow.length"] = bow_length
        elif model_cfg.get("bow"):
            overrides["components.textcat.model.bow"] = None
        if int(settings["max_steps"]):
            overrides["training.max_steps"] = int(settings["max_steps"])
        model_dir = work_dir / name
        if reuse and _same_training(model_dir / "model-best", student_config, overrides):
            typer.echo(f"{name}: reusing {model_dir / 'model-best'}")
        else:
            train(student_config, model_dir, overrides=overrides)
        nlp = spacy.load(model_dir / "model-best")
        # Early stopping picked model-best on dev: its dev score is what a choice between
        # variants should rest on (the test scores are reported, not selected on).
        dev_f = 100 * float(nlp.meta.get("performance", {}).get("cats_score", float("nan")))
        scores = evaluate_system(nlp, texts, gold, langs, 256)
        speed = time_system(nlp, speed_texts, 64, 16, 3.0)
        rows.append({"name": name, "width": width, "rows": emb_rows, "bow_length": bow_length, "dev_macro_f": dev_f, "size_bytes": dir_size(model_dir / "model-best"), "speed": speed, **scores})
        typer.echo(f"{name}: macro-F {scores['mean']['macro_f']:.1f}, {speed['batch']['tokens_per_s']:,.0f} tokens/s")
    write_json(output_prefix.with_suffix(".json"), {"langs": langs, "settings": settings, "variants": rows})
    lines = [
        "| variant | width | hash rows | n-gram rows | size (MB) | tokens/s (batch) | dev macro-F | test macro-F | "
        + " | ".join(langs) + " |",
        "|---|---:|---|---:|---:|---:|---:|---:|" + "---:|" * len(langs),
    ]
    for r in rows:
        cells = [f"{r['per_lang'][lg]['macro_f']:.1f}" for lg in langs]
        lines.append(
            f"| {r['name']} | {r['width']} | {r['rows']} | {r['bow_length'] or '-'} | {r['size_bytes'] / 1e6:.2f} | {r['speed']['batch']['tokens_per_s']:,.0f} | "
            f"{r['dev_macro_f']:.1f} | **{r['mean']['macro_f']:.1f}** | " + " | ".join(cells) + " |"
        )
    write_text(output_prefix.with_suffix(".md"), "\n".join(lines) + "\n")


def _same_training(model_best: Path, student_config: Path, overrides: Dict[str, Any]) -> bool:
    """Whether a saved variant was trained with this config (model, training and paths sections)."""
    if not (model_best / "meta.json").exists():
        return False
    wanted = load_config(student_config, overrides=overrides)
    saved = load_config(model_best / "config.cfg")
    return all(
        wanted[section] == saved[section] for section in ("paths", "training")
    ) and wanted["components"]["textcat"]["model"] == saved["components"]["textcat"]["model"]


if __name__ == "__main__":
    run(main)
