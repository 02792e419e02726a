"""Ray scale-out on this machine: serving throughput (local server, Ray Serve with
1 and 2 replicas) and teacher labelling rate (local, Ray with 1 and 2 actors),
on the same texts in one run so the ratios hold.

    python benchmarks/bench_ray.py --texts ../shared/data/marc/en/test.csv \
        [--model PATH] [--teacher PATH] -o metrics/bench_ray.json

The Ray cluster is two nodes (head + worker, one logical CPU each) started with
``ray start`` inside a private network namespace that has only loopback (see
``tests/ray_harness.py``): needs root. Without --model the served model is
an untrained ``distill_textcat`` student (same architecture and speed as a
trained one); without --teacher the teacher is MiniLM-L6 with a fresh textcat
head (from ``bench_student.py``). Every load loop is bounded in requests and time.
"""

import concurrent.futures
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import typer

# This folder (bench_student) and the repository (the tests' harnesses, below).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_student import minilm_teacher, read_texts, untrained_student  # noqa: E402

from spacy_distill.io import Record  # noqa: E402
from spacy_distill.ray_connect import connect  # noqa: E402
from spacy_distill.serving.settings import ServeSettings  # noqa: E402
from spacy_distill.teacher.label import label_records  # noqa: E402

# The loopback Ray cluster and the live server are the tests' harnesses: one copy
# for the tests and this benchmark, outside the plugin.
from tests.ray_harness import LocalRayCluster, free_port, private_network_namespace  # noqa: E402
from tests.serving_harness import LiveServer  # noqa: E402


def load_run(
    url: str,
    texts: List[str],
    n_requests: int,
    texts_per_request: int,
    concurrency: int,
    deadline_s: float,
) -> Dict[str, Any]:
    """POST /classify n_requests times from ``concurrency`` threads, bounded in time.

    url (str): Base URL.
    texts (List[str]): Texts, used round-robin.
    n_requests (int): Requests to send.
    texts_per_request (int): Texts per request.
    concurrency (int): Client threads.
    deadline_s (float): Longest the run may take; unsent requests are dropped.
    RETURNS (Dict[str, Any]): Requests ok/failed, seconds, texts/s, replicas seen.
    """
    import httpx

    stop_at = time.monotonic() + deadline_s
    bodies = [
        {
            "texts": [
                texts[(i * texts_per_request + j) % len(texts)] for j in range(texts_per_request)
            ]
        }
        for i in range(n_requests)
    ]

    def worker(k: int) -> Dict[str, Any]:
        ok = failed = 0
        replicas = set()
        with httpx.Client(base_url=url, timeout=60.0) as client:
            for body in bodies[k::concurrency]:
                if time.monotonic() > stop_at:
                    break
                try:
                    response = client.post("/classify", json=body)
                except httpx.HTTPError:
                    failed += 1
                    continue
                if response.status_code == 200:
                    ok += 1
                    replicas.add(response.headers.get("x-replica", "local"))
                else:
                    failed += 1
        return {"ok": ok, "failed": failed, "replicas": replicas}

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(worker, range(concurrency)))
    seconds = time.perf_counter() - start
    ok = sum(p["ok"] for p in parts)
    return {
        "requests_ok": ok,
        "requests_failed": sum(p["failed"] for p in parts),
        "seconds": round(seconds, 2),
        "requests_per_s": round(ok / seconds, 1),
        "texts_per_s": round(ok * texts_per_request / seconds, 1),
        "replicas_seen": len(set().union(*(p["replicas"] for p in parts))),
    }


def bench_serving(
    model: Path,
    texts: List[str],
    cluster: LocalRayCluster,
    n_requests: int,
    texts_per_request: int,
    concurrency: int,
    deadline_s: float,
) -> Dict[str, Dict[str, Any]]:
    """Local uvicorn server, then Ray Serve with 1 and 2 replicas."""
    from ray import serve

    from spacy_distill.serving.app import create_app
    from spacy_distill.serving.ray_serve import APP_NAME, serve_on_ray

    settings = ServeSettings(max_batch_size=32, batch_wait_ms=5.0, max_texts=64)
    results: Dict[str, Dict[str, Any]] = {}
    args = (texts, n_requests, texts_per_request, concurrency, deadline_s)
    with LiveServer(create_app({"student": str(model)}, settings)) as server:
        load_run(server.url, texts, 20, texts_per_request, 4, 60.0)  # warm-up
        results["local server (1 process)"] = load_run(server.url, *args)
    port = free_port()
    try:
        for replicas in (1, 2):
            url = serve_on_ray(
                {"student": str(model)},
                settings,
                address=cluster.address,
                replicas=replicas,
                port=port,
                blocking=False,
                num_cpus_per_replica=1.0,
                max_replicas_per_node=1,
            )
            load_run(url, texts, 20, texts_per_request, 4, 60.0)  # warm-up
            results[f"Ray Serve, {replicas} replica(s)"] = load_run(url, *args)
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
    return results


def bench_labelling(
    teacher: Path, texts: List[str], cluster: LocalRayCluster, workdir: Path, chunk_size: int
) -> Dict[str, Dict[str, Any]]:
    """Local ``label_records`` against ``label_on_ray`` with 1 and 2 actors."""
    from spacy_distill.teacher.ray_label import label_on_ray

    records = [Record(text=t) for t in texts]
    results: Dict[str, Dict[str, Any]] = {}
    start = time.perf_counter()
    nlp = spacy.load(teacher)
    stats = label_records(nlp, iter(records), workdir / "local", progress=False)
    seconds = time.perf_counter() - start
    results["local (1 process)"] = {"docs": stats.n_docs, "seconds": round(seconds, 2)}
    del nlp
    for workers in (1, 2):
        stats = label_on_ray(
            str(teacher),
            iter(records),
            workdir / f"ray{workers}",
            address=cluster.address,
            num_workers=workers,
            num_cpus_per_worker=1,
            chunk_size=chunk_size,
            progress=False,
        )
        results[f"Ray, {workers} actor(s)"] = {
            "docs": stats.n_docs,
            "seconds": round(stats.seconds, 2),
        }
    for r in results.values():
        r["docs_per_s"] = round(r["docs"] / r["seconds"], 1)
    return results


def table(title: str, rows: Dict[str, Dict[str, Any]], columns: List[str]) -> str:
    lines = [f"| {title} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def main(
    texts_path: Path = typer.Option(..., "--texts", help="CSV with a 'text' column, or .txt"),
    n: int = typer.Option(1000, "--n", help="Texts for the serving runs"),
    model: Optional[Path] = typer.Option(None, "--model", help="Pipeline to serve"),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher to label with"),
    requests: int = typer.Option(1500, "--requests", help="Requests per serving run"),
    texts_per_request: int = typer.Option(8, "--texts-per-request"),
    concurrency: int = typer.Option(16, "--concurrency", help="Client threads"),
    label_n: int = typer.Option(1200, "--label-n", help="Texts for the labelling runs"),
    chunk_size: int = typer.Option(64, "--chunk-size", help="Records per Ray labelling chunk"),
    deadline: float = typer.Option(240.0, "--deadline", help="Longest one load run may take (s)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write results as JSON"),
) -> None:
    """Throughput of 1 vs 2 Ray Serve replicas and labelling rate local vs Ray."""
    import ray

    texts = read_texts(texts_path, max(n, label_n))
    report: Dict[str, Any] = {"texts": str(texts_path), "n": n, "label_n": label_n}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp, private_network_namespace() as ns:
        workdir = Path(tmp)
        if model is None:
            model = workdir / "student"
            untrained_student(texts).to_disk(model)
        if teacher is None:
            teacher = workdir / "teacher"
            minilm_teacher(texts).to_disk(teacher)
        cluster = LocalRayCluster(num_cpus=1, n_workers=1, netns=ns)
        try:
            cluster.start()
            connect(cluster.address)
            report["serving"] = bench_serving(
                model, texts[:n], cluster, requests, texts_per_request, concurrency, deadline
            )
            report["labelling"] = bench_labelling(
                teacher, texts[:label_n], cluster, workdir, chunk_size
            )
        finally:
            ray.shutdown()
            cluster.stop()
    report["setup"] = {
        "cluster": "2 Ray nodes (head + worker) on one machine, 1 logical CPU each",
        "requests": requests,
        "texts_per_request": texts_per_request,
        "concurrency": concurrency,
    }
    typer.echo(json.dumps(report, indent=2))
    typer.echo(
        "\n"
        + table(
            "serving",
            report["serving"],
            [
                "requests_ok",
                "requests_failed",
                "seconds",
                "requests_per_s",
                "texts_per_s",
                "replicas_seen",
            ],
        )
    )
    typer.echo("\n" + table("labelling", report["labelling"], ["docs", "seconds", "docs_per_s"]))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
