"""Student macro-F against the size of the teacher-labelled transfer set.

For each size in ``[learning_curve] sizes``, a training folder is assembled from
the labelled gold train docs, the augmented docs (optional) and the first
``size / n_langs`` labelled transfer docs of each language; a student is trained
with the student config and scored on the test split.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.cli.train import train
from spacy.tokens import DocBin

from spacy_distill.evaluation.data import read_test
from spacy_distill.evaluation.predict import evaluate_system
from spacy_distill.io import atomic_path, write_json, write_text
from spacy_distill.project import load_section, run, split_langs


def build_train_dir(labelled: Path, out_dir: Path, per_lang: int, langs: List[str], include_augmented: bool) -> Dict[str, int]:
    """Assemble a training folder: gold + augmented shards and a transfer subset.

    labelled (Path): corpus/labelled with gold/, augmented/, transfer/.
    out_dir (Path): Training folder to (re)create.
    per_lang (int): Transfer docs per language.
    langs (List[str]): Languages.
    include_augmented (bool): Include the augmented docs.
    RETURNS (Dict[str, int]): Doc counts per part.
    """
    vocab = spacy.blank("xx").vocab
    counts: Dict[str, int] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.spacy"):
        old.unlink()
    parts = ["gold"] + (["augmented"] if include_augmented else [])
    for part in parts:
        db = DocBin(store_user_data=True)
        for path in sorted((labelled / part).rglob("*.spacy")):
            for doc in DocBin().from_disk(path).get_docs(vocab):
                db.add(doc)
        counts[part] = len(db)
        with atomic_path(out_dir / f"{part}.spacy") as tmp:
            db.to_disk(tmp)
    taken = {lang: 0 for lang in langs}
    db = DocBin(store_user_data=True)
    if per_lang > 0:
        for path in sorted((labelled / "transfer").rglob("*.spacy")):
            for doc in DocBin().from_disk(path).get_docs(vocab):
                lang = doc.user_data.get("lang")
                if lang in taken and taken[lang] < per_lang:
                    taken[lang] += 1
                    db.add(doc)
    counts["transfer"] = len(db)
    if len(db):
        with atomic_path(out_dir / "transfer.spacy") as tmp:
            db.to_disk(tmp)
    return counts


def main(
    ctx: typer.Context,
    labelled: Path = typer.Argument(..., help="corpus/labelled (gold/, augmented/, transfer/)"),
    dev_path: Path = typer.Argument(..., help="Gold dev DocBin (early stopping)"),
    test_path: Path = typer.Argument(..., help="Gold test DocBin"),
    output_prefix: Path = typer.Argument(..., help="Writes <prefix>.json and <prefix>.md"),
    student_config: Path = typer.Option(Path("configs/student.cfg"), "--student-config", help="Student training config"),
    config: Path = typer.Option(Path("configs/experiments.cfg"), "--config", help="Config with [learning_curve]"),
    work_dir: Path = typer.Option(Path("training/curve"), "--work-dir", help="Training folders and models"),
    vectors: Optional[Path] = typer.Option(None, "--vectors", exists=True, file_okay=False, help="Static vectors pipeline for the student (paths.vectors)"),
) -> None:
    """Train one student per transfer-set size and tabulate test macro-F.

    ctx (typer.Context): Extra args are dotted overrides, e.g. --learning_curve.sizes "[0, 600]".
    labelled (Path): Labelled corpus folder.
    dev_path (Path): Dev DocBin.
    test_path (Path): Test DocBin.
    output_prefix (Path): Output prefix.
    student_config (Path): Student config.
    config (Path): Experiments config.
    work_dir (Path): Work folder.
    vectors (Optional[Path]): The static vectors (training/teacher_vectors).
    """
    settings = load_section(config, "learning_curve", parse_config_overrides(ctx.args))
    langs = split_langs(settings["langs"])
    texts, gold = read_test(test_path, langs)
    rows: List[Dict[str, Any]] = []
    for size in [int(s) for s in settings["sizes"]]:
        per_lang = size // len(langs)
        data_dir = work_dir / f"data-{size}"
        counts = build_train_dir(labelled, data_dir, per_lang, langs, bool(settings["include_augmented"]))
        overrides: Dict[str, Any] = {"paths.train": str(data_dir), "paths.dev": str(dev_path), "system.seed": int(settings["seed"])}
        if vectors is not None:
            overrides["paths.vectors"] = str(vectors)
        if int(settings["max_steps"]):
            overrides["training.max_steps"] = int(settings["max_steps"])
        model_dir = work_dir / f"model-{size}"
        typer.echo(f"size {size}: {counts}")
        train(student_config, model_dir, overrides=overrides)
        nlp = spacy.load(model_dir / "model-best")
        scores = evaluate_system(nlp, texts, gold, langs, 256)
        rows.append({"size_requested": size, "transfer_docs": counts["transfer"], "train_docs": sum(counts.values()), "counts": counts, **scores})
        typer.echo(f"size {size}: transfer {counts['transfer']}, mean macro-F {scores['mean']['macro_f']:.1f}")
    write_json(output_prefix.with_suffix(".json"), {"langs": langs, "settings": settings, "points": rows})
    lines = [
        "| transfer docs (requested) | transfer docs (used) | training docs | " + " | ".join(langs) + " | mean macro-F |",
        "|---:|---:|---:|" + "---:|" * (len(langs) + 1),
    ]
    for r in rows:
        cells = [f"{r['per_lang'][lg]['macro_f']:.1f}" for lg in langs]
        lines.append(f"| {r['size_requested']} | {r['transfer_docs']} | {r['train_docs']} | " + " | ".join(cells) + f" | **{r['mean']['macro_f']:.1f}** |")
    write_text(output_prefix.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    run(main)
