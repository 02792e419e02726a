"""Train the frozen-encoder teacher: encode the train and dev docs once with the
pipeline's ``SentenceEncoder``, train its head on those vectors, keep the epoch
with the best dev macro-F, and save the whole pipeline.

Why not ``spacy train``: the encoder is frozen, so every epoch would run the
transformer over the same docs again (~3 min per epoch on 2 CPU cores); here it
runs once and the head's epochs take milliseconds.

    python scripts/train_teacher.py configs/teacher.cfg training/teacher \
        --paths.train corpus/train.spacy --paths.dev corpus/dev_teacher.spacy
"""

from pathlib import Path
from typing import Optional

import typer
from spacy.cli._util import parse_config_overrides
from spacy.util import load_config

from spacy_distill.io import atomic_path, write_json
from spacy_distill.project import run
from spacy_distill.teacher.train import fit_teacher


def main(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Teacher config (configs/teacher.cfg)"),
    output_dir: Path = typer.Argument(..., help="Output folder; the pipeline goes to OUTPUT/model-best"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder for cached encoder outputs (ablations)"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU to train on (-1 = CPU); with a GPU, [finetune] top_layers_gpu layers train"),
) -> None:
    """Train the teacher's head on cached encoder outputs, then (``[finetune]``) its top layers on cached states.

    ctx (typer.Context): Dotted overrides, e.g. --paths.train corpus/train.spacy.
    config_path (Path): The teacher config.
    output_dir (Path): Output folder.
    cache (Optional[Path]): Encoder-output cache folder.
    gpu_id (int): -1 for CPU.
    """
    config = load_config(config_path, overrides=parse_config_overrides(ctx.args), interpolate=False)
    nlp, report = fit_teacher(config, cache, gpu_id=gpu_id)
    chosen = report["finetune"]["best"]["dev_macro_f"] if "finetune" in report else report["best_dev_macro_f"]
    nlp.meta["performance"] = {"dev_macro_f_mean_over_langs": chosen}
    with atomic_path(output_dir / "model-best", is_dir=True) as tmp:
        nlp.to_disk(tmp)
    write_json(output_dir / "head_training.json", report)
    typer.echo(f"head: best epoch {report['best_epoch']}: dev macro-F {report['best_dev_macro_f']:.2f} ({report['n_train']} train, {report['n_dev']} dev docs; {report['seconds']} s)")
    if "finetune" in report:
        best = report["finetune"]["best"]
        typer.echo(f"top {report['finetune']['top_layers']} layers: chosen step {best['step']} (epoch {best['epoch']}): dev loss {best['dev_loss']:.4f}, macro-F {best['dev_macro_f']:.2f}")


if __name__ == "__main__":
    run(main)

