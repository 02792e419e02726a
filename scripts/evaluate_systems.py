"""Evaluate every system on every language's test split, in one process.

Accuracy and macro-F per language (and their mean over languages) on the whole
test split; size on disk; speed in tokens/s and docs/s on a seeded per-language
subset of the test texts, batched (``nlp.pipe``) and one doc at a time
(``nlp(text)``). All systems are timed in the same process so ratios hold.

Calibration: the expected calibration error (ECE, ``n_bins`` equal-width bins;
``spacy_distill.pipeline.calibration``) of every system's test probabilities, the same
predictions that give its accuracy, and, with ``--dev``, its ECE after
temperature scaling: one scale of the logits (``spacy_distill.pipeline.calibration.fit_calibration``,
no bias, so no decision changes), fitted on a seeded subset of the dev docs
(``n_calibration`` per language), never on test. Reliability diagrams of all
systems, before and after, go to ``OUTDIR/reliability.png``.
"""

import csv
import os
import platform
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy
import spacy
import typer
from baselines import load_rule_classifier
from common import (
    atomic_path,
    dir_size,
    load_section,
    run,
    split_langs,
    write_json,
    write_jsonl,
    write_text,
)
from spacy.cli._util import parse_config_overrides
from spacy.language import Language
from spacy.tokens import DocBin

from spacy_distill.evaluation.scoring import macro_f, score  # noqa: F401 (re-exported for the scripts)
from spacy_distill.pipeline.calibration import calibrate_probs, fit_calibration, reliability
from spacy_distill.progress import progress_bar
from spacy_distill.teacher.label import find_textcat, probs_to_logits


def load_system(path: Path) -> Any:
    """Load a spaCy pipeline, or a rule baseline folder (``model.json``).

    path (Path): The system's folder.
    RETURNS (Any): An object with ``__call__(text)`` and ``pipe(texts, batch_size)``.
    """
    if (path / "model.json").exists():
        return load_rule_classifier(path)
    return spacy.load(path)


def _timed_passes(run_once: Callable[[], List[Any]], min_seconds: float) -> Dict[str, float]:
    """Repeat a pass over the texts until ``min_seconds`` have passed; rates over all passes.

    run_once (Callable[[], List[Any]]): Processes every text once, returns the docs.
    min_seconds (float): Minimum total time (fast systems get several passes).
    RETURNS (Dict[str, float]): seconds, tokens, docs, passes, tokens_per_s, docs_per_s.
    """
    seconds = 0.0
    n_tokens = n_docs = passes = 0
    while passes == 0 or seconds < min_seconds:
        start = time.perf_counter()
        docs = run_once()
        seconds += time.perf_counter() - start
        n_tokens += sum(len(doc) for doc in docs)
        n_docs += len(docs)
        passes += 1
    return {"seconds": seconds, "tokens": n_tokens, "docs": n_docs, "passes": passes,
            "tokens_per_s": n_tokens / seconds, "docs_per_s": n_docs / seconds}


def time_system(nlp: Any, texts: List[str], batch_size: int, n_warmup: int, min_seconds: float = 0.0) -> Dict[str, Dict[str, float]]:
    """Tokens/s and docs/s, batched and one doc at a time, of one system.

    nlp (Any): The system.
    texts (List[str]): The timed texts.
    batch_size (int): Batch size for ``pipe``.
    n_warmup (int): Docs processed before timing.
    min_seconds (float): Repeat each measurement until this much time has passed.
    RETURNS (Dict[str, Dict[str, float]]): {"batch": {...}, "single": {...}}.
    """
    return time_systems({"system": nlp}, texts, batch_size, n_warmup, min_seconds, rounds=1)["system"]


def time_systems(
    systems: Dict[str, Any], texts: List[str], batch_size: int, n_warmup: int, min_seconds: float = 0.0, rounds: int = 3,
    progress: bool = False,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Tokens/s and docs/s of several systems, their timing passes interleaved.

    The load of a shared machine drifts within a run (the same two systems were
    timed 58.7x and 104.7x apart in one session), so each system's time is
    gathered in ``rounds`` slices, taken in turn (A B A B ...), and a ratio
    between two systems compares the same stretches of time.

    systems (Dict[str, Any]): Name → system.
    texts (List[str]): The timed texts.
    batch_size (int): Batch size for ``pipe``.
    n_warmup (int): Docs processed by each system before timing.
    min_seconds (float): Minimum total time per system and mode, split over the rounds.
    rounds (int): Interleaved slices per system and mode.
    progress (bool): Show progress.
    RETURNS (Dict[str, Dict[str, Dict[str, float]]]): Name → {"batch": {...}, "single": {...}}.
    """
    for nlp in systems.values():
        list(nlp.pipe(texts[:n_warmup], batch_size=batch_size))
    runs = {
        "batch": lambda nlp: (lambda: list(nlp.pipe(texts, batch_size=batch_size))),
        "single": lambda nlp: (lambda: [nlp(text) for text in texts]),
    }
    out: Dict[str, Dict[str, Dict[str, float]]] = {name: {} for name in systems}
    # Progress in timing slices (each takes at least min_seconds / rounds).
    bar = progress_bar(len(runs) * max(1, rounds) * len(systems), "timing", unit="slice", enabled=progress)
    for mode, make_run in runs.items():
        totals = {name: {"seconds": 0.0, "tokens": 0, "docs": 0, "passes": 0} for name in systems}
        for _ in range(max(1, rounds)):
            for name, nlp in systems.items():
                part = _timed_passes(make_run(nlp), min_seconds / max(1, rounds))
                for key in totals[name]:
                    totals[name][key] += part[key]
                bar.update(1)
        for name, t in totals.items():
            out[name][mode] = {**t, "rounds": max(1, rounds), "tokens_per_s": t["tokens"] / t["seconds"], "docs_per_s": t["docs"] / t["seconds"]}
    bar.close()
    return out


def predict_cats(nlp: Any, texts: List[str], batch_size: int, desc: Optional[str] = None) -> List[Dict[str, float]]:
    """Every text's ``doc.cats``, from one pass of the system.

    nlp (Any): The system.
    texts (List[str]): The texts.
    batch_size (int): Batch size.
    desc (Optional[str]): Show progress under this name (the teacher takes minutes).
    RETURNS (List[Dict[str, float]]): Label → probability per text.
    """
    bar = progress_bar(len(texts), desc or "", unit="doc", enabled=desc is not None)
    cats = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        cats.append(dict(doc.cats))
        bar.update(1)
    bar.close()
    return cats


def score_cats(cats: List[Dict[str, float]], gold: List[Tuple[str, str]], langs: List[str]) -> Dict[str, Any]:
    """Score predicted cats (the argmax is the prediction; no cats: none).

    cats (List[Dict[str, float]]): Label → probability per doc.
    gold (List[Tuple[str, str]]): (lang, label) per doc.
    langs (List[str]): Languages to report.
    RETURNS (Dict[str, Any]): Scores (see ``score``).
    """
    labels = sorted({label for _, label in gold})
    pred = [max(c, key=c.get) if c else "" for c in cats]
    return score(gold, pred, langs, labels)


def evaluate_system(nlp: Any, texts: List[str], gold: List[Tuple[str, str]], langs: List[str], batch_size: int) -> Dict[str, Any]:
    """Predict the test texts and score them.

    nlp (Any): The system.
    texts (List[str]): Test texts.
    gold (List[Tuple[str, str]]): (lang, label) per text.
    langs (List[str]): Languages to report.
    batch_size (int): Batch size.
    RETURNS (Dict[str, Any]): Scores (see ``score``).
    """
    return score_cats(predict_cats(nlp, texts, batch_size), gold, langs)


def exclusive_classes(nlp: Any, cats: List[Dict[str, float]]) -> bool:
    """Whether a system's classes are exclusive (softmax), which ECE of the top class needs.

    nlp (Any): A spaCy pipeline (its text classifier decides) or a rule baseline
        (one label per doc: exclusive).
    cats (List[Dict[str, float]]): Its predictions, which decide for a pipeline
        without a known text classifier: exclusive if every doc's probabilities
        sum to 1 (a compressed teacher may wrap its classifier in another factory).
    RETURNS (bool): Exclusive classes.
    """
    if isinstance(nlp, Language):
        try:
            return find_textcat(nlp)[1]
        except ValueError:
            return all(abs(sum(c.values()) - 1.0) < 1e-3 for c in cats)
    return True


def probs_matrix(cats: List[Dict[str, float]], gold: List[Tuple[str, str]]) -> Tuple[List[str], numpy.ndarray, numpy.ndarray]:
    """Probabilities as a (docs × labels) matrix and the gold label's column per doc.

    cats (List[Dict[str, float]]): Label → probability per doc (a missing label: 0).
    gold (List[Tuple[str, str]]): (lang, label) per doc.
    RETURNS (Tuple[List[str], numpy.ndarray, numpy.ndarray]): Labels (columns), matrix, gold columns.
    """
    labels = sorted({label for c in cats for label in c})
    missing = sorted({label for _, label in gold} - set(labels))
    if missing:
        raise ValueError(f"the system predicts no probability for the gold labels {missing} (its labels: {labels})")
    P = numpy.asarray([[c.get(label, 0.0) for label in labels] for c in cats], dtype="f8")
    y = numpy.asarray([labels.index(label) for _, label in gold], dtype=int)
    return labels, P, y


def sample_per_lang(gold: List[Tuple[str, str]], langs: List[str], n: int, seed: str) -> List[int]:
    """A seeded sample of ``n`` docs per language (all of them if ``n`` < 0), in corpus order.

    gold (List[Tuple[str, str]]): (lang, label) per doc.
    langs (List[str]): The languages.
    n (int): Docs per language; negative: all.
    seed (str): Seed of the draw.
    RETURNS (List[int]): Indices of the chosen docs.
    """
    rng = random.Random(seed)
    chosen: List[int] = []
    for lang in langs:
        idx = [i for i, (lg, _) in enumerate(gold) if lg == lang]
        chosen.extend(idx if n < 0 else rng.sample(idx, min(n, len(idx))))
    return sorted(chosen)


def calibration_report(
    test_cats: List[Dict[str, float]],
    test_gold: List[Tuple[str, str]],
    langs: List[str],
    n_bins: int,
    exclusive: bool = True,
    dev_cats: Optional[List[Dict[str, float]]] = None,
    dev_gold: Optional[List[Tuple[str, str]]] = None,
) -> Dict[str, Any]:
    """Test ECE of one system before and (with dev docs) after temperature scaling.

    The temperature is fitted on the dev docs with ``fit_calibration`` (scale
    only) on the log-probabilities, which equal the logits up to a per-doc
    constant that the softmax ignores; it is applied to the test probabilities
    as the ``distill_calibration`` component would (``calibrate_probs``). The
    rule baselines' cats are 0/1: their confidence is always 1, so their ECE is
    100 − accuracy, and scaling can only give every doc one confidence (fitted
    to the dev accuracy); their temperature then only reflects the clipping of
    probabilities to [1e-7, 1 − 1e-7] (``hard_labels``).

    test_cats (List[Dict[str, float]]): The system's test probabilities.
    test_gold (List[Tuple[str, str]]): (lang, label) per test doc.
    langs (List[str]): Languages to report.
    n_bins (int): ECE bins.
    exclusive (bool): The system's classes are exclusive (else not measured).
    dev_cats (Optional[List[Dict[str, float]]]): The system's dev probabilities (None: no fit).
    dev_gold (Optional[List[Tuple[str, str]]]): (lang, label) per dev doc.
    RETURNS (Dict[str, Any]): ECE (percent), temperature, dev NLL, reliability bins.
    """
    if not exclusive:
        return {"measured": False, "reason": "multi-label classes: the top-class ECE and the softmax temperature need exclusive classes"}
    labels, P, y = probs_matrix(test_cats, test_gold)
    test_langs = numpy.asarray([lang for lang, _ in test_gold])

    def ece_per_lang(Q: numpy.ndarray) -> Dict[str, float]:
        return {lang: 100 * reliability(Q[test_langs == lang], y[test_langs == lang], n_bins).ece for lang in langs if (test_langs == lang).any()}

    before = reliability(P, y, n_bins)
    out: Dict[str, Any] = {
        "ece_before": 100 * before.ece,
        "ece_after": None,
        "temperature": None,
        "measured": False,
        "reason": "no dev docs (--dev) to fit a temperature on",
        "hard_labels": bool(numpy.isin(P, (0.0, 1.0)).all()),
        "per_lang": {lang: {"ece_before": e, "ece_after": None} for lang, e in ece_per_lang(P).items()},
        "reliability": {"before": before.to_dict(), "after": None},
    }
    if dev_cats is None or dev_gold is None:
        return out
    dev_labels, D, dy = probs_matrix(dev_cats, dev_gold)
    if dev_labels != labels:
        raise ValueError(f"the system's dev labels {dev_labels} differ from its test labels {labels}")
    calibration = fit_calibration(
        [probs_to_logits(dict(zip(labels, row)), True) for row in D],
        [{label: float(j == g) for j, label in enumerate(labels)} for g in dy],
        True,
        fit_bias=False,
    )
    Q = calibrate_probs(P, calibration.scale, [calibration.bias[label] for label in labels], True)
    after = reliability(Q, y, n_bins)
    out.update({
        "ece_after": 100 * after.ece,
        "temperature": 1 / calibration.scale,
        "scale": calibration.scale,
        "measured": True,
        "reason": None,
        "hard_labels": out["hard_labels"] and bool(numpy.isin(D, (0.0, 1.0)).all()),
        "n_dev_docs": len(D),
        "dev_nll_before": calibration.report["nll_before"],
        "dev_nll_after": calibration.report["nll_after"],
    })
    for lang, e in ece_per_lang(Q).items():
        out["per_lang"][lang]["ece_after"] = e
    out["reliability"]["after"] = after.to_dict()
    return out


def plot_reliability(results: Dict[str, Any], path: Path) -> None:
    """Reliability diagrams of every system, before and after temperature scaling, in one PNG.

    results (Dict[str, Any]): As written to results.json.
    path (Path): The PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [(name, r["calibration"]) for name, r in results["systems"].items() if r["calibration"].get("ece_before") is not None]
    ncols = max(1, min(3, len(systems)))
    nrows = max(1, -(-len(systems) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(systems):]:
        ax.set_visible(False)
    for ax, (name, cal) in zip(axes.flat, systems):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
        for key, color, text in (("before", "C0", "before"), ("after", "C1", "temperature-scaled")):
            rel = cal["reliability"][key]
            if rel is None:
                continue
            full = [b for b in rel["bins"] if b["count"]]
            # Marker area shows the share of docs in the bin.
            sizes = [8 + 300 * b["count"] / rel["n"] for b in full]
            x, y = [b["confidence"] for b in full], [b["accuracy"] for b in full]
            ax.plot(x, y, color=color, linewidth=1, marker="o", markersize=3, label=f"{text}: ECE {100 * rel['ece']:.1f} %")
            ax.scatter(x, y, s=sizes, color=color, alpha=0.5)
        if cal["hard_labels"]:
            title = f"{name} (0/1 outputs)"
        else:
            title = name if cal["temperature"] is None else f"{name} (T = {cal['temperature']:.3g})"
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    n_bins = results["calibration"]["n_bins"]
    fig.suptitle(f"Reliability on the test split ({n_bins} bins; marker area = share of docs)", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def read_test(path: Path, langs: List[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Read the gold test DocBin.

    path (Path): corpus/test.spacy.
    langs (List[str]): Languages to keep.
    RETURNS (Tuple[List[str], List[Tuple[str, str]]]): Texts and (lang, label) pairs.
    """
    texts, gold = [], []
    for doc in DocBin().from_disk(path).get_docs(spacy.blank("xx").vocab):
        lang = doc.user_data.get("lang")
        if lang in langs:
            texts.append(doc.text)
            gold.append((lang, max(doc.cats, key=doc.cats.get)))
    return texts, gold


OOD_LABELS = {"1": "POSITIVE", "0": "NEGATIVE"}


def read_ood(path: Path) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Read an out-of-domain set: ``text<TAB>label`` (1 positive, 0 negative), a header
    line, no quoting; the language is the file name's prefix (``en_uci_yelp.tsv``).

    path (Path): The .tsv file.
    RETURNS (Tuple[List[str], List[Tuple[str, str]]]): Texts and (lang, label) pairs.
    """
    lang = path.name.split("_", 1)[0]
    texts, gold = [], []
    with path.open(encoding="utf8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != ["text", "label"]:
            raise typer.BadParameter(f"{path}:1: expected the header 'text<TAB>label', got {header!r}")
        for row in reader:
            if len(row) != 2 or row[1] not in OOD_LABELS or not row[0].strip():
                raise typer.BadParameter(f"{path}:{reader.line_num}: expected 'text<TAB>0|1', got {row!r}")
            texts.append(row[0])
            gold.append((lang, OOD_LABELS[row[1]]))
    return texts, gold


def write_predictions(path: Path, cats: List[Dict[str, float]], gold: List[Tuple[str, str]]) -> None:
    """Per-doc predictions for later steps (the cascade): one JSON object per doc, in order.

    path (Path): The .jsonl file.
    cats (List[Dict[str, float]]): Label → probability per doc.
    gold (List[Tuple[str, str]]): (lang, label) per doc.
    """
    write_jsonl(path, ({"lang": lang, "gold": label, "cats": c} for c, (lang, label) in zip(cats, gold)))


def ood_markdown(results: Dict[str, Any]) -> List[str]:
    """The out-of-domain table of results.md (reported, never used to choose).

    results (Dict[str, Any]): As written to results.json.
    RETURNS (List[str]): Markdown lines.
    """
    sets = results.get("ood") or {}
    if not sets:
        return []
    names = list(results["systems"])
    lines = ["", "## Out of domain (not Amazon; reported only, never used to choose)", "",
             "| system | " + " | ".join(f"{k} ({v['lang']}, {v['n_docs']})" for k, v in sets.items()) + " | mean |",
             "|---|" + "---:|" * (len(sets) + 1)]
    for name in names:
        scores = [sets[k]["systems"][name]["macro_f"] for k in sets]
        lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in scores) + f" | **{sum(scores) / len(scores):.1f}** |")
    return lines


def markdown(results: Dict[str, Any]) -> str:
    """The results as markdown tables.

    results (Dict[str, Any]): As written to results.json.
    RETURNS (str): Markdown.
    """
    langs = results["langs"]
    lines = ["## Macro-F (accuracy) on the test split, per language", ""]
    lines.append("| system | " + " | ".join(langs) + " | mean |")
    lines.append("|---|" + "---:|" * (len(langs) + 1))
    for name, r in results["systems"].items():
        cells = [f"{r['per_lang'][lg]['macro_f']:.1f} ({r['per_lang'][lg]['acc']:.1f})" for lg in langs]
        cells.append(f"**{r['mean']['macro_f']:.1f}** ({r['mean']['acc']:.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Size and speed (same process, same test texts)", ""]
    lines.append("| system | size (MB) | tokens/s (batch) | docs/s (batch) | tokens/s (one doc) | docs/s (one doc) |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, r in results["systems"].items():
        s = r["speed"]
        lines.append(
            f"| {name} | {r['size_bytes'] / 1e6:.2f} | {s['batch']['tokens_per_s']:,.0f} | {s['batch']['docs_per_s']:,.1f} | "
            f"{s['single']['tokens_per_s']:,.0f} | {s['single']['docs_per_s']:,.1f} |"
        )
    if results.get("student_vs_teacher"):
        c = results["student_vs_teacher"]
        lines += [
            "",
            f"Student vs teacher: mean macro-F {c['macro_f_diff']:+.1f} points; "
            f"{c['speed_ratio_batch']:.1f}x tokens/s (batch), {c['speed_ratio_single']:.1f}x (one doc); "
            f"size {100 * c['size_fraction']:.1f} % of the teacher.",
        ]
    lines += ood_markdown(results)
    lines += calibration_markdown(results)
    env = results["environment"]
    lines += ["", f"Measured on {env['cpu_count']} CPU(s) ({env['machine']}), Python {env['python']}, spaCy {env['spacy']}; "
              f"speed on {results['n_speed_docs']} test docs, the systems' timing passes interleaved in {env['settings'].get('rounds', 1)} rounds."]
    return "\n".join(lines) + "\n"


def calibration_markdown(results: Dict[str, Any]) -> List[str]:
    """The calibration table of results.md.

    results (Dict[str, Any]): As written to results.json.
    RETURNS (List[str]): Markdown lines.
    """
    info = results["calibration"]
    fit = (
        f"a temperature fitted on {info['n_dev_docs']} dev docs ({info['dev']})"
        if info["dev"] else "not measured: no dev docs (--dev) to fit a temperature on"
    )
    lines = ["", f"## Calibration on the test split: ECE (%, {info['n_bins']} bins), before and after temperature scaling", "",
             f"Temperature scaling: {fit}; it changes no decision. Reliability diagrams: reliability.png.", ""]
    lines.append("| system | ECE | temperature | ECE after | dev NLL before → after |")
    lines.append("|---|---:|---:|---:|---:|")
    hard = []
    for name, r in results["systems"].items():
        c = r["calibration"]
        if c.get("ece_before") is None:
            lines.append(f"| {name} | n/a | n/a | n/a | {c['reason']} |")
            continue
        if c["hard_labels"]:
            hard.append(name)
        if c["measured"]:
            temp = "n/a¹" if c["hard_labels"] else f"{c['temperature']:.3f}"
            cells = [f"{c['ece_before']:.1f}", temp, f"{c['ece_after']:.1f}", f"{c['dev_nll_before']:.3f} → {c['dev_nll_after']:.3f}"]
        else:
            cells = [f"{c['ece_before']:.1f}", "n/a", "n/a", "n/a"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if hard:
        lines += ["", f"¹ {', '.join(hard)}: 0/1 outputs, so confidence is always 100 % and ECE = 100 − accuracy; "
                  "scaling can only give every doc one confidence (the dev accuracy), and the fitted temperature "
                  "only reflects the clipping of probabilities to [1e-7, 1 − 1e-7]."]
    return lines


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
