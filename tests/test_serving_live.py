"""Tests against a real uvicorn on 127.0.0.1: dynamic batching, fuzzing, shutdown."""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import httpx  # noqa: E402
import spacy  # noqa: E402

from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.settings import ServeSettings  # noqa: E402

from .serving_harness import (  # noqa: E402
    LiveServer,
    free_port,
    save_test_pipeline,
    wait_until_ready,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> "tuple[Path, Path]":
    root = tmp_path_factory.mktemp("serving_live_models")
    return save_test_pipeline(root / "student"), save_test_pipeline(root / "bow", "bow")


@pytest.fixture(scope="module")
def live(model_dirs: "tuple[Path, Path]") -> Iterator[LiveServer]:
    settings = ServeSettings(
        max_texts=16,
        max_chars=300,
        max_body_bytes=20_000,
        max_batch_size=64,
        # Long enough that concurrent requests surely meet in one batch.
        batch_wait_ms=30,
    )
    app = create_app({"student": str(model_dirs[0]), "bow": str(model_dirs[1])}, settings)
    with LiveServer(app) as server:
        yield server


def test_concurrent_requests_are_batched_and_get_their_own_results(
    live: LiveServer, model_dirs: "tuple[Path, Path]"
) -> None:
    nlp = spacy.load(model_dirs[0])
    n_requests = 50
    requests_texts = [
        [
            f"review {i}: {'great' if i % 2 else 'awful'} product number {i}",
            f"another text {i * 7}",
        ][: 1 + i % 2]
        for i in range(n_requests)
    ]
    expected = [[nlp(text).cats for text in texts] for texts in requests_texts]
    before = httpx.get(f"{live.url}/status").json()["models"]["student"]["batching"]["batches"]
    barrier = threading.Barrier(n_requests, timeout=30)
    answers: Dict[int, Any] = {}

    def send(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            answers[i] = client.post(f"{live.url}/classify", json={"texts": requests_texts[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n_requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == n_requests
    for i in range(n_requests):
        response = answers[i]
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(requests_texts[i])
        for result, cats in zip(results, expected[i]):
            assert result["cats"] == pytest.approx(cats, abs=1e-5)
    stats = httpx.get(f"{live.url}/status").json()["models"]["student"]["batching"]
    assert stats["max_requests_per_batch"] > 1
    assert stats["batches"] - before < n_requests
    metrics = httpx.get(f"{live.url}/metrics").text
    assert 'spacy_distill_batch_requests_count{model="student"}' in metrics


def test_async_concurrency_encode(live: LiveServer) -> None:
    import asyncio

    async def main() -> List[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            calls = [
                client.post("/encode", json={"texts": ["x " * (i + 1)], "pooling": "mean"})
                for i in range(20)
            ]
            return await asyncio.wait_for(asyncio.gather(*calls), 60)

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    vectors = [r.json()["vectors"][0] for r in responses]
    assert len({tuple(v) for v in vectors}) > 1


FUZZ_TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def live_token(model_dirs: "tuple[Path, Path]") -> Iterator[LiveServer]:
    settings = ServeSettings(max_texts=16, max_chars=300, max_body_bytes=20_000, token=FUZZ_TOKEN)
    app = create_app({"student": str(model_dirs[0]), "bow": str(model_dirs[1])}, settings)
    with LiveServer(app) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["no token", "token"])
def test_fuzz_openapi_no_server_errors(request: pytest.FixtureRequest, auth: str) -> None:
    """Schemathesis (positive and negative cases from the OpenAPI schema) plus
    raw hypothesis bodies: at least 1,000 requests, none may get a 5xx; with
    and without a token (the schema declares Bearer auth only with one)."""
    schemathesis = pytest.importorskip("schemathesis")
    live: LiveServer = request.getfixturevalue("live" if auth == "no token" else "live_token")
    auth_headers = {"Authorization": f"Bearer {FUZZ_TOKEN}"} if auth == "token" else {}
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    counts: collections.Counter[int] = collections.Counter()
    failures: List[str] = []
    common = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    plan = [
        ("/classify", "POST", GenerationMode.POSITIVE, 250),
        ("/classify", "POST", GenerationMode.NEGATIVE, 200),
        ("/encode", "POST", GenerationMode.POSITIVE, 200),
        ("/encode", "POST", GenerationMode.NEGATIVE, 150),
        ("/status", "GET", GenerationMode.POSITIVE, 10),
        ("/metrics", "GET", GenerationMode.POSITIVE, 10),
        ("/health", "GET", GenerationMode.POSITIVE, 10),
        ("/ready", "GET", GenerationMode.POSITIVE, 10),
    ]

    def check(status: int, what: str) -> None:
        counts[status] += 1
        if status >= 500:
            failures.append(what)

    for path, method, mode, n in plan:
        operation = schema[path][method]

        @settings(max_examples=n, **common)
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(timeout=20, headers=auth_headers)
            check(
                response.status_code,
                f"{case.method} {case.path} {case.body!r:.300}: {response.text[:300]}",
            )

        run()

    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=50),
        lambda inner: (
            st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
        ),
        max_leaves=20,
    )
    bodies = st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({"texts": json_values}).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"texts": st.lists(st.text(max_size=400), max_size=20)},
            optional={
                "model": st.sampled_from(["student", "bow", "x"]),
                "pooling": st.text(max_size=5),
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
    with httpx.Client(base_url=live.url, timeout=20, headers=auth_headers) as client:

        @settings(max_examples=350, **common)
        @given(path=st.sampled_from(["/classify", "/encode"]), body=bodies, json_type=st.booleans())
        def run_raw(path: str, body: bytes, json_type: bool) -> None:
            headers = {"content-type": "application/json" if json_type else "text/plain"}
            response = client.post(path, content=body, headers=headers)
            check(response.status_code, f"POST {path} {body[:300]!r}: {response.text[:300]}")

        run_raw()

    total = sum(counts.values())
    print(f"fuzzed requests: {total}, status counts: {dict(sorted(counts.items()))}")
    assert not failures, failures[:5]
    assert total >= 1000, counts
    # The workers survived: the server still answers correctly.
    ok = httpx.post(
        f"{live.url}/classify", json={"texts": ["still alive"]}, timeout=10, headers=auth_headers
    )
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests(model_dirs: "tuple[Path, Path]") -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # A long batch wait keeps the request queued when SIGTERM arrives.
    cmd = [sys.executable, "-m", "spacy_distill.serving.cli", "serve", f"student={model_dirs[0]}",
           "--port", str(port), "--batch-wait-ms", "1500", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, timeout=60)
        result: Dict[str, Any] = {}

        def send() -> None:
            result["response"] = httpx.post(
                f"{url}/classify", json={"texts": ["in flight"]}, timeout=30
            )

        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result["response"].status_code == 200
        assert len(result["response"].json()["results"]) == 1
        # uvicorn re-raises the signal once its graceful shutdown is done.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
