"""Python client for ``spacy-distill serve``.

    >>> from spacy_distill.client import Client
    >>> with Client("http://127.0.0.1:8000") as client:
    ...     results = client.classify(["Great blender", "Broke after a day"])
    ...     results[0]["label"], results[0]["score"]

Every call has connect and read timeouts; connection failures and 503s
(models loading, overload, shutdown) are retried a bounded number of times
with exponential backoff; everything else raises ``ClientError`` at once.
"""

import time
from typing import Any, Dict, List, Optional, Sequence

import httpx

__all__ = ["Client", "ClientError", "ClientConnectionError", "ClientTimeoutError"]


class ClientError(Exception):
    """The server answered with an error, or could not be reached.

    status (Optional[int]): HTTP status, or None if there was no response.
    detail (str): The server's message (or what went wrong).
    """

    def __init__(self, status: Optional[int], detail: str, url: str = "") -> None:
        self.status = status
        self.detail = detail
        self.url = url
        where = f" ({url})" if url else ""
        prefix = f"HTTP {status}" if status is not None else "request failed"
        super().__init__(f"{prefix}{where}: {detail}")


class ClientConnectionError(ClientError):
    """The server could not be reached (after the retries)."""


class ClientTimeoutError(ClientError):
    """The server did not answer within the timeout."""


class Client:
    """Talks to a spacy-distill server.

    url (str): Base URL, e.g. ``http://127.0.0.1:8000``.
    token (Optional[str]): Bearer token, if the server requires one.
    timeout (float): Seconds allowed to connect, and to wait for each read.
    retries (int): Extra attempts after a connection error or a 503.
    backoff (float): First wait between attempts, doubled each time.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Explicit timeouts for every phase: httpx's default pool timeout is
        # also bounded, but say it here so no phase can wait forever.
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(
                timeout, connect=timeout, read=timeout, write=timeout, pool=timeout
            ),
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
        body: Dict[str, Any] = {"texts": _as_list(texts)}
        if model is not None:
            body["model"] = model
        return self._request("POST", "/classify", json=body)["results"]

    def encode(
        self, texts: Sequence[str], model: Optional[str] = None, pooling: str = "mean"
    ) -> List[List[float]]:
        """Turn texts into fixed-length vectors.

        texts (Sequence[str]): The texts.
        model (Optional[str]): Model name; the server's default if None.
        pooling (str): "mean" or "max".
        RETURNS (List[List[float]]): One vector per text, in order.
        """
        body: Dict[str, Any] = {"texts": _as_list(texts), "pooling": pooling}
        if model is not None:
            body["model"] = model
        return self._request("POST", "/encode", json=body)["vectors"]

    def status(self) -> Dict[str, Any]:
        """Models, versions, labels, counts and latency percentiles.

        RETURNS (Dict[str, Any]): The body of ``GET /status``.
        """
        return self._request("GET", "/status")

    def health(self) -> Dict[str, Any]:
        """Liveness check.

        RETURNS (Dict[str, Any]): The body of ``GET /health``.
        """
        return self._request("GET", "/health")

    def ready(self) -> bool:
        """Whether every model is loaded (no retries: a 503 means "not yet").

        RETURNS (bool): True once ``GET /ready`` answers 200.
        """
        try:
            response = self._http.get("/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.url}{path}"
        delay = self.backoff
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as err:
                # A read timeout means the server took the request: retrying
                # would multiply the wait, so give up at once. Connect
                # timeouts are connection errors and do get retried.
                if isinstance(err, httpx.ConnectTimeout) and not last:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise ClientTimeoutError(
                    None, f"no answer within {self.timeout}s ({type(err).__name__})", url
                ) from err
            except (httpx.ConnectError, httpx.RemoteProtocolError) as err:
                if not last:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise ClientConnectionError(
                    None, f"cannot reach the server after {attempt + 1} attempt(s): {err}", url
                ) from err
            except httpx.HTTPError as err:
                raise ClientError(None, f"{type(err).__name__}: {err}", url) from err
            if response.status_code == 503 and not last:
                time.sleep(_retry_after(response, delay))
                delay *= 2
                continue
            if response.status_code >= 400:
                raise ClientError(response.status_code, _detail(response), url)
            try:
                return response.json()
            except ValueError as err:
                raise ClientError(
                    response.status_code, "the server sent invalid JSON", url
                ) from err
        raise AssertionError("unreachable")  # pragma: no cover


def _as_list(texts: Sequence[str]) -> List[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    return list(texts)


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
