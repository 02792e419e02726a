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
from typing import Any, Callable, Dict, List, Optional, TypeVar

import typer

from ..cli_errors import DEBUG_HELP, fail
from ..cli_errors import one_line_errors as _one_line_errors
from .cli_classify import classify_file, client_classify
from .cli_options import (
    CALIBRATION_OPTION,
    CASCADE_REPORT_OPTION,
    DEFER_SHARE_OPTION,
    TEMPERATURE_OPTION,
    THRESHOLD_OPTION,
)
from .launch import parse_models, run_uvicorn
from .settings import TOKEN_ENV_VAR, ServeSettings

# The one list of defaults is ServeSettings: every option below takes its default from it.
_DEFAULTS = ServeSettings()
# serve's options whose ServeSettings field has another name (the field names say their unit, or are plural).
OPTION_FIELDS = {
    "request_timeout": "request_timeout_s",
    "cancel_grace": "cancel_grace_s",
    "header_timeout": "header_timeout_s",
    "body_timeout": "body_timeout_s",
    "keep_alive": "keep_alive_s",
    "cors_origin": "cors_origins",
}

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
        _DEFAULTS.host, "--host", help="Interface to bind; loopback unless you mean it."
    ),
    port: int = typer.Option(_DEFAULTS.port, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(
        _DEFAULTS.workers, "--workers", min=1, help="uvicorn worker processes (each loads every model)."
    ),
    max_batch_size: int = typer.Option(
        _DEFAULTS.max_batch_size, "--max-batch-size", min=1, help="Most texts per nlp.pipe batch."
    ),
    batch_wait_ms: float = typer.Option(
        _DEFAULTS.batch_wait_ms, "--batch-wait-ms", min=0.0, help="How long a batch waits for more requests."
    ),
    max_texts: int = typer.Option(_DEFAULTS.max_texts, "--max-texts", min=1, help="Most texts per request."),
    max_chars: int = typer.Option(_DEFAULTS.max_chars, "--max-chars", min=1, help="Most characters per text."),
    max_body_bytes: int = typer.Option(
        _DEFAULTS.max_body_bytes, "--max-body-bytes", min=1, help="Largest request body."
    ),
    max_queue: int = typer.Option(
        _DEFAULTS.max_queue, "--max-queue", min=1, help="Most waiting requests per model before 503."
    ),
    request_timeout: float = typer.Option(
        _DEFAULTS.request_timeout_s,
        "--request-timeout",
        min=0.001,
        help="Longest a request waits for results (s); its work is stopped then.",
    ),
    cancel_grace: float = typer.Option(
        _DEFAULTS.cancel_grace_s,
        "--cancel-grace",
        min=0.0,
        help="A worker process still busy this long after its batch's last deadline is restarted (s).",
    ),
    max_connections: int = typer.Option(
        _DEFAULTS.max_connections, "--max-connections", min=1, help="Most open connections; more get 503 and are closed."
    ),
    max_header_bytes: int = typer.Option(
        _DEFAULTS.max_header_bytes, "--max-header-bytes", min=256, help="Largest request head (431 above)."
    ),
    max_headers: int = typer.Option(
        _DEFAULTS.max_headers, "--max-headers", min=1, help="Most request header fields (431 above)."
    ),
    header_timeout: float = typer.Option(
        _DEFAULTS.header_timeout_s,
        "--header-timeout",
        min=0.001,
        help="Longest from a request's first byte to the end of its headers (s; 408 after).",
    ),
    body_timeout: float = typer.Option(
        _DEFAULTS.body_timeout_s, "--body-timeout", min=0.001, help="Longest to receive a request body (s; 408 after)."
    ),
    keep_alive: float = typer.Option(
        _DEFAULTS.keep_alive_s, "--keep-alive", min=0.001, help="Idle connections are closed after this long (s)."
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
        Inference(_DEFAULTS.inference),
        "--inference",
        help="Run each model in a worker process (isolated, default) or in a thread.",
    ),
    token: Optional[str] = typer.Option(
        _DEFAULTS.token,
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
    temperature: Optional[float] = TEMPERATURE_OPTION,
    calibration: Optional[Path] = CALIBRATION_OPTION,
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Serve spaCy text classifiers over HTTP (classify, encode, status, metrics, demo page)."""
    _one_line_errors(_serve)(**{k: v for k, v in locals().items()})


def settings_from_options(options: Dict[str, Any]) -> ServeSettings:
    """The server settings from ``serve``'s options (the rest of its arguments aside).

    options (Dict[str, Any]): ``serve``'s keyword arguments that configure the server.
    RETURNS (ServeSettings): The settings, loaded before requests are accepted.
    RAISES (ValueError): An option that is not a setting, or a value out of range.
    """
    fields = {OPTION_FIELDS.get(name, name): value for name, value in options.items()}
    fields["inference"] = Inference(fields["inference"]).value
    fields["cors_origins"] = list(fields["cors_origins"] or [])
    # Load before accepting requests: a bad model fails the start instead of
    # leaving a server that never gets ready.
    return ServeSettings.from_dict({**fields, "load_in_background": False})


def _serve(
    models: List[str],
    *,
    log_level: LogLevel,
    access_log: bool,
    ray: bool,
    address: Optional[str],
    replicas: int,
    debug: bool,
    cascade: Optional[str] = None,
    **options: Any,
) -> None:
    import signal

    # uvicorn drains in-flight requests on SIGTERM and then re-raises it; the
    # default action must end the process then (one_line_errors' SystemExit
    # handler is for commands that write files, which the server does not).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if Inference(options["inference"]) is Inference.process and not ray and "torch" not in sys.modules:
        # Models run in worker processes (which import torch themselves when a
        # pipeline needs it); this process only parses HTTP and batches, so keep
        # thinc from importing torch here (~130 MB of a torch-free student's server).
        sys.modules["torch"] = None  # type: ignore[assignment]
    level = LogLevel(log_level).value

    from ..cascade import CascadeOptions

    cascade_options = CascadeOptions.pop_from(options)
    try:
        model_map = parse_models(models)
        settings = settings_from_options(options)
        if cascade is not None:
            from .cascade import cli_cascade

            settings.cascade = cli_cascade(model_map, cascade, cascade_options)
    except ValueError as err:
        fail(str(err))
    if not _is_loopback(settings.host) and settings.token is None:
        typer.echo(
            f"warning: serving on {settings.host} without a token; anyone who can reach it can use it",
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
            model_map, settings, address=address, replicas=replicas, host=settings.host, port=settings.port, blocking=True
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

