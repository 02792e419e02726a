"""The student→teacher cascade: the decision on tables of probabilities, threshold
choice, the Python API over real pipelines (teacher failure included), the offline
`classify --cascade` command, and the workflow's report script."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from spacy.language import Language

from spacy_distill.cascade import (
    STUDENT,
    TEACHER,
    Cascade,
    cascade_throughput,
    confidence,
    defer,
    evaluate_budget,
    macro_f,
    threshold_for_share,
)

from .util import SOFT_DATA, STUDENT_BOW_CONFIG, blank_xx, soft_examples, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "probs,temperature,expected",
    [
        ([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]], 1.0, [0.8, 0.5, 0.9]),
        # T = 2 on two classes: p' = sqrt(p) / (sqrt(p) + sqrt(1 - p)).
        ([[0.2, 0.8]], 2.0, [math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2))]),
        # T < 1 sharpens: 0.8 -> 0.8^2 / (0.8^2 + 0.2^2).
        ([[0.2, 0.8]], 0.5, [0.64 / (0.64 + 0.04)]),
        ([[0.5, 0.5]], 3.0, [0.5]),
        ([[0.1, 0.2, 0.7]], 1.0, [0.7]),
    ],
)
def test_confidence(probs, temperature, expected):
    assert confidence(probs, temperature) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "conf,threshold,expected",
    [
        ([0.9, 0.6, 0.51, 0.7], 0.7, [False, True, True, False]),
        ([0.9, 0.6], 0.0, [False, False]),
        ([0.9, 1.0], 1.01, [True, True]),
        ([], 0.5, []),
    ],
)
def test_defer(conf, threshold, expected):
    assert list(defer(conf, threshold)) == expected


@pytest.mark.parametrize(
    "conf,share,n_deferred",
    [
        ([0.9, 0.6, 0.51, 0.7, 0.8], 0.4, 2),
        ([0.9, 0.6, 0.51, 0.7, 0.8], 0.0, 0),
        ([0.9, 0.6, 0.51, 0.7, 0.8], 1.0, 5),
        ([0.9, 0.6, 0.51, 0.7, 0.8], 0.5, 2),
        # Ties at the cut stay with the student: the budget is never exceeded.
        ([0.6, 0.6, 0.6, 0.9], 0.5, 0),
        ([0.5, 0.6, 0.6, 0.9], 0.5, 1),
    ],
)
def test_threshold_for_share(conf, share, n_deferred):
    threshold = threshold_for_share(conf, share)
    assert int(defer(conf, threshold).sum()) == n_deferred


def test_calibrated_and_raw_probabilities_rank_alike_but_give_other_thresholds():
    rng = numpy.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, size=200)
    probs = numpy.stack([1 - p, p], axis=1)
    raw, scaled = confidence(probs, 1.0), confidence(probs, 1.6)
    # A temperature is monotone: the same texts are deferred for a share...
    assert numpy.array_equal(numpy.argsort(raw, kind="stable"), numpy.argsort(scaled, kind="stable"))
    assert numpy.array_equal(defer(raw, threshold_for_share(raw, 0.3)), defer(scaled, threshold_for_share(scaled, 0.3)))
    # ... but an absolute threshold means another share once calibrated (T > 1 flattens).
    assert defer(scaled, 0.8).mean() > defer(raw, 0.8).mean()


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        confidence([[0.5, 0.5]], 0.0)
    with pytest.raises(ValueError, match="2 class"):
        confidence([0.5, 0.5])
    with pytest.raises(ValueError, match="share"):
        threshold_for_share([0.5], 1.5)


def test_throughput_and_macro_f():
    assert cascade_throughput(1000.0, 10.0, 0.0) == pytest.approx(1000.0)
    assert cascade_throughput(1000.0, 10.0, 1.0) == pytest.approx(1 / (0.001 + 0.1))
    assert cascade_throughput(1000.0, 10.0, 0.2) == pytest.approx(1 / (0.001 + 0.02))
    assert macro_f(["A", "A", "B", "B"], ["A", "B", "B", "B"]) == pytest.approx(100 * (2 / 3 + 0.8) / 2)


def rows(lang, golds, pos):
    return [{"lang": lang, "gold": g, "cats": {"NEGATIVE": 1 - p, "POSITIVE": p}} for g, p in zip(golds, pos)]


def test_evaluate_budget_exact():
    golds = ["POSITIVE", "NEGATIVE", "POSITIVE", "NEGATIVE"]
    student = rows("en", golds, [0.9, 0.55, 0.4, 0.2])  # wrong on docs 1 and 2 (both unsure)
    teacher = rows("en", golds, [0.8, 0.1, 0.7, 0.3])  # right on all
    alone = evaluate_budget(student, teacher, 0.0, 1.0, ["en"])
    assert alone["deferred"] == 0.0 and alone["mean"] == pytest.approx(macro_f(golds, ["POSITIVE", "POSITIVE", "NEGATIVE", "NEGATIVE"]))
    both = evaluate_budget(student, teacher, 0.7, 1.0, ["en"])
    assert both["deferred"] == 0.5 and both["mean"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="different docs"):
        evaluate_budget(student, rows("de", golds, [0.5] * 4), 0.5, 1.0, ["en"])


@pytest.fixture(scope="module")
def pipelines():
    student = blank_xx()
    student.add_pipe("distill_textcat", config=STUDENT_BOW_CONFIG)
    train(student, soft_examples(student), n_iter=3)
    teacher = blank_xx()
    teacher.add_pipe("distill_textcat", config=STUDENT_BOW_CONFIG)
    train(teacher, soft_examples(teacher), n_iter=60, seed=1)
    return student, teacher


@Language.component("test_cascade_broken")
def broken(doc):
    raise RuntimeError("teacher worker died")


def test_cascade_api_defers_the_unsure_texts(pipelines):
    student, teacher = pipelines
    texts = [t for t, _ in SOFT_DATA]
    conf = confidence([[d.cats["NEGATIVE"], d.cats["POSITIVE"]] for d in student.pipe(texts)])
    threshold = float(numpy.median(conf))
    results = Cascade(student, teacher, threshold=threshold)(texts)
    for text, c, r in zip(texts, conf, results):
        assert r.confidence == pytest.approx(c)
        if c < threshold:
            assert r.model == TEACHER and r.cats == pytest.approx(teacher(text).cats)
        else:
            assert r.model == STUDENT and r.cats == pytest.approx(student(text).cats)
    assert {r.model for r in results} == {STUDENT, TEACHER}
    assert all(r.model == STUDENT for r in Cascade(student, teacher, threshold=0.0)(texts))
    assert all(r.model == TEACHER for r in Cascade(student, teacher, threshold=1.01)(texts))


def test_teacher_failure_degrades_to_the_student_with_a_flag(pipelines):
    student, teacher = pipelines
    failing = blank_xx()
    failing.add_pipe("test_cascade_broken")
    texts = [t for t, _ in SOFT_DATA[:4]]
    results = Cascade(student, failing, threshold=1.01)(texts)
    assert all(r.model == STUDENT and r.teacher_failed for r in results)
    assert [r.cats for r in results] == [student(t).cats for t in texts]


def test_offline_classify_cascade_matches_the_api(pipelines, tmp_path):
    student, teacher = pipelines
    student.to_disk(tmp_path / "student")
    teacher.to_disk(tmp_path / "teacher")
    texts = [t for t, _ in SOFT_DATA]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf8")
    conf = confidence([[d.cats["NEGATIVE"], d.cats["POSITIVE"]] for d in student.pipe(texts)])
    threshold = float(numpy.median(conf))
    cmd = [
        sys.executable, "-m", "spacy_distill.cli", "classify", str(tmp_path / "student"), str(tmp_path / "in.txt"),
        "-o", str(tmp_path / "out.jsonl"), "--cascade", str(tmp_path / "teacher"), "--threshold", repr(threshold),
        "--no-progress",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    offline = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf8").splitlines()]
    api = Cascade(student, teacher, threshold=threshold)(texts)
    assert [r["model"] for r in offline] == [r.model for r in api]
    for o, a in zip(offline, api):
        assert o["cats"] == pytest.approx(a.cats, abs=1e-6)


def test_cascade_script_on_synthetic_predictions(tmp_path):
    rng = numpy.random.default_rng(0)
    pred = tmp_path / "predictions"
    pred.mkdir()
    for split, n in (("dev", 40), ("test", 60)):
        golds = ["POSITIVE" if i % 2 else "NEGATIVE" for i in range(n)]
        langs = ["de" if i < n // 2 else "en" for i in range(n)]
        for name, noise in (("student", 0.45), ("teacher", 0.2)):
            with (pred / f"{name}.{split}.jsonl").open("w") as f:
                for g, lang in zip(golds, langs):
                    p = float(numpy.clip((0.8 if g == "POSITIVE" else 0.2) + rng.normal(0, noise), 0.01, 0.99))
                    f.write(json.dumps({"lang": lang, "gold": g, "cats": {"NEGATIVE": 1 - p, "POSITIVE": p}}) + "\n")
    results = {"systems": {
        "student": {"speed": {"batch": {"docs_per_s": 1000.0}}, "calibration": {"temperature": 1.5}},
        "teacher": {"speed": {"batch": {"docs_per_s": 10.0}}, "calibration": {}},
    }}
    (tmp_path / "results.json").write_text(json.dumps(results))
    cmd = [
        sys.executable, str(ROOT / "scripts" / "cascade.py"), str(pred), str(tmp_path / "results.json"),
        str(tmp_path / "cascade"), "--config", str(ROOT / "configs" / "cascade.cfg"), "--cascade.langs", "de,en",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads((tmp_path / "cascade.json").read_text())
    names = [r["name"] for r in out["rows"]]
    assert names == ["student", "cascade_5", "cascade_10", "cascade_20", "cascade_30", "cascade_50", "teacher"]
    by = {r["name"]: r for r in out["rows"]}
    assert by["student"]["deferred"] == 0.0 and by["teacher"]["deferred"] == 1.0
    assert by["teacher"]["docs_per_s"] == pytest.approx(1 / (1 / 1000 + 1 / 10))
    # Dev budgets carry over to test roughly; cost grows with the share.
    speeds = [r["docs_per_s"] for r in out["rows"]]
    assert speeds == sorted(speeds, reverse=True)
    assert "| cascade_30 | 30 % |" in (tmp_path / "cascade.md").read_text()
    assert (tmp_path / "cascade.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (pred / "student.dev.jsonl").write_text('{"lang": "de"}\n')
    # A wide terminal, so typer's error box does not wrap the path.
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    assert bad.returncode != 0 and "student.dev.jsonl:1" in bad.stderr
