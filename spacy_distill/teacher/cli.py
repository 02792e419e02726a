"""Teacher commands: ``label``, ``calibrate`` and ``calibrate-pipeline``.

Every command checks its output before any work (``io.check_output``), writes it
atomically, and reports failures as one line (``cli_errors.one_line_errors``).
The work itself is ``teacher.label``'s and ``teacher.calibrate``'s, imported
inside the commands: they load spaCy, which the CLI's start need not wait for.
"""

import itertools
from pathlib import Path
from typing import Iterator, Optional

import typer

from ..cli_errors import DEBUG_HELP, one_line_errors
from ..io import (
    InputError,
    Record,
    UsageError,
    check_output,
    check_records,
    count_records,
    read_records,
)


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

    from .calibrate import read_calibration
    from .label import label_records

    _check_pipeline(teacher)
    if not input_path.exists():
        raise InputError(input_path, None, "no such file or directory")
    inputs = [input_path, Path(teacher)] + ([calibration_path] if calibration_path else [])
    check_output(output_path, inputs=inputs, overwrite=overwrite, is_dir=output_path.suffix != ".spacy")
    calibration = read_calibration(calibration_path) if calibration_path is not None else None
    # One cheap pass first (the teacher reads ~15 texts/s), so that a corrupt or
    # over-long record is reported at its file:line before the teacher loads.
    check_records(input_path)
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

    from ..io import write_json
    from .calibrate import calibrate_teacher
    from .label import find_textcat

    _check_pipeline(teacher)
    if not gold_path.exists():
        raise InputError(gold_path, None, "no such file or directory")
    check_output(output_path, inputs=[gold_path, Path(teacher)], overwrite=overwrite)
    # Read (and check) the gold before the teacher loads.
    records = read_records(gold_path)
    if limit:
        records = itertools.islice(records, limit)
    gold = list(records)
    nlp = spacy.load(teacher)
    textcat, _ = find_textcat(nlp, component)
    predicted = sorted(str(label) for label in getattr(nlp.get_pipe(textcat), "labels", ()) or ())
    docs = []
    for rec in gold:
        # Labels the teacher does not predict (or a different label set) would fit
        # a meaningless scale: refuse them before scoring, at their file:line.
        if predicted and rec.cats and sorted(rec.cats) != predicted:
            raise InputError(
                rec.path or gold_path, rec.line,
                f"gold cats have the labels {sorted(rec.cats)}, but {textcat!r} of {teacher} predicts {predicted}",
                doc=rec.doc,
            )
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


def calibrate_pipeline_command(
    pipeline: str = typer.Argument(..., metavar="PIPELINE", help="Pipeline folder or installed package with a textcat (e.g. training/teacher/model-best)."),
    calibration_path: Path = typer.Argument(..., metavar="CALIBRATION_JSON", help="JSON from `spacy-distill calibrate`: scale and per-label bias."),
    output_dir: Path = typer.Argument(..., metavar="OUTPUT_DIR", help="Folder for the calibrated copy (written atomically)."),
    component: Optional[str] = typer.Option(None, "--component", help="Name of the text classifier, if the pipeline has several."),
    name: str = typer.Option("calibration", "--name", help="Name of the added distill_calibration component."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT_DIR if it exists."),
) -> None:
    """Copy a pipeline with a distill_calibration component after its textcat, so its doc.cats are calibrated.

    `spacy.load` and `spacy-distill serve` accept the copy as they are (the
    component is registered through an entry point).
    """
    from .calibrate import calibrate_pipeline

    try:
        message = calibrate_pipeline(pipeline, calibration_path, output_dir, component=component, name=name, overwrite=overwrite)
    except (ValueError, OSError) as e:
        # spaCy's messages span lines; the CLI's errors are one line.
        typer.echo("error: " + " ".join(str(e).split()), err=True)
        raise typer.Exit(1) from None
    typer.echo(message, err=True)


def register(app: typer.Typer) -> None:
    """Add ``label``, ``calibrate`` and ``calibrate-pipeline`` to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
    app.command("label")(label_command)
    app.command("calibrate")(calibrate_command)
    app.command("calibrate-pipeline")(calibrate_pipeline_command)
