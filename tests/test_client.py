"""The Python client against a live server, a silent socket and a flaky server."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from spacy_distill.client import Client, ClientConnectionError, ClientError, ClientTimeoutError  # noqa: E402
from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.settings import ServeSettings  # noqa: E402
from spacy_distill.serving.testing import LABELS, LiveServer, free_port, save_test_pipeline  # noqa: E402

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
        assert len(vectors) == 2 and len(vectors[0]) == 32
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
