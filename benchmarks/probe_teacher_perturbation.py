"""Probe: does the teacher's head come out the same from two encodings of the same docs?

The teacher step encodes the train and dev docs once (``training/teacher_cache``) and trains
the head on the vectors. On another CPU the encoder's matrix products round differently, so
the vectors differ in the last bits (|dX| ~ 1e-7); this probe trains the head from each
encoding through the teacher step's own code path (``fit_teacher`` with that cache folder:
same seed, same initial weights, same batches and dropout) and says how far apart the two
heads end up: the epoch each keeps, its dev scores, and how often the two heads' labels of the
train docs agree (metrics/reproducibility.md, section 5).

    python benchmarks/probe_teacher_perturbation.py configs/teacher.cfg \
        --cache default=training/teacher_cache --cache avx2=OTHER_MACHINE/training/teacher_cache \
        --seeds 5 --paths.train corpus/train.spacy --paths.dev corpus/dev_teacher.spacy \
        [--components.textcat.model.hidden_width 0] [--head_training.optimizer.learn_rate 0.001]

Each cache folder must hold the arrays the teacher step wrote for these docs and this encoder
(the file names carry a hash of both; a miss would encode again, so it is an error here).
Nothing is read from test.
"""

from pathlib import Path
from typing import Dict, List

import numpy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.util import load_config

from spacy_distill.io import write_json
from spacy_distill.teacher.train import encode, fit_teacher, read_gold

app = typer.Typer(add_completion=False)


def _caches(specs: List[str]) -> Dict[str, Path]:
    out = {}
    for spec in specs:
        name, _, folder = spec.partition("=")
        if not (name and folder) or not Path(folder).is_dir():
            raise typer.BadParameter(f"--cache {spec!r}: expected NAME=FOLDER with the teacher step's cached arrays")
        if not any(Path(folder).glob("train-*.npy")) or not any(Path(folder).glob("dev-*.npy")):
            raise typer.BadParameter(f"--cache {spec!r}: {folder} has no train-*.npy / dev-*.npy")
        out[name] = Path(folder)
    if len(out) != 2:
        raise typer.BadParameter("give exactly two --cache NAME=FOLDER")
    return out


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def main(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Teacher config"),
    cache: List[str] = typer.Option(..., "--cache", help="NAME=FOLDER, twice: two encodings of the same docs"),
    seeds: int = typer.Option(5, help="Seeds 0..N-1 ([system] seed: initial weights, batches, dropout)"),
    output: Path = typer.Option(None, help="Also write the rows as JSON here"),
) -> None:
    """Train the head from each encoding for each seed; print how far apart the pairs end up."""
    folders = _caches(cache)
    overrides = parse_config_overrides(ctx.args)
    rows = []
    names = list(folders)
    print(f"| seed | {' | '.join(f'{n}: epoch, dev macro-F, dev loss' for n in names)} | train labels agree | mean / max abs dP |")
    print("|---:|" + "---|" * len(names) + "---:|---:|")
    for seed in range(seeds):
        heads = {}
        for name, folder in folders.items():
            config = load_config(config_path, overrides={**overrides, "system.seed": seed})
            resolved = config.interpolate()
            # The step's cache is keyed by the texts and the encoder: a miss would run the
            # transformer here and compare it with itself.
            before = {p.name for p in folder.iterdir()}
            nlp, report = fit_teacher(config, folder)
            if {p.name for p in folder.iterdir()} != before:
                raise typer.BadParameter(f"--cache {name}={folder}: no cached arrays for these docs and this encoder")
            textcat = nlp.get_pipe("textcat")
            docs = read_gold(nlp, Path(resolved["paths"]["train"]))
            X = encode(textcat.model.get_ref("encoder"), docs, int(resolved["head_training"]["encode_batch_size"]), folder, "train")
            heads[name] = (report, textcat.model.get_ref("head").predict(X), X)
        (ra, Pa, Xa), (rb, Pb, Xb) = heads[names[0]], heads[names[1]]
        row = {
            "seed": seed,
            "max_abs_dX": float(numpy.abs(Xa - Xb).max()),
            **{f"{n}_{k}": heads[n][0][f"best_{k}"] for n in names for k in ("epoch", "dev_macro_f", "dev_loss")},
            "train_label_agreement": float((Pa.argmax(1) == Pb.argmax(1)).mean()),
            "mean_abs_dP": float(numpy.abs(Pa - Pb).mean()),
            "max_abs_dP": float(numpy.abs(Pa - Pb).max()),
        }
        rows.append(row)
        cells = " | ".join(f"{r['best_epoch']}, {r['best_dev_macro_f']:.2f}, {r['best_dev_loss']:.5f}" for r in (ra, rb))
        print(f"| {seed} | {cells} | {100 * row['train_label_agreement']:.1f} % | {row['mean_abs_dP']:.4f} / {row['max_abs_dP']:.3f} |", flush=True)
    print(f"\nmax |dX| between the encodings: {max(r['max_abs_dX'] for r in rows):.2e}")
    if output is not None:
        write_json(output, {"caches": {n: str(f) for n, f in folders.items()}, "overrides": overrides, "rows": rows})


if __name__ == "__main__":
    app()
