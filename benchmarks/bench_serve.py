"""Benchmark ``spacy-distill serve``: throughput and latency over HTTP.

Starts the server as a subprocess on 127.0.0.1 with every model given, then
drives it from this process with a bounded async httpx client, for each model,
client batch size and concurrency in turn (the same server and texts for all
models, so ratios between models hold). Writes a markdown table and JSON.

    python benchmarks/bench_serve.py \\
        --model student=training/student/model-best --model teacher=training/teacher/model-best \\
        --texts /work/shared/data/marc/en/test.csv --output benchmarks/results/serve.json
"""

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
import numpy
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spacy_distill.io import read_records  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _ints(value: str) -> List[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: "subprocess.Popen[bytes]", timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout}s")


async def _run_config(
    url: str,
    model: str,
    texts: List[str],
    batch: int,
    concurrency: int,
    n_requests: int,
    max_seconds: float,
) -> Dict[str, Any]:
    """Send up to ``n_requests`` requests of ``batch`` texts, ``concurrency`` at a time."""
    latencies: List[float] = []
    errors = 0
    n_texts = 0
    next_index = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        # Warm up the connections and the model.
        for _ in range(2):
            await client.post("/classify", json={"texts": texts[:batch], "model": model})

        async def worker() -> None:
            nonlocal next_index, errors, n_texts
            while next_index < n_requests and time.perf_counter() < deadline:
                start_at = (next_index * batch) % len(texts)
                next_index += 1
                chunk = (texts[start_at:] + texts[:start_at])[:batch]
                t0 = time.perf_counter()
                try:
                    response = await client.post("/classify", json={"texts": chunk, "model": model})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    n_texts += len(chunk)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = numpy.asarray(latencies or [0.0]) * 1000.0
    return {
        "model": model,
        "batch": batch,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "texts": n_texts,
        "seconds": wall,
        "texts_per_s": n_texts / wall if wall > 0 else 0.0,
        "p50_ms": float(numpy.percentile(ms, 50)),
        "p95_ms": float(numpy.percentile(ms, 95)),
        "p99_ms": float(numpy.percentile(ms, 99)),
    }


def _rss_mb(pid: Optional[int]) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, TypeError, ValueError):
        pass
    return None


def _memory(server_pid: int, status: Dict[str, Any]) -> Dict[str, Any]:
    """Resident memory of the server process and of each model's worker process."""
    workers = {}
    for name, model in status["models"].items():
        runtime = model.get("runtime") or {}
        if runtime.get("pid") not in (None, server_pid):
            workers[name] = {
                "rss_mb": _rss_mb(runtime["pid"]),
                "heavy_modules": runtime.get("heavy_modules"),
            }
    return {"server_rss_mb": _rss_mb(server_pid), "worker_processes": workers}


def _markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    first = meta["models"][0]
    base = {(r["batch"], r["concurrency"]): r["texts_per_s"] for r in rows if r["model"] == first}
    lines = [
        f"Texts: {meta['texts_file']} ({meta['n_texts']} texts, mean {meta['mean_chars']:.0f} chars); "
        f"server: max_batch_size={meta['max_batch_size']}, batch_wait_ms={meta['batch_wait_ms']}, "
        f"inference={meta.get('inference', 'thread')}; RSS: server {meta.get('server_rss_mb')} MB"
        + "".join(
            f", {n} worker {w['rss_mb']} MB" for n, w in meta.get("worker_processes", {}).items()
        )
        + "; "
        f"{meta['cpu_count']} CPUs, Python {meta['python']}.",
        "",
        f"| model | client batch | concurrency | requests | errors | texts/s | vs {first} | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = base.get((r["batch"], r["concurrency"])) or 0.0
        ratio = f"{r['texts_per_s'] / ref:.2f}x" if ref else "-"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['texts_per_s']:.1f} | {ratio} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


@app.command()
def main(
    model: List[str] = typer.Option(
        ..., "--model", help="NAME=PATH or a package/path; repeat to compare models."
    ),
    texts: Path = typer.Option(
        ..., "--texts", help=".txt, .jsonl or .csv (a 'text' column) with the texts."
    ),
    output: Path = typer.Option(
        Path("bench_serve.json"),
        "--output",
        "-o",
        help="JSON output; the table goes next to it as .md.",
    ),
    n_texts: int = typer.Option(2000, "--n-texts", help="Use at most this many texts."),
    batch_sizes: str = typer.Option(
        "1,32", "--batch-sizes", help="Client batch sizes (texts per request)."
    ),
    concurrency: str = typer.Option(
        "1,4,16", "--concurrency", help="Concurrent requests in flight."
    ),
    requests: int = typer.Option(200, "--requests", help="Most requests per configuration."),
    max_seconds: float = typer.Option(
        20.0, "--max-seconds", help="Most seconds per configuration."
    ),
    max_batch_size: int = typer.Option(
        32, "--max-batch-size", help="Server: most texts per nlp.pipe batch."
    ),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="Server: batch wait."),
    max_chars: int = typer.Option(
        10_000, "--max-chars", help="Server: texts longer than this are cut."
    ),
    startup_timeout: float = typer.Option(
        300.0, "--startup-timeout", help="Seconds to wait for the models to load."
    ),
    inference: str = typer.Option(
        "process", "--inference", help="Server: 'process' (worker process per model) or 'thread'."
    ),
) -> None:
    """Measure serving throughput and latency for one or more models."""
    records = []
    for record in read_records(texts):
        records.append(record.text[:max_chars])
        if len(records) >= n_texts:
            break
    if not records:
        raise typer.BadParameter(f"no texts in {texts}")
    batches, concurrencies = _ints(batch_sizes), _ints(concurrency)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "spacy_distill.serving.cli", "serve", *model,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-batch-size", str(max_batch_size), "--batch-wait-ms", str(batch_wait_ms),
        "--max-texts", str(max(batches)), "--max-chars", str(max_chars),
        "--max-body-bytes", str(max(2_000_000, 8 * max_chars * max(batches))),
        "--log-level", "warning", "--inference", inference,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SPACY_DISTILL_TOKEN", None)
    # The server runs in the caller's folder, so model paths relative to it work.
    proc = subprocess.Popen(cmd, env=env)
    rows: List[Dict[str, Any]] = []
    try:
        _wait_ready(url, proc, startup_timeout)
        status = httpx.get(f"{url}/status", timeout=10).json()
        names = list(status["models"])
        memory = _memory(proc.pid, status)
        for name in names:
            for batch in batches:
                for conc in concurrencies:
                    row = asyncio.run(
                        _run_config(url, name, records, batch, conc, requests, max_seconds)
                    )
                    rows.append(row)
                    typer.echo(
                        f"{name:>16} batch={batch:<3} conc={conc:<3} {row['texts_per_s']:8.1f} texts/s  "
                        f"p50={row['p50_ms']:.1f} p95={row['p95_ms']:.1f} p99={row['p99_ms']:.1f} ms",
                        err=True,
                    )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    meta: Dict[str, Any] = {
        "models": names,
        "model_specs": list(model),
        "model_versions": {n: status["models"][n].get("version") for n in names},
        "texts_file": str(texts),
        "n_texts": len(records),
        "mean_chars": float(numpy.mean([len(t) for t in records])),
        "max_batch_size": max_batch_size,
        "batch_wait_ms": batch_wait_ms,
        "inference": inference,
        **memory,
        "requests_per_config": requests,
        "max_seconds_per_config": max_seconds,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    table = _markdown(rows, meta)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2) + "\n", encoding="utf-8"
    )
    md_path: Optional[Path] = output.with_suffix(".md")
    md_path.write_text(table, encoding="utf-8")
    typer.echo(table)
    typer.echo(f"wrote {output} and {md_path}", err=True)


if __name__ == "__main__":
    app()
