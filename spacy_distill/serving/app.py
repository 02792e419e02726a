"""The FastAPI app: ``create_app(models, settings)``.

The app is built by a factory so tests can run it in-process, ``spacy-distill
serve`` can hand it to uvicorn, and Ray Serve can wrap the same app with
``serve.ingress``. It depends only on ``spacy.load`` and on what a loaded
pipeline exposes (see ``inference.py``).
"""

import asyncio
import hmac
import html
import importlib.util
import json
import logging
import os
import platform
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable, Deque, Dict, List, Mapping, Optional, Union

import numpy
import spacy
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from spacy.language import Language
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import (
    TASK_CLASSIFY,
    TASK_ENCODE,
    InferenceError,
    JobExpiredError,
    ModelWorker,
    QueueFullError,
    TooCostlyError,
    WorkerClosedError,
)
from .inference import ModelInfo, NoVectorsError
from .runner import ModelLoadError, ProcessBackend, ThreadBackend, rss_mb
from .schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
)
from .settings import ServeSettings

logger = logging.getLogger("spacy_distill.serving")

STATIC_DIR = Path(__file__).parent / "static"
# Scope key of the per-request "still arriving" flag (see ServerState.arriving).
_ARRIVAL_KEY = "spacy_distill.arriving"
_BATCHED_PATHS = ("/classify", "/encode")
ModelSource = Union[str, Path, Language]
# Latencies kept for the /status percentiles (a sliding window, so memory is bounded).
_LATENCY_WINDOW = 10_000
_ERROR_RESPONSES: Dict[Union[int, str], Dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON",
        401: "Missing or wrong bearer token (only when a token is configured)",
        404: "Unknown model",
        408: "The request body did not arrive within body_timeout_s",
        413: "A size limit was exceeded (body, number of texts, characters or tokens)",
        422: "Wrong types or missing fields, or the model cannot do this (e.g. no vectors)",
        431: "Too many or too large request headers",
        503: "Models still loading, overloaded, shutting down, or no result within the timeout",
    }.items()
}


def _percentiles(values: "Deque[float]") -> Dict[str, float]:
    if not values:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
    arr = numpy.asarray(values, dtype="float64") * 1000.0
    p50, p95, p99 = numpy.percentile(arr, [50, 95, 99])
    return {"count": len(values), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


class _Metrics:
    """Prometheus metrics in a registry of their own, so several apps (tests)
    can live in one process without clashing on the global registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spacy_distill_requests",
            "HTTP requests answered",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spacy_distill_request_seconds",
            "HTTP request latency",
            ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.texts = Counter(
            "spacy_distill_texts", "Texts run through a model", ["model"], registry=self.registry
        )
        self.batch_size = Histogram(
            "spacy_distill_batch_texts",
            "Texts per nlp.pipe batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "spacy_distill_batch_requests",
            "Requests coalesced into one batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "spacy_distill_batch_seconds",
            "Time to run one batch",
            ["model"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "spacy_distill_queue_depth",
            "Requests waiting per model",
            ["model"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "spacy_distill_ready", "1 when every model is loaded", registry=self.registry
        )
        self.worker_rss = Gauge(
            "spacy_distill_worker_rss_bytes",
            "Resident memory of the process a model runs in",
            ["model"],
            registry=self.registry,
        )
        self.rss_replacements = Gauge(
            "spacy_distill_worker_rss_replacements",
            "Worker processes replaced for passing max_worker_rss_mb",
            ["model"],
            registry=self.registry,
        )
        self.process_rss = Gauge(
            "spacy_distill_process_rss_bytes",
            "Resident memory of the HTTP server process",
            registry=self.registry,
        )
        self.process_rss.set_function(lambda: (rss_mb(os.getpid()) or 0.0) * 1024 * 1024)

    def observe_batch(self, model: str, n_jobs: int, n_texts: int, seconds: float) -> None:
        self.texts.labels(model).inc(n_texts)
        self.batch_size.labels(model).observe(n_texts)
        self.batch_requests.labels(model).observe(n_jobs)
        self.batch_seconds.labels(model).observe(seconds)


class ServerState:
    """Everything the app holds at run time.

    models (Mapping[str, ModelSource]): Model name to package, path or pipeline.
    settings (ServeSettings): The settings.
    """

    def __init__(self, models: Mapping[str, ModelSource], settings: ServeSettings) -> None:
        if not models:
            raise ValueError("at least one model is needed")
        self.sources: Dict[str, ModelSource] = dict(models)
        self.settings = settings
        self.workers: Dict[str, ModelWorker] = {}
        self.infos: Dict[str, ModelInfo] = {}
        self.load_error: Optional[str] = None
        self.loading = False
        self.ready = threading.Event()
        self.started = time.time()
        self.requests_total = 0
        self.requests_by_path: Dict[str, int] = {}
        self.latencies: Dict[str, Deque[float]] = {
            "classify": deque(maxlen=_LATENCY_WINDOW),
            "encode": deque(maxlen=_LATENCY_WINDOW),
        }
        self.metrics = _Metrics()
        self._lock = threading.Lock()
        # Requests to /classify or /encode being read or validated right now:
        # a batch waits for more only while this is > 0. Changed on the event
        # loop only; the batching threads just read it.
        self.arriving = 0

    @property
    def default_model(self) -> str:
        return next(iter(self.sources))

    def _backend(self, name: str, source: ModelSource) -> Union[ProcessBackend, ThreadBackend]:
        # A Language object cannot be handed to another process; "thread" is opt-in.
        if isinstance(source, Language) or self.settings.inference == "thread" or os.name != "posix":
            return ThreadBackend(name, source, self.settings.max_batch_size)
        return ProcessBackend(name, str(source), self.settings.max_batch_size)

    def load_models(self) -> None:
        """Load and warm up every model and start its batching thread."""
        self.loading = True
        try:
            for name, source in self.sources.items():
                if name in self.workers:
                    continue
                label = source if not isinstance(source, Language) else "<object>"
                logger.info("loading model %s from %s", name, label)
                try:
                    backend = self._backend(name, source)
                except ModelLoadError as err:
                    raise ModelLoadError(f"model {name!r} ({label}): {err}") from None
                info = backend.info
                if not info.labels and not self.settings.vectors_only:
                    # Would answer 200 with empty cats to every /classify.
                    backend.close()
                    raise ModelLoadError(
                        f"model {name!r} ({label}) has no text classifier (no component "
                        "sets doc.cats); serve it with --vectors-only for /encode alone"
                    )
                self.infos[name] = info
                worker = ModelWorker(
                    backend,
                    max_batch_size=self.settings.max_batch_size,
                    batch_wait_s=self.settings.batch_wait_ms / 1000.0,
                    max_queue=self.settings.max_queue,
                    observer=self.metrics.observe_batch,
                    arriving=lambda: self.arriving,
                    cancel_grace_s=self.settings.cancel_grace_s,
                    max_rss_mb=self.settings.max_worker_rss_mb,
                    slice_tokens=self.settings.slice_tokens,
                )
                self.metrics.queue_depth.labels(name).set_function(lambda w=worker: w.queue_depth)
                self.metrics.worker_rss.labels(name).set_function(
                    lambda w=worker: (w.backend.current().get("rss_mb") or 0.0) * 1024 * 1024
                )
                self.metrics.rss_replacements.labels(name).set_function(
                    lambda w=worker: w.backend.rss_replacements
                )
                with self._lock:
                    self.workers[name] = worker
                logger.info("model %s ready (labels: %s)", name, ", ".join(info.labels) or "-")
            self.ready.set()
            self.metrics.ready.set(1)
        except ModelLoadError as err:
            # Already one line naming the model and the cause.
            self.load_error = str(err)
            logger.error("failed to load the models: %s", " ".join(str(err).split()))
        except Exception as err:  # noqa: BLE001 - reported by /ready and the log
            self.load_error = f"{type(err).__name__}: {err}"
            logger.exception("failed to load the models")
        finally:
            self.loading = False

    def close(self) -> None:
        """Stop every worker after it has finished its queued requests."""
        for worker in list(self.workers.values()):
            if not worker.close(timeout=self.settings.request_timeout_s):
                logger.warning("worker %s did not drain in time", worker.info.name)

    def worker_for(self, model: Optional[str]) -> ModelWorker:
        """The worker for a model name (None for the default), or an HTTP error."""
        name = self.default_model if model is None else model
        if name not in self.sources:
            known = ", ".join(self.sources)
            raise HTTPException(404, f"unknown model {name!r}; loaded models: {known}")
        worker = self.workers.get(name)
        if worker is None:
            raise HTTPException(503, self.not_ready_message(), headers={"Retry-After": "1"})
        return worker

    def not_ready_message(self) -> str:
        if self.load_error:
            return f"models failed to load: {self.load_error}"
        missing = [name for name in self.sources if name not in self.workers]
        return f"models still loading: {', '.join(missing)}"

    def arrival_done(self, scope: Dict[str, Any]) -> None:
        """The request is no longer "arriving" (its job is queued, or it failed).

        scope (Dict[str, Any]): The request's ASGI scope.
        """
        flag = scope.get(_ARRIVAL_KEY)
        if flag is not None and flag["pending"]:
            flag["pending"] = False
            self.arriving -= 1

    def record(self, path: str, status: int, seconds: float) -> None:
        """Count a finished request (called from the middleware)."""
        with self._lock:
            self.requests_total += 1
            self.requests_by_path[path] = self.requests_by_path.get(path, 0) + 1
            if path in ("/classify", "/encode") and status == 200:
                self.latencies[path[1:]].append(seconds)
        self.metrics.requests.labels(path, str(status)).inc()
        self.metrics.latency.labels(path).observe(seconds)

    def status(self, show_paths: bool = True) -> Dict[str, Any]:
        """The body of ``/status``.

        show_paths (bool): Show where models were loaded from (full paths);
            else only the last path component.
        """
        with self._lock:
            latencies = {name: _percentiles(values) for name, values in self.latencies.items()}
            by_path = dict(self.requests_by_path)
            total = self.requests_total
        models = {}
        for name in self.sources:
            info = self.infos.get(name)
            worker = self.workers.get(name)
            entry: Dict[str, Any] = info.to_dict() if info else {"name": name, "loaded": False}
            entry["loaded"] = worker is not None
            if not show_paths and entry.get("source"):
                # Who may not authenticate must not learn the server's file layout.
                entry["source"] = Path(str(entry["source"])).name
            if worker is not None:
                entry["batching"] = worker.stats()
                entry["runtime"] = worker.runtime()
            models[name] = entry
        s = self.settings
        return {
            "ready": self.ready.is_set(),
            "load_error": self.load_error,
            "default_model": self.default_model,
            "uptime_s": time.time() - self.started,
            # The HTTP process itself (each worker's is in models.*.runtime).
            "process": {"pid": os.getpid(), "rss_mb": rss_mb(os.getpid())},
            "requests": {"total": total, "by_path": by_path},
            "latency_ms": latencies,
            "models": models,
            "limits": {
                "max_texts": s.max_texts,
                "max_chars": s.max_chars,
                "max_body_bytes": s.max_body_bytes,
                "max_batch_size": s.max_batch_size,
                "batch_wait_ms": s.batch_wait_ms,
                "max_queue": s.max_queue,
                "request_timeout_s": s.request_timeout_s,
                "max_connections": s.max_connections,
                "max_header_bytes": s.max_header_bytes,
                "max_headers": s.max_headers,
                "header_timeout_s": s.header_timeout_s,
                "body_timeout_s": s.body_timeout_s,
                "keep_alive_s": s.keep_alive_s,
                "max_tokens_per_request": s.max_tokens_per_request,
                "max_tokens_per_text": s.max_tokens_per_text,
                "slice_tokens": s.slice_tokens,
                "max_worker_rss_mb": s.max_worker_rss_mb,
                "vectors_only": s.vectors_only,
            },
            "inference": s.inference,
            "auth": s.token is not None,
            "versions": {"spacy": spacy.__version__, "python": platform.python_version()},
        }


class _GuardMiddleware:
    """Outermost ASGI layer: enforces the header limits, the body size limit
    and the body timeout before anything parses the body, tracks requests
    still arriving (for the batcher), and records every request for /status
    and /metrics."""

    def __init__(self, app: Any, state: ServerState, known_paths: Callable[[], "set[str]"]) -> None:
        self.app = app
        self.state = state
        self.known_paths = known_paths
        self._paths: Optional[set[str]] = None

    async def __call__(
        self, scope: Dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        settings = self.state.settings
        # Label metrics by route, not raw path, so random paths cannot grow them without bound.
        if self._paths is None:
            self._paths = self.known_paths()
        label = (
            path if path in self._paths else ("/static" if path.startswith("/static/") else "other")
        )
        status_holder = {"status": 500}

        async def send_wrapper(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = int(message["status"])
            await send(message)

        if scope.get("method") == "POST" and path in _BATCHED_PATHS:
            scope[_ARRIVAL_KEY] = {"pending": True}
            self.state.arriving += 1
        try:
            headers = scope.get("headers") or []
            # The HTTP protocol (see connections.py) already bounds the head's
            # size; this also covers servers in front that do not (Ray's proxy).
            head_bytes = sum(len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > settings.max_headers or head_bytes > settings.max_header_bytes:
                detail = (
                    f"request headers exceed the limits max_headers={settings.max_headers} "
                    f"or max_header_bytes={settings.max_header_bytes}"
                )
                await _send_json(send_wrapper, 431, {"detail": detail})
                return
            try:
                body, too_big = await asyncio.wait_for(
                    _read_body(scope, receive, settings.max_body_bytes), settings.body_timeout_s
                )
            except asyncio.TimeoutError:
                detail = f"request body not received within body_timeout_s={settings.body_timeout_s}"
                await _send_json(send_wrapper, 408, {"detail": detail}, close=True)
                return
            if too_big is not None:
                # The rest of the body was not read: close, or its bytes would
                # be parsed as the next request's head (an unsolicited 431).
                await _send_json(send_wrapper, 413, {"detail": too_big}, close=True)
                return
            if scope.get("method") == "POST" and path in _BATCHED_PATHS:
                # Bound validation before pydantic sees the body (it would build
                # one error per bad item: 1M of them for 2 MB of zeros, for
                # seconds on the event loop); the JSON parse runs in a thread.
                checked = await asyncio.to_thread(
                    precheck_body, body, _content_type(headers), path, settings.max_texts
                )
                if isinstance(checked, tuple):
                    await _send_json(send_wrapper, checked[0], {"detail": _printable(checked[1])})
                    return
                body = checked
            await self.app(scope, _replayer(body, receive), send_wrapper)
        finally:
            self.state.arrival_done(scope)
            self.state.record(label, status_holder["status"], time.perf_counter() - start)


async def _read_body(
    scope: Dict[str, Any], receive: Callable[[], Awaitable[Any]], limit: int
) -> "tuple[List[Dict[str, Any]], Optional[str]]":
    """Read the request body, stopping at the limit.

    RETURNS: The messages read (to replay to the app) and an error message if
        the body is larger than ``limit`` bytes.
    """
    message = f"request body exceeds the limit max_body_bytes={limit}"
    declared = dict(scope.get("headers") or []).get(b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                return [], message
        except ValueError:
            pass
    if scope.get("method", "GET") in ("GET", "HEAD", "OPTIONS"):
        return [], None
    messages: List[Dict[str, Any]] = []
    chunks: List[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            messages.append(msg)
            break
        body = msg.get("body", b"")
        size += len(body)
        if size > limit:
            # Chunked uploads have no Content-Length: stop reading at the limit.
            return [], message
        chunks.append(body)
        if not msg.get("more_body", False):
            break
    return [{"type": "http.request", "body": b"".join(chunks), "more_body": False}] + messages, None


# Most per-field errors that pydantic may be left to build for one request.
_MAX_ERRORS = 5


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _expect(text: str, pos: int, char: str, what: str) -> int:
    if text[pos : pos + 1] != char:
        raise json.JSONDecodeError(what, text, pos)
    return pos + 1


def _scalar(text: str, pos: int) -> "tuple[Any, int]":
    # A string, number, true/false/null: one short C call (never a container).
    if text[pos : pos + 1] in ("[", "{"):
        raise TypeError("container")
    try:
        return _DECODER.scan_once(text, pos)
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None


def _skip_value(text: str, pos: int, budget: List[int], depth: int = 0) -> int:
    # Syntax only, item by item; ``budget[0]`` items at most, then ``OverflowError``.
    budget[0] -= 1
    if budget[0] < 0 or depth > 100:
        raise OverflowError
    opener = text[pos : pos + 1]
    if opener not in ("[", "{"):
        return _scalar(text, pos)[1]
    closer = "]" if opener == "[" else "}"
    pos = _skip_ws(text, pos + 1)
    if text[pos : pos + 1] == closer:
        return pos + 1
    while True:
        if opener == "{":
            if text[pos : pos + 1] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
            pos = _DECODER.scan_once(text, pos)[1]
            pos = _skip_ws(text, _expect(text, _skip_ws(text, pos), ":", "Expecting ':' delimiter"))
        pos = _skip_ws(text, _skip_value(text, pos, budget, depth + 1))
        if text[pos : pos + 1] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        return _expect(text, pos, closer, "Expecting ',' delimiter")


def _scan_request(
    text: str, fields: "set[str]", max_texts: int
) -> "Union[Dict[str, Any], tuple[int, str]]":
    """Parse a /classify or /encode body up to the first reason to refuse it.

    ``json.loads`` is one C call that holds the GIL for the whole body (0.2 s
    and more for 2 MB of zeros: the event loop, ``/health`` included, waits
    for it), and pydantic then builds one error per bad item. A valid body is
    an object of a few scalar fields and ``texts``, a list of at most
    ``max_texts`` strings; this reads it item by item and stops at the first
    item that cannot be part of one (a non-string text, text ``max_texts +
    1``, a container where a scalar belongs, the sixth unknown field), so the
    work is bounded whatever the body holds. A body refused here may have
    syntax errors further on that are not reported.

    text (str): The body.
    fields (set[str]): The request's field names.
    max_texts (int): Most texts per request.
    RETURNS (Union[Dict[str, Any], tuple[int, str]]): The fields, or a
        status and message.
    """
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "{":
        # Not an object (or no JSON): only the syntax matters.
        json.loads(text)
        return 422, "invalid request: body: Input should be a valid dictionary or object"
    data: Dict[str, Any] = {}
    problems: List[str] = []
    pos = _skip_ws(text, pos + 1)
    closed = text[pos : pos + 1] == "}"
    if closed:
        pos += 1
    while not closed:
        if text[pos : pos + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
        key, pos = _DECODER.scan_once(text, pos)
        pos = _skip_ws(text, _expect(text, _skip_ws(text, pos), ":", "Expecting ':' delimiter"))
        if key not in fields:
            problems.append(f"{key[:50]}: Extra inputs are not permitted")
            if len(problems) > _MAX_ERRORS:
                break
            try:
                pos = _skip_value(text, pos, [1000])
            except OverflowError:
                break  # refused anyway; the rest need not be read
        elif key == "texts" and text[pos : pos + 1] == "[":
            texts: List[str] = []
            pos = _skip_ws(text, pos + 1)
            done = text[pos : pos + 1] == "]"
            if done:
                pos += 1
            while not done:
                if len(texts) >= max_texts:
                    return 413, f"too many texts: more than {max_texts} > max_texts={max_texts}"
                try:
                    item, pos = _scalar(text, pos)
                except TypeError:
                    item = []
                if not isinstance(item, str):
                    kind = "null" if item is None else type(item).__name__
                    problems.append(f"texts.{len(texts)}: must be a string, got {kind}")
                    return 422, "invalid request: " + "; ".join(problems)
                texts.append(item)
                pos = _skip_ws(text, pos)
                if text[pos : pos + 1] == ",":
                    pos = _skip_ws(text, pos + 1)
                    continue
                pos = _expect(text, pos, "]", "Expecting ',' delimiter")
                done = True
            data[key] = texts
        else:
            try:
                data[key], pos = _scalar(text, pos)
            except TypeError:
                # No field takes a list or object but texts: stop here.
                problems.append(f"{key[:50]}: Input should be a valid string or null")
                break
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        pos = _expect(text, pos, "}", "Expecting ',' delimiter")
        closed = True
    if closed and _skip_ws(text, pos) != len(text):
        raise json.JSONDecodeError("Extra data", text, _skip_ws(text, pos))
    if closed and "texts" not in data:
        problems.insert(0, "texts: Field required")
    if "texts" in data and not isinstance(data["texts"], list):
        problems.append("texts: Input should be a valid list of strings")
    for key in ("model", "pooling"):
        if key in data and not (data[key] is None or isinstance(data[key], str)):
            problems.append(f"{key}: Input should be a valid string")
    if problems:
        more = "; ... and more" if len(problems) > _MAX_ERRORS else ""
        return 422, "invalid request: " + "; ".join(problems[:_MAX_ERRORS]) + more
    return data


def _content_type(headers: List[Any]) -> Optional[bytes]:
    for name, value in headers:
        if name.lower() == b"content-type":
            return bytes(value)
    return None


def _request_fields(path: str) -> "set[str]":
    model = ClassifyRequest if path == "/classify" else EncodeRequest
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        if info.alias:
            names.add(info.alias)
    return names


def precheck_body(
    messages: List[Dict[str, Any]], content_type: Optional[bytes], path: str, max_texts: int
) -> "Union[List[Dict[str, Any]], tuple[int, str]]":
    """A cheap, bounded check of a /classify or /encode body before pydantic.

    It rejects what would make pydantic build many errors: ``texts`` that is
    not a list, holds more than ``max_texts`` items or a non-string, and
    unknown fields; each with one message. A body it passes has at most a
    few fields and ``max_texts`` strings, so pydantic's own checks stay cheap
    (and at most a few errors). Bodies FastAPI does not parse as JSON (another
    content type, no body) are left to it.

    messages (List[Dict[str, Any]]): The body as read (``http.request`` messages).
    content_type (Optional[bytes]): The Content-Type header.
    path (str): "/classify" or "/encode".
    max_texts (int): Most texts per request.
    RETURNS (Union[List[Dict[str, Any]], tuple[int, str]]): The messages to
        pass on (the body re-encoded, so that duplicate keys cannot smuggle a
        large value past the check), or a status and message.
    """
    if not messages or messages[0].get("type") != "http.request":
        return messages
    raw = messages[0].get("body", b"")
    if not raw:
        return messages
    if content_type is not None:
        subtype = content_type.split(b";", 1)[0].strip().lower()
        # As FastAPI: only these are parsed as JSON (anything else fails as one error).
        if subtype != b"application/json" and not subtype.endswith(b"+json"):
            return messages
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        data = _scan_request(text, _request_fields(path), max_texts)
    except json.JSONDecodeError as err:
        return 400, f"malformed JSON at position {err.pos}: {err.msg}"
    except (UnicodeDecodeError, ValueError) as err:
        return 400, f"malformed JSON: {err}"
    except RecursionError:
        return 400, "malformed JSON: nested too deeply"
    if isinstance(data, tuple):
        return data
    body = json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return [{"type": "http.request", "body": body, "more_body": False}] + messages[1:]


def _replayer(
    messages: List[Dict[str, Any]], receive: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    """A ``receive`` that first returns the already-read messages."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_json(send: Any, status: int, body: Dict[str, Any], close: bool = False) -> None:
    data = json.dumps(body).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    if close:
        # The rest of the body may still trickle in: do not keep the connection.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _printable(text: str) -> str:
    """Escape what UTF-8 cannot encode (lone surrogates from the request can
    end up in messages, e.g. as an unknown field name)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _validation_message(err: RequestValidationError) -> "tuple[int, str]":
    """Turn pydantic's error list into a status and one readable line."""
    # Called once, and bounded: precheck_body leaves at most a few errors.
    errors = list(err.errors()[:50])
    for item in errors:
        if item.get("type") == "json_invalid":
            detail = (item.get("ctx") or {}).get("error", "invalid JSON")
            loc = item.get("loc") or ()
            pos = f" at position {loc[-1]}" if len(loc) > 1 else ""
            return 400, f"malformed JSON{pos}: {detail}"
    if any(item.get("type") == "missing" and tuple(item.get("loc", ())) == ("body",) for item in errors):
        return 422, 'missing JSON body: expected an object like {"texts": ["..."]}'
    parts = []
    for item in errors[:5]:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {item.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return 422, "invalid request: " + "; ".join(parts)


def create_app(
    models: Mapping[str, ModelSource], settings: Optional[ServeSettings] = None
) -> FastAPI:
    """Build the API for one or more spaCy pipelines with text classifiers.

    models (Mapping[str, ModelSource]): Model name to package name, path or
        loaded ``Language``. The first is the default model.
    settings (Optional[ServeSettings]): Limits, batching, auth and CORS.
    RETURNS (FastAPI): The app; models load when its lifespan starts.
    """
    settings = settings or ServeSettings()
    state = ServerState(models, settings)
    # The student→teacher cascade (serving/cascade.py), served as one more model.
    cascade = None
    if settings.cascade:
        from .cascade import ServerCascade

        cascade = ServerCascade(settings.cascade, state)

    async def lifespan(app: FastAPI) -> Any:
        if settings.load_in_background:
            threading.Thread(
                target=state.load_models, name="spacy-distill-loader", daemon=True
            ).start()
        else:
            # Off the event loop even here: loading a teacher takes seconds.
            await asyncio.get_running_loop().run_in_executor(None, state.load_models)
            if state.load_error:
                raise RuntimeError(state.not_ready_message())
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; this drains
            # whatever is still queued and stops the threads.
            await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = FastAPI(
        title="spacy-distill server",
        description=(
            "Text classification and encoding with spaCy pipelines (distilled students, "
            "transformer teachers, baselines). Limits: "
            f"max_texts={settings.max_texts}, max_chars={settings.max_chars}, "
            f"max_body_bytes={settings.max_body_bytes}."
        ),
        version="0.1.0",
        lifespan=lifespan,
        # Served below from an installed package: the defaults load a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.serving = state

    def token_ok(credentials: Optional[HTTPAuthorizationCredentials]) -> bool:
        if settings.token is None:
            return True
        given = credentials.credentials if credentials is not None else ""
        # Compare bytes: compare_digest refuses non-ASCII str. Starlette decodes
        # header bytes as Latin-1, so encoding back gives the bytes as sent,
        # which a UTF-8 client made from the token's UTF-8.
        try:
            raw = given.encode("latin-1")
        except UnicodeEncodeError:
            return False
        return credentials is not None and hmac.compare_digest(
            raw, settings.token.encode("utf-8")
        )

    if settings.token is not None:
        # Only a server with a token declares the Bearer scheme in its OpenAPI
        # schema: a scheme that is not enforced misleads clients and fuzzers.
        bearer = HTTPBearer(auto_error=False, description="The server's token.")

        async def require_token(
            credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer),
        ) -> None:
            if not token_ok(credentials):
                raise HTTPException(
                    401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
                )

    else:

        async def require_token() -> None:
            return None

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(err)
        return JSONResponse({"detail": _printable(message)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": _printable(str(err.detail))},
            status_code=err.status_code,
            headers=err.headers,
        )

    async def run_job(
        request: Request, worker: ModelWorker, task: str, texts: List[str], pooling: str = "mean"
    ) -> List[Any]:
        # The timeout counts from here; the worker stops the job's work at it.
        deadline = time.monotonic() + settings.request_timeout_s
        if len(texts) > settings.max_texts:
            raise HTTPException(
                413, f"too many texts: {len(texts)} > max_texts={settings.max_texts}"
            )
        for i, text in enumerate(texts):
            if len(text) > settings.max_chars:
                raise HTTPException(
                    413, f"texts[{i}] has {len(text)} characters > max_chars={settings.max_chars}"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                # JSON can smuggle in lone surrogates ("\ud800"), which spaCy cannot hash.
                raise HTTPException(
                    422, f"texts[{i}] is not valid Unicode: {err.reason} at position {err.start}"
                ) from err
        if not texts:
            return []
        # Before submitting: the batcher must not wait for this very request.
        state.arrival_done(request.scope)
        try:
            future = worker.submit(
                task,
                texts,
                pooling,
                deadline=deadline,
                max_tokens=settings.max_tokens_per_request,
                max_tokens_per_text=settings.max_tokens_per_text,
            )
        except QueueFullError as err:
            raise HTTPException(503, f"overloaded: {err}", headers={"Retry-After": "1"}) from err
        except WorkerClosedError as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from err
        wrapped = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(wrapped, timeout=max(0.0, deadline - time.monotonic()))
        except (asyncio.TimeoutError, JobExpiredError) as err:
            raise HTTPException(
                503,
                f"no result within request_timeout_s={settings.request_timeout_s}",
                headers={"Retry-After": "1"},
            ) from err
        except NoVectorsError as err:
            raise HTTPException(422, str(err)) from err
        except TooCostlyError as err:
            raise HTTPException(413, str(err)) from err
        except InferenceError as err:
            # A model crashing on valid input is a server-side bug: a real 500.
            raise HTTPException(500, f"model {worker.info.name!r}: {err}") from err

    @app.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=_ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
        summary="Score texts with a model's text classifier",
    )
    async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
        start = time.perf_counter()
        if cascade is not None and cascade.handles(body.model):
            return JSONResponse(await cascade.classify(request, body.texts, run_job))
        worker = state.worker_for(body.model)
        if not worker.info.labels:
            # Served with vectors_only: it has no classifier to answer with.
            raise HTTPException(
                422, f"model {worker.info.name!r} has no text classifier (served for /encode only)"
            )
        results = await run_job(request, worker, TASK_CLASSIFY, body.texts)
        return JSONResponse(
            {
                "model": worker.info.name,
                "elapsed_ms": (time.perf_counter() - start) * 1000.0,
                "results": results,
            }
        )

    @app.post(
        "/encode",
        response_model=EncodeResponse,
        responses=_ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
        summary="Turn texts into fixed-length vectors",
    )
    async def encode(body: EncodeRequest, request: Request) -> JSONResponse:
        start = time.perf_counter()
        worker = state.worker_for(body.model)
        if worker.info.vector_source is None:
            raise HTTPException(
                422,
                f"model {worker.info.name!r} exposes no vectors: no doc.tensor, "
                "no transformer output and no word vectors",
            )
        vectors = await run_job(request, worker, TASK_ENCODE, body.texts, body.pooling)
        return JSONResponse(
            {
                "model": worker.info.name,
                "elapsed_ms": (time.perf_counter() - start) * 1000.0,
                "pooling": body.pooling,
                "source": worker.info.vector_source,
                "width": worker.info.vector_width,
                "vectors": vectors,
            }
        )

    @app.get("/health", response_model=HealthResponse, summary="Liveness (never needs a token)")
    async def health() -> Dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "Models not loaded (yet)"}},
        summary="Readiness: 200 once every model is loaded (never needs a token)",
    )
    async def ready() -> JSONResponse:
        if state.ready.is_set():
            return JSONResponse({"ready": True, "models": list(state.workers)})
        return JSONResponse(
            {"ready": False, "models": list(state.workers), "detail": state.not_ready_message()},
            status_code=503,
        )

    @app.get(
        "/status",
        dependencies=[Depends(require_token)],
        responses=_ERROR_RESPONSES,
        summary="Models, counts, latency",
    )
    async def status() -> Dict[str, Any]:
        # Open without a token: then paths stay hidden (only a token authorises them).
        return state.status(show_paths=settings.token is not None)

    @app.get(
        "/metrics",
        dependencies=[Depends(require_token)],
        responses=_ERROR_RESPONSES,
        response_class=Response,
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    index_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        auth = "true" if settings.token is not None else "false"
        return HTMLResponse(index_html.replace("__AUTH_REQUIRED__", auth))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_docs(app)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def known_paths() -> "set[str]":
        return {getattr(route, "path", "") for route in app.routes}

    # Added last, so it wraps everything (CORS included) and sees raw bodies first.
    app.add_middleware(_GuardMiddleware, state=state, known_paths=known_paths)
    return app


def _docs_assets() -> Optional[Path]:
    """The Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package.

    RETURNS (Optional[Path]): Its static folder, or None if not installed.
    """
    try:
        spec = importlib.util.find_spec("fastapi_offline")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "static"
    needed = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
    return folder if all((folder / name).is_file() for name in needed) else None


def _add_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` that work offline.

    With the assets of ``fastapi-offline`` (in the ``serve`` extra), the usual
    Swagger UI and ReDoc pages, loading their scripts from this server. Without
    them, a plain page listing the endpoints (no script, nothing external).
    """
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = _docs_assets()
    title = app.title
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def swagger(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_swagger_ui_html(
                openapi_url=f"{root}/openapi.json",
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
                swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
                swagger_favicon_url=f"{root}/docs-assets/favicon.png",
            )

        @app.get("/redoc", include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_redoc_html(
                openapi_url=f"{root}/openapi.json",
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}/docs-assets/redoc.standalone.js",
                redoc_favicon_url=f"{root}/docs-assets/favicon.png",
                with_google_fonts=False,
            )

        return

    async def plain(request: Request) -> HTMLResponse:
        rows = []
        for path, methods in app.openapi().get("paths", {}).items():
            for method, op in methods.items():
                rows.append(
                    f"<tr><td><code>{html.escape(method.upper())} {html.escape(path)}</code></td>"
                    f"<td>{html.escape(str(op.get('summary', '')))}</td></tr>"
                )
        page = (
            f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><p>The interactive API docs need the "
            "<code>fastapi-offline</code> package (<code>pip install "
            "'spacy-distill[serve]'</code>); this server has no such assets and loads "
            "nothing from the internet. The schema: <a href=openapi.json>openapi.json</a>.</p>"
            f"<table>{''.join(rows)}</table>"
        )
        return HTMLResponse(page)

    app.get("/docs", include_in_schema=False)(plain)
    app.get("/redoc", include_in_schema=False)(plain)


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes (``--workers`` > 1).

    RETURNS (FastAPI): The app built from the config that ``spacy-distill
        serve`` put in the environment.
    """
    from .settings import load_config_from_env

    models, settings = load_config_from_env()
    return create_app(models, settings)
