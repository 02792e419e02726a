"""The student→teacher cascade: the decision on tables of probabilities, threshold
choice, the Python API over real pipelines (teacher failure included), the offline
`classify --cascade` command, and the workflow's report script."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from spacy.language import Language

from spacy_distill.cascade import (
    DEFAULT_THRESHOLD,
    STUDENT,
    TEACHER,
    cascade_throughput,
    confidence,
    count_models,
    defer,
    evaluate_budget,
    macro_f,
    merge,
    plan,
    resolve_settings,
    resolve_temperature,
    threshold_for_share,
    threshold_from_report,
)
from spacy_distill.serving.cascade import Cascade

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


# The failing teacher works until a test breaks it: the server runs every model
# once on a probe text when it loads it.
BROKEN = {"on": False}


@Language.component("test_cascade_breakable")
def breakable(doc):
    if BROKEN["on"]:
        raise RuntimeError("teacher worker died")
    return doc


@pytest.fixture()
def failing_teacher(pipelines):
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=STUDENT_BOW_CONFIG)
    nlp.add_pipe("test_cascade_breakable")
    train(nlp, soft_examples(nlp), n_iter=2)
    yield nlp
    BROKEN["on"] = False


def median_threshold(student, texts):
    conf = confidence([[d.cats["NEGATIVE"], d.cats["POSITIVE"]] for d in student.pipe(texts)])
    return conf, float(numpy.median(conf))


def test_plan_and_merge_exact():
    results = [
        {"cats": {"NEGATIVE": 0.2, "POSITIVE": 0.8}, "label": "POSITIVE", "score": 0.8},
        {"cats": {"NEGATIVE": 0.6, "POSITIVE": 0.4}, "label": "NEGATIVE", "score": 0.6},
        {"cats": {}, "label": None, "score": None},  # no tokens: never deferred
        {"cats": {"NEGATIVE": 0.05, "POSITIVE": 0.95}, "label": "POSITIVE", "score": 0.95},
    ]
    conf, deferred = plan(results, 0.7)
    assert conf == pytest.approx([0.8, 0.6, None, 0.95]) and deferred == [1]
    assert plan(results, 0.9)[1] == [0, 1] and plan(results, 0.0)[1] == []
    # T = 2 flattens 0.8 to 2/3 < 0.7: the calibrated decision defers it too.
    assert plan(results, 0.7, temperature=2.0)[1] == [0, 1]
    teacher = [{"cats": {"NEGATIVE": 0.1, "POSITIVE": 0.9}, "label": "POSITIVE", "score": 0.9}]
    merged = merge(results, conf, deferred, teacher)
    assert [m["model"] for m in merged] == [STUDENT, TEACHER, STUDENT, STUDENT]
    assert merged[1] == {**teacher[0], "model": TEACHER, "confidence": 0.6}
    assert merged[0] == {**results[0], "model": STUDENT, "confidence": 0.8}
    failed = merge(results, conf, deferred, None)
    assert failed[1] == {**results[1], "model": STUDENT, "confidence": 0.6, "teacher_failed": True}
    assert "teacher_failed" not in failed[0]
    assert count_models(failed) == {STUDENT: 4, TEACHER: 0, "teacher_failed": 1}
    with pytest.raises(ValueError, match="1 texts deferred but 0"):
        merge(results, conf, deferred, [])


def test_settings_from_calibration_file_and_report(tmp_path):
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"scale": 0.5, "bias": {}, "exclusive_classes": True}))
    assert resolve_temperature(["distill_textcat"], calibration=cal) == 2.0
    assert resolve_temperature(["distill_textcat"], temperature=1.5, calibration=cal) == 1.5
    assert resolve_temperature(["distill_textcat", "distill_calibration"]) == 1.0
    with pytest.raises(ValueError, match="twice"):
        resolve_temperature(["distill_textcat", "distill_calibration"], calibration=cal)
    cal.write_text(json.dumps({"scale": 0.5, "bias": {"POSITIVE": 0.1}, "exclusive_classes": True}))
    with pytest.raises(ValueError, match="biases"):
        resolve_temperature([], calibration=cal)
    report = tmp_path / "cascade.json"
    report.write_text(json.dumps({"temperature": 1.6, "default": "cascade_30", "rows": [
        {"name": "student", "budget": 0.0, "threshold": 0.0},
        {"name": "cascade_10", "budget": 0.1, "threshold": 0.71},
        {"name": "cascade_30", "budget": 0.3, "threshold": 0.83},
        {"name": "teacher", "budget": 1.0, "threshold": 2.0},
    ]}))
    assert resolve_settings([]) == (DEFAULT_THRESHOLD, 1.0)
    assert resolve_settings([], threshold=0.5, temperature=3.0) == (0.5, 3.0)
    assert resolve_settings([], report=report) == (0.83, 1.6)
    assert resolve_settings([], report=report, defer_share=0.1) == (0.71, 1.6)
    # A student that calibrates itself is on its own scale; a given temperature wins.
    assert resolve_settings(["distill_calibration"], report=report) == (0.83, 1.0)
    assert resolve_settings([], report=report, temperature=1.2) == (0.83, 1.2)
    with pytest.raises(ValueError, match="share of 0.2 .*0.1, 0.3"):
        resolve_settings([], report=report, defer_share=0.2)
    with pytest.raises(ValueError, match="needs the cascade report"):
        resolve_settings([], defer_share=0.1)
    with pytest.raises(ValueError, match="not both"):
        resolve_settings([], threshold=0.5, defer_share=0.1, report=report)
    with pytest.raises(ValueError, match="not a cascade report"):
        resolve_settings([], report=cal)


def test_cascade_api_defers_the_unsure_texts(pipelines):
    student, teacher = pipelines
    texts = [t for t, _ in SOFT_DATA] + [""]
    conf, threshold = median_threshold(student, texts[:-1])
    results = Cascade(student, teacher, threshold=threshold)(texts)
    for text, c, r in zip(texts, conf, results):
        assert r["confidence"] == pytest.approx(c)
        if c < threshold:
            assert r["model"] == TEACHER and r["cats"] == pytest.approx(teacher(text).cats)
        else:
            assert r["model"] == STUDENT and r["cats"] == pytest.approx(student(text).cats)
        assert r["label"] == max(r["cats"], key=r["cats"].get)
    assert {r["model"] for r in results} == {STUDENT, TEACHER}
    # No model runs on a text without tokens: the one that answers gives its answer for an empty doc.
    empty = results[-1]
    assert empty["cats"] == pytest.approx((teacher if empty["model"] == TEACHER else student)("").cats)
    assert all(r["model"] == STUDENT for r in Cascade(student, teacher, threshold=0.0)(texts))
    assert all(r["model"] == TEACHER for r in Cascade(student, teacher, threshold=1.01)(texts[:-1]))


def test_teacher_failure_degrades_to_the_student_with_a_flag(pipelines, failing_teacher):
    student, _teacher = pipelines
    BROKEN["on"] = True
    texts = [t for t, _ in SOFT_DATA[:4]]
    results = Cascade(student, failing_teacher, threshold=1.01)(texts)
    assert all(r["model"] == STUDENT and r["teacher_failed"] for r in results)
    assert [r["cats"] for r in results] == [student(t).cats for t in texts]


def test_offline_classify_cascade_matches_the_api(pipelines, tmp_path):
    student, teacher = pipelines
    student.to_disk(tmp_path / "student")
    teacher.to_disk(tmp_path / "teacher")
    texts = [t for t, _ in SOFT_DATA]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf8")
    _conf, threshold = median_threshold(student, texts)
    import typer
    from typer.testing import CliRunner

    from spacy_distill.serving import cli as serving_cli

    # In process (the command's own code, without a second interpreter start).
    app = typer.Typer()
    serving_cli.register(app)
    cmd = [
        "classify", str(tmp_path / "student"), str(tmp_path / "in.txt"),
        "-o", str(tmp_path / "out.jsonl"), "--cascade", str(tmp_path / "teacher"), "--threshold", repr(threshold),
        "--no-progress",
    ]
    result = CliRunner().invoke(app, cmd)
    assert result.exit_code == 0, result.output[-2000:]
    offline = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf8").splitlines()]
    api = Cascade(student, teacher, threshold=threshold)(texts)
    assert [r["model"] for r in offline] == [r["model"] for r in api]
    for o, a in zip(offline, api):
        assert o["cats"] == pytest.approx(a["cats"], abs=1e-6)
        assert o["confidence"] == pytest.approx(a["confidence"], abs=1e-9)
    no_threshold = cmd[: cmd.index("--threshold")]
    bad = CliRunner().invoke(app, no_threshold + ["--defer-share", "0.3", "--overwrite", "--no-progress"])
    assert bad.exit_code == 1 and "error: cascade: a deferral share needs the cascade report" in bad.output


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
    md = (tmp_path / "cascade.md").read_text()
    assert "| cascade_30 | 30 % |" in md and "Default (`default_budget`): cascade_30" in md
    # The report is what serve/classify read: the same thresholds, on the same temperature.
    assert threshold_from_report(tmp_path / "cascade.json", 0.3) == (by["cascade_30"]["threshold"], 1.5)
    assert threshold_from_report(tmp_path / "cascade.json") == (by["cascade_30"]["threshold"], 1.5)
    # A dev threshold defers the budget's share of dev itself (40 docs, 20 %: 8).
    dev = [json.loads(line) for line in (pred / "student.dev.jsonl").read_text().splitlines()]
    assert len(plan(dev, by["cascade_20"]["threshold"], 1.5)[1]) == 8
    assert (tmp_path / "cascade.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Bad inputs, in process: the script's main under typer, as spacy_distill.project.run builds it.
    import typer
    from typer.testing import CliRunner

    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("cascade_script", ROOT / "scripts" / "cascade.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(script.main)
    # A wide terminal, so typer's error box does not wrap the path.
    env = {"COLUMNS": "400"}
    (tmp_path / "results.json").write_text(json.dumps({"systems": {"student": {}, "teacher": {}}}))
    bad = CliRunner().invoke(app, cmd[2:], env=env)
    assert bad.exit_code != 0 and "no batched speed" in bad.output
    (tmp_path / "results.json").write_text(json.dumps(results))
    (pred / "student.dev.jsonl").write_text('{"lang": "de"}\n')
    bad = CliRunner().invoke(app, cmd[2:], env=env)
    assert bad.exit_code != 0 and "student.dev.jsonl:1" in bad.output


def test_cascade_options_are_the_commands_options():
    """CascadeOptions names the options of `classify --cascade` and `serve --cascade`
    (the commands hand them over by name) and resolves as resolve_settings does."""
    import dataclasses

    import typer

    from spacy_distill.cascade import CascadeOptions
    from spacy_distill.cli import app

    names = {f.name for f in dataclasses.fields(CascadeOptions)}
    commands = typer.main.get_command(app).commands
    for command in ("serve", "classify"):
        assert names <= {p.name for p in commands[command].params}, command
    options = {"threshold": 0.4, "temperature": 2.0, "max_texts": 3}
    assert CascadeOptions.pop_from(options).resolve([]) == resolve_settings([], threshold=0.4, temperature=2.0) == (0.4, 2.0)
    assert options == {"max_texts": 3}
