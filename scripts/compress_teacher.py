"""Compress the trained teacher: quantization, vocabulary pruning, layer pruning and
their smallest combination within ``select.max_dev_loss`` of the teacher on dev.

One step per call (the `compress` workflow runs them in order)::

    python scripts/compress_teacher.py STEP training/teacher/model-best \\
        training/compressed metrics/compression --config configs/compress.cfg

* ``quantize``: OUTPUT/int8 (torch dynamic int8) and OUTPUT/onnx-int8 (ONNX Runtime
  int8, if ``onnx.enabled``), with the teacher's head; per backend the first of
  ``keep_float_candidates`` (layers left float) within ``select.max_dev_loss``.
* ``prune-vocab``: OUTPUT/hf/vocab (the HF folder with the corpus's pieces) and
  OUTPUT/vocab, with the teacher's head (same vectors on every corpus text).
* ``prune-layers``: for each ``prune_layers.candidates`` k, smallest first, the bottom
  k layers with a re-trained head (``spacy_distill.teacher.train.fit_teacher``); OUTPUT/layers is the
  first (smallest) k within ``select.max_dev_loss`` (larger ones are not tried).
* ``combine``: ``combine.candidates`` in order; OUTPUT/combined is the first within
  ``select.max_dev_loss`` (needs prune-vocab and prune-layers).

Each step writes METRICS/<step>.json: dev macro-F per language of every variant
against the teacher's on the same docs (a seeded sample of dev docs outside
``paths.dev_teacher``), sizes and wall times. Test docs are never read.
"""

import hashlib
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import spacy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.language import Language
from spacy.util import load_config

from spacy_distill.evaluation.scoring import score
from spacy_distill.io import atomic_path, read_records, write_json
from spacy_distill.project import dir_size, run, split_langs
from spacy_distill.teacher.compress import encoder_of, rebuild_with_encoder
from spacy_distill.teacher.prune import prune_layers, prune_vocab
from spacy_distill.teacher.surgery import save_hf_folder
from spacy_distill.teacher.train import fit_teacher

STEPS = ("quantize", "prune-vocab", "prune-layers", "combine")
#: Quantization backend → its config section, registered layer and output folder.
QUANT_SECTIONS = {"torch": "quantize", "onnx": "onnx"}
QUANT_LAYERS = {"torch": "spacy-distill.QuantizedSentenceEncoder.v1", "onnx": "spacy-distill.OnnxSentenceEncoder.v1"}
QUANT_OUTPUTS = {"torch": "int8", "onnx": "onnx-int8"}
COMBINE_PARTS = ("vocab", "layers", "int8")
#: The encoder settings every variant keeps from the teacher.
SHARED = ("prefix", "pooling", "normalize", "max_length", "max_batch_tokens")


class Select:
    """The dev docs every variant is compared on, and the teacher's score on them.

    texts (List[str]): The texts.
    gold (List[Tuple[str, str]]): (lang, label) per text.
    langs (List[str]): The languages.
    batch_size (int): Docs per ``nlp.pipe`` batch.
    """

    def __init__(self, texts: List[str], gold: List[Tuple[str, str]], langs: List[str], batch_size: int) -> None:
        self.texts, self.gold, self.langs, self.batch_size = texts, gold, langs, batch_size

    def score(self, nlp: Language) -> Dict[str, Any]:
        """Dev macro-F per language and mean, and the seconds it took.

        nlp (Language): The system.
        RETURNS (Dict[str, Any]): ``spacy_distill.evaluation.scoring.score`` plus "seconds".
        """
        start = time.perf_counter()
        pred = [max(doc.cats, key=doc.cats.get) for doc in nlp.pipe(self.texts, batch_size=self.batch_size)]
        labels = sorted({label for _, label in self.gold} | set(pred))
        out = score(self.gold, pred, self.langs, labels)
        out["seconds"] = round(time.perf_counter() - start, 1)
        return out


def read_select(paths: Dict[str, str], settings: Dict[str, Any]) -> Select:
    """A seeded sample of ``n_per_lang`` dev docs per language, outside the teacher's
    own dev subset (on which its head epoch was chosen).

    paths (Dict[str, str]): The config's [paths].
    settings (Dict[str, Any]): The config's [select].
    RETURNS (Select): The docs.
    """
    langs = split_langs(settings["langs"])
    held = {r.text for r in read_records(Path(paths["dev_teacher"]))}
    by_lang: Dict[str, List[Tuple[str, str]]] = {lang: [] for lang in langs}
    for record in read_records(Path(paths["dev"])):
        if record.lang in by_lang and record.cats and record.text not in held:
            by_lang[record.lang].append((record.text, max(record.cats, key=record.cats.get)))
    rng = random.Random(int(settings["seed"]))
    texts: List[str] = []
    gold: List[Tuple[str, str]] = []
    for lang in langs:
        pool = by_lang[lang]
        if not pool:
            raise ValueError(f"{paths['dev']}: no dev docs of language {lang!r} outside {paths['dev_teacher']} (select.langs)")
        for text, label in rng.sample(pool, min(int(settings["n_per_lang"]), len(pool))):
            texts.append(text)
            gold.append((lang, label))
    return Select(texts, gold, langs, int(settings["batch_size"]))


def teacher_key(teacher_path: Path, select: Select) -> str:
    """A key for the teacher's dev score: its weights and the dev texts."""
    digest = hashlib.sha256()
    for name in ("config.cfg", "textcat/model"):
        with open(teacher_path / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    for text in select.texts:
        digest.update(text.encode("utf8") + b"\0")
    return digest.hexdigest()


def teacher_reference(teacher: Language, teacher_path: Path, select: Select, output_dir: Path) -> Dict[str, Any]:
    """The teacher's dev score, cached in OUTPUT/dev_reference.json (every step needs it;
    one pass takes about a minute).

    teacher (Language): The teacher.
    teacher_path (Path): Its folder (for the cache key).
    select (Select): The dev docs.
    output_dir (Path): OUTPUT.
    RETURNS (Dict[str, Any]): Its dev score.
    """
    key = teacher_key(teacher_path, select)
    cache = output_dir / "dev_reference.json"
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf8"))
        if cached.get("key") == key:
            return cached["dev"]
    dev = select.score(teacher)
    write_json(cache, {"key": key, "dev": dev})
    return dev


def teacher_hf(teacher: Language, teacher_path: Path, output_dir: Path) -> Path:
    """The teacher's encoder as a HF folder (OUTPUT/hf/teacher), written once per
    teacher: the compressed encoders are built from it.

    teacher (Language): The teacher.
    teacher_path (Path): Its folder (for the marker).
    output_dir (Path): OUTPUT.
    RETURNS (Path): The folder.
    """
    folder = output_dir / "hf" / "teacher"
    marker = folder / "spacy-distill-source.json"
    stat = (teacher_path / "textcat" / "model").stat()
    source = {"teacher": str(teacher_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if marker.exists() and json.loads(marker.read_text(encoding="utf8")) == source:
        return folder
    save_hf_folder(encoder_of(teacher).shims[0]._hfmodel, folder)
    marker.write_text(json.dumps(source) + "\n", encoding="utf8")
    return folder


def encoder_block(teacher: Language, kind: str, name: Path, config: Dict[str, Any], keep_float: Optional[List[str]] = None) -> Dict[str, Any]:
    """The ``[components.textcat.model.encoder]`` block of a variant.

    teacher (Language): The teacher (prefix, pooling, lengths are kept).
    kind (str): "fp32", "torch" (int8) or "onnx" (int8).
    name (Path): The HF folder.
    config (Dict[str, Any]): The compress config.
    keep_float (Optional[List[str]]): Regexes of layers left float (int8 kinds).
    RETURNS (Dict[str, Any]): The block.
    """
    base = dict(teacher.config["components"]["textcat"]["model"]["encoder"])
    if base.get("@layers") != "spacy-distill.SentenceEncoder.v1":
        raise ValueError(f"the teacher's encoder is {base.get('@layers')!r}; compress expects spacy-distill.SentenceEncoder.v1")
    block = {"name": str(name), **{k: base[k] for k in SHARED if k in base}}
    if kind == "fp32":
        return {"@layers": "spacy-distill.SentenceEncoder.v1", **block, **{k: base[k] for k in ("tokenizer_config", "transformer_config") if k in base}}
    if kind in QUANT_SECTIONS:
        settings = {k: v for k, v in config[QUANT_SECTIONS[kind]].items() if k not in ("enabled", "keep_float_candidates")}
        return {"@layers": QUANT_LAYERS[kind], **block, **settings, "keep_float": list(keep_float or [])}
    raise ValueError(f"unknown encoder kind {kind!r} (combine.backend: 'torch' or 'onnx')")


def save_pipeline(nlp: Language, path: Path, name: str, info: Dict[str, Any]) -> int:
    """Write a variant atomically, with its dev score in the meta.

    nlp (Language): The variant.
    path (Path): Its folder.
    name (str): Its meta name.
    info (Dict[str, Any]): What the step measured (stored as meta["compression"]).
    RETURNS (int): Its size on disk in bytes.
    """
    nlp.meta["name"] = name
    nlp.meta["compression"] = info
    if "dev" in info:
        nlp.meta["performance"] = {"dev_macro_f_mean_over_langs": info["dev"]["mean"]["macro_f"]}
    with atomic_path(path, is_dir=True) as tmp:
        nlp.to_disk(tmp)
    return dir_size(path)


def variant(nlp: Language, select: Select, reference: Dict[str, Any], started: float) -> Dict[str, Any]:
    """Dev score of a variant and its loss against the teacher (points of mean macro-F)."""
    build_seconds = round(time.perf_counter() - started, 1)
    dev = select.score(nlp)
    return {"dev": dev, "dev_loss": round(reference["mean"]["macro_f"] - dev["mean"]["macro_f"], 3), "build_seconds": build_seconds}


def float_label(keep_float: List[str]) -> str:
    return "all int8" if not keep_float else "float: " + " ".join(keep_float)


def step_quantize(teacher: Language, teacher_path: Path, output_dir: Path, config: Dict[str, Any], select: Select, reference: Dict[str, Any]) -> Dict[str, Any]:
    hf = teacher_hf(teacher, teacher_path, output_dir)
    kinds = ["torch"] + (["onnx"] if config["onnx"]["enabled"] else [])
    out: Dict[str, Any] = {}
    bar = float(config["select"]["max_dev_loss"])
    for kind in kinds:
        name = QUANT_OUTPUTS[kind]
        rows: Dict[str, Any] = {}
        kept = best = None
        # Fewest float layers first: the first candidate within the bar is kept.
        for keep_float in config[QUANT_SECTIONS[kind]]["keep_float_candidates"]:
            started = time.perf_counter()
            nlp = rebuild_with_encoder(teacher, encoder_block(teacher, kind, hf, config, keep_float), select.texts[:2])
            info = dict(variant(nlp, select, reference, started), keep_float=list(keep_float))
            rows[float_label(keep_float)] = info
            typer.echo(f"[quantize] {name} ({float_label(keep_float)}): dev macro-F {info['dev']['mean']['macro_f']:.2f} (loss {info['dev_loss']:+.2f})")
            if info["dev_loss"] < bar:
                kept = (info, nlp)
                break
            if best is None or info["dev_loss"] < best[0]["dev_loss"]:
                best = (info, nlp)
        info, nlp = kept if kept is not None else best  # type: ignore[misc]
        info = dict(info, meets_max_dev_loss=kept is not None, candidates={k: {"dev_loss": v["dev_loss"], "dev_macro_f": v["dev"]["mean"]["macro_f"]} for k, v in rows.items()})
        info["size_bytes"] = save_pipeline(nlp, output_dir / name, f"teacher_{name.replace('-', '_')}", info)
        out[name] = dict(info, candidates=rows)
        typer.echo(f"[quantize] {name}: kept {float_label(info['keep_float'])}, {info['size_bytes'] / 1e6:.1f} MB")
    return out


def step_prune_vocab(teacher: Language, teacher_path: Path, output_dir: Path, config: Dict[str, Any], select: Select, reference: Dict[str, Any]) -> Dict[str, Any]:
    settings = config["prune_vocab"]
    texts = [r.text for source in settings["sources"] for r in read_records(Path(config["paths"][source]))]
    hf = teacher_hf(teacher, teacher_path, output_dir)
    started = time.perf_counter()
    prefix = teacher.config["components"]["textcat"]["model"]["encoder"].get("prefix", "")
    report = prune_vocab(hf, output_dir / "hf" / "vocab", texts, prefix=prefix, batch_size=int(settings["batch_size"]))
    report["sources"] = {s: config["paths"][s] for s in settings["sources"]}
    nlp = rebuild_with_encoder(teacher, encoder_block(teacher, "fp32", output_dir / "hf" / "vocab", config), select.texts[:2])
    # Every dev text is in the kept corpus, so its vectors are the teacher's: check
    # that on a few instead of a full dev pass.
    docs = [nlp.make_doc(t) for t in select.texts[:64]]
    diff = float(abs(encoder_of(nlp).predict(docs) - encoder_of(teacher).predict(docs)).max())
    report.update(build_seconds=round(time.perf_counter() - started, 1), max_abs_vector_diff_on_dev=diff, dev=reference, dev_loss=0.0)
    report["size_bytes"] = save_pipeline(nlp, output_dir / "vocab", "teacher_vocab", report)
    typer.echo(f"[prune-vocab] {report['pieces_before']} -> {report['pieces_after']} pieces, {report['size_bytes'] / 1e6:.1f} MB (max vector diff on dev {diff:.1e})")
    return {"vocab": report}


def step_prune_layers(teacher: Language, teacher_path: Path, output_dir: Path, config: Dict[str, Any], select: Select, reference: Dict[str, Any]) -> Dict[str, Any]:
    candidates = sorted(set(config["prune_layers"]["candidates"]))
    hf = teacher_hf(teacher, teacher_path, output_dir)
    rows: Dict[str, Any] = {}
    kept: Optional[Tuple[int, Language]] = None
    best: Optional[Tuple[float, int, Language]] = None
    for k in candidates:
        started = time.perf_counter()
        folder = output_dir / "hf" / f"layers-{k}"
        pruned = prune_layers(hf, folder, k)
        fit_config = teacher.config.copy()
        fit_config["components"]["textcat"]["model"]["encoder"]["name"] = str(folder)
        fit_config["paths"]["train"] = config["paths"]["train"]
        fit_config["paths"]["dev"] = config["paths"]["dev_teacher"]
        fit_config["system"]["seed"] = int(config["system"]["seed"])
        nlp, head_report = fit_teacher(fit_config, None)
        info = variant(nlp, select, reference, started)
        head_report.pop("dev_macro_f_by_epoch", None)
        head_report.pop("dev_loss_by_epoch", None)
        info.update(pruned, head_training=head_report)
        rows[str(k)] = info
        typer.echo(f"[prune-layers] k={k}: dev macro-F {info['dev']['mean']['macro_f']:.2f} (loss {info['dev_loss']:+.2f}), {info['build_seconds']} s")
        if info["dev_loss"] < float(config["select"]["max_dev_loss"]):
            # Candidates go smallest first: larger ones cannot be chosen any more.
            kept = (k, nlp)
            break
        if best is None or info["dev_loss"] < best[0]:
            best = (info["dev_loss"], k, nlp)
    chosen, nlp = kept if kept is not None else (best[1], best[2])  # type: ignore[index]
    for k in candidates:
        if k != chosen:
            shutil.rmtree(output_dir / "hf" / f"layers-{k}", ignore_errors=True)
    info = dict(rows[str(chosen)], chosen=chosen, meets_max_dev_loss=kept is not None)
    info["size_bytes"] = save_pipeline(nlp, output_dir / "layers", f"teacher_layers_{chosen}", info)
    typer.echo(f"[prune-layers] kept k={chosen} ({'within' if kept else 'none within'} {config['select']['max_dev_loss']} point(s) of the teacher)")
    skipped = [k for k in candidates if str(k) not in rows]
    return {"candidates": rows, "not_tried": skipped, "chosen": chosen, "meets_max_dev_loss": kept is not None, "size_bytes": info["size_bytes"]}


def step_combine(teacher: Language, teacher_path: Path, output_dir: Path, config: Dict[str, Any], select: Select, reference: Dict[str, Any]) -> Dict[str, Any]:
    settings = config["combine"]
    vocab_hf = output_dir / "hf" / "vocab"
    layers_path = output_dir / "layers"
    rows: Dict[str, Any] = {}
    kept: Optional[Tuple[str, Language, Path]] = None
    best: Optional[Tuple[float, str, Language, Path]] = None
    for i, candidate in enumerate(settings["candidates"]):
        parts = candidate.split("+")
        started = time.perf_counter()
        if "vocab" in parts:
            if not vocab_hf.exists():
                raise ValueError(f"{vocab_hf}: missing (run the prune-vocab step first)")
            base = vocab_hf
        else:
            base = teacher_hf(teacher, teacher_path, output_dir)
        head_from = None
        folder = base
        if "layers" in parts:
            if not (layers_path / "meta.json").exists():
                raise ValueError(f"{layers_path}: missing (run the prune-layers step first)")
            head_from = spacy.load(layers_path)
            k = int(head_from.meta["compression"]["chosen"])
            folder = output_dir / "hf" / f"combined-{i}"
            prune_layers(base, folder, k)
        kind = settings["backend"] if "int8" in parts else "fp32"
        keep_float = quantized_float_layers(output_dir, kind) if "int8" in parts else []
        nlp = rebuild_with_encoder(teacher, encoder_block(teacher, kind, folder, config, keep_float), select.texts[:2], head_from=head_from)
        info = variant(nlp, select, reference, started)
        rows[candidate] = info
        typer.echo(f"[combine] {candidate}: dev macro-F {info['dev']['mean']['macro_f']:.2f} (loss {info['dev_loss']:+.2f})")
        if info["dev_loss"] < float(config["select"]["max_dev_loss"]):
            kept = (candidate, nlp, folder)
            break
        if best is None or info["dev_loss"] < best[0]:
            best = (info["dev_loss"], candidate, nlp, folder)
    assert kept is not None or best is not None
    chosen, nlp, folder = kept if kept is not None else best[1:]  # type: ignore[misc]
    # Keep the chosen encoder's HF folder (its config names it), drop the others.
    for i in range(len(settings["candidates"])):
        other = output_dir / "hf" / f"combined-{i}"
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)
    info = dict(rows[chosen], chosen=chosen, meets_max_dev_loss=kept is not None, backend=settings["backend"])
    info["size_bytes"] = save_pipeline(nlp, output_dir / "combined", "teacher_combined", info)
    typer.echo(f"[combine] kept {chosen}: {info['size_bytes'] / 1e6:.1f} MB ({'within' if kept else 'none within'} {config['select']['max_dev_loss']} point(s))")
    return {"candidates": rows, "chosen": chosen, "meets_max_dev_loss": kept is not None, "size_bytes": info["size_bytes"]}


def check_config(config: Dict[str, Any], path: Path) -> None:
    """Reject bad settings before any work, naming the field (and normalise
    ``prune_layers.candidates`` to a list).

    config (Dict[str, Any]): The interpolated config.
    path (Path): Its file, for messages.
    """
    for name in ("paths", "system", "select", "quantize", "onnx", "prune_vocab", "prune_layers", "combine"):
        if name not in config:
            raise ValueError(f"{path}: no [{name}] section")
    for name in ("train", "dev", "dev_teacher", "transfer"):
        if name not in config["paths"]:
            raise ValueError(f"{path}: no paths.{name}")
    if int(config["select"]["n_per_lang"]) < 1 or float(config["select"]["max_dev_loss"]) < 0:
        raise ValueError(f"{path}: select.n_per_lang must be >= 1 and select.max_dev_loss >= 0")
    layers = config["prune_layers"]["candidates"]
    if isinstance(layers, (str, int)):
        # From a project var: "6,8,10" (or one count, which the override parser makes an int).
        layers = [int(k) if k.strip().isdigit() else k for k in str(layers).split(",")]
    if not isinstance(layers, list) or not layers or not all(isinstance(k, int) and k >= 1 for k in layers):
        raise ValueError(f"{path}: prune_layers.candidates must be a non-empty list of layer counts >= 1, got {layers!r}")
    config["prune_layers"] = {**config["prune_layers"], "candidates": layers}
    sources = config["prune_vocab"]["sources"]
    if not isinstance(sources, list) or not sources or any(s not in ("train", "dev", "transfer") for s in sources):
        raise ValueError(f"{path}: prune_vocab.sources must be a non-empty list of 'train', 'dev', 'transfer', got {sources!r}")
    for section in QUANT_SECTIONS.values():
        candidates = config[section].get("keep_float_candidates")
        if not isinstance(candidates, list) or not candidates or not all(isinstance(c, list) and all(isinstance(r, str) for r in c) for c in candidates):
            raise ValueError(f"{path}: {section}.keep_float_candidates must be a non-empty list of lists of regexes, got {candidates!r}")
        for candidate in candidates:
            for pattern in candidate:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{path}: {section}.keep_float_candidates: {pattern!r} is not a regular expression ({err})") from None
    if config["combine"]["backend"] not in ("torch", "onnx"):
        raise ValueError(f"{path}: combine.backend must be 'torch' or 'onnx', got {config['combine']['backend']!r}")
    candidates = config["combine"]["candidates"]
    if not isinstance(candidates, list) or not candidates:
        raise ValueError(f"{path}: combine.candidates must be a non-empty list")
    for candidate in candidates:
        parts = str(candidate).split("+")
        if any(p not in COMBINE_PARTS for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"{path}: combine.candidates: {candidate!r} is not a '+'-joined set of {', '.join(COMBINE_PARTS)}")


def quantized_float_layers(output_dir: Path, kind: str) -> List[str]:
    """The float layers the quantize step kept for a backend (read from its pipeline).

    output_dir (Path): OUTPUT.
    kind (str): "torch" or "onnx".
    RETURNS (List[str]): Its keep_float regexes.
    """
    meta = output_dir / QUANT_OUTPUTS[kind] / "meta.json"
    if not meta.exists():
        raise ValueError(f"{meta}: missing (run the quantize step first; combine.backend = {kind!r})")
    return list(json.loads(meta.read_text(encoding="utf8"))["compression"]["keep_float"])


STEP_FUNCS = {"quantize": step_quantize, "prune-vocab": step_prune_vocab, "prune-layers": step_prune_layers, "combine": step_combine}


def main(
    ctx: typer.Context,
    step: str = typer.Argument(..., help=f"One of {', '.join(STEPS)}"),
    teacher_path: Path = typer.Argument(..., help="The trained teacher pipeline (training/teacher/model-best)"),
    output_dir: Path = typer.Argument(..., help="Folder for the compressed pipelines (training/compressed)"),
    metrics_dir: Path = typer.Argument(..., help="Folder for the step reports (metrics/compression)"),
    config_path: Path = typer.Option(Path("configs/compress.cfg"), "--config", help="Compression settings"),
) -> None:
    """Run one compression step on the teacher and report its dev scores.

    ctx (typer.Context): Dotted overrides of the config, e.g. --select.n_per_lang 50.
    step (str): The step.
    teacher_path (Path): The teacher pipeline.
    output_dir (Path): Output folder.
    metrics_dir (Path): Report folder (METRICS/<step>.json).
    config_path (Path): configs/compress.cfg.
    """
    try:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r} (one of {', '.join(STEPS)})")
        if not (teacher_path / "config.cfg").exists() or not (teacher_path / "textcat" / "model").exists():
            raise ValueError(f"{teacher_path}: not a teacher pipeline (no config.cfg or textcat/model)")
        config = dict(load_config(config_path, overrides=parse_config_overrides(ctx.args), interpolate=True))
        check_config(config, config_path)
        for name, path in config["paths"].items():
            if not Path(path).exists():
                raise ValueError(f"{config_path}: paths.{name} = {path!r} does not exist")
        started = time.perf_counter()
        teacher = spacy.load(teacher_path)
        encoder_of(teacher)
        select = read_select(config["paths"], config["select"])
        reference = teacher_reference(teacher, teacher_path, select, output_dir)
        report = STEP_FUNCS[step](teacher, teacher_path, output_dir, config, select, reference)
    except ValueError as err:
        typer.echo(f"Error: {err}", err=True)
        sys.exit(1)
    write_json(
        metrics_dir / f"{step.replace('-', '_')}.json",
        {
            "step": step,
            "teacher": str(teacher_path),
            "select": {"n_docs": len(select.texts), "n_per_lang": config["select"]["n_per_lang"], "max_dev_loss": config["select"]["max_dev_loss"]},
            "teacher_dev": reference,
            "variants": report,
            "seconds": round(time.perf_counter() - started, 1),
            "config": {k: config[k] for k in ("system", "select", "quantize", "onnx", "prune_vocab", "prune_layers", "combine")},
        },
    )
    typer.echo(f"[{step}] done in {time.perf_counter() - started:.0f} s; report {metrics_dir / (step.replace('-', '_') + '.json')}")


if __name__ == "__main__":
    run(main)
