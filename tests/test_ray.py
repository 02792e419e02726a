"""Ray: serving and teacher labelling on a real two-node Ray cluster on this machine.

The cluster (a head and a worker node, one logical CPU each, separate raylets
and ports) runs inside a private network namespace that has only loopback, so
nothing Ray binds is reachable from outside (Ray 2.60 cannot be kept on
loopback by its own flags: see ``tests/ray_harness.py``). It is stopped by
signalling its own processes, even when a test fails.
"""

import concurrent.futures
import contextlib
import importlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'spacy-distill[ray]')")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")
pytest.importorskip("fastapi", reason="the server needs fastapi")
import httpx  # noqa: E402
import numpy  # noqa: E402
import spacy  # noqa: E402
import srsly  # noqa: E402
from ray import serve  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402

from spacy_distill.io import Record  # noqa: E402
from spacy_distill.pipeline.teacher_scores import get_teacher_logits, get_teacher_probs  # noqa: E402
from spacy_distill.ray_connect import connect  # noqa: E402
from spacy_distill.serving.ray_serve import (  # noqa: E402
    APP_NAME,
    NODE_HEADER,
    REPLICA_HEADER,
    app_builder,
    serve_on_ray,
)
from spacy_distill.serving.settings import ServeSettings  # noqa: E402
from spacy_distill.teacher.label import label_records  # noqa: E402
from spacy_distill.teacher.ray_label import label_on_ray  # noqa: E402

from .ray_harness import (  # noqa: E402
    LocalRayCluster,
    NamespaceError,
    free_port,
    private_network_namespace,
)
from .serving_harness import TRAIN_DATA, save_test_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "ray-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_TEXTS = 8


def _texts(n: int) -> List[str]:
    """n distinct short review-like texts."""
    base = [text for text, _ in TRAIN_DATA]
    extra = ["really", "not", "quite", "so", "very", "somewhat", "truly"]
    return [f"{base[i % len(base)]} {extra[i % len(extra)]} #{i}" for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_test_pipeline(tmp_path_factory.mktemp("ray_model") / "student")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    """Head + worker node on loopback, this process connected as the driver."""
    with contextlib.ExitStack() as stack:
        try:
            netns = stack.enter_context(private_network_namespace())
        except NamespaceError as err:
            pytest.skip(f"cannot keep Ray on loopback without a private network namespace: {err}")
        # Short temp dir: Ray's Unix socket paths must stay under 107 bytes.
        node = LocalRayCluster(
            num_cpus=1, n_workers=1, temp_dir=f"/tmp/ray-sd-{os.getpid()}", netns=netns
        )
        stack.callback(node.stop)
        node.start()
        connect(node.address)
        stack.callback(ray.shutdown)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2, nodes
        # Every node is on loopback.
        assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
        yield node


@pytest.fixture(scope="module")
def api(cluster: LocalRayCluster, model_dir: Path) -> Iterator[str]:
    """The API on Ray Serve: 2 replicas, at most one per node."""
    settings = ServeSettings(max_texts=MAX_TEXTS, max_batch_size=16, batch_wait_ms=2.0, token=TOKEN)
    try:
        url = serve_on_ray(
            {"student": str(model_dir)},
            settings,
            address=cluster.address,
            replicas=2,
            host="127.0.0.1",
            port=free_port(),
            blocking=False,
            # Half a CPU each: leaves room on each node for a labelling actor.
            num_cpus_per_replica=0.5,
            max_replicas_per_node=1,
        )
        yield url
    finally:
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        with contextlib.suppress(Exception):
            serve.shutdown()


@pytest.fixture(scope="module")
def local_nlp(model_dir: Path) -> Any:
    return spacy.load(model_dir)


def _check_result(nlp: Any, texts: List[str], body: Dict[str, Any]) -> None:
    assert body["model"] == "student"
    assert len(body["results"]) == len(texts)
    for text, result in zip(texts, body["results"]):
        expected = nlp(text).cats
        assert set(result["cats"]) == set(expected)
        for label, value in expected.items():
            assert result["cats"][label] == pytest.approx(value, abs=1e-4)
        assert result["label"] == max(expected, key=lambda k: expected[k])


def test_same_api_auth_and_limits(api: str, local_nlp: Any) -> None:
    with httpx.Client(base_url=api, timeout=30.0) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["models"] == ["student"]
        texts = ["I love it", "It broke after a day"]
        assert client.post("/classify", json={"texts": texts}).status_code == 401
        bad = client.post("/classify", json={"texts": texts}, headers={"Authorization": "Bearer x"})
        assert bad.status_code == 401
        response = client.post("/classify", json={"texts": texts}, headers=AUTH)
        assert response.status_code == 200, response.text
        _check_result(local_nlp, texts, response.json())
        assert response.headers[REPLICA_HEADER] and response.headers[NODE_HEADER]
        too_many = client.post("/classify", json={"texts": ["a"] * (MAX_TEXTS + 1)}, headers=AUTH)
        assert too_many.status_code == 413
        assert "max_texts" in too_many.json()["detail"]
        typo = client.post("/classify", json={"text": ["a"]}, headers=AUTH)
        assert typo.status_code == 422
        encoded = client.post("/encode", json={"texts": texts}, headers=AUTH)
        assert encoded.status_code == 200
        assert len(encoded.json()["vectors"]) == 2
        status = client.get("/status", headers=AUTH).json()
        assert status["limits"]["max_texts"] == MAX_TEXTS and status["auth"] is True
        assert client.get("/metrics", headers=AUTH).status_code == 200


def test_requests_are_served_on_both_nodes(api: str, local_nlp: Any) -> None:
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    texts = _texts(60)
    seen: Dict[str, set] = {"nodes": set(), "replicas": set()}
    lock = threading.Lock()

    def one(i: int) -> None:
        batch = texts[i : i + 2]
        with httpx.Client(base_url=api, timeout=30.0) as client:
            response = client.post("/classify", json={"texts": batch}, headers=AUTH)
        assert response.status_code == 200, response.text
        _check_result(local_nlp, batch, response.json())
        with lock:
            seen["nodes"].add(response.headers[NODE_HEADER])
            seen["replicas"].add(response.headers[REPLICA_HEADER])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(0, 60, 2)))
    print(f"\nreplicas seen: {sorted(seen['replicas'])}; nodes seen: {len(seen['nodes'])}")
    assert len(seen["replicas"]) == 2
    assert seen["nodes"] == node_ids


def _replica_actor(unique_id: str) -> Any:
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"] if isinstance(entry, dict) else entry
        if name.startswith("SERVE_REPLICA::") and name.endswith(f"#{unique_id}"):
            return ray.get_actor(name, namespace=entry.get("namespace", "serve"))
    raise LookupError(f"no replica actor with id {unique_id}")


def _running_replicas() -> int:
    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def test_replica_killed_under_load_every_request_answered(api: str, local_nlp: Any) -> None:
    n_requests, n_threads, max_attempts = 200, 8, 8
    deadline = time.monotonic() + 150.0
    texts = _texts(n_requests + 2)
    counts = {"requests": 0, "failures": 0, "retries": 0, "answered": 0}
    replicas_after_kill: List[str] = []
    lock = threading.Lock()
    killed: Dict[str, Any] = {}
    failure_kinds: Dict[str, int] = {}
    half = threading.Event()

    def one(i: int) -> Tuple[int, str]:
        batch = texts[i : i + 1 + i % 2]
        with httpx.Client(base_url=api, timeout=30.0) as client:
            for attempt in range(max_attempts):
                if time.monotonic() > deadline:
                    raise TimeoutError("load run past its deadline")
                with lock:
                    counts["requests"] += 1
                    if attempt:
                        counts["retries"] += 1
                try:
                    response = client.post("/classify", json={"texts": batch}, headers=AUTH)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    _check_result(local_nlp, batch, response.json())
                    replica = response.headers[REPLICA_HEADER]
                    with lock:
                        counts["answered"] += 1
                        if counts["answered"] >= n_requests // 2:
                            half.set()
                        if "id" in killed:
                            replicas_after_kill.append(replica)
                    return i, replica
                with lock:
                    counts["failures"] += 1
                    status = "no response" if response is None else str(response.status_code)
                    failure_kinds[status] = failure_kinds.get(status, 0) + 1
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError(f"request {i} failed {max_attempts} times")

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        futures = [pool.submit(one, i) for i in range(n_requests)]
        assert half.wait(timeout=120.0), "the load run never got halfway"
        # Kill a replica that has been answering, halfway through the run.
        victim = next(f.result()[1] for f in futures if f.done())
        actor = _replica_actor(victim)
        with lock:
            killed["id"] = victim
            killed["answered"] = counts["answered"]
        ray.kill(actor, no_restart=True)
        results = [f.result(timeout=180.0) for f in futures]
    print(
        f"\nreplica kill under load: requests={n_requests} attempts={counts['requests']} "
        f"failures={counts['failures']} retries={counts['retries']} "
        f"answered={counts['answered']} killed={victim} after {killed['answered']} answers; "
        f"answers after the kill: {len(replicas_after_kill)}, "
        f"by replicas {sorted(set(replicas_after_kill))}; failed attempts: {failure_kinds}"
    )
    assert killed["answered"] < n_requests, "the replica was killed after the run"
    assert len(results) == n_requests and counts["answered"] == n_requests
    # Serve replaces the dead replica: two running replicas again, within bounds.
    wait_until = time.monotonic() + 120.0
    while _running_replicas() < 2 and time.monotonic() < wait_until:
        time.sleep(1.0)
    assert _running_replicas() == 2
    # And the new replica serves traffic.
    with httpx.Client(base_url=api, timeout=30.0) as client:
        ids = {
            client.post("/classify", json={"texts": ["fine"]}, headers=AUTH).headers[REPLICA_HEADER]
            for _ in range(20)
        }
    assert victim not in ids


def _read_docs(path: Path) -> List[Any]:
    vocab = spacy.blank("xx").vocab
    docs = []
    for file in sorted(path.glob("*.spacy")):
        docs.extend(DocBin().from_disk(file).get_docs(vocab))
    return docs


def test_labelling_on_cluster_equals_local(
    cluster: LocalRayCluster, model_dir: Path, tmp_path: Path
) -> None:
    texts = _texts(100)
    records = [
        Record(
            text=t,
            lang="en" if i % 3 else None,
            cats={"POSITIVE": float(i % 2), "NEGATIVE": float(1 - i % 2)} if i % 4 else {},
        )
        for i, t in enumerate(texts)
    ]
    local = tmp_path / "local"
    remote = tmp_path / "ray"
    local_stats = label_records(
        spacy.load(model_dir), iter(records), local, batch_size=8, shard_size=30, progress=False
    )
    ray_stats = label_on_ray(
        str(model_dir),
        iter(records),
        remote,
        address=cluster.address,
        num_workers=2,
        num_cpus_per_worker=0.5,
        batch_size=8,
        shard_size=30,
        chunk_size=16,
        progress=False,
    )
    assert (
        (ray_stats.n_docs, ray_stats.n_shards, ray_stats.n_tokens)
        == (
            local_stats.n_docs,
            local_stats.n_shards,
            local_stats.n_tokens,
        )
        == (100, 4, local_stats.n_tokens)
    )
    assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())
    local_docs, ray_docs = _read_docs(local), _read_docs(remote)
    assert len(local_docs) == len(ray_docs) == 100
    for i, (a, b) in enumerate(zip(local_docs, ray_docs)):
        assert a.text == b.text == texts[i]
        assert [t.text for t in a] == [t.text for t in b]
        assert [t.whitespace_ for t in a] == [t.whitespace_ for t in b]
        assert a.cats == b.cats
        assert a.user_data.get("lang") == b.user_data.get("lang")
        for get in (get_teacher_probs, get_teacher_logits):
            pa, pb = get(a), get(b)
            assert list(pa) == list(pb)
            numpy.testing.assert_allclose(list(pa.values()), list(pb.values()), atol=1e-5)
    same_bytes = all(
        (local / name).read_bytes() == (remote / name).read_bytes()
        for name in sorted(p.name for p in local.iterdir())
    )
    print(f"\nlabelling: 100 docs equal doc for doc; shards byte-identical: {same_bytes}")


def test_labelling_survives_a_killed_actor(
    cluster: LocalRayCluster, model_dir: Path, tmp_path: Path
) -> None:
    texts = _texts(120)
    killed: List[int] = []

    def records() -> Iterator[Record]:
        for i, text in enumerate(texts):
            if i == 60:
                # Kill a teacher actor's process while chunks are in flight.
                pids = [
                    pid
                    for pid in sorted(cluster.own_pids())
                    if _cmdline(pid).startswith("ray::TeacherActor")
                ]
                assert pids, "no teacher actor process found"
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            yield Record(text=text)

    local_stats = label_records(
        spacy.load(model_dir),
        (Record(text=t) for t in texts),
        tmp_path / "local.spacy",
        progress=False,
    )
    stats = label_on_ray(
        str(model_dir),
        records(),
        tmp_path / "ray.spacy",
        address=cluster.address,
        num_workers=2,
        num_cpus_per_worker=0.5,
        chunk_size=10,
        max_chunks_in_flight=4,
        progress=False,
    )
    assert killed
    assert stats.n_docs == local_stats.n_docs == 120
    vocab = spacy.blank("xx").vocab
    local_docs = list(DocBin().from_disk(tmp_path / "local.spacy").get_docs(vocab))
    ray_docs = list(DocBin().from_disk(tmp_path / "ray.spacy").get_docs(vocab))
    assert [d.text for d in ray_docs] == [d.text for d in local_docs] == texts
    for a, b in zip(local_docs, ray_docs):
        pa, pb = get_teacher_probs(a), get_teacher_probs(b)
        numpy.testing.assert_allclose(list(pa.values()), list(pb.values()), atol=1e-5)


def test_labelling_with_a_broken_teacher_fails_fast(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    no_textcat = tmp_path / "blank"
    spacy.blank("en").to_disk(no_textcat)
    start = time.monotonic()
    with pytest.raises(Exception, match="no text classifier"):
        label_on_ray(
            str(no_textcat),
            iter([Record(text="hello")]),
            tmp_path / "out.spacy",
            address=cluster.address,
            num_workers=1,
            num_cpus_per_worker=0.5,
            progress=False,
        )
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out.spacy").exists()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_serve_config_builds() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = srsly.read_yaml(REPO / "configs" / "serve_ray.yaml")
    schema = ServeDeploySchema.parse_obj(config)
    assert schema.http_options.host == "127.0.0.1"
    (app,) = schema.applications
    # The config names the builder where it lives.
    assert app.import_path == "spacy_distill.serving.ray_serve:app_builder"
    module, _, attr = app.import_path.partition(":")
    assert getattr(importlib.import_module(module), attr) is app_builder
    built = app_builder(dict(app.args))
    deployment = built._bound_deployment
    assert deployment.num_replicas == app.args["replicas"]
    with pytest.raises(ValueError, match="unknown args"):
        app_builder({"models": {"a": "b"}, "replica": 2})


def test_cli_label_on_ray_equals_local(cluster: LocalRayCluster, model_dir: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from spacy_distill.cli import app

    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"text": t, "lang": "en"}) for t in _texts(40)) + "\n")
    runner = CliRunner()
    local = runner.invoke(app, ["label", str(model_dir), str(inp), str(tmp_path / "local"), "--no-progress"])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(
        app,
        ["label", str(model_dir), str(inp), str(tmp_path / "ray"), "--no-progress", "--ray",
         "--address", cluster.address, "--workers", "2", "--cpus-per-worker", "0.5"],
    )
    assert remote.exit_code == 0, remote.output
    a, b = _read_docs(tmp_path / "local"), _read_docs(tmp_path / "ray")
    assert [d.text for d in a] == [d.text for d in b] and len(a) == 40
    for x, y in zip(a, b):
        assert get_teacher_probs(x) == pytest.approx(get_teacher_probs(y), abs=1e-5)
