"""``ServerState``: what the app holds at run time.

The models' batchers (loaded by ``load_models``), the request counters and
latency windows behind ``/status``, and the Prometheus metrics. One per app,
at ``app.state.serving`` (``deps.get_state`` hands it to the routes).
"""

import logging
import os
import platform
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Mapping, Optional, Union

import numpy
import spacy
from fastapi import HTTPException
from spacy.language import Language

from .batching import ModelBatcher
from .child_process import ChildProcessRunner
from .inference import ModelInfo
from .metrics import Metrics
from .runner import InProcessRunner, ModelLoadError, Runner, rss_mb
from .settings import ServeSettings

logger = logging.getLogger("spacy_distill.serving")

ModelSource = Union[str, Path, Language]
# Scope key of the per-request "still arriving" flag (see ServerState.arriving).
ARRIVAL_KEY = "spacy_distill.arriving"
# Latencies kept for the /status percentiles (a sliding window, so memory is bounded).
_LATENCY_WINDOW = 10_000
# The settings /status shows under "limits". Named one by one, not all fields
# but some: /status is open when no token is set, so a new setting (a secret,
# say) must not appear there until someone lists it here.
STATUS_LIMITS = (
    "max_texts",
    "max_chars",
    "max_body_bytes",
    "max_batch_size",
    "batch_wait_ms",
    "max_queue",
    "request_timeout_s",
    "max_connections",
    "max_header_bytes",
    "max_headers",
    "header_timeout_s",
    "body_timeout_s",
    "keep_alive_s",
    "max_tokens_per_request",
    "max_tokens_per_text",
    "slice_tokens",
    "max_worker_rss_mb",
    "vectors_only",
)


def _percentiles(values: "Deque[float]") -> Dict[str, float]:
    # In milliseconds, as /status shows them.
    if not values:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
    arr = numpy.asarray(values, dtype="float64") * 1000.0
    p50, p95, p99 = numpy.percentile(arr, [50, 95, 99])
    return {"count": len(values), "p50": float(p50), "p95": float(p95), "p99": float(p99)}



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
        self.batchers: Dict[str, ModelBatcher] = {}
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
        self.metrics = Metrics()
        self._lock = threading.Lock()
        # Requests to /classify or /encode being read or validated right now:
        # a batch waits for more only while this is > 0. Changed on the event
        # loop only; the batching threads just read it.
        self.arriving = 0

    @property
    def default_model(self) -> str:
        """The first model given: what a request naming no model gets."""
        return next(iter(self.sources))

    def _runner(self, name: str, source: ModelSource) -> Runner:
        # A Language object cannot be handed to another process; "thread" is opt-in.
        if isinstance(source, Language) or self.settings.inference == "thread" or os.name != "posix":
            return InProcessRunner(name, source, self.settings.max_batch_size)
        return ChildProcessRunner(name, str(source), self.settings.max_batch_size)

    def load_models(self) -> None:
        """Load and warm up every model and start its batcher."""
        self.loading = True
        try:
            for name, source in self.sources.items():
                if name in self.batchers:
                    continue
                label = source if not isinstance(source, Language) else "<object>"
                logger.info("loading model %s from %s", name, label)
                try:
                    runner = self._runner(name, source)
                except ModelLoadError as err:
                    raise ModelLoadError(f"model {name!r} ({label}): {err}") from None
                info = runner.info
                if not info.labels and not self.settings.vectors_only:
                    # Would answer 200 with empty cats to every /classify.
                    runner.close()
                    raise ModelLoadError(
                        f"model {name!r} ({label}) has no text classifier (no component "
                        "sets doc.cats); serve it with --vectors-only for /encode alone"
                    )
                self.infos[name] = info
                batcher = ModelBatcher(
                    runner,
                    max_batch_size=self.settings.max_batch_size,
                    batch_wait_s=self.settings.batch_wait_ms / 1000.0,
                    max_queue=self.settings.max_queue,
                    observer=self.metrics.observe_batch,
                    arriving=lambda: self.arriving,
                    cancel_grace_s=self.settings.cancel_grace_s,
                    max_rss_mb=self.settings.max_worker_rss_mb,
                    slice_tokens=self.settings.slice_tokens,
                )
                self.metrics.watch(name, batcher)
                with self._lock:
                    self.batchers[name] = batcher
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
        """Stop every batcher after it has finished its queued requests."""
        for batcher in list(self.batchers.values()):
            if not batcher.close(timeout=self.settings.request_timeout_s):
                logger.warning("the batcher of %s did not drain in time", batcher.info.name)

    def batcher_for(self, model: Optional[str]) -> ModelBatcher:
        """The batcher for a model name, or an HTTP error (404 unknown, 503 not loaded).

        model (Optional[str]): The model's name; None for the default model.
        RETURNS (ModelBatcher): Its batcher.
        """
        name = self.default_model if model is None else model
        if name not in self.sources:
            known = ", ".join(self.sources)
            raise HTTPException(404, f"unknown model {name!r}; loaded models: {known}")
        batcher = self.batchers.get(name)
        if batcher is None:
            raise HTTPException(503, self.not_ready_message(), headers={"Retry-After": "1"})
        return batcher

    def not_ready_message(self) -> str:
        """Why the server is not ready: the load error, or the models still loading."""
        if self.load_error:
            return f"models failed to load: {self.load_error}"
        missing = [name for name in self.sources if name not in self.batchers]
        return f"models still loading: {', '.join(missing)}"

    def arrival_done(self, scope: Dict[str, Any]) -> None:
        """The request is no longer "arriving" (its job is queued, or it failed).

        scope (Dict[str, Any]): The request's ASGI scope.
        """
        flag = scope.get(ARRIVAL_KEY)
        if flag is not None and flag["pending"]:
            flag["pending"] = False
            self.arriving -= 1

    def record(self, path: str, status: int, seconds: float) -> None:
        """Count a finished request (called from the middleware).

        path (str): The route's path (or "other"; see ``GuardMiddleware``).
        status (int): The response's status code.
        seconds (float): How long the request took.
        """
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
            batcher = self.batchers.get(name)
            entry: Dict[str, Any] = info.to_dict() if info else {"name": name, "loaded": False}
            entry["loaded"] = batcher is not None
            if not show_paths and entry.get("source"):
                # Who may not authenticate must not learn the server's file layout.
                entry["source"] = Path(str(entry["source"])).name
            if batcher is not None:
                entry["batching"] = batcher.stats()
                entry["runtime"] = batcher.runtime()
            models[name] = entry
        s = self.settings
        return {
            "ready": self.ready.is_set(),
            "load_error": self.load_error,
            "default_model": self.default_model,
            "uptime_s": time.time() - self.started,
            # The HTTP process itself (each worker process's is in models.*.runtime).
            "process": {"pid": os.getpid(), "rss_mb": rss_mb(os.getpid())},
            "requests": {"total": total, "by_path": by_path},
            "latency_ms": latencies,
            "models": models,
            "limits": {name: getattr(s, name) for name in STATUS_LIMITS},
            "inference": s.inference,
            "auth": s.token is not None,
            "versions": {"spacy": spacy.__version__, "python": platform.python_version()},
        }
