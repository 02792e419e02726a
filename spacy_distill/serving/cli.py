"""Commands: ``serve``, ``classify`` (offline batch scoring) and ``client classify``.

Heavy imports (spaCy, FastAPI, uvicorn) happen inside the commands, so the
``spacy-distill`` CLI starts fast. Run standalone with
``python -m spacy_distill.serving.cli`` too.
"""

import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, TypeVar

import typer

from .settings import TOKEN_ENV_VAR

T = TypeVar("T")


def _fail(message: str) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _chunks(items: Iterator[T], size: int) -> Iterator[List[T]]:
    chunk: List[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
        if not Path(source).exists() and not spacy.util.is_package(source):
            raise ValueError(
                f"model {name!r}: {source!r} is neither a path nor an installed package"
            )
        models[name] = source
    return models


def serve(
    models: List[str] = typer.Argument(
        ..., help="Models: package name or path, optionally NAME=PATH. The first is the default."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; loopback unless you mean it."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port."),
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
        60.0, "--request-timeout", help="Longest a request waits for results (s)."
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
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
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
) -> None:
    """Serve spaCy text classifiers over HTTP (classify, encode, status, metrics, demo page)."""
    from .settings import ServeSettings

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
            token=token,
            cors_origins=list(cors_origin or []),
            # Load before accepting requests: a bad model fails the start
            # instead of leaving a server that never gets ready.
            load_in_background=False,
        )
    except ValueError as err:
        raise _fail(str(err)) from None
    if not _is_loopback(host) and settings.token is None:
        typer.echo(
            f"warning: serving on {host} without a token; anyone who can reach it can use it",
            err=True,
        )
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s"
    )
    if ray:
        try:
            from ..ray_serving import serve_on_ray
        except ImportError as err:
            raise _fail(f"--ray needs Ray Serve: pip install 'spacy-distill[ray]' ({err})") from None
        # The same FastAPI app (routes, schemas, limits, auth) behind Ray Serve.
        serve_on_ray(
            model_map, settings, address=address, replicas=replicas, host=host, port=port, blocking=True
        )
        return
    run_uvicorn(model_map, settings, log_level=log_level, access_log=access_log)


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
    from .settings import dump_config_to_env

    common: Dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "access_log": access_log,
        "lifespan": "on",
        # Bounded: in-flight requests get this long to finish on shutdown.
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
    }
    if settings.workers > 1:
        # Worker processes rebuild the app from the environment.
        dump_config_to_env(models, settings)
        uvicorn.run(
            "spacy_distill.serving.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            **common,
        )
    else:
        uvicorn.run(create_app(models, settings), **common)


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
) -> None:
    """Score a file offline with a pipeline; write one JSON object per text."""
    import spacy
    from tqdm import tqdm

    from .inference import classify_result, empty_classify_result, process_texts
    from .textfiles import InputError, iter_records, record_to_dict

    try:
        records = iter_records(input_path, text_field)
        first = next(records, None)  # surface "no such file" before loading the model
    except InputError as err:
        raise _fail(str(err)) from None
    try:
        nlp = spacy.load(model)
    except (OSError, ValueError, ImportError) as err:
        raise _fail(f"cannot load model {model!r}: {err}") from None
    empty = empty_classify_result(nlp)

    def all_records() -> Iterator[Any]:
        if first is not None:
            yield first
            yield from records

    output.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so the final rename is atomic and never crosses filesystems.
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with (
            tmp.open("w", encoding="utf-8") as out,
            tqdm(unit=" texts", desc="classify", disable=not progress, file=sys.stderr) as bar,
        ):
            for chunk in _chunks(all_records(), batch_size):
                docs = process_texts(nlp, [r.text for r in chunk], batch_size)
                for record, doc in zip(chunk, docs):
                    result = classify_result(doc) if doc is not None else dict(empty)
                    out.write(json.dumps(record_to_dict(record, result), ensure_ascii=False) + "\n")
                n += len(chunk)
                bar.update(len(chunk))
        os.replace(tmp, output)
    except InputError as err:
        raise _fail(str(err)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    typer.echo(f"wrote {n} results to {output}", err=True)


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
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per request."),
    text_field: str = typer.Option(
        "text", "--text-field", help="JSONL field / CSV column with the text."
    ),
) -> None:
    """Score a file with a running server; print one JSON object per text."""
    from ..client import Client, ClientError
    from .textfiles import InputError, iter_records, record_to_dict

    try:
        with Client(url, token=token, timeout=timeout) as client:
            for chunk in _chunks(iter_records(input_path, text_field), batch_size):
                results = client.classify([r.text for r in chunk], model=model)
                for record, result in zip(chunk, results):
                    sys.stdout.write(
                        json.dumps(record_to_dict(record, result), ensure_ascii=False) + "\n"
                    )
                sys.stdout.flush()
    except (InputError, ClientError) as err:
        raise _fail(str(err)) from None


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
