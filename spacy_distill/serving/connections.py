"""Connection limits for uvicorn: header size, header timeout, idle timeout, a cap.

uvicorn (as of 0.54) closes an idle keep-alive connection only after a first
response, has no timeout for a request's headers (a client sending one byte
every few seconds holds a connection for ever: slow loris), no limit on the
size of the headers with httptools, and no cap on open connections
(``limit_concurrency`` answers 503 to requests, but idle connections still pile
up). The protocols here add, per connection:

* an idle timeout from the moment the connection opens, not only between
  requests (``keep_alive_s``);
* a header timeout, from a request's first byte to the end of its headers
  (``header_timeout_s``): 408 and close;
* a cap on the bytes of a request head (``max_header_bytes``): 431 and close,
  checked as data arrives, before it is buffered further;
* a cap on open connections (``max_connections``): one more is answered 503
  and closed at once, so it holds no resources.

The number of header fields (``max_headers``) and the body timeout are checked
in the app (``middleware.GuardMiddleware``), which also covers servers in front of it.
The limits come from the ``ServeSettings`` that ``uvicorn_config`` puts on the
uvicorn config, or, in uvicorn worker processes, from the environment that
``spacy-distill serve`` fills.
"""

import asyncio
import http
from dataclasses import dataclass
from typing import Any, Optional, Type

from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServeSettings

__all__ = ["ConnectionLimits", "protocol_class", "uvicorn_config"]

# Attribute of the uvicorn Config that carries the limits (pickled with it).
_CONFIG_ATTR = "spacy_distill_limits"


@dataclass
class ConnectionLimits:
    """The limits one protocol instance enforces (see the module docstring).

    max_connections (int): Most open connections.
    max_header_bytes (int): Largest request head, in bytes.
    header_timeout_s (float): Longest from a request's first byte to the end of its headers.
    """

    max_connections: int = 512
    max_header_bytes: int = 16_384
    header_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> "ConnectionLimits":
        """The limits of some settings.

        settings (ServeSettings): The settings.
        RETURNS (ConnectionLimits): Their connection limits.
        """
        return cls(settings.max_connections, settings.max_header_bytes, settings.header_timeout_s)


def _limits_for(config: Any) -> ConnectionLimits:
    limits = getattr(config, _CONFIG_ATTR, None)
    if isinstance(limits, ConnectionLimits):
        return limits
    try:
        # A uvicorn worker process: the settings travel in the environment.
        from .settings import load_config_from_env

        return ConnectionLimits.from_settings(load_config_from_env()[1])
    except (RuntimeError, ValueError, KeyError):
        return ConnectionLimits()


def _response(status: int, message: str) -> bytes:
    body = message.encode("ascii", "replace")
    phrase = http.HTTPStatus(status).phrase.encode("ascii")
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _Hardening:
    """Mixin over a uvicorn HTTP protocol (``H11Protocol`` or ``HttpToolsProtocol``).

    It relies on what both share: ``config``, ``loop``, ``transport``,
    ``connections``, ``cycle`` (a new object once a request's headers are
    parsed), ``timeout_keep_alive(_task|_handler)`` and ``on_response_complete``.
    """

    config: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: Any
    cycle: Any
    timeout_keep_alive: float
    timeout_keep_alive_task: Optional[asyncio.TimerHandle]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._limits = _limits_for(self.config)
        self._awaiting_head = True
        self._head_bytes = 0
        self._head_timer: Optional[asyncio.TimerHandle] = None
        if len(self.connections) > self._limits.max_connections:
            self._reject(503, "too many connections")
            return
        # uvicorn arms its idle timer only after a response: arm it for a new
        # connection too, so one that never sends a byte does not stay open.
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive,
            self.timeout_keep_alive_handler,  # type: ignore[attr-defined]
        )

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self._limits.header_timeout_s, self._on_head_timeout
                )
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not cycle:
            # A request's headers were parsed: its body has its own timeout (in the app).
            self._awaiting_head = False
            self._head_bytes = 0
            self._cancel_head_timer()
        elif self._awaiting_head and self._head_bytes > self._limits.max_header_bytes:
            self._reject(
                431, f"request headers exceed max_header_bytes={self._limits.max_header_bytes}"
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # The next bytes start the next request's head.
        self._awaiting_head = True
        self._head_bytes = 0
        self._cancel_head_timer()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self._awaiting_head and not self.transport.is_closing():
            self._reject(
                408, f"request headers not received within {self._limits.header_timeout_s} s"
            )

    def _reject(self, status: int, message: str) -> None:
        self._cancel_head_timer()
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        if not self.transport.is_closing():
            self.transport.write(_response(status, message))
            self.transport.close()


class HardenedH11Protocol(_Hardening, H11Protocol):
    """uvicorn's h11 protocol with the limits of this module."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HardenedHttpToolsProtocol(_Hardening, HttpToolsProtocol):
        """uvicorn's httptools protocol (the faster parser) with the limits of this module."""

except ImportError:  # pragma: no cover - httptools is optional
    HardenedHttpToolsProtocol = None  # type: ignore[assignment,misc]


def protocol_class() -> Type[asyncio.Protocol]:
    """The hardened protocol on the best parser installed (httptools, else h11).

    RETURNS (Type[asyncio.Protocol]): The class to give uvicorn as ``http``.
    """
    return HardenedHttpToolsProtocol or HardenedH11Protocol  # type: ignore[return-value]


def uvicorn_config(app: Any, settings: ServeSettings, **kwargs: Any) -> Any:
    """A uvicorn ``Config`` with the connection limits of ``settings``.

    app (Any): The ASGI app (or an import string, with ``factory=True``).
    settings (ServeSettings): The settings (host, port, limits).
    **kwargs: More ``uvicorn.Config`` arguments (log level, workers, ...).
    RETURNS (uvicorn.Config): The config.
    """
    import uvicorn

    options = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(),
        "timeout_keep_alive": settings.keep_alive_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        **kwargs,
    }
    config = uvicorn.Config(app, **options)
    setattr(config, _CONFIG_ATTR, ConnectionLimits.from_settings(settings))
    return config
