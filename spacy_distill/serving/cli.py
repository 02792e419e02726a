"""Commands: ``serve``, ``classify`` (offline batch scoring) and ``client classify``.

Heavy imports (spaCy, FastAPI, uvicorn) happen inside the commands, so the
``spacy-distill`` CLI starts fast. Run standalone with
``python -m spacy_distill.serving.cli`` too.
"""

import ipaddress
import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

import typer

from ..cli_errors import DEBUG_HELP, fail
from ..cli_errors import one_line_errors as _one_line_errors
from .settings import TOKEN_ENV_VAR, ServeSettings

# The one list of defaults is ServeSettings; new options take theirs from it.
_DEFAULTS = ServeSettings()

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])



class LogLevel(str, Enum):
    """Log levels (uvicorn's)."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


class Inference(str, Enum):
    """Where models run."""

    process = "process"
    thread = "thread"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_models(specs: List[str]) -> Dict[str, str]:
    """Parse ``MODEL`` arguments (``name=path``, a path, or a package name).

    specs (List[str]): The arguments.
    RETURNS (Dict[str, str]): Model name to source, in argument order.
    """
    import spacy

    from .inference import parse_model_spec

    models: Dict[str, str] = {}
    for spec in specs:
        name, source = parse_model_spec(spec)
        if name in models:
            raise ValueError(f"two models are called {name!r}; name them with NAME=PATH")
        path = Path(source)
        if not path.exists() and not spacy.util.is_package(source):
            raise ValueError(
                f"model {name!r}: {source!r} is neither a path nor an installed package"
            )
        if path.exists() and not (path / "config.cfg").is_file():
            raise ValueError(
                f"model {name!r}: {source} is not a spaCy pipeline (no config.cfg in it); "
                "give the folder that `spacy train` or `nlp.to_disk` wrote"
            )
        models[name] = source
    return models

# The cascade options that `serve` and `classify` share (one definition, one help text).
THRESHOLD_OPTION = typer.Option(
    None, "--threshold", min=0.0, help="Cascade: defer texts whose top-class probability (after the temperature) is below this."
)
DEFER_SHARE_OPTION = typer.Option(
    None, "--defer-share", min=0.0, max=1.0, help="Cascade: use the threshold chosen on dev for this share in --cascade-report."
)
CASCADE_REPORT_OPTION = typer.Option(
    None, "--cascade-report", help="Cascade: metrics/cascade.json (dev-chosen thresholds; without --threshold/--defer-share its default)."
)
CALIBRATION_OPTION = typer.Option(
    None, "--calibration", help="Cascade: calibration JSON (spacy-distill calibrate) whose temperature the decision uses."
)



def serve(
    models: List[str] = typer.Argument(
        ..., help="Models: package name or path, optionally NAME=PATH. The first is the default."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; loopback unless you mean it."
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(
        1, "--workers", min=1, help="uvicorn worker processes (each loads every model)."
    ),
    max_batch_size: int = typer.Option(
        32, "--max-batch-size", min=1, help="Most texts per nlp.pipe batch."
    ),
    batch_wait_ms: float = typer.Option(
        5.0, "--batch-wait-ms", min=0.0, help="How long a batch waits for more requests."
    ),
    max_texts: int = typer.Option(128, "--max-texts", min=1, help="Most texts per request."),
    max_chars: int = typer.Option(10_000, "--max-chars", min=1, help="Most characters per text."),
    max_body_bytes: int = typer.Option(
        2_000_000, "--max-body-bytes", min=1, help="Largest request body."
    ),
    max_queue: int = typer.Option(
        1024, "--max-queue", min=1, help="Most waiting requests per model before 503."
    ),
    request_timeout: float = typer.Option(
        60.0,
        "--request-timeout",
        min=0.001,
        help="Longest a request waits for results (s); its work is stopped then.",
    ),
    max_connections: int = typer.Option(
        512, "--max-connections", min=1, help="Most open connections; more get 503 and are closed."
    ),
    max_header_bytes: int = typer.Option(
        16_384, "--max-header-bytes", min=256, help="Largest request head (431 above)."
    ),
    max_headers: int = typer.Option(
        100, "--max-headers", min=1, help="Most request header fields (431 above)."
    ),
    header_timeout: float = typer.Option(
        10.0,
        "--header-timeout",
        min=0.001,
        help="Longest from a request's first byte to the end of its headers (s; 408 after).",
    ),
    body_timeout: float = typer.Option(
        30.0, "--body-timeout", min=0.001, help="Longest to receive a request body (s; 408 after)."
    ),
    keep_alive: float = typer.Option(
        5.0, "--keep-alive", min=0.001, help="Idle connections are closed after this long (s)."
    ),
    max_tokens_per_request: int = typer.Option(
        _DEFAULTS.max_tokens_per_request,
        "--max-tokens-per-request",
        min=1,
        help="Most tokens per request, counted before the model runs (413 above).",
    ),
    max_tokens_per_text: int = typer.Option(
        _DEFAULTS.max_tokens_per_text, "--max-tokens-per-text", min=1, help="Most tokens per text (413 above)."
    ),
    slice_tokens: int = typer.Option(
        _DEFAULTS.slice_tokens,
        "--slice-tokens",
        min=1,
        help="Most tokens of one request per model batch; larger requests interleave with others.",
    ),
    max_worker_rss_mb: float = typer.Option(
        _DEFAULTS.max_worker_rss_mb,
        "--max-worker-rss-mb",
        min=0.0,
        help="Replace a model's worker process above this resident memory (MB; 0: never).",
    ),
    vectors_only: bool = typer.Option(
        _DEFAULTS.vectors_only,
        "--vectors-only",
        help="Allow pipelines without a text classifier (served for /encode only).",
    ),
    inference: Inference = typer.Option(
        Inference.process,
        "--inference",
        help="Run each model in a worker process (isolated, default) or in a thread.",
    ),
    token: Optional[str] = typer.Option(
        None,
        "--token",
        envvar=TOKEN_ENV_VAR,
        help=f"Require this bearer token (or set {TOKEN_ENV_VAR}).",
    ),
    cors_origin: Optional[List[str]] = typer.Option(
        None, "--cors-origin", help="Allow this CORS origin (repeatable). CORS is off without it."
    ),
    log_level: LogLevel = typer.Option(
        LogLevel.info, "--log-level", case_sensitive=False, help="Log level."
    ),
    access_log: bool = typer.Option(
        False, "--access-log/--no-access-log", help="Log every request."
    ),
    ray: bool = typer.Option(
        False, "--ray", help="Serve on a Ray cluster with Ray Serve (needs spacy-distill[ray]); see docs/ray.md."
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="With --ray: the cluster address (e.g. 10.0.0.1:6379); default: start or join a local Ray."
    ),
    replicas: int = typer.Option(1, "--replicas", min=1, help="With --ray: number of replicas."),
    cascade: Optional[str] = typer.Option(
        None, "--cascade", help="Serve the first model -> this model (by name) as a cascade, the default model 'cascade' (docs/cascade.md)."
    ),
    threshold: Optional[float] = THRESHOLD_OPTION,
    defer_share: Optional[float] = DEFER_SHARE_OPTION,
    cascade_report: Optional[Path] = CASCADE_REPORT_OPTION,
    temperature: Optional[float] = typer.Option(
        None, "--temperature", min=1e-6, help="Cascade: temperature of the student's probabilities (default: --calibration's, the report's, or 1)."
    ),
    calibration: Optional[Path] = CALIBRATION_OPTION,
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Serve spaCy text classifiers over HTTP (classify, encode, status, metrics, demo page)."""
    _one_line_errors(_serve)(**{k: v for k, v in locals().items()})


def _serve(
    models: List[str],
    host: str,
    port: int,
    workers: int,
    max_batch_size: int,
    batch_wait_ms: float,
    max_texts: int,
    max_chars: int,
    max_body_bytes: int,
    max_queue: int,
    request_timeout: float,
    max_connections: int,
    max_header_bytes: int,
    max_headers: int,
    header_timeout: float,
    body_timeout: float,
    keep_alive: float,
    max_tokens_per_request: int,
    max_tokens_per_text: int,
    slice_tokens: int,
    max_worker_rss_mb: float,
    vectors_only: bool,
    inference: Inference,
    token: Optional[str],
    cors_origin: Optional[List[str]],
    log_level: LogLevel,
    access_log: bool,
    ray: bool,
    address: Optional[str],
    replicas: int,
    debug: bool,
    cascade: Optional[str] = None,
    threshold: Optional[float] = None,
    defer_share: Optional[float] = None,
    cascade_report: Optional[Path] = None,
    temperature: Optional[float] = None,
    calibration: Optional[Path] = None,
) -> None:
    import signal

    # uvicorn drains in-flight requests on SIGTERM and then re-raises it; the
    # default action must end the process then (one_line_errors' SystemExit
    # handler is for commands that write files, which the server does not).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if Inference(inference) is Inference.process and not ray and "torch" not in sys.modules:
        # Models run in worker processes (which import torch themselves when a
        # pipeline needs it); this process only parses HTTP and batches, so keep
        # thinc from importing torch here (~130 MB of a torch-free student's server).
        sys.modules["torch"] = None  # type: ignore[assignment]
    from .settings import ServeSettings

    level = LogLevel(log_level).value

    try:
        model_map = parse_models(models)
        settings = ServeSettings(
            host=host,
            port=port,
            workers=workers,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            max_texts=max_texts,
            max_chars=max_chars,
            max_body_bytes=max_body_bytes,
            max_queue=max_queue,
            request_timeout_s=request_timeout,
            max_connections=max_connections,
            max_header_bytes=max_header_bytes,
            max_headers=max_headers,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            keep_alive_s=keep_alive,
            max_tokens_per_request=max_tokens_per_request,
            max_tokens_per_text=max_tokens_per_text,
            slice_tokens=slice_tokens,
            max_worker_rss_mb=max_worker_rss_mb,
            vectors_only=vectors_only,
            inference=Inference(inference).value,
            token=token,
            cors_origins=list(cors_origin or []),
            # Load before accepting requests: a bad model fails the start
            # instead of leaving a server that never gets ready.
            load_in_background=False,
        )
        if cascade is not None:
            from .cascade import cli_cascade

            settings.cascade = cli_cascade(model_map, cascade, threshold=threshold, defer_share=defer_share,
                                           report=cascade_report, temperature=temperature, calibration=calibration)
    except ValueError as err:
        fail(str(err))
    if not _is_loopback(host) and settings.token is None:
        typer.echo(
            f"warning: serving on {host} without a token; anyone who can reach it can use it",
            err=True,
        )
    logging.basicConfig(
        level=getattr(logging, level.upper(), 5), format="%(levelname)s: %(message)s"
    )
    if ray:
        try:
            from .ray_serve import serve_on_ray
        except ImportError as err:
            fail(f"--ray needs Ray Serve: pip install 'spacy-distill[ray]' ({err})")
        # The same FastAPI app (routes, schemas, limits, auth) behind Ray Serve.
        serve_on_ray(
            model_map, settings, address=address, replicas=replicas, host=host, port=port, blocking=True
        )
        return
    run_uvicorn(model_map, settings, log_level=level, access_log=access_log)


def _preload(app: Any) -> None:
    """Load the models before uvicorn starts, so a model that fails to load
    is one error line and exit code 1, not a lifespan traceback."""
    state = app.state.serving
    state.load_models()
    if state.load_error:
        state.close()
        # One line, even for spaCy's multi-line config errors.
        fail(f"cannot load the models: {' '.join(state.load_error.split())}")


def run_uvicorn(
    models: Dict[str, str], settings: "Any", log_level: str = "info", access_log: bool = False
) -> None:
    """Run the app on uvicorn until SIGINT/SIGTERM.

    On SIGTERM uvicorn stops accepting connections and waits for in-flight
    requests; then the app's shutdown drains the batch queues.

    models (Dict[str, str]): Model name to package or path.
    settings (ServeSettings): The settings.
    log_level (str): uvicorn log level.
    access_log (bool): Log every request.
    """
    import uvicorn

    from .app import create_app
    from .connections import protocol_class, uvicorn_config
    from .settings import dump_config_to_env

    common: Dict[str, Any] = {
        "log_level": log_level,
        "access_log": access_log,
        "lifespan": "on",
        # Bounded: in-flight requests get this long to finish on shutdown.
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
    }
    if settings.workers > 1:
        # Worker processes rebuild the app, and the protocol its limits, from the environment.
        dump_config_to_env(models, settings)
        uvicorn.run(
            "spacy_distill.serving.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            http=protocol_class(),
            timeout_keep_alive=settings.keep_alive_s,
            h11_max_incomplete_event_size=settings.max_header_bytes,
            **common,
        )
        return
    app = create_app(models, settings)
    _preload(app)
    server = uvicorn.Server(uvicorn_config(app, settings, **common))
    server.run()
    if not server.started:
        # Startup failed (port taken, a model that does not load): uvicorn logged why.
        raise SystemExit(1)


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
    temperature: Optional[float] = typer.Option(
        None, "--temperature", min=1e-6, help="Cascade: temperature of the model's probabilities (default: --calibration's, the report's, or 1)."
    ),
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
    threshold: Optional[float] = None,
    defer_share: Optional[float] = None,
    cascade_report: Optional[Path] = None,
    temperature: Optional[float] = None,
    calibration: Optional[Path] = None,
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
        from .cascade import offline_cascade

        scorer = offline_cascade(nlp, cascade, batch_size, threshold=threshold, defer_share=defer_share,
                                 report=cascade_report, temperature=temperature, calibration=calibration)

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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
    app.command("serve")(serve)
    app.command("classify")(classify_file)
    client_app = typer.Typer(help="Talk to a running spacy-distill server.", no_args_is_help=True)
    client_app.command("classify")(client_classify)
    app.add_typer(client_app, name="client")


def main() -> None:
    """Run these commands without the rest of the ``spacy-distill`` CLI."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
