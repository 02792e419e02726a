"""Commands that score a file: ``classify`` (offline, with a pipeline or a cascade)
and ``client classify`` (through a running server).

Heavy imports (spaCy, the client's HTTP library) happen inside the commands, so
the ``spacy-distill`` CLI starts fast.
"""

import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import typer

from ..cli_errors import DEBUG_HELP, fail
from ..cli_errors import one_line_errors as _one_line_errors
from .cli_options import (
    CALIBRATION_OPTION,
    CASCADE_REPORT_OPTION,
    DEFER_SHARE_OPTION,
    TEMPERATURE_OPTION,
    THRESHOLD_OPTION,
)
from .settings import TOKEN_ENV_VAR


def classify_file(
    model: str = typer.Argument(..., help="Package name or path of the pipeline."),
    input_path: Path = typer.Argument(
        ...,
        help="Input: .txt (one text per line), .jsonl ({'text': ...}) or .csv (a 'text' column).",
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Output JSONL file (written atomically)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="nlp.pipe batch size."),
    text_field: str = typer.Option(
        "text", "--text-field", help="JSONL field / CSV column with the text."
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar on stderr."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the output file if it exists."
    ),
    cascade: Optional[str] = typer.Option(
        None, "--cascade", help="Teacher pipeline: texts the model is unsure of go to it; each result says which model answered (docs/cascade.md)."
    ),
    threshold: Optional[float] = THRESHOLD_OPTION,
    defer_share: Optional[float] = DEFER_SHARE_OPTION,
    cascade_report: Optional[Path] = CASCADE_REPORT_OPTION,
    temperature: Optional[float] = TEMPERATURE_OPTION,
    calibration: Optional[Path] = CALIBRATION_OPTION,
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Score a file offline with a pipeline (or a student→teacher cascade); write one JSON object per text."""
    _one_line_errors(_classify_file)(**{k: v for k, v in locals().items()})


def _classify_file(
    model: str,
    input_path: Path,
    output: Path,
    batch_size: int,
    text_field: str,
    progress: bool,
    overwrite: bool,
    debug: bool,
    cascade: Optional[str] = None,
    **cascade_options: Any,
) -> None:
    from ..io import atomic_path, check_output, count_records, read_records

    check_output(output, inputs=[input_path], overwrite=overwrite, name="-o/--output")
    records = read_records(input_path, text_field)
    first = next(records, None)  # surface input errors before loading the model
    import spacy

    try:
        nlp = spacy.load(model)
    except (OSError, ValueError, ImportError) as err:
        fail(f"cannot load model {model!r}: {str(err).strip().splitlines()[0]}")
    scorer = None
    if cascade is not None:
        from ..cascade import CascadeOptions
        from .cascade import offline_cascade

        scorer = offline_cascade(nlp, cascade, batch_size, CascadeOptions(**cascade_options))

    def all_records() -> Iterator[Any]:
        if first is not None:
            yield first
            yield from records

    with atomic_path(output) as tmp:
        n = _write_scores(nlp, all_records(), tmp, batch_size, progress, count_records(input_path), scorer=scorer)
    typer.echo(f"wrote {n} results to {output}", err=True)


def _write_scores(
    nlp: Any,
    records: Iterator[Any],
    tmp: Path,
    batch_size: int,
    progress: bool,
    total: Optional[int] = None,
    *,
    scorer: Optional[Callable[[List[str]], List[Dict[str, Any]]]] = None,
) -> int:
    """Score records into ``tmp`` (with ``scorer``, e.g. a cascade: its results); RETURNS (int): how many.

    Without a scorer, each chunk of records is one job on the server's runner
    code (``runner.run_to_end`` on an ``InProcessRunner``): the same text
    guard, batching into ``nlp.pipe`` and answers as ``/classify``.
    """
    from spacy.util import minibatch

    from ..io import record_to_dict
    from ..progress import progress_bar
    from .jobs import Job, JobError, Task
    from .runner import InProcessRunner, run_to_end

    if scorer is None:
        runner = InProcessRunner(nlp.meta.get("name") or "model", nlp, batch_size)

        def score(texts: List[str]) -> List[Dict[str, Any]]:
            try:
                return run_to_end(runner, Job(Task.CLASSIFY, texts))
            except JobError as err:
                # The runner logged the traceback; the command fails with one line.
                fail(f"the model raised an error: {err}")

        scorer = score

    n = 0
    bar = progress_bar(total, "classify", unit="text", enabled=progress)
    with tmp.open("w", encoding="utf-8") as out:
        for chunk in minibatch(records, batch_size):
            results = scorer([r.text for r in chunk])
            for record, result in zip(chunk, results):
                out.write(json.dumps(record_to_dict(record, result), ensure_ascii=False) + "\n")
            n += len(chunk)
            bar.update(len(chunk))
    bar.close()
    return n


def client_classify(
    input_path: Path = typer.Argument(..., help="Input: .txt, .jsonl or .csv, as for `classify`."),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="Server URL."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar=TOKEN_ENV_VAR, help="Bearer token."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model name; the server's default if omitted."
    ),
    batch_size: int = typer.Option(
        64, "--batch-size", min=1, help="Texts per request (keep <= the server's max_texts)."
    ),
    timeout: float = typer.Option(
        30.0, "--timeout", min=0.001, help="Seconds each request may take in all (retries included)."
    ),
    retries: int = typer.Option(
        2, "--retries", min=0, help="Extra attempts after connection errors and 503s."
    ),
    text_field: str = typer.Option(
        "text", "--text-field", help="JSONL field / CSV column with the text."
    ),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Score a file with a running server; print one JSON object per text."""
    _one_line_errors(_client_classify)(**{k: v for k, v in locals().items()})


def _client_classify(
    input_path: Path,
    url: str,
    token: Optional[str],
    model: Optional[str],
    batch_size: int,
    timeout: float,
    retries: int,
    text_field: str,
    debug: bool,
) -> None:
    try:
        from ..client import Client, ClientError
    except ImportError as err:
        fail(str(err))
    from ..io import InputError, batched, read_records, record_to_dict

    try:
        client = Client(url, token=token, timeout=timeout, retries=retries)
    except ValueError as err:
        fail(str(err))
    try:
        with client:
            for chunk in batched(read_records(input_path, text_field), batch_size):
                results = client.classify([r.text for r in chunk], model=model)
                for record, result in zip(chunk, results):
                    sys.stdout.write(
                        json.dumps(record_to_dict(record, result), ensure_ascii=False) + "\n"
                    )
                sys.stdout.flush()
    except (InputError, ClientError) as err:
        fail(str(err))
