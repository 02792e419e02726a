"""Evaluate every system on every language's test split, in one process.

Accuracy and macro-F per language (and their mean over languages) on the whole
test split; size on disk; speed in tokens/s and docs/s on a seeded per-language
subset of the test texts, batched (``nlp.pipe``) and one doc at a time
(``nlp(text)``). All systems are timed in the same process so ratios hold.
"""

import os
import platform
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import spacy
import typer
from baselines import load_rule_classifier
from common import dir_size, load_section, run, split_langs, write_json, write_text
from spacy.cli._util import parse_config_overrides
from spacy.tokens import DocBin


def load_system(path: Path) -> Any:
    """Load a spaCy pipeline, or a rule baseline folder (``model.json``).

    path (Path): The system's folder.
    RETURNS (Any): An object with ``__call__(text)`` and ``pipe(texts, batch_size)``.
    """
    if (path / "model.json").exists():
        return load_rule_classifier(path)
    return spacy.load(path)


def macro_f(gold: List[str], pred: List[str], labels: List[str]) -> float:
    """Macro-averaged F1 over labels, in percent.

    gold (List[str]): Gold labels.
    pred (List[str]): Predicted labels.
    labels (List[str]): All labels.
    RETURNS (float): Macro-F.
    """
    fs = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        fs.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100 * sum(fs) / len(fs)


def score(gold: List[Tuple[str, str]], pred: List[str], langs: List[str], labels: List[str]) -> Dict[str, Any]:
    """Accuracy and macro-F per language and their mean.

    gold (List[Tuple[str, str]]): (lang, label) per test doc.
    pred (List[str]): Predicted label per doc.
    langs (List[str]): Languages to report.
    labels (List[str]): All labels.
    RETURNS (Dict[str, Any]): {"per_lang": {lang: {...}}, "mean": {...}}.
    """
    per_lang: Dict[str, Dict[str, float]] = {}
    for lang in langs:
        idx = [i for i, (lg, _) in enumerate(gold) if lg == lang]
        g = [gold[i][1] for i in idx]
        p = [pred[i] for i in idx]
        per_lang[lang] = {
            "n": len(idx),
            "acc": 100 * sum(a == b for a, b in zip(g, p)) / len(idx) if idx else 0.0,
            "macro_f": macro_f(g, p, labels) if idx else 0.0,
        }
    mean = {k: sum(v[k] for v in per_lang.values()) / len(per_lang) for k in ("acc", "macro_f")}
    return {"per_lang": per_lang, "mean": mean}


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
    systems: Dict[str, Any], texts: List[str], batch_size: int, n_warmup: int, min_seconds: float = 0.0, rounds: int = 3
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
    RETURNS (Dict[str, Dict[str, Dict[str, float]]]): Name → {"batch": {...}, "single": {...}}.
    """
    for nlp in systems.values():
        list(nlp.pipe(texts[:n_warmup], batch_size=batch_size))
    runs = {
        "batch": lambda nlp: (lambda: list(nlp.pipe(texts, batch_size=batch_size))),
        "single": lambda nlp: (lambda: [nlp(text) for text in texts]),
    }
    out: Dict[str, Dict[str, Dict[str, float]]] = {name: {} for name in systems}
    for mode, make_run in runs.items():
        totals = {name: {"seconds": 0.0, "tokens": 0, "docs": 0, "passes": 0} for name in systems}
        for _ in range(max(1, rounds)):
            for name, nlp in systems.items():
                part = _timed_passes(make_run(nlp), min_seconds / max(1, rounds))
                for key in totals[name]:
                    totals[name][key] += part[key]
        for name, t in totals.items():
            out[name][mode] = {**t, "rounds": max(1, rounds), "tokens_per_s": t["tokens"] / t["seconds"], "docs_per_s": t["docs"] / t["seconds"]}
    return out


def evaluate_system(nlp: Any, texts: List[str], gold: List[Tuple[str, str]], langs: List[str], batch_size: int) -> Dict[str, Any]:
    """Predict the test texts and score them.

    nlp (Any): The system.
    texts (List[str]): Test texts.
    gold (List[Tuple[str, str]]): (lang, label) per text.
    langs (List[str]): Languages to report.
    batch_size (int): Batch size.
    RETURNS (Dict[str, Any]): Scores (see ``score``).
    """
    labels = sorted({label for _, label in gold})
    pred = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        pred.append(max(doc.cats, key=doc.cats.get) if doc.cats else "")
    return score(gold, pred, langs, labels)


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
    env = results["environment"]
    lines += ["", f"Measured on {env['cpu_count']} CPU(s) ({env['machine']}), Python {env['python']}, spaCy {env['spacy']}; "
              f"speed on {results['n_speed_docs']} test docs, the systems' timing passes interleaved in {env['settings'].get('rounds', 1)} rounds."]
    return "\n".join(lines) + "\n"


def main(
    ctx: typer.Context,
    test_path: Path = typer.Argument(..., help="Gold test DocBin (corpus/test.spacy)"),
    output_dir: Path = typer.Argument(..., help="Folder for results.json and results.md"),
    system: List[str] = typer.Option(..., "--system", help="NAME=PATH, repeatable (pipeline or baseline folder)"),
    config: Path = typer.Option(Path("configs/evaluate.cfg"), "--config", help="Config with an [evaluate] section"),
) -> None:
    """Score and time every system; write ``results.json`` and ``results.md``.

    ctx (typer.Context): Extra args are dotted overrides, e.g. --evaluate.n_speed 10.
    test_path (Path): Test DocBin.
    output_dir (Path): Output folder.
    system (List[str]): NAME=PATH per system.
    config (Path): The evaluation config.
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
    results: Dict[str, Any] = {"langs": langs, "n_test_docs": len(texts), "n_speed_docs": len(speed_texts), "systems": {}}
    loaded: Dict[str, Any] = {}
    for spec in system:
        name, sep, path_s = spec.partition("=")
        if not sep:
            raise typer.BadParameter(f"--system {spec!r}: expected NAME=PATH")
        path = Path(path_s)
        typer.echo(f"{name}: {path}")
        nlp = load_system(path)
        r = evaluate_system(nlp, texts, gold, langs, batch_size)
        r["path"] = str(path)
        r["size_bytes"] = dir_size(path)
        results["systems"][name] = r
        loaded[name] = nlp
        typer.echo(f"  mean macro-F {r['mean']['macro_f']:.1f}, acc {r['mean']['acc']:.1f}; {r['size_bytes'] / 1e6:.1f} MB")
    # All systems are timed together, their passes interleaved (see time_systems).
    speeds = time_systems(loaded, speed_texts, batch_size, int(settings["n_warmup"]), float(settings["min_seconds"]), int(settings["rounds"]))
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
    results["environment"] = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "spacy": spacy.__version__,
        "settings": settings,
    }
    write_json(output_dir / "results.json", results)
    write_text(output_dir / "results.md", markdown(results))


if __name__ == "__main__":
    run(main)
