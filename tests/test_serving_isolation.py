"""Pathological requests against a real uvicorn on 127.0.0.1: the tokenizer cost
bound, inference in a worker process (the event loop stays free, timed-out
work stops, stuck or dead workers are replaced) and the batcher's low-load path.
"""

import os
import random
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import httpx  # noqa: E402
import spacy  # noqa: E402

from spacy_distill.pipeline.lstm_numba import use_numba  # noqa: E402
from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.settings import ServeSettings  # noqa: E402
from spacy_distill.serving.textguard import MAX_DENSE_SYMBOLS, bound_tokenizer_cost  # noqa: E402

from .serving_harness import LiveServer, save_test_pipeline  # noqa: E402

MAX_CHARS = 10_000
# Texts that cost spaCy's tokenizer seconds without the bound (measured: "$" x
# 10,000 took 20 s, "A$" x 5,000 7 s): runs of symbols or emoji, and runs of
# short affixes that contain letters.
PATHOLOGICAL = {
    "dollars": "$" * MAX_CHARS,
    "emoji": "\U0001f600" * MAX_CHARS,
    "bangs": "!" * MAX_CHARS,
    "A$": "A$" * (MAX_CHARS // 2),
    "US$": "US$" * (MAX_CHARS // 3),
    "'s": "'s" * (MAX_CHARS // 2),
    "smileys": ":)" * (MAX_CHARS // 2),
    "quotes": "\"'" * (MAX_CHARS // 2),
    "cjk marks": "\u3002" * MAX_CHARS,
}


def _random_dense(seed: int) -> str:
    rng = random.Random(seed)
    units = ["$", ")", "(", '"', "'s", "A$", ":(", "\u3002", "\uff09", "=", "\u00a7", "\u00bf", "_"]
    pool = rng.sample(units, 3) + ["a"]
    text = "".join(rng.choice(pool) for _ in range(MAX_CHARS))
    return text[:MAX_CHARS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_test_pipeline(tmp_path_factory.mktemp("isolation_model") / "student")


def _tokenize_seconds(nlp: Any, text: str, repeats: int = 3) -> float:
    """The fastest of a few runs: one run can be held up by the machine (a 0.65 s outlier
    was seen once under CI), while an unbounded tokenizer takes seconds every time."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        nlp.make_doc(bound_tokenizer_cost(text))
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("lang", ["en", "xx"])
def test_tokenizer_cost_is_bounded(lang: str) -> None:
    nlp = spacy.blank(lang)
    texts = dict(PATHOLOGICAL, **{f"random{i}": _random_dense(i) for i in range(5)})
    times = {name: _tokenize_seconds(nlp, text) for name, text in texts.items()}
    worst = max(times, key=times.__getitem__)
    print(f"{lang}: worst {worst!r} {times[worst] * 1000:.1f} ms")
    # ~100 ms is the design bound (measured ≤ 56 ms on a busy 2-core machine);
    # the margin is for slower CI machines. Unbounded, these take seconds.
    assert times[worst] < 0.3, times


def test_bound_keeps_normal_text_and_every_character() -> None:
    normal = [
        "Great blender, works perfectly!!! Would buy again :)",
        "Das Produkt ist super... sehr zu empfehlen!!!",
        "\u3068\u3066\u3082\u826f\u3044\u5546\u54c1\u3067\u3059\u3002\u307e\u305f\u8cb7\u3044\u307e\u3059\u3002",
        "Price: US$ 20 (C$ 27) -- it's the user's choice; e-mail me@example.com",
        "https://example.com/a/b?c=d&e=f#g " * 20,
        "!" * MAX_DENSE_SYMBOLS,
    ]
    for text in normal:
        assert bound_tokenizer_cost(text) is text
    for text in PATHOLOGICAL.values():
        bounded = bound_tokenizer_cost(text)
        assert bounded != text
        # Only spaces are added.
        assert bounded.replace(" ", "") == text.replace(" ", "")
    assert bound_tokenizer_cost("!" * (MAX_DENSE_SYMBOLS + 1)) == "!" * MAX_DENSE_SYMBOLS + " !"


def _percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_pathological_request_neither_blocks_nor_outlives_its_timeout(model_dir: Path) -> None:
    # Token budgets far above the defaults: this request must run past its timeout.
    settings = ServeSettings(
        request_timeout_s=2.0,
        max_chars=MAX_CHARS,
        max_tokens_per_text=2 * MAX_CHARS,
        max_tokens_per_request=10_000_000,
    )
    app = create_app({"student": str(model_dir)}, settings)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        result: Dict[str, Any] = {}

        def slow() -> None:
            with httpx.Client(base_url=live.url, timeout=30) as other:
                start = time.monotonic()
                # 128 texts of 10,000 symbols: ~7 s of work for this model.
                response = other.post("/classify", json={"texts": ["$" * MAX_CHARS] * 128})
                result["status"] = response.status_code
                result["detail"] = response.json().get("detail")
                result["seconds"] = time.monotonic() - start

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        health: List[float] = []
        metrics: List[float] = []
        while thread.is_alive():
            start = time.perf_counter()
            assert client.get("/health").status_code == 200
            health.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert client.get("/metrics").status_code == 200
            metrics.append(time.perf_counter() - start)
            time.sleep(0.02)
        thread.join()
        # Right after the 503, the worker must be free again: the rest of the
        # request's work was dropped, not run to the end.
        start = time.perf_counter()
        after = client.post("/classify", json={"texts": ["fine product"]})
        after_seconds = time.perf_counter() - start
        status = client.get("/status").json()["models"]["student"]
    print(
        f"/health p50 {statistics.median(health) * 1000:.1f} ms, max {max(health) * 1000:.1f} ms "
        f"({len(health)} calls); /metrics max {max(metrics) * 1000:.1f} ms; 503 after "
        f"{result['seconds']:.2f} s; next request {after_seconds * 1000:.0f} ms"
    )
    assert result["status"] == 503 and "request_timeout_s=2.0" in result["detail"]
    assert 1.9 <= result["seconds"] < 2.8
    assert len(health) >= 10
    assert _percentile(health, 0.95) < 0.1 and _percentile(metrics, 0.95) < 0.1
    assert max(health) < 0.5 and max(metrics) < 0.5
    assert after.status_code == 200 and after_seconds < 1.0
    assert status["batching"]["expired_requests"] >= 1
    assert status["runtime"]["backend"] == "process"


@pytest.fixture(scope="module")
def live(model_dir: Path) -> Iterator[LiveServer]:
    settings = ServeSettings(request_timeout_s=1.0, cancel_grace_s=0.5, batch_wait_ms=200.0)
    with LiveServer(create_app({"student": str(model_dir)}, settings)) as server:
        yield server


def _runtime(url: str) -> Dict[str, Any]:
    return httpx.get(f"{url}/status", timeout=10).json()["models"]["student"]["runtime"]


def _wait_for_restart(url: str, restarts: int, timeout: float = 60.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        runtime = _runtime(url)
        if runtime["restarts"] >= restarts and runtime.get("pid") is not None:
            return runtime
        assert time.monotonic() < deadline, runtime
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_worker_process_is_lean(live: LiveServer) -> None:
    runtime = _runtime(live.url)
    assert runtime["backend"] == "process" and runtime["pid"] != os.getpid()
    # A torch-free pipeline is served without torch, scikit-learn or scipy, but for
    # numba's own import of scipy when the LSTM runs numba's kernel (numba checks for
    # scipy's BLAS when it compiles; the worker's RSS grows by ~100 MB with numba).
    assert runtime["torch_blocked"] is True
    assert runtime["heavy_modules"] == (["scipy"] if use_numba() else [])
    assert runtime["rss_mb"] is None or runtime["rss_mb"] < 400


def test_lone_requests_do_not_wait_for_a_batch(live: LiveServer) -> None:
    # batch_wait_ms=200: a request alone must not wait for others that never come.
    with httpx.Client(base_url=live.url, timeout=10) as client:
        client.post("/classify", json={"texts": ["warm up"]})
        seconds = []
        for i in range(10):
            start = time.perf_counter()
            assert client.post("/classify", json={"texts": [f"review {i}"]}).status_code == 200
            seconds.append(time.perf_counter() - start)
    assert statistics.median(seconds) < 0.1, seconds
    # Concurrent requests still share batches.
    n = 8
    barrier = threading.Barrier(n, timeout=30)
    codes: List[int] = []

    def send(i: int) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            barrier.wait()
            codes.append(client.post("/classify", json={"texts": [f"text {i}"]}).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [200] * n
    stats = httpx.get(f"{live.url}/status").json()["models"]["student"]["batching"]
    assert stats["max_requests_per_batch"] > 1


def test_stuck_worker_is_killed_and_replaced(live: LiveServer) -> None:
    before = _runtime(live.url)
    pid = before["pid"]
    # A worker that no longer answers (stopped here; in life, stuck in one long call).
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        response = httpx.post(f"{live.url}/classify", json={"texts": ["hello"]}, timeout=30)
        seconds = time.monotonic() - start
        assert response.status_code == 503 and 0.9 <= seconds < 1.6
        after = _wait_for_restart(live.url, before["restarts"] + 1)
        assert after["pid"] != pid
        # The kill is counted apart from other restarts, in /status and /metrics.
        assert after["kills"] == before["kills"] + 1
        metrics = httpx.get(f"{live.url}/metrics", timeout=10).text
        assert f'spacy_distill_worker_kills{{model="student"}} {float(after["kills"])}' in metrics
        assert f'spacy_distill_worker_restarts{{model="student"}} {float(after["restarts"])}' in metrics
        # Killed at the last deadline plus cancel_grace_s, and reaped.
        deadline = time.monotonic() + 10
        while not _gone(pid):
            assert time.monotonic() < deadline, f"process {pid} still exists"
            time.sleep(0.05)
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGCONT)
    ok = httpx.post(f"{live.url}/classify", json={"texts": ["hello again"]}, timeout=30)
    assert ok.status_code == 200


@pytest.fixture(scope="module")
def live_patient(model_dir: Path) -> Iterator[LiveServer]:
    # Room for a worker restart inside one request's deadline, however busy the
    # machine: starting a worker imports spaCy and loads the pipeline (1-5 s).
    settings = ServeSettings(request_timeout_s=60.0, cancel_grace_s=0.5)
    with LiveServer(create_app({"student": str(model_dir)}, settings)) as server:
        yield server


def test_dead_worker_is_replaced(live_patient: LiveServer) -> None:
    live = live_patient
    before = _runtime(live.url)
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(before["pid"]):
        # Reaped by the server only when it next uses the worker; a zombie is gone enough.
        with open(f"/proc/{before['pid']}/stat", encoding="ascii") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The request that finds the worker dead is not failed: a new one is started first.
    response = httpx.post(f"{live.url}/classify", json={"texts": ["still works"]}, timeout=60)
    assert response.status_code == 200
    after = _runtime(live.url)
    assert after["restarts"] == before["restarts"] + 1 and after["pid"] != before["pid"]
    # Died, not killed: only the restart is counted.
    assert after["kills"] == before["kills"]


def test_thread_mode_still_serves(model_dir: Path) -> None:
    settings = ServeSettings(inference="thread")
    with LiveServer(create_app({"student": str(model_dir)}, settings)) as server:
        response = httpx.post(f"{server.url}/classify", json={"texts": ["$" * 2000]}, timeout=30)
        assert response.status_code == 200
        runtime = _runtime(server.url)
        assert runtime["backend"] == "thread" and runtime["restarts"] == runtime["kills"] == 0
        runtime = _runtime(server.url)
    assert runtime["backend"] == "thread" and runtime["pid"] == os.getpid()


def _mapped_files(pid: int) -> str:
    with open(f"/proc/{pid}/maps", encoding="utf8", errors="replace") as f:
        return f.read()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_cli_server_process_imports_no_torch(model_dir: Path, tmp_path: Path) -> None:
    # `spacy-distill serve` with worker processes: the HTTP process parses and
    # batches only, so neither it nor a torch-free student's worker maps torch,
    # scikit-learn or scipy (thinc would import torch whenever it can).
    import subprocess
    import sys

    from .serving_harness import free_port, wait_until_ready

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spacy_distill.cli", "serve", f"student={model_dir}", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, timeout=120)
        assert httpx.post(f"{url}/classify", json={"texts": ["fine"]}, timeout=30).status_code == 200
        worker = httpx.get(f"{url}/status", timeout=10).json()["models"]["student"]["runtime"]["pid"]
        for pid in (proc.pid, worker):
            maps = _mapped_files(pid)
            # scipy in the worker only through numba (see test_worker_process_is_lean).
            scipy = () if pid == worker and use_numba() else ("/scipy/",)
            for library in ("/torch/", "/sklearn/") + scipy:
                assert library not in maps, (pid, library)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
