"""CLI commands of the core package: ``augment``, ``label`` and ``calibrate``.

Every command checks its output path before any work (``io.check_output``: no
writing over an input, over a path of another kind, or over an existing output
without ``--overwrite``), writes it atomically, and reports failures as one line
(``cli_errors.one_line_errors``).
"""

import itertools
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import typer

from .cli_errors import DEBUG_HELP, one_line_errors
from .io import (
    InputError,
    Record,
    UsageError,
    atomic_path,
    check_output,
    count_records,
    read_records,
)

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def parse_pos_specs(specs: List[str]) -> Dict[str, str]:
    """``["de=path", ...]`` → ``{"de": "path"}``, checking each path.

    specs (List[str]): The ``--pos`` values.
    RETURNS (Dict[str, str]): Pipeline path or package by language.
    """
    out: Dict[str, str] = {}
    for spec in specs:
        lang, sep, path = spec.partition("=")
        if not sep or not lang or not path:
            raise UsageError(f"--pos {spec!r}: expected LANG=PATH, e.g. --pos de=training/tagger-de/model-best")
        out[lang] = path
    return out


def _load_pos_pipeline(lang: str, path: Optional[str]):
    import spacy

    if path is None:
        nlp = spacy.blank(lang)
    else:
        if not Path(path).exists() and not spacy.util.is_package(path):
            raise UsageError(f"--pos {lang}={path}: no such pipeline directory or package")
        nlp = spacy.load(path)
    # Sentence sampling needs sentence boundaries; taggers trained for
    # augmentation usually have none, so add the rule-based sentencizer
    # (its punctuation list covers 。！？ too).
    if not any(nlp.get_pipe_meta(n).factory in ("parser", "senter", "sentencizer") for n in nlp.pipe_names):
        nlp.add_pipe("sentencizer")
    return nlp


def augment_command(
    ctx: typer.Context,
    input_path: Path = typer.Argument(..., help="Texts: .jsonl/.ndjson ({\"text\", \"lang\"?} per line), .csv (text, lang? columns), .txt, or .spacy DocBin(s)."),
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
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Texts per tagging batch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (never an input or a directory)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress: a bar on a terminal, a line every 30 s in a log."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Augment texts: mask words, swap same-POS words, sample n-grams and sentences.

    Pass 1 tags every text with its language's POS pipeline and counts words per
    POS; pass 2 writes up to n_iter distinct variants per text. Seeded: the
    same config and input give byte-identical output.
    """
    _augment(
        ctx, input_path, output_path, config_path=config_path, pos=pos, lang=lang, save_table=save_table,
        include_original=include_original, batch_size=batch_size, overwrite=overwrite, progress=progress, debug=debug,
    )


@one_line_errors
def _augment(
    ctx: typer.Context, input_path: Path, output_path: Path, *, config_path: Optional[Path], pos: List[str],
    lang: Optional[str], save_table: Optional[Path], include_original: bool, batch_size: int, overwrite: bool,
    progress: bool, debug: bool,
) -> None:
    import srsly
    from spacy.cli._util import parse_config_overrides
    from spacy.util import load_config, registry

    from .augment import PosAugmenter, augment_file

    if not input_path.exists():
        raise InputError(input_path, None, "no such file or directory")
    inputs = [input_path] + ([config_path] if config_path else [])
    check_output(output_path, inputs=inputs, overwrite=overwrite)
    if save_table is not None:
        check_output(save_table, inputs=inputs + [output_path], overwrite=overwrite, name="--save-table")
    overrides = parse_config_overrides(ctx.args)
    if config_path is not None:
        if not config_path.exists():
            raise UsageError(f"--config {config_path}: config file not found")
        config = load_config(config_path, overrides=overrides, interpolate=True)
        if "augment" not in config:
            raise UsageError(f"--config {config_path}: no [augment] section")
        augmenter = registry.resolve({"augment": config["augment"]})["augment"]
    else:
        if overrides:
            raise UsageError(f"overrides {sorted(overrides)} need a --config with an [augment] section")
        augmenter = PosAugmenter()
    pos_paths = parse_pos_specs(pos)
    pipelines: Dict[str, object] = {}

    def pipeline_for(code: str, where: str):
        if code not in pipelines:
            if code not in pos_paths and augmenter.p_pos > 0:
                raise InputError(
                    where, None,
                    f"language {code!r} has no POS pipeline (given: {sorted(pos_paths) or 'none'}); "
                    f"pass --pos {code}=PATH, or set p_pos = 0",
                )
            pipelines[code] = _load_pos_pipeline(code, pos_paths.get(code))
        return pipelines[code]

    stats = augment_file(
        augmenter, input_path, output_path, pipeline_for, default_lang=lang,
        include_original=include_original, batch_size=batch_size, progress=progress,
    )
    if save_table is not None:
        with atomic_path(save_table) as tmp_table:
            srsly.write_json(tmp_table, augmenter.to_json())
    typer.echo(f"augment: {stats.n_texts} texts -> {stats.n_variants} variants in {output_path}", err=True)


def label_command(
    teacher: str = typer.Argument(..., help="Teacher pipeline: a path or package name, with a textcat."),
    input_path: Path = typer.Argument(..., help="Texts: .jsonl/.ndjson ({\"text\", \"lang\"?, \"cats\"?}), .csv, .txt, or .spacy DocBin(s) (gold cats kept)."),
    output_path: Path = typer.Argument(..., help="A .spacy file, or a directory of .spacy shards (readable by spacy.Corpus.v1)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Texts per teacher batch."),
    shard_size: int = typer.Option(10000, "--shard-size", min=1, help="Docs per shard when OUTPUT is a directory."),
    limit: int = typer.Option(0, "--limit", min=0, help="Label only the first N texts (0 = all)."),
    component: Optional[str] = typer.Option(None, "--component", help="Name of the teacher's text classifier, if it has several."),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", min=-1, help="GPU to run the teacher on (-1 = CPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output of the same kind (never an input)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress: a bar on a terminal, a line every 30 s in a log."),
    ray: bool = typer.Option(False, "--ray", help="Spread the teacher over Ray workers (needs spacy-distill[ray]); same output as the local path."),
    address: Optional[str] = typer.Option(None, "--address", help="With --ray: the Ray cluster address; default: start or join a local Ray."),
    workers: int = typer.Option(2, "--workers", min=1, help="With --ray: number of teacher workers (actors)."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", min=0.0, help="With --ray: CPUs reserved per worker."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="With --ray: GPUs per worker (0 = CPU)."),
    calibration_path: Optional[Path] = typer.Option(None, "--calibration", help="A JSON from `spacy-distill calibrate`: scale and bias applied to the teacher's logits."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Label texts with a teacher: docs carry its probabilities and logits.

    Streams the input (bounded memory) and writes the output under a temporary
    name, renamed when complete; an interrupted run leaves the previous output.
    """
    _label(
        teacher, input_path, output_path, batch_size=batch_size, shard_size=shard_size, limit=limit,
        component=component, gpu_id=gpu_id, overwrite=overwrite, progress=progress, ray=ray, address=address,
        workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
        calibration_path=calibration_path, debug=debug,
    )


def _check_pipeline(name: str) -> None:
    import spacy

    if not Path(name).exists() and not spacy.util.is_package(name):
        raise UsageError(f"{name}: no such pipeline directory or installed package")


@one_line_errors
def _label(
    teacher: str, input_path: Path, output_path: Path, *, batch_size: int = 32, shard_size: int = 10000,
    limit: int = 0, component: Optional[str] = None, gpu_id: int = -1, overwrite: bool = False,
    progress: bool = True, ray: bool = False, address: Optional[str] = None, workers: int = 2,
    cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, calibration_path: Optional[Path] = None,
    debug: bool = False,
) -> None:
    import spacy

    from .calibration import read_calibration
    from .label import label_records

    _check_pipeline(teacher)
    if not input_path.exists():
        raise InputError(input_path, None, "no such file or directory")
    inputs = [input_path, Path(teacher)] + ([calibration_path] if calibration_path else [])
    check_output(output_path, inputs=inputs, overwrite=overwrite, is_dir=output_path.suffix != ".spacy")
    calibration = read_calibration(calibration_path) if calibration_path is not None else None
    records: Iterator[Record] = iter(read_records(input_path))
    total = count_records(input_path)
    if limit:
        records = itertools.islice(records, limit)
        total = min(total, limit) if total is not None else limit
    if ray:
        try:
            from .ray_label import label_on_ray
        except ImportError as err:
            raise UsageError(f"--ray needs Ray: pip install 'spacy-distill[ray]' ({err})") from None
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
    limit: int = typer.Option(0, "--limit", min=0, help="Use only the first N gold docs (0 = all)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Texts per teacher batch."),
    component: Optional[str] = typer.Option(None, "--component", help="Name of the teacher's text classifier."),
    fit_bias: bool = typer.Option(False, "--bias/--no-bias", help="Also fit a bias per label (Platt scaling; can change the teacher's decisions). Default: scale only (temperature scaling)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress: a bar on a terminal, a line every 30 s in a log."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Fit the teacher's calibration (a scale, optionally a bias per label) on gold docs.

    Pass the output to `spacy-distill label --calibration`: a teacher trained for
    few steps ranks well but its probabilities stay near uniform, which makes
    flat soft targets.
    """
    _calibrate(
        teacher, gold_path, output_path, limit=limit, batch_size=batch_size, component=component,
        fit_bias=fit_bias, overwrite=overwrite, progress=progress, debug=debug,
    )


@one_line_errors
def _calibrate(
    teacher: str, gold_path: Path, output_path: Path, *, limit: int, batch_size: int, component: Optional[str],
    fit_bias: bool, overwrite: bool, progress: bool, debug: bool,
) -> None:
    import spacy

    from .calibration import calibrate_teacher
    from .io import write_json

    _check_pipeline(teacher)
    if not gold_path.exists():
        raise InputError(gold_path, None, "no such file or directory")
    check_output(output_path, inputs=[gold_path, Path(teacher)], overwrite=overwrite)
    nlp = spacy.load(teacher)
    records = read_records(gold_path)
    if limit:
        records = itertools.islice(records, limit)
    docs = []
    for rec in records:
        doc = nlp.make_doc(rec.text)
        doc.cats = rec.cats
        docs.append(doc)
    calibration = calibrate_teacher(nlp, docs, component=component, batch_size=batch_size, fit_bias=fit_bias, progress=progress)
    write_json(output_path, calibration.to_dict())
    r = calibration.report
    typer.echo(
        f"calibrate: scale {calibration.scale:.3f}, bias {calibration.bias}; on {r['n_docs']} docs "
        f"NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, accuracy {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``augment``, ``label`` and ``calibrate`` to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
    app.command("augment", context_settings=_EXTRA)(augment_command)
    app.command("label")(label_command)
    app.command("calibrate")(calibrate_command)
