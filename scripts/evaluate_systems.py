"""Evaluate every system on every language's test split, in one process.

Accuracy and macro-F per language (and their mean over languages) on the whole
test split; size on disk; speed in tokens/s and docs/s on a seeded per-language
subset of the test texts, batched (``nlp.pipe``) and one doc at a time
(``nlp(text)``). All systems are timed in the same process so ratios hold.

Calibration: the expected calibration error (ECE, ``n_bins`` equal-width bins;
``spacy_distill.evaluation.calibration``) of every system's test probabilities, the same
predictions that give its accuracy, and, with ``--dev``, its ECE after
temperature scaling: one scale of the logits (``spacy_distill.teacher.calibrate.fit_calibration``,
no bias, so no decision changes), fitted on a seeded subset of the dev docs
(``n_calibration`` per language), never on test. Reliability diagrams of all
systems, before and after, go to ``OUTDIR/reliability.png``.
"""

import os
import platform
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import spacy
import typer
from spacy.cli._util import parse_config_overrides

from spacy_distill.evaluation.calibration import calibration_report, plot_reliability
from spacy_distill.evaluation.data import read_ood, read_test, sample_per_lang, write_predictions
from spacy_distill.evaluation.markdown import markdown
from spacy_distill.evaluation.predict import (
    exclusive_classes,
    load_system,
    predict_cats,
    score_cats,
)
from spacy_distill.evaluation.timing import time_systems
from spacy_distill.io import write_json, write_text
from spacy_distill.project import dir_size, load_section, run, split_langs


def main(
    ctx: typer.Context,
    test_path: Path = typer.Argument(..., help="Gold test DocBin (corpus/test.spacy)"),
    output_dir: Path = typer.Argument(..., help="Folder for results.json and results.md"),
    system: List[str] = typer.Option(..., "--system", help="NAME=PATH, repeatable (pipeline or baseline folder)"),
    config: Path = typer.Option(Path("configs/evaluate.cfg"), "--config", help="Config with an [evaluate] section"),
    dev_path: Optional[Path] = typer.Option(None, "--dev", exists=True, dir_okay=False, help="Gold dev DocBin (corpus/dev.spacy) to fit each system's temperature on; without it, ECE only before scaling"),
    ood_dir: Optional[Path] = typer.Option(None, "--ood", exists=True, file_okay=False, help="Folder of out-of-domain sets (<lang>_<name>.tsv: text<TAB>0|1), reported only"),
    predictions_dir: Optional[Path] = typer.Option(None, "--predictions", file_okay=False, help="Write per-doc predictions here (<system>.test.jsonl, <system>.dev.jsonl)"),
) -> None:
    """Score, calibrate and time every system; write ``results.json``, ``results.md`` and ``reliability.png``.

    ctx (typer.Context): Extra args are dotted overrides, e.g. --evaluate.n_speed 10.
    test_path (Path): Test DocBin.
    output_dir (Path): Output folder.
    system (List[str]): NAME=PATH per system.
    config (Path): The evaluation config.
    dev_path (Optional[Path]): Dev DocBin for the temperature fit.
    ood_dir (Optional[Path]): Out-of-domain sets to report.
    predictions_dir (Optional[Path]): Folder for per-doc predictions.
    """
    settings = load_section(config, "evaluate", parse_config_overrides(ctx.args))
    langs = split_langs(settings["langs"])
    texts, gold = read_test(test_path, langs)
    rng = random.Random(f"{settings['seed']}:speed")
    speed_idx: List[int] = []
    for lang in langs:
        idx = [i for i, (lg, _) in enumerate(gold) if lg == lang]
        speed_idx.extend(rng.sample(idx, min(int(settings["n_speed"]), len(idx))))
    speed_texts = [texts[i] for i in speed_idx]
    batch_size = int(settings["batch_size"])
    n_bins = int(settings["n_bins"])
    dev_texts: List[str] = []
    dev_gold: List[Tuple[str, str]] = []
    if dev_path is not None:
        all_dev_texts, all_dev_gold = read_test(dev_path, langs)
        dev_idx = sample_per_lang(all_dev_gold, langs, int(settings["n_calibration"]), f"{settings['seed']}:calibration")
        dev_texts = [all_dev_texts[i] for i in dev_idx]
        dev_gold = [all_dev_gold[i] for i in dev_idx]
    results: Dict[str, Any] = {
        "langs": langs, "n_test_docs": len(texts), "n_speed_docs": len(speed_texts),
        "calibration": {"n_bins": n_bins, "dev": str(dev_path) if dev_path else None, "n_dev_docs": len(dev_texts),
                        "ece_unit": "percent", "fit": "temperature scaling (one scale, no bias), minimum NLL on the dev docs"},
        "systems": {},
    }
    ood_sets = {p.stem: read_ood(p) for p in sorted(ood_dir.glob("*.tsv"))} if ood_dir is not None else {}
    for set_name, (ood_texts, ood_gold) in list(ood_sets.items()):
        keep = sample_per_lang(ood_gold, [ood_gold[0][0]], int(settings.get("n_ood", -1)), f"{settings['seed']}:ood:{set_name}")
        ood_sets[set_name] = ([ood_texts[i] for i in keep], [ood_gold[i] for i in keep])
    if ood_dir is not None and not ood_sets:
        raise typer.BadParameter(f"--ood {ood_dir}: no .tsv files")
    if ood_sets:
        results["ood"] = {k: {"lang": g[0][0], "n_docs": len(t), "path": str(ood_dir / f"{k}.tsv"), "systems": {}} for k, (t, g) in ood_sets.items()}
    loaded: Dict[str, Any] = {}
    for spec in system:
        name, sep, path_s = spec.partition("=")
        if not sep:
            raise typer.BadParameter(f"--system {spec!r}: expected NAME=PATH")
        path = Path(path_s)
        typer.echo(f"{name}: {path}")
        nlp = load_system(path)
        # One pass over test gives both the scores and the calibration's probabilities.
        test_cats = predict_cats(nlp, texts, batch_size, desc=f"{name} test")
        r = score_cats(test_cats, gold, langs)
        # The dev pass comes after the test pass, so a seeded system (the random
        # baseline) predicts test exactly as it would without calibration.
        exclusive = exclusive_classes(nlp, test_cats)
        start = time.perf_counter()
        dev_cats = predict_cats(nlp, dev_texts, batch_size, desc=f"{name} dev") if dev_texts and exclusive else None
        r["calibration"] = calibration_report(test_cats, gold, langs, n_bins, exclusive, dev_cats, dev_gold if dev_cats is not None else None)
        r["calibration"]["dev_seconds"] = time.perf_counter() - start
        for set_name, (ood_texts, ood_gold) in ood_sets.items():
            ood = score_cats(predict_cats(nlp, ood_texts, batch_size, desc=f"{name} {set_name}"), ood_gold, [ood_gold[0][0]])
            results["ood"][set_name]["systems"][name] = ood["mean"]
            typer.echo(f"  out of domain {set_name}: macro-F {ood['mean']['macro_f']:.1f}")
        if predictions_dir is not None:
            write_predictions(predictions_dir / f"{name}.test.jsonl", test_cats, gold)
            if dev_cats is not None:
                write_predictions(predictions_dir / f"{name}.dev.jsonl", dev_cats, dev_gold)
        r["path"] = str(path)
        r["size_bytes"] = dir_size(path)
        results["systems"][name] = r
        loaded[name] = nlp
        typer.echo(f"  mean macro-F {r['mean']['macro_f']:.1f}, acc {r['mean']['acc']:.1f}; {r['size_bytes'] / 1e6:.1f} MB")
        c = r["calibration"]
        if c.get("measured"):
            typer.echo(f"  ECE {c['ece_before']:.1f} % -> {c['ece_after']:.1f} % at temperature {c['temperature']:.3g} "
                       f"(fitted on {c['n_dev_docs']} dev docs in {c['dev_seconds']:.1f} s)")
        elif c.get("ece_before") is not None:
            typer.echo(f"  ECE {c['ece_before']:.1f} % ({c['reason']})")
    # All systems are timed together, their passes interleaved (see time_systems).
    speeds = time_systems(loaded, speed_texts, batch_size, int(settings["n_warmup"]), float(settings["min_seconds"]), int(settings["rounds"]), progress=True)
    for name, speed in speeds.items():
        results["systems"][name]["speed"] = speed
        typer.echo(f"{name}: {speed['batch']['tokens_per_s']:,.0f} tokens/s batch, {speed['single']['tokens_per_s']:,.0f} one doc")
    del loaded
    systems = results["systems"]
    if "student" in systems and "teacher" in systems:
        s, t = systems["student"], systems["teacher"]
        results["student_vs_teacher"] = {
            "macro_f_diff": s["mean"]["macro_f"] - t["mean"]["macro_f"],
            "speed_ratio_batch": s["speed"]["batch"]["tokens_per_s"] / t["speed"]["batch"]["tokens_per_s"],
            "speed_ratio_single": s["speed"]["single"]["tokens_per_s"] / t["speed"]["single"]["tokens_per_s"],
            "size_fraction": s["size_bytes"] / t["size_bytes"],
        }
        if ood_sets:
            def ood_mean(name: str) -> float:
                return sum(v["systems"][name]["macro_f"] for v in results["ood"].values()) / len(results["ood"])

            results["student_vs_teacher"]["ood_macro_f_diff"] = ood_mean("student") - ood_mean("teacher")
    results["environment"] = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "spacy": spacy.__version__,
        "settings": settings,
    }
    write_json(output_dir / "results.json", results)
    write_text(output_dir / "results.md", markdown(results))
    plot_reliability(results, output_dir / "reliability.png")


if __name__ == "__main__":
    run(main)
