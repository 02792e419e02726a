"""Python client for ``spacy-distill serve``.

    >>> from spacy_distill.client import Client
    >>> with Client("http://127.0.0.1:8000") as client:
    ...     results = client.classify(["Great blender", "Broke after a day"])
    ...     results[0]["label"], results[0]["score"]

Every call has one overall deadline, ``timeout`` seconds from its start, that
covers connecting, sending, every read of the answer, the retries and the waits
between them: a server that answers one byte per second cannot hold a call past
it. Every call of this client is idempotent (scoring changes nothing on the
server), so connection errors, connections reset or closed before the answer,
and 503s (models loading, overload, shutdown) are retried with exponential
backoff while the deadline allows. Every failure raises a ``ClientError``
subclass, malformed answers included.
"""

import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

try:
    import httpx
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError(f"the client needs httpx: pip install 'spacy-distill[client]' ({err})") from None

__all__ = [
    "Client",
    "ClientError",
    "ClientConnectionError",
    "ClientTimeoutError",
    "ClientStatusError",
    "ClientRedirectError",
    "ClientResponseError",
]

#: Default bound on the size of one answer's body (bytes): the largest the API
#: gives (128 vectors of a wide model) is a few MB.
MAX_RESPONSE_BYTES = 32 * 2**20


class ClientError(Exception):
    """Base of every error the client raises.

    status (Optional[int]): HTTP status, or None if there was no response.
    detail (str): The server's message (or what went wrong).
    url (str): The URL called.
    """

    def __init__(self, status: Optional[int], detail: str, url: str = "") -> None:
        self.status = status
        self.detail = detail
        self.url = url
        where = f" ({url})" if url else ""
        prefix = f"HTTP {status}" if status is not None else "request failed"
        super().__init__(f"{prefix}{where}: {detail}")


class ClientConnectionError(ClientError):
    """The server could not be reached, or dropped the connection (after the retries)."""


class ClientTimeoutError(ClientError):
    """The call did not complete within its deadline."""


class ClientStatusError(ClientError):
    """The server answered with an error status (``status`` and its ``detail``)."""


class ClientRedirectError(ClientStatusError):
    """The server answered with a redirect (3xx): the URL is not the server's API.

    location (Optional[str]): Where the answer points (its ``Location`` header), if it says.
    """

    def __init__(self, status: int, location: Optional[str], url: str = "") -> None:
        self.location = location
        target = f" to {location}" if location else ""
        super().__init__(status, f"redirected{target}; the client does not follow redirects: use the server's own URL", url)


class ClientResponseError(ClientError):
    """The server's answer is not what the API promises (not JSON, missing fields)."""


# Errors after which the request surely or probably did not complete and is
# safe to send again (all calls are idempotent): no connection, or one that was
# reset or closed before an answer.
_RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


def _time_left(
    deadline: Callable[[], Optional[float]], timeout: Optional[float], error: type
) -> Optional[float]:
    """The timeout for one socket operation: at most the time left to the call.

    deadline (Callable[[], Optional[float]]): The call's deadline (monotonic), or None.
    timeout (Optional[float]): The operation's own timeout.
    error (type): The httpcore timeout to raise when no time is left.
    RETURNS (Optional[float]): The timeout to use.
    """
    end = deadline()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the call's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream:
    """A network stream whose every operation ends by the call's deadline.

    httpx's timeouts bound each read; this bounds their sum, by giving each
    operation at most the time left and failing once none is.
    """

    def __init__(self, stream: Any, deadline: Callable[[], Optional[float]]) -> None:
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: Optional[float], error: type) -> Optional[float]:
        return _time_left(self._deadline, timeout, error)

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        import httpcore

        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        import httpcore

        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: Any = None, timeout: Any = None) -> Any:
        import httpcore

        left = self._left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _deadline_transport(deadline: Callable[[], Optional[float]]) -> httpx.BaseTransport:
    """An httpx transport whose sockets honour the per-call deadline."""
    import httpcore

    base = httpcore.SyncBackend()

    class Backend(httpcore.NetworkBackend):
        def connect_tcp(  # type: ignore[override]
            self, host: str, port: int, timeout: Optional[float] = None, **kwargs: Any
        ) -> Any:
            left = _time_left(deadline, timeout, httpcore.ConnectTimeout)
            return _DeadlineStream(base.connect_tcp(host, port, left, **kwargs), deadline)

        def connect_unix_socket(  # type: ignore[override]
            self, path: str, timeout: Optional[float] = None, **kwargs: Any
        ) -> Any:
            left = _time_left(deadline, timeout, httpcore.ConnectTimeout)
            return _DeadlineStream(base.connect_unix_socket(path, left, **kwargs), deadline)

        def sleep(self, seconds: float) -> None:
            base.sleep(seconds)

    transport = httpx.HTTPTransport(retries=0)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.ConnectionPool):
        # httpx has no public way to pass a network backend; this is the one
        # place that relies on its internals, and without it each phase still
        # gets at most the time left (only a trickling server could then overrun).
        transport._pool = httpcore.ConnectionPool(  # type: ignore[attr-defined]
            ssl_context=httpx.create_ssl_context(),
            max_connections=10,
            max_keepalive_connections=10,
            keepalive_expiry=5.0,
            network_backend=Backend(),
        )
    return transport


class Client:
    """Talks to a spacy-distill server.

    url (str): Base URL, e.g. ``http://127.0.0.1:8000``.
    token (Optional[str]): Bearer token, if the server requires one.
    timeout (float): Seconds each call may take in all (connecting, sending,
        reading, retries and backoff included).
    retries (int): Extra attempts after a connection error, a dropped
        connection or a 503, while the deadline allows.
    backoff (float): First wait between attempts, doubled each time (with jitter).
    max_response_bytes (int): Largest answer body read; a larger one raises
        ``ClientResponseError`` without being buffered.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0, got {backoff}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = backoff
        self._local = threading.local()
        headers: Dict[str, Any] = {"Accept": "application/json"}
        if token:
            # As UTF-8 bytes: httpx encodes str header values as ASCII, which
            # fails on "tökén"; the server compares the UTF-8 bytes.
            headers["Authorization"] = f"Bearer {token}".encode()
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            transport=_deadline_transport(lambda: getattr(self._local, "deadline", None)),
            trust_env=False,
        )

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def classify(self, texts: Sequence[str], model: Optional[str] = None) -> List[Dict[str, Any]]:
        """Score texts with a model's text classifier.

        texts (Sequence[str]): The texts.
        model (Optional[str]): Model name; the server's default if None.
        RETURNS (List[Dict[str, Any]]): Per text, in order: ``{"cats", "label", "score"}``.
        """
        items = _as_list(texts)
        body: Dict[str, Any] = {"texts": items}
        if model is not None:
            body["model"] = model
        url = f"{self.url}/classify"
        results = _field(self._request("POST", "/classify", json=body), "results", list, url)
        if len(results) != len(items):
            raise ClientResponseError(
                200, f"expected {len(items)} results, got {len(results)}", url
            )
        for result in results:
            if not isinstance(result, dict) or not isinstance(result.get("cats"), dict):
                raise ClientResponseError(200, "a result has no 'cats' object", url)
        return results

    def encode(
        self, texts: Sequence[str], model: Optional[str] = None, pooling: str = "mean"
    ) -> List[List[float]]:
        """Turn texts into fixed-length vectors.

        texts (Sequence[str]): The texts.
        model (Optional[str]): Model name; the server's default if None.
        pooling (str): "mean" or "max".
        RETURNS (List[List[float]]): One vector per text, in order.
        """
        items = _as_list(texts)
        body: Dict[str, Any] = {"texts": items, "pooling": pooling}
        if model is not None:
            body["model"] = model
        url = f"{self.url}/encode"
        vectors = _field(self._request("POST", "/encode", json=body), "vectors", list, url)
        if len(vectors) != len(items) or not all(isinstance(v, list) for v in vectors):
            raise ClientResponseError(200, f"expected {len(items)} vectors", url)
        return vectors

    def status(self) -> Dict[str, Any]:
        """Models, versions, labels, counts and latency percentiles.

        RETURNS (Dict[str, Any]): The body of ``GET /status``.
        """
        return _object(self._request("GET", "/status"), f"{self.url}/status")

    def health(self) -> Dict[str, Any]:
        """Liveness check.

        RETURNS (Dict[str, Any]): The body of ``GET /health``.
        """
        return _object(self._request("GET", "/health"), f"{self.url}/health")

    def ready(self) -> bool:
        """Whether every model is loaded (no retries: a 503 means "not yet").

        RETURNS (bool): True once ``GET /ready`` answers 200; False on any
            other answer or failure within the deadline.
        """
        self._local.deadline = time.monotonic() + self.timeout
        try:
            response = self._send("GET", "/ready", f"{self.url}/ready")
        except (httpx.HTTPError, ClientResponseError):
            return False
        finally:
            self._local.deadline = None
        return response.status_code == 200

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.url}{path}"
        deadline = time.monotonic() + self.timeout
        self._local.deadline = deadline
        try:
            return self._attempts(method, path, url, deadline, **kwargs)
        finally:
            self._local.deadline = None

    def _attempts(self, method: str, path: str, url: str, deadline: float, **kwargs: Any) -> Any:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._send(method, path, url, **kwargs)
            except httpx.TimeoutException as err:
                if isinstance(err, httpx.ConnectTimeout) and not last:
                    if self._pause(delay, deadline):
                        delay *= 2
                        continue
                raise ClientTimeoutError(
                    None, f"no answer within {self.timeout}s ({type(err).__name__})", url
                ) from err
            except _RETRYABLE as err:
                if not last and self._pause(delay, deadline):
                    delay *= 2
                    continue
                if time.monotonic() >= deadline:
                    raise ClientTimeoutError(
                        None, f"no answer within {self.timeout}s", url
                    ) from err
                raise ClientConnectionError(
                    None,
                    f"cannot reach the server after {attempt + 1} attempt(s): "
                    f"{type(err).__name__}: {err}",
                    url,
                ) from err
            except httpx.HTTPError as err:
                raise ClientError(None, f"{type(err).__name__}: {err}", url) from err
            if response.status_code == 503 and not last:
                if self._pause(_retry_after(response, delay), deadline):
                    delay *= 2
                    continue
            if 300 <= response.status_code < 400:
                raise ClientRedirectError(response.status_code, response.headers.get("location"), url)
            if response.status_code >= 400:
                raise ClientStatusError(response.status_code, _detail(response), url)
            try:
                return response.json()
            except ValueError as err:
                raise ClientResponseError(
                    response.status_code, "the server sent invalid JSON", url
                ) from err
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, path: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, its body read up to ``max_response_bytes`` (never buffered past it).

        method (str): HTTP method.
        path (str): Path under the base URL.
        url (str): The full URL, for the error message.
        RETURNS (httpx.Response): The answer, its body read.
        """
        limit = self.max_response_bytes
        with self._http.stream(method, path, **kwargs) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise ClientResponseError(
                    response.status_code,
                    f"the answer is {int(declared)} bytes, over max_response_bytes={limit}",
                    url,
                )
            body = bytearray()
            # Counted as it arrives (decompressed), so a server that sends no
            # Content-Length, or a false one, cannot fill the client's memory.
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ClientResponseError(
                        response.status_code, f"the answer exceeds max_response_bytes={limit}", url
                    )
        # The body is already decoded: drop the headers that would decode it again.
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")]
        return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=response.request)

    def _pause(self, delay: float, deadline: float) -> bool:
        """Sleep before the next attempt. RETURNS (bool): False if no time is left for one."""
        # Full jitter, so clients that failed together do not retry together.
        wait = delay * random.uniform(0.5, 1.0)
        # An attempt started with only milliseconds left can only time out, and would
        # replace the real failure (a 503, a reset) by a timeout: keep a tenth of the
        # call's timeout for it.
        if time.monotonic() + wait + 0.1 * self.timeout >= deadline:
            return False
        time.sleep(wait)
        return True


def _as_list(texts: Sequence[str]) -> List[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    return list(texts)


def _object(body: Any, url: str) -> Dict[str, Any]:
    if not isinstance(body, dict):
        raise ClientResponseError(200, f"expected a JSON object, got {type(body).__name__}", url)
    return body


def _field(body: Any, name: str, kind: type, url: str) -> Any:
    value = _object(body, url).get(name)
    if not isinstance(value, kind):
        raise ClientResponseError(200, f"the answer has no {name!r} {kind.__name__}", url)
    return value


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]


def _retry_after(response: httpx.Response, default: float) -> float:
    # Honour Retry-After, but never sleep long: callers want bounded calls.
    try:
        return min(max(float(response.headers.get("retry-after", default)), 0.0), 5.0)
    except ValueError:
        return default
