"""CLI commands of the core package: ``augment`` and ``label``."""

import functools
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import typer

from .io import InputError, Record, atomic_path, count_records, read_records

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def friendly_errors(func: Callable) -> Callable:
    """Turn expected errors into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (InputError, FileNotFoundError, ValueError, OSError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def parse_pos_specs(specs: List[str]) -> Dict[str, str]:
    """``["de=path", ...]`` → ``{"de": "path"}``, checking each path.

    specs (List[str]): The ``--pos`` values.
    RETURNS (Dict[str, str]): Pipeline path or package by language.
    """
    out: Dict[str, str] = {}
    for spec in specs:
        lang, sep, path = spec.partition("=")
        if not sep or not lang or not path:
            raise InputError(f"--pos {spec!r}: expected LANG=PATH, e.g. --pos de=training/tagger-de/model-best")
        out[lang] = path
    return out


def _load_pos_pipeline(lang: str, path: Optional[str]):
    import spacy

    if path is None:
        nlp = spacy.blank(lang)
    else:
        if not Path(path).exists() and not spacy.util.is_package(path):
            raise InputError(f"--pos {lang}={path}: no such pipeline directory or package")
        nlp = spacy.load(path)
    # Sentence sampling needs sentence boundaries; taggers trained for
    # augmentation usually have none, so add the rule-based sentencizer
    # (its punctuation list covers 。！？ too).
    if not any(nlp.get_pipe_meta(n).factory in ("parser", "senter", "sentencizer") for n in nlp.pipe_names):
        nlp.add_pipe("sentencizer")
    return nlp


def augment_command(
    ctx: typer.Context,
    input_path: Path = typer.Argument(..., help="JSONL ({\"text\", \"lang\"} per line), .txt, or .spacy DocBin(s)."),
    output_path: Path = typer.Argument(..., help="Output JSONL: {\"text\", \"lang\", \"source\", \"variant\"} per variant."),
    config_path: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Config with an \\[augment] block (@augmenters = \"spacy-distill.PosAugmenter.v1\"). Dotted overrides such as --augment.n_iter 2 follow the options."
    ),
    pos: List[str] = typer.Option(
        [], "--pos", help="LANG=PIPELINE: a spaCy pipeline that sets token.pos_ for that language. Repeat per language."
    ),
    lang: Optional[str] = typer.Option(None, "--lang", help="Language of records that have no 'lang' field."),
    save_table: Optional[Path] = typer.Option(None, "--save-table", help="Also write the POS unigram tables (JSON)."),
    include_original: bool = typer.Option(False, "--include-original", help="Write each original text too (variant 0)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Texts per tagging batch."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Augment texts: mask words, swap same-POS words, sample n-grams and sentences.

    Pass 1 tags every text with its language's POS pipeline and counts words per
    POS; pass 2 writes up to n_iter distinct variants per text. Seeded: the
    same config and input give byte-identical output.
    """
    _augment(ctx, input_path, output_path, config_path, pos, lang, save_table, include_original, batch_size, progress)


@friendly_errors
def _augment(ctx, input_path, output_path, config_path, pos, lang, save_table, include_original, batch_size, progress):
    import srsly
    from spacy.cli._util import parse_config_overrides
    from spacy.util import load_config, registry
    from tqdm import tqdm

    from .augment import PosAugmenter, doc_to_tokens

    overrides = parse_config_overrides(ctx.args)
    if config_path is not None:
        if not config_path.exists():
            raise InputError(f"{config_path}: config file not found")
        config = load_config(config_path, overrides=overrides, interpolate=True)
        if "augment" not in config:
            raise InputError(f"{config_path}: no [augment] section")
        augmenter = registry.resolve({"augment": config["augment"]})["augment"]
    else:
        if overrides:
            raise InputError(f"overrides {sorted(overrides)} need a --config with an [augment] section")
        augmenter = PosAugmenter()
    pos_paths = parse_pos_specs(pos)
    pipelines: Dict[str, object] = {}

    def pipeline_for(code: str, where: str):
        if code not in pipelines:
            if code not in pos_paths and augmenter.p_pos > 0:
                raise InputError(
                    f"{where}: language {code!r} has no POS pipeline (given: {sorted(pos_paths) or 'none'}); "
                    f"pass --pos {code}=PATH, or set p_pos = 0"
                )
            pipelines[code] = _load_pos_pipeline(code, pos_paths.get(code))
        return pipelines[code]

    total = count_records(input_path)
    fd, tmp_name = tempfile.mkstemp(prefix=".augment-tokens-", suffix=".jsonl", dir=output_path.parent if output_path.parent.exists() else None)
    os.close(fd)
    tmp_tokens = Path(tmp_name)
    try:
        # Pass 1: tag, count, and keep the compact tokens on disk (not in memory).
        n_texts = 0
        with tmp_tokens.open("w", encoding="utf8") as out:
            bar = tqdm(total=total, unit="text", desc="tag", disable=not progress)
            records = iter(read_records(input_path))
            while True:
                batch: List[Record] = list(itertools.islice(records, batch_size))
                if not batch:
                    break
                by_lang: Dict[str, List[int]] = {}
                for j, rec in enumerate(batch):
                    code = rec.lang or lang
                    where = f"{input_path}:{rec.meta.get('line', rec.meta.get('doc', n_texts + j))}"
                    if not code:
                        raise InputError(f"{where}: record has no 'lang' field and no --lang was given")
                    pipeline_for(code, where)
                    by_lang.setdefault(code, []).append(j)
                tokens: List[Optional[list]] = [None] * len(batch)
                for code, idx in by_lang.items():
                    nlp = pipelines[code]
                    for j, doc in zip(idx, nlp.pipe([batch[j].text for j in idx])):
                        toks = doc_to_tokens(doc)
                        augmenter.fit_tokens(toks, code)
                        tokens[j] = toks
                for j, rec in enumerate(batch):
                    out.write(json.dumps([rec.lang or lang, tokens[j]], ensure_ascii=False) + "\n")
                n_texts += len(batch)
                bar.update(len(batch))
            bar.close()
        # Pass 2: make the variants.
        n_variants = 0
        with atomic_path(output_path) as tmp_out, tmp_out.open("w", encoding="utf8") as out:
            with tmp_tokens.open(encoding="utf8") as f:
                for i, line in enumerate(tqdm(f, total=n_texts, unit="text", desc="augment", disable=not progress)):
                    code, toks = json.loads(line)
                    toks = [tuple(t) for t in toks]
                    if include_original:
                        text = "".join(t[0] + t[1] for t in toks).strip()
                        out.write(json.dumps({"text": text, "lang": code, "source": i, "variant": 0}, ensure_ascii=False) + "\n")
                    for k, text in enumerate(augmenter.augment_tokens(toks, code, augmenter.rng_for(i)), start=1):
                        out.write(json.dumps({"text": text, "lang": code, "source": i, "variant": k}, ensure_ascii=False) + "\n")
                        n_variants += 1
        if save_table is not None:
            with atomic_path(save_table) as tmp_table:
                srsly.write_json(tmp_table, augmenter.to_json())
    finally:
        tmp_tokens.unlink(missing_ok=True)
    typer.echo(f"augment: {n_texts} texts -> {n_variants} variants in {output_path}", err=True)


def label_command(
    teacher: str = typer.Argument(..., help="Teacher pipeline: a path or package name, with a textcat."),
    input_path: Path = typer.Argument(..., help="JSONL ({\"text\", \"lang\"?, \"cats\"?}), .txt, or .spacy DocBin(s) (gold cats kept)."),
    output_path: Path = typer.Argument(..., help="A .spacy file, or a directory of .spacy shards (readable by spacy.Corpus.v1)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Texts per teacher batch."),
    shard_size: int = typer.Option(10000, "--shard-size", help="Docs per shard when OUTPUT is a directory."),
    limit: int = typer.Option(0, "--limit", help="Label only the first N texts (0 = all)."),
    component: Optional[str] = typer.Option(None, "--component", help="Name of the teacher's text classifier, if it has several."),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU to run the teacher on (-1 = CPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ray: bool = typer.Option(False, "--ray", help="Spread the teacher over Ray workers (needs spacy-distill[ray]); same output as the local path."),
    address: Optional[str] = typer.Option(None, "--address", help="With --ray: the Ray cluster address; default: start or join a local Ray."),
    workers: int = typer.Option(2, "--workers", help="With --ray: number of teacher workers (actors)."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="With --ray: CPUs reserved per worker."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="With --ray: GPUs per worker (0 = CPU)."),
    calibration_path: Optional[Path] = typer.Option(None, "--calibration", help="A JSON from `spacy-distill calibrate`: scale and bias applied to the teacher's logits."),
) -> None:
    """Label texts with a teacher: docs carry its probabilities and logits.

    Streams the input (bounded memory) and writes the output under a temporary
    name, renamed when complete.
    """
    _label(teacher, input_path, output_path, batch_size, shard_size, limit, component, gpu_id, progress,
           ray, address, workers, cpus_per_worker, gpus_per_worker, calibration_path)


@friendly_errors
def _label(teacher, input_path, output_path, batch_size, shard_size, limit, component, gpu_id, progress,
           ray=False, address=None, workers=2, cpus_per_worker=1.0, gpus_per_worker=0.0, calibration_path=None):
    import spacy
    import srsly

    from .label import Calibration, label_records

    calibration = None
    if calibration_path is not None:
        if not calibration_path.exists():
            raise InputError(f"{calibration_path}: no such calibration file")
        try:
            calibration = Calibration.from_dict(srsly.read_json(calibration_path))
        except ValueError as e:
            raise InputError(f"{calibration_path}: {e}") from None

    if batch_size < 1 or shard_size < 1 or workers < 1:
        raise InputError("--batch-size, --shard-size and --workers must be >= 1")
    if not Path(teacher).exists() and not spacy.util.is_package(teacher):
        raise InputError(f"{teacher}: no such pipeline directory or installed package")
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or directory")
    records: Iterator[Record] = iter(read_records(input_path))
    total = count_records(input_path)
    if limit:
        records = itertools.islice(records, limit)
        total = min(total, limit) if total is not None else limit
    if ray:
        try:
            from .ray_label import label_on_ray
        except ImportError as err:
            raise InputError(f"--ray needs Ray: pip install 'spacy-distill[ray]' ({err})") from None
        stats = label_on_ray(
            teacher, records, output_path, address=address, num_workers=workers,
            num_cpus_per_worker=cpus_per_worker, num_gpus_per_worker=gpus_per_worker,
            batch_size=batch_size, shard_size=shard_size, chunk_size=256, total=total,
            progress=progress, component=component, calibration=calibration,
        )
    else:
        if gpu_id >= 0:
            spacy.require_gpu(gpu_id)
        nlp = spacy.load(teacher)
        stats = label_records(
            nlp, records, output_path, batch_size=batch_size, shard_size=shard_size,
            component=component, total=total, progress=progress, calibration=calibration,
        )
    rate = stats.n_tokens / stats.seconds if stats.seconds else 0.0
    typer.echo(
        f"label: {stats.n_docs} docs in {stats.n_shards} file(s) -> {output_path} "
        f"({stats.seconds:.1f}s, {rate:.0f} tokens/s)",
        err=True,
    )


def calibrate_command(
    teacher: str = typer.Argument(..., help="Teacher pipeline: a path or package name, with a textcat."),
    gold_path: Path = typer.Argument(..., help="Gold-labelled docs: a .spacy DocBin (or directory) or JSONL with 'cats'."),
    output_path: Path = typer.Argument(..., help="Output JSON: scale and per-label bias, with before/after NLL and accuracy."),
    limit: int = typer.Option(0, "--limit", help="Use only the first N gold docs (0 = all)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Texts per teacher batch."),
    component: Optional[str] = typer.Option(None, "--component", help="Name of the teacher's text classifier."),
    fit_bias: bool = typer.Option(False, "--bias/--no-bias", help="Also fit a bias per label (Platt scaling; can change the teacher's decisions). Default: scale only (temperature scaling)."),
) -> None:
    """Fit the teacher's calibration (a scale, optionally a bias per label) on gold docs.

    Pass the output to `spacy-distill label --calibration`: a teacher trained for
    few steps ranks well but its probabilities stay near uniform, which makes
    flat soft targets.
    """
    _calibrate(teacher, gold_path, output_path, limit, batch_size, component, fit_bias)


@friendly_errors
def _calibrate(teacher, gold_path, output_path, limit, batch_size, component, fit_bias):
    import spacy
    import srsly
    from spacy.tokens import Doc

    from .label import calibrate_teacher

    if not Path(teacher).exists() and not spacy.util.is_package(teacher):
        raise InputError(f"{teacher}: no such pipeline directory or installed package")
    nlp = spacy.load(teacher)
    records = read_records(gold_path)
    if limit:
        records = itertools.islice(records, limit)
    docs = []
    for rec in records:
        doc = nlp.make_doc(rec.text)
        doc.cats = rec.cats
        docs.append(doc)
    calibration = calibrate_teacher(nlp, (d for d in docs if isinstance(d, Doc)), component=component, batch_size=batch_size, fit_bias=fit_bias)
    with atomic_path(output_path) as tmp:
        srsly.write_json(tmp, calibration.to_dict())
    r = calibration.report
    typer.echo(
        f"calibrate: scale {calibration.scale:.3f}, bias {calibration.bias}; on {r['n_docs']} docs "
        f"NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, accuracy {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``augment`` and ``label`` to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
    app.command("augment", context_settings=_EXTRA)(augment_command)
    app.command("label")(label_command)
    app.command("calibrate")(calibrate_command)
