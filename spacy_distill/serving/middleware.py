"""ASGI middleware: the request guards in front of every route.

``GuardMiddleware`` is the outermost layer of the app. It enforces the header
limits, the body size limit and the body timeout before anything parses the
body, runs ``precheck_body`` on ``/classify`` and ``/encode`` bodies, tracks
the requests still arriving (for the batcher), and records every request for
``/status`` and ``/metrics``. Connection-level limits (slow headers, idle and
too many connections) are enforced below the app, by the uvicorn protocol in
``connections.py``.
"""

import asyncio
import json
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

from .errors import printable
from .precheck import precheck_body
from .state import ARRIVAL_KEY, ServerState

# The routes whose requests are batched (the batcher waits while some arrive).
BATCHED_PATHS = ("/classify", "/encode")


class HTTPMiddleware:
    """An ASGI middleware for HTTP requests only: other scopes (lifespan) pass through.

    app (Any): The ASGI app it wraps.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, scope: Dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(
        self, scope: Dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        """Handle one HTTP request (subclasses say how).

        scope (Dict[str, Any]): The request's ASGI scope.
        receive (Callable[[], Awaitable[Any]]): The ASGI receive channel.
        send (Any): The ASGI send channel.
        """
        await self.app(scope, receive, send)


class GuardMiddleware(HTTPMiddleware):
    """Outermost ASGI layer: enforces the header limits, the body size limit
    and the body timeout before anything parses the body, tracks requests
    still arriving (for the batcher), and records every request for /status
    and /metrics.

    app (Any): The ASGI app it wraps.
    state (ServerState): The app's state (settings, counters).
    known_paths (Callable[[], set[str]]): The app's route paths, asked once at
        the first request (routes are all added by then), to label metrics.
    """

    def __init__(self, app: Any, state: ServerState, known_paths: Callable[[], "set[str]"]) -> None:
        super().__init__(app)
        self.state = state
        self.known_paths = known_paths
        self._paths: Optional[set[str]] = None

    async def http(
        self, scope: Dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        """Guard, pass on and record one HTTP request (arguments: ``HTTPMiddleware.http``)."""
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

        if scope.get("method") == "POST" and path in BATCHED_PATHS:
            scope[ARRIVAL_KEY] = {"pending": True}
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
            if scope.get("method") == "POST" and path in BATCHED_PATHS:
                # Bound validation before pydantic sees the body (it would build
                # one error per bad item: 1M of them for 2 MB of zeros, for
                # seconds on the event loop); the JSON parse runs in a thread.
                checked = await asyncio.to_thread(
                    precheck_body, body, _content_type(headers), path, settings.max_texts
                )
                if isinstance(checked, tuple):
                    await _send_json(send_wrapper, checked[0], {"detail": printable(checked[1])})
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

def _content_type(headers: List[Any]) -> Optional[bytes]:
    for name, value in headers:
        if name.lower() == b"content-type":
            return bytes(value)
    return None


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

