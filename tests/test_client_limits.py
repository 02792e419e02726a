"""The client against servers that misbehave: a redirect, an answer too large to buffer (issue #19)."""

import json
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

pytest.importorskip("httpx")

from spacy_distill.client import Client, ClientRedirectError, ClientResponseError, ClientStatusError  # noqa: E402

BIG = 8 * 2**20  # bytes the "huge" modes send; the client's limit in the tests is 1 MiB


class _Handler(BaseHTTPRequestHandler):
    """Answers every request the way ``server.mode`` says."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "redirect":
            self.send_response(307)
            self.send_header("location", "https://elsewhere.example/classify")
            self.send_header("content-length", "0")
            self.end_headers()
        elif mode == "declared":
            # Declares a huge body: the client must refuse before reading it.
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(BIG))
            self.end_headers()
            self.wfile.write(b"{" + b" " * 1024)
        elif mode == "undeclared":
            # No Content-Length (HTTP/1.0: the body ends when the connection closes).
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            chunk = b" " * 65536
            try:
                self.wfile.write(b'{"status": "')
                for _ in range(BIG // len(chunk)):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up reading: that is the point
        else:
            data = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    do_GET = _answer  # noqa: N815 - http.server API
    do_POST = _answer  # noqa: N815 - http.server API

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.mode = "ok"  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def test_a_redirect_is_a_typed_error_naming_where(server: ThreadingHTTPServer) -> None:
    # Issue #19: a 3xx reached the caller as "the server sent invalid JSON".
    server.mode = "redirect"  # type: ignore[attr-defined]
    with Client(_url(server), timeout=5, retries=0) as client:
        with pytest.raises(ClientRedirectError) as info:
            client.classify(["x"])
        assert client.ready() is False
    assert isinstance(info.value, ClientStatusError) and info.value.status == 307
    assert info.value.location == "https://elsewhere.example/classify"
    assert "redirected to https://elsewhere.example/classify" in str(info.value)
    assert "invalid JSON" not in str(info.value)


@pytest.mark.parametrize("mode", ["declared", "undeclared"])
def test_an_answer_over_the_limit_is_refused_unbuffered(server: ThreadingHTTPServer, mode: str) -> None:
    # Issue #19: the client buffered an answer of any size.
    server.mode = mode  # type: ignore[attr-defined]
    with Client(_url(server), timeout=10, retries=0, max_response_bytes=2**20) as client:
        tracemalloc.start()
        try:
            with pytest.raises(ClientResponseError) as info:
                client.health()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "max_response_bytes=1048576" in str(info.value)
    assert peak < BIG // 2, f"the client held {peak} bytes"
    server.mode = "ok"  # type: ignore[attr-defined]
    with Client(_url(server), timeout=5, retries=0, max_response_bytes=2**20) as client:
        assert client.health() == {"status": "ok"}
    with pytest.raises(ValueError, match="max_response_bytes"):
        Client(_url(server), max_response_bytes=0)
