"""Teacher ablation: variants of the teacher (prefix, pooling, head, top layers fine-tuned),
each trained as ``scripts/train_teacher.py`` trains the default, chosen on the teacher
dev set and reported on the test split. Encoder outputs are cached per encoder setting,
so variants that share an encoder cost one encoding.
"""

import time
from pathlib import Path
from typing import Any, Dict, List

import typer
from spacy.cli._util import parse_config_overrides
from spacy.util import load_config

from spacy_distill.evaluation.data import read_test
from spacy_distill.evaluation.scoring import score
from spacy_distill.io import write_json, write_text
from spacy_distill.project import load_section, run, split_langs, variant_overrides
from spacy_distill.teacher.train import encode, fit_teacher


def main(
    ctx: typer.Context,
    teacher_config: Path = typer.Argument(..., help="Teacher config (configs/teacher.cfg)"),
    train_path: Path = typer.Argument(..., help="Gold train DocBin"),
    dev_path: Path = typer.Argument(..., help="Teacher dev DocBin (head epoch, choice)"),
    test_path: Path = typer.Argument(..., help="Gold test DocBin (reported)"),
    output_prefix: Path = typer.Argument(..., help="Writes <prefix>.json and <prefix>.md"),
    config: Path = typer.Option(Path("configs/experiments.cfg"), "--config", help="Config with [teacher_ablation]"),
    cache: Path = typer.Option(Path("training/teacher_cache"), "--cache", help="Encoder-output cache"),
    teacher_model: str = typer.Option("", "--teacher-model", help="Encoder name or folder (the teacher step's vars.teacher_model); empty = the config's"),
) -> None:
    """Train and score each teacher variant; write a table.

    ctx (typer.Context): Dotted overrides of the experiments config.
    teacher_config (Path): Teacher config.
    train_path (Path): Train DocBin.
    dev_path (Path): Dev DocBin.
    test_path (Path): Test DocBin.
    output_prefix (Path): Output prefix.
    config (Path): Experiments config.
    cache (Path): Cache folder.
    teacher_model (str): Encoder name or folder.
    """
    settings = load_section(config, "teacher_ablation", parse_config_overrides(ctx.args))
    langs = split_langs(settings["langs"])
    rows: List[Dict[str, Any]] = []
    for name, variant in dict(settings["variants"]).items():
        overrides = variant_overrides(variant)
        overrides.update({"paths.train": str(train_path), "paths.dev": str(dev_path)})
        if teacher_model:
            overrides["components.textcat.model.encoder.name"] = teacher_model
        cfg = load_config(teacher_config, overrides=overrides, interpolate=False)
        start = time.perf_counter()
        nlp, report = fit_teacher(cfg, cache)
        textcat = nlp.get_pipe("textcat")
        labels = list(textcat.labels)
        head = textcat.model.get_ref("head")
        texts, gold = read_test(test_path, langs)
        batch_size = int(cfg.interpolate()["head_training"]["encode_batch_size"])
        # A fine-tuned encoder has the frozen one's settings but not its weights: its
        # test vectors must not come from (or go to) the cache of the frozen encoder.
        tuned = report.get("finetune")
        X_test = encode(textcat.model.get_ref("encoder"), [nlp.make_doc(t) for t in texts], batch_size, None if tuned else cache, "test")
        pred = [labels[i] for i in head.ops.to_numpy(head.predict(X_test)).argmax(axis=1)]
        scores = score(gold, pred, langs, labels)
        dev_f = tuned["best"]["dev_macro_f"] if tuned else report["best_dev_macro_f"]
        extra = {"top_layers": tuned["top_layers"], "chosen_step": tuned["best"]["step"], "dev_loss": tuned["best"]["dev_loss"],
                 "finetune_seconds": tuned["seconds"]} if tuned else {"top_layers": 0}
        rows.append({"name": name, "description": variant.get("description", ""), "dev_macro_f": dev_f,
                     "best_epoch": report["best_epoch"], "seconds": round(time.perf_counter() - start, 1), **extra, **scores})
        typer.echo(f"{name}: dev {dev_f:.1f}, test {scores['mean']['macro_f']:.1f}")
    write_json(output_prefix.with_suffix(".json"), {"langs": langs, "settings": settings, "variants": rows})
    lines = [
        "| teacher variant | change | dev macro-F | test macro-F | " + " | ".join(langs) + " |",
        "|---|---|---:|---:|" + "---:|" * len(langs),
    ]
    for r in rows:
        cells = [f"{r['per_lang'][lg]['macro_f']:.1f}" for lg in langs]
        lines.append(f"| {r['name']} | {r['description']} | {r['dev_macro_f']:.1f} | **{r['mean']['macro_f']:.1f}** | " + " | ".join(cells) + " |")
    write_text(output_prefix.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    run(main)
