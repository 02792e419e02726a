"""The cascade in the server: /classify answers with the `model` field per text,
the same as the offline Cascade; /metrics counts both models; a failing teacher
degrades to the student's answer with a flag (never a 5xx); bad settings are one-line errors."""

import json
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from spacy.language import Language  # noqa: E402

from spacy_distill.cascade import STUDENT, TEACHER, CascadeOptions, confidence  # noqa: E402
from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.cascade import (  # noqa: E402
    Cascade,  # noqa: E402
    check_cascade,
    cli_cascade,
)
from spacy_distill.serving.settings import ServeSettings  # noqa: E402

from .util import SOFT_DATA, STUDENT_BOW_CONFIG, blank_xx, soft_examples, train  # noqa: E402

TEXTS = [t for t, _ in SOFT_DATA] + [""]
# Broken by the failure test only: the server runs each model on a probe text when it loads it.
BROKEN = {"on": False}


@Language.component("test_cascade_serving_breakable")
def breakable(doc):
    if BROKEN["on"]:
        raise RuntimeError("teacher worker died")
    return doc


def _pipeline(n_iter: int, seed: int, breakable: bool = False) -> Language:
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=STUDENT_BOW_CONFIG)
    if breakable:
        nlp.add_pipe("test_cascade_serving_breakable")
    train(nlp, soft_examples(nlp), n_iter=n_iter, seed=seed)
    return nlp


@pytest.fixture(scope="module")
def pipelines() -> "tuple[Language, Language]":
    return _pipeline(3, 0), _pipeline(60, 1, breakable=True)


@pytest.fixture(scope="module")
def threshold(pipelines: "tuple[Language, Language]") -> float:
    student = pipelines[0]
    conf = sorted(confidence([[d.cats["NEGATIVE"], d.cats["POSITIVE"]] for d in student.pipe(TEXTS[:-1])]))
    return float(conf[len(conf) // 2])


@pytest.fixture(scope="module")
def client(pipelines: "tuple[Language, Language]", threshold: float) -> Iterator[TestClient]:
    student, teacher = pipelines
    settings = ServeSettings(load_in_background=False, inference="thread",
                             cascade={"teacher": "teacher", "threshold": threshold})
    with TestClient(create_app({"student": student, "teacher": teacher}, settings)) as c:
        yield c


def _metric(text: str, name: str) -> float:
    # One sample of the Prometheus text format, 0 when it was not exported yet.
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


def _classify(client: TestClient, **body: Any) -> Dict[str, Any]:
    r = client.post("/classify", json={"texts": TEXTS, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_server_answers_with_the_model_per_text_as_offline(client: TestClient, pipelines: Any, threshold: float) -> None:
    student, teacher = pipelines
    for body in ({}, {"model": "cascade"}):
        out = _classify(client, **body)
        assert out["model"] == "cascade"
        served: List[Dict[str, Any]] = out["results"]
        offline = Cascade(student, teacher, threshold=threshold)(TEXTS)
        assert [r["model"] for r in served] == [r["model"] for r in offline]
        assert {r["model"] for r in served} == {STUDENT, TEACHER}
        for s, o in zip(served, offline):
            assert s["cats"] == pytest.approx(o["cats"], abs=1e-6)
            assert s["label"] == o["label"]
            if o["confidence"] is None:
                assert s["confidence"] is None
            else:
                assert s["confidence"] == pytest.approx(o["confidence"], abs=1e-9)
            assert "teacher_failed" not in s
    # Each model stays servable alone, without the cascade's fields.
    alone = _classify(client, model="student")
    assert alone["model"] == "student" and all("model" not in r for r in alone["results"])


def test_metrics_count_both_models(client: TestClient) -> None:
    before = client.get("/metrics").text
    out = _classify(client)
    n_teacher = sum(r["model"] == TEACHER for r in out["results"])
    after = client.get("/metrics").text
    for model, n in ((STUDENT, len(TEXTS) - n_teacher), (TEACHER, n_teacher)):
        name = f'spacy_distill_cascade_texts_total{{model="{model}"}}'
        assert _metric(after, name) - _metric(before, name) == n
    # The teacher's worker saw only the deferred texts (the empty one never runs).
    name = 'spacy_distill_texts_total{model="teacher"}'
    assert 0 < _metric(after, name) - _metric(before, name) <= n_teacher


def test_teacher_failure_gives_the_students_answer_with_a_flag(client: TestClient, pipelines: Any) -> None:
    student = pipelines[0]
    BROKEN["on"] = True
    try:
        before = client.get("/metrics").text
        r = client.post("/classify", json={"texts": TEXTS[:-1]})
    finally:
        BROKEN["on"] = False
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    flagged = [res for res in results if res.get("teacher_failed")]
    assert flagged and all(res["model"] == STUDENT for res in results)
    for text, res in zip(TEXTS, results):
        assert res["cats"] == pytest.approx(student(text).cats, abs=1e-6)
    after = client.get("/metrics").text
    assert _metric(after, "spacy_distill_cascade_teacher_failures_total") - _metric(before, "spacy_distill_cascade_teacher_failures_total") == 1
    # The teacher works again on the next request.
    assert any(res["model"] == TEACHER for res in _classify(client)["results"])


@pytest.mark.parametrize(
    "cascade,message",
    [
        ({"teacher": "nope", "threshold": 0.9}, "teacher 'nope' is not a served model"),
        ({"teacher": "student", "threshold": 0.9}, "two different models"),
        ({"teacher": "teacher", "threshold": 0.9, "name": "student"}, "taken by a served model"),
        ({"teacher": "teacher", "threshold": "high"}, "must be numbers"),
        ({"teacher": "teacher", "threshold": 0.9, "temperature": 0}, "temperature must be > 0"),
        ({"teacher": "teacher", "threshold": 0.9, "treshold": 1}, "unknown settings"),
    ],
)
def test_bad_cascade_settings(cascade: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_cascade(cascade, ["student", "teacher"])


def test_cli_setting_reads_the_report_and_the_students_pipeline(pipelines: Any, tmp_path: Any) -> None:
    student = pipelines[0]
    student.to_disk(tmp_path / "student")
    report = tmp_path / "cascade.json"
    report.write_text(json.dumps({"temperature": 1.5, "default": "cascade_20", "rows": [
        {"name": "cascade_20", "budget": 0.2, "threshold": 0.77}]}))
    models = {"student": str(tmp_path / "student"), "teacher": str(tmp_path / "teacher")}
    assert cli_cascade(models, "teacher", CascadeOptions(cascade_report=report)) == {
        "student": "student", "teacher": "teacher", "threshold": 0.77, "temperature": 1.5, "name": "cascade"}
    assert cli_cascade(models, "teacher", CascadeOptions(threshold=0.6))["threshold"] == 0.6
    with pytest.raises(ValueError, match="not a served model"):
        cli_cascade(models, "big", CascadeOptions(threshold=0.6))
    # `serve --cascade`: a bad setting stops the start with one line, before any model loads.
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "spacy_distill.cli", "serve", f"student={tmp_path / 'student'}",
           f"teacher={tmp_path / 'student'}", "--cascade", "big", "--threshold", "0.5"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: cascade: teacher 'big' is not a served model")


def test_stuck_teacher_worker_process_degrades_to_the_student(pipelines: Any, tmp_path: Any) -> None:
    import os
    import signal
    import time

    from .serving_harness import save_test_pipeline

    pipelines[0].to_disk(tmp_path / "student")
    teacher_dir = save_test_pipeline(tmp_path / "teacher", "bow")
    # Each model in its own worker process (the default); everything deferred.
    settings = ServeSettings(load_in_background=False, request_timeout_s=2.0, cancel_grace_s=0.5,
                             cascade={"teacher": "teacher", "threshold": 1.01})
    app = create_app({"student": str(tmp_path / "student"), "teacher": str(teacher_dir)}, settings)
    with TestClient(app) as c:
        texts = TEXTS[:4]
        ok = c.post("/classify", json={"texts": texts}).json()["results"]
        assert [r["model"] for r in ok] == [TEACHER] * 4
        runtime = c.get("/status").json()["models"]["teacher"]["runtime"]
        pid = runtime["pid"]
        assert runtime["backend"] == "process" and pid != os.getpid()
        # A teacher worker that no longer answers: the request still gets 200 at its deadline.
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            r = c.post("/classify", json={"texts": texts})
            seconds = time.monotonic() - start
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert r.status_code == 200, r.text
        assert seconds < 10
        results = r.json()["results"]
        assert all(res["model"] == STUDENT and res["teacher_failed"] for res in results)
        student_alone = c.post("/classify", json={"texts": texts, "model": "student"}).json()["results"]
        assert [res["cats"] for res in results] == [res["cats"] for res in student_alone]
        # The stuck worker is replaced; the teacher answers again.
        deadline = time.monotonic() + 60
        while True:
            answers = c.post("/classify", json={"texts": texts}).json()["results"]
            if all(res["model"] == TEACHER for res in answers):
                break
            assert time.monotonic() < deadline, answers
            time.sleep(0.2)
