"""Settings for the HTTP server.

The settings travel as JSON in an environment variable when uvicorn starts
several worker processes (each worker rebuilds the app from them), so every
field must stay JSON-serialisable.
"""

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

TOKEN_ENV_VAR = "SPACY_DISTILL_TOKEN"
# Carries ``{"models": {...}, "settings": {...}}`` to uvicorn worker processes.
CONFIG_ENV_VAR = "SPACY_DISTILL_SERVE_CONFIG"


@dataclass
class ServeSettings:
    """Everything that configures the server, apart from the models.

    host (str): Interface to bind. Loopback unless told otherwise.
    port (int): TCP port.
    workers (int): Number of uvicorn worker processes (each loads every model).
    max_batch_size (int): Most texts run through ``nlp.pipe`` in one batch.
    batch_wait_ms (float): How long the first request of a batch waits for
        others to join it.
    max_texts (int): Most texts per request.
    max_chars (int): Most characters per text.
    max_body_bytes (int): Largest request body accepted.
    max_queue (int): Most requests waiting per model; more get a 503.
    request_timeout_s (float): Longest a request waits for its results.
    token (Optional[str]): Bearer token required on the API, or None for none.
    cors_origins (List[str]): Origins allowed by CORS; empty means CORS off.
    load_in_background (bool): Load models given as paths in a thread after
        startup, so ``/health`` answers at once and ``/ready`` says when the
        models are in.
    inference (str): "process" (default): each model runs in a worker
        process of its own, so no request can block the HTTP event loop and
        timed-out work is stopped; "thread": in a thread of the server
        process (less memory, no isolation). Pipelines passed as ``Language``
        objects always run in a thread.
    cancel_grace_s (float): A worker process still busy this long after the
        last deadline of its batch is killed and restarted.
    max_connections (int): Most open HTTP connections; more are answered 503
        and closed at once.
    max_header_bytes (int): Largest request head (request line and headers).
    max_headers (int): Most request header fields.
    header_timeout_s (float): Longest from a request's first byte to the end
        of its headers (slow-loris guard); 408 and close after.
    body_timeout_s (float): Longest to receive a request body; 408 after.
    keep_alive_s (float): An idle connection (a new one, or between
        requests) is closed after this long.
    max_tokens_per_request (int): Most tokens in one request, counted by the
        model's (bounded) tokenizer before the model runs; more get a 413.
    max_tokens_per_text (int): Most tokens in one text; more get a 413.
    slice_tokens (int): Most tokens of one request run through the model in
        one batch; a larger request runs over several batches, with other
        requests served in between.
    max_worker_rss_mb (float): A model's worker process whose resident memory
        is above this after a batch is replaced (0: never).
    vectors_only (bool): Serve pipelines without a text classifier (for
        ``/encode``); without it such a pipeline stops the start.
    cascade (Optional[Dict[str, Any]]): A student→teacher cascade served as
        one more model (``spacy_distill.serving.cascade``): ``{"student",
        "teacher", "threshold", "temperature", "name"}``; None for none.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_texts: int = 128
    max_chars: int = 10_000
    max_body_bytes: int = 2_000_000
    max_queue: int = 1024
    request_timeout_s: float = 60.0
    token: Optional[str] = None
    cors_origins: List[str] = field(default_factory=list)
    load_in_background: bool = True
    inference: str = "process"
    cancel_grace_s: float = 2.0
    max_connections: int = 512
    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_tokens_per_request: int = 32_768
    max_tokens_per_text: int = 4_096
    slice_tokens: int = 512
    max_worker_rss_mb: float = 2048.0
    vectors_only: bool = False
    # The student→teacher cascade (serving/cascade.py): a JSON object, None for none.
    cascade: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        positive = (
            "workers",
            "max_batch_size",
            "max_texts",
            "max_chars",
            "max_body_bytes",
            "max_queue",
            "max_connections",
            "max_header_bytes",
            "max_headers",
            "max_tokens_per_request",
            "max_tokens_per_text",
            "slice_tokens",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_worker_rss_mb < 0:
            raise ValueError(f"max_worker_rss_mb must be >= 0, got {self.max_worker_rss_mb}")
        if self.cancel_grace_s < 0:
            raise ValueError(f"cancel_grace_s must be >= 0, got {self.cancel_grace_s}")
        if self.inference not in ("process", "thread"):
            raise ValueError(f"inference must be 'process' or 'thread', got {self.inference!r}")
        # An empty token would make every request "authenticated"; treat it as none.
        if not self.token:
            self.token = None

    def to_dict(self) -> Dict[str, Any]:
        """The settings as a JSON-serialisable dict.

        RETURNS (Dict[str, Any]): The fields and their values.
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ServeSettings":
        """Build settings from ``to_dict`` output (or a config's ``settings``).

        An unknown key is an error, not dropped: a misspelt limit in a Ray
        Serve config (``max_text: 10``) would otherwise leave the default in force.

        data (Dict[str, Any]): The fields.
        RETURNS (ServeSettings): The settings.
        RAISES (ValueError): A key that is not a field of ``ServeSettings``.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), names, n=1)
                hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
            raise ValueError(
                f"unknown server settings: {', '.join(hints)}; known: {', '.join(names)}"
            )
        return cls(**data)


def dump_config_to_env(models: Dict[str, str], settings: ServeSettings) -> None:
    """Put the server config in the environment for uvicorn worker processes.

    models (Dict[str, str]): Model name to package name or path.
    settings (ServeSettings): The settings.
    """
    os.environ[CONFIG_ENV_VAR] = json.dumps({"models": models, "settings": settings.to_dict()})


def load_config_from_env() -> "tuple[Dict[str, str], ServeSettings]":
    """Read the config written by ``dump_config_to_env``.

    RETURNS (tuple[Dict[str, str], ServeSettings]): The models and settings.
    """
    raw = os.environ.get(CONFIG_ENV_VAR)
    if not raw:
        raise RuntimeError(
            f"{CONFIG_ENV_VAR} is not set; start the server with `spacy-distill serve`"
        )
    data = json.loads(raw)
    return dict(data["models"]), ServeSettings.from_dict(data["settings"])
