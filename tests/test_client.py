"""The Python client against a live server, a silent socket and a flaky server."""

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from spacy_distill.client import (  # noqa: E402
    Client,
    ClientConnectionError,
    ClientError,
    ClientResponseError,
    ClientStatusError,
    ClientTimeoutError,
)
from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.settings import ServeSettings  # noqa: E402

from .serving_harness import LABELS, STUDENT_WIDTH, LiveServer, free_port, save_test_pipeline  # noqa: E402

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = save_test_pipeline(tmp_path_factory.mktemp("client_model") / "student")
    app = create_app({"student": str(path)}, ServeSettings(token=TOKEN, max_texts=10))
    with LiveServer(app) as server:
        yield server


def test_client_calls(live: LiveServer) -> None:
    with Client(live.url, token=TOKEN, timeout=10) as client:
        assert client.health() == {"status": "ok"}
        assert client.ready()
        results = client.classify(["great", "awful", ""])
        assert len(results) == 3
        assert set(results[0]["cats"]) == set(LABELS)
        vectors = client.encode(["great", ""], pooling="max")
        assert len(vectors) == 2 and len(vectors[0]) == STUDENT_WIDTH
        status = client.status()
        assert "student" in status["models"]
        assert client.classify([], model="student") == []


def test_client_errors_carry_status_and_message(live: LiveServer) -> None:
    with Client(live.url, token=TOKEN, timeout=10) as client:
        with pytest.raises(ClientError) as info:
            client.classify(["x"], model="missing")
        assert info.value.status == 404
        assert "unknown model" in info.value.detail
        with pytest.raises(ClientError) as info:
            client.classify(["x"] * 11)
        assert info.value.status == 413 and "max_texts=10" in str(info.value)
        with pytest.raises(TypeError):
            client.classify("not a list")  # type: ignore[arg-type]
    with Client(live.url, token="wrong", timeout=10) as client:
        with pytest.raises(ClientError) as info:
            client.status()
        assert info.value.status == 401
        assert client.health()["status"] == "ok"


def test_timeout_on_silent_socket() -> None:
    """A server that accepts connections but never answers must not hang the client."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Client(url, timeout=1.0, retries=2) as client:
            start = time.monotonic()
            with pytest.raises(ClientTimeoutError) as info:
                client.classify(["hello"])
            elapsed = time.monotonic() - start
        assert info.value.status is None
        assert "no answer within 1.0s" in str(info.value)
        # Read timeouts are not retried: one timeout, plus slack for a loaded CI machine.
        assert elapsed < 2.5


def test_connection_refused_is_retried_then_raises() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=1.0, retries=2, backoff=0.05) as client:
        start = time.monotonic()
        with pytest.raises(ClientConnectionError) as info:
            client.health()
        assert time.monotonic() - start < 5
    assert "after 3 attempt(s)" in str(info.value)


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first two requests, then a classify result."""

    calls: List[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        _Flaky.calls.append(self.path)
        if len(_Flaky.calls) <= 2:
            body, status = {"detail": "models still loading: student"}, 503
        else:
            body, status = (
                {
                    "model": "m",
                    "elapsed_ms": 1.0,
                    "results": [{"cats": {}, "label": None, "score": None}],
                },
                200,
            )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _flaky_server() -> ThreadingHTTPServer:
    _Flaky.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_503_is_retried() -> None:
    server = _flaky_server()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with Client(url, timeout=5, retries=2, backoff=0.01) as client:
            assert client.classify(["x"])[0]["label"] is None
        assert len(_Flaky.calls) == 3
        _Flaky.calls = []
        with Client(url, timeout=5, retries=1, backoff=0.01) as client:
            with pytest.raises(ClientError) as info:
                client.classify(["x"])
        assert info.value.status == 503 and "still loading" in info.value.detail
    finally:
        server.shutdown()
        server.server_close()


def test_client_cli(live: LiveServer, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from spacy_distill.serving import cli as serving_cli

    app = typer.Typer()
    serving_cli.register(app)
    source = tmp_path / "reviews.txt"
    source.write_text("great blender\n\nawful shoes\nok\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "client",
            "classify",
            "--url",
            live.url,
            "--token",
            TOKEN,
            "--batch-size",
            "2",
            str(source),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["great blender", "awful shoes", "ok"]
    assert [line["line"] for line in lines] == [1, 3, 4]
    assert all(line["label"] in LABELS for line in lines)
    bad = runner.invoke(app, ["client", "classify", "--url", live.url, str(source)])
    assert bad.exit_code == 1
    assert "401" in bad.stderr


class _RawServer:
    """A TCP server on 127.0.0.1 whose handler gets each accepted socket."""

    def __init__(self, handler) -> None:  # noqa: ANN001 - a callable(socket, index)
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            index = self.connections
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn, index), daemon=True).start()

    def _handle(self, conn: socket.socket, index: int) -> None:
        try:
            conn.settimeout(10)
            _read_request(conn)
            self.handler(conn, index)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> "_RawServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        body += conn.recv(65536)
    return head


def _answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%b\r\n"
        % (status, len(body), extra)
        + body
    )


@pytest.mark.parametrize("where", ["head", "body"])
def test_deadline_holds_against_a_trickling_server(where: str) -> None:
    """A server sending one byte per second: every read succeeds, the call must still end."""

    def trickle(conn: socket.socket, index: int) -> None:
        body = json.dumps({"results": [{"cats": {}, "label": None, "score": None}]}).encode()
        data = _answer(200, body)
        if where == "body":
            head, _, rest = data.partition(b"\r\n\r\n")
            conn.sendall(head + b"\r\n\r\n")
            data = rest
        for byte in data:
            conn.sendall(bytes([byte]))
            time.sleep(1.0)

    with _RawServer(trickle) as server, Client(server.url, timeout=2.0, retries=2) as client:
        start = time.monotonic()
        with pytest.raises(ClientTimeoutError) as info:
            client.classify(["hello"])
        elapsed = time.monotonic() - start
    assert "within 2.0s" in str(info.value)
    assert 1.9 <= elapsed < 3.0, elapsed


def test_reset_connections_are_retried() -> None:
    def flaky(conn: socket.socket, index: int) -> None:
        if index < 2:
            # Half an answer, then a reset (RST): the request may not have completed.
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-le")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        conn.sendall(_answer(200, json.dumps({"status": "ok"}).encode()))

    with _RawServer(flaky) as server:
        with Client(server.url, timeout=5.0, retries=2, backoff=0.01) as client:
            assert client.health() == {"status": "ok"}
        assert server.connections == 3
    with _RawServer(lambda conn, index: None) as server:
        # Closed without an answer, every time: a connection error after the retries.
        with Client(server.url, timeout=5.0, retries=1, backoff=0.01) as client:
            with pytest.raises(ClientConnectionError) as info:
                client.health()
        assert "after 2 attempt(s)" in str(info.value)


@pytest.mark.parametrize(
    "call,body,message",
    [
        ("classify", b"{}", "no 'results' list"),
        ("classify", b'{"results": "x"}', "no 'results' list"),
        ("classify", b'{"results": []}', "expected 1 results, got 0"),
        ("classify", b'{"results": [5]}', "no 'cats' object"),
        ("classify", b"not json", "invalid JSON"),
        ("encode", b'{"vectors": null}', "no 'vectors' list"),
        ("encode", b'{"vectors": [1]}', "expected 1 vectors"),
        ("status", b"[]", "expected a JSON object"),
        ("health", b'"ok"', "expected a JSON object"),
    ],
)
def test_malformed_answers_raise_typed_errors(call: str, body: bytes, message: str) -> None:
    with _RawServer(lambda conn, index: conn.sendall(_answer(200, body))) as server:
        with Client(server.url, timeout=5.0) as client:
            method = getattr(client, call)
            with pytest.raises(ClientResponseError) as info:
                method(["x"]) if call in ("classify", "encode") else method()
    assert message in str(info.value) and info.value.status == 200


def test_retries_stop_at_the_deadline() -> None:
    answer = _answer(503, b'{"detail": "busy"}', b"retry-after: 0.4\r\n")
    with _RawServer(lambda conn, index: conn.sendall(answer)) as server:
        with Client(server.url, timeout=1.0, retries=50, backoff=0.4) as client:
            start = time.monotonic()
            with pytest.raises(ClientStatusError) as info:
                client.classify(["x"])
            elapsed = time.monotonic() - start
    assert info.value.status == 503 and "busy" in info.value.detail
    assert elapsed < 1.5 and 2 <= server.connections <= 4


def test_bad_arguments() -> None:
    for kwargs in ({"timeout": 0}, {"timeout": -1}, {"retries": -1}):
        with pytest.raises(ValueError):
            Client("http://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Client("127.0.0.1:8000")
