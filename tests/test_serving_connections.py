"""Connection limits against a real uvicorn on 127.0.0.1: idle and slow-loris
connections are closed, oversized heads refused, open connections capped.
Every test is bounded in time (socket timeouts; the limits are ~1 s here)."""

import socket
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import httpx  # noqa: E402

from spacy_distill.serving import connections  # noqa: E402
from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.settings import ServeSettings  # noqa: E402

from .serving_harness import LiveServer, save_test_pipeline  # noqa: E402

SETTINGS = dict(
    header_timeout_s=1.0,
    body_timeout_s=1.0,
    keep_alive_s=1.0,
    max_header_bytes=4096,
    max_headers=20,
    inference="thread",  # this file tests the HTTP layer only
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_test_pipeline(tmp_path_factory.mktemp("connections_model") / "student")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def live(request: pytest.FixtureRequest, model_dir: Path) -> Iterator[LiveServer]:
    # Both parsers uvicorn may use: httptools when installed, else h11.
    if request.param == "httptools" and connections.HardenedHttpToolsProtocol is None:
        pytest.skip("httptools is not installed")
    app = create_app({"student": str(model_dir)}, ServeSettings(**SETTINGS))  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "h11":
            patch.setattr(connections, "HardenedHttpToolsProtocol", None)
        with LiveServer(app) as server:
            expected = "HardenedH11Protocol" if request.param == "h11" else "HardenedHttpToolsProtocol"
            assert server.server.config.http.__name__ == expected
            yield server


def _connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> Tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    start = time.monotonic()
    data = b""
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def _health_ok(server: LiveServer) -> bool:
    return httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_idle_connection_is_closed(live: LiveServer) -> None:
    with _connect(live) as sock:
        data, seconds = _read_until_closed(sock)
    # A connection that never sends a byte (uvicorn alone keeps it for ever).
    assert data == b"" and 0.8 <= seconds < 3.0, seconds


def test_idle_keep_alive_connection_is_closed(live: LiveServer) -> None:
    with _connect(live) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        data, seconds = _read_until_closed(sock)
    assert data == b"" and seconds < 3.0


def test_slow_loris_headers_get_408(live: LiveServer) -> None:
    request = b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with _connect(live) as sock:
        start = time.monotonic()
        sent = 0
        closed = False
        # One byte every 0.2 s: each arrives well within any idle timeout.
        while time.monotonic() - start < 6.0:
            try:
                sock.sendall(request[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            time.sleep(0.2)
            sock.settimeout(0.001)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except (socket.timeout, BlockingIOError):
                pass
            except ConnectionResetError:
                closed = True
                break
        data, _ = _read_until_closed(sock, limit=5)
        seconds = time.monotonic() - start
    assert closed or data.startswith(b"HTTP/1.1 408"), data[:100]
    assert seconds < 3.5, seconds
    assert _health_ok(live)


def test_slow_body_gets_408(live: LiveServer) -> None:
    head = (
        b"POST /classify HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n"
    )
    with _connect(live) as sock:
        sock.sendall(head)
        start = time.monotonic()
        for byte in b'{"texts": ["':
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - start > 1.5:
                break
        data, _ = _read_until_closed(sock, limit=5)
        seconds = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"body_timeout_s=1.0" in data
    assert seconds < 4.0


def test_oversized_head_gets_431(live: LiveServer) -> None:
    with _connect(live) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        data, seconds = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431"), data[:100]
    assert seconds < 3.0


def test_too_many_headers_get_431(live: LiveServer) -> None:
    headers = {f"x-h{i}": "1" for i in range(30)}
    response = httpx.get(f"{live.url}/health", headers=headers, timeout=5)
    assert response.status_code == 431
    assert "max_headers=20" in response.json()["detail"]
    assert httpx.get(f"{live.url}/health", headers={"x-a": "1"}, timeout=5).status_code == 200


def test_connection_cap(model_dir: Path) -> None:
    settings = ServeSettings(max_connections=5, **SETTINGS)  # type: ignore[arg-type]
    with LiveServer(create_app({"student": str(model_dir)}, settings)) as server:
        time.sleep(0.2)  # let the readiness polls' connections close
        held: List[socket.socket] = []
        refused = None
        try:
            for _ in range(8):
                sock = _connect(server)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.settimeout(5)
                answer = sock.recv(65536)
                if answer.startswith(b"HTTP/1.1 503"):
                    refused = answer
                    sock.close()
                    break
                assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
                held.append(sock)
            assert refused is not None and b"too many connections" in refused
            assert len(held) == 5
        finally:
            for sock in held:
                sock.close()
        # Capacity comes back once connections close.
        deadline = time.monotonic() + 5
        while True:
            try:
                if _health_ok(server):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_limits_are_reported(live: LiveServer) -> None:
    limits = httpx.get(f"{live.url}/status", timeout=5).json()["limits"]
    assert limits["header_timeout_s"] == 1.0 and limits["max_headers"] == 20
    assert limits["max_connections"] == 512 and limits["keep_alive_s"] == 1.0
