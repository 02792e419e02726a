"""Commands: ``serve`` (defined here), ``classify`` (offline batch scoring) and
``client classify`` (both in ``cli_classify.py``).

Heavy imports (spaCy, FastAPI, uvicorn) happen inside the commands, so the
``spacy-distill`` CLI starts fast. Run standalone with
``python -m spacy_distill.serving.cli`` too. Starting uvicorn and checking the
model arguments live in ``launch.py``; the options ``serve`` and ``classify``
share, in ``cli_options.py``.
"""

import ipaddress
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

import typer

from ..cli_errors import DEBUG_HELP, fail
from ..cli_errors import one_line_errors as _one_line_errors
from .cli_classify import classify_file, client_classify
from .cli_options import (
    CALIBRATION_OPTION,
    CASCADE_REPORT_OPTION,
    DEFER_SHARE_OPTION,
    THRESHOLD_OPTION,
)
from .launch import parse_models, run_uvicorn
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

