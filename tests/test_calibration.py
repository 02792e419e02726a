"""Calibration: the ECE table, the ``distill_calibration`` component, ``spacy-distill
calibrate-pipeline``, loading a calibrated pipeline in a fresh process, and serving it."""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy
import pytest
import spacy
import srsly
from typer.testing import CliRunner

from spacy_distill.cli import app
from spacy_distill.evaluation.calibration import expected_calibration_error, reliability
from spacy_distill.pipeline.calibration import CalibratedCats, calibrate_probs
from spacy_distill.teacher.calibrate import Calibration
from spacy_distill.teacher.label import probs_to_logits

from .serving_harness import build_test_pipeline

TEXTS = ["I love this blender", "Terrible, it broke", "Fast delivery", "Awful quality", "ok"]
SCALE = 3.0
BIAS = {"NEGATIVE": -0.25, "POSITIVE": 0.25}


# --- ECE --------------------------------------------------------------------


def test_ece_hand_computed():
    probs = [[0.95, 0.05], [0.04, 0.96], [0.3, 0.7], [0.62, 0.38], [0.52, 0.48]]
    gold = [0, 0, 1, 1, 0]
    # Confidences .95 (right) and .96 (wrong) share bin 14 (14/15, 1]: |.5 − .955| · 2/5;
    # .7 (right) is in bin 10: |1 − .7| / 5; .62 (wrong) in bin 9: .62 / 5;
    # .52 (right) in bin 7: .48 / 5. Sum: .182 + .06 + .124 + .096 = .462.
    rel = reliability(probs, gold)
    assert rel.ece == pytest.approx(0.462, abs=1e-12)
    assert expected_calibration_error(probs, gold) == pytest.approx(0.462, abs=1e-12)
    assert (rel.n, rel.accuracy, rel.confidence) == (5, pytest.approx(0.6), pytest.approx(0.75))
    assert len(rel.bins) == 15
    full = {i: (b.count, b.confidence, b.accuracy) for i, b in enumerate(rel.bins) if b.count}
    assert full == {
        7: (1, pytest.approx(0.52), 1.0),
        9: (1, pytest.approx(0.62), 0.0),
        10: (1, pytest.approx(0.7), 1.0),
        14: (2, pytest.approx(0.955), 0.5),
    }
    # Empty bins are reported, without a confidence or accuracy.
    assert all(b.confidence is None and b.accuracy is None for i, b in enumerate(rel.bins) if i not in full)
    assert (rel.bins[0].lower, rel.bins[0].upper, rel.bins[14].upper) == (0.0, pytest.approx(1 / 15), 1.0)
    assert rel.to_dict()["bins"][14] == {"lower": 14 / 15, "upper": 1.0, "count": 2, "confidence": pytest.approx(0.955), "accuracy": 0.5}


def test_ece_bin_edges():
    # Confidence k/15 closes bin k − 1; 0.0 falls into the first bin, 1.0 into the last.
    probs = [[k / 15, 0.0] for k in range(16)]
    rel = reliability(probs, [0] * 16)
    assert [b.count for b in rel.bins] == [2] + [1] * 14
    assert rel.bins[0].confidence == pytest.approx(1 / 30)
    # All correct: bin 0 is off by 1 − 1/30 (2 docs), bin k − 1 by 1 − k/15; the sum is 8/16.
    assert rel.ece == pytest.approx(0.5, abs=1e-12)
    # Exactly representable edges (4 bins): right-closed.
    rel4 = reliability([[0.25, 0.0], [0.5, 0.0], [0.75, 0.0], [1.0, 0.0]], [0, 0, 0, 0], n_bins=4)
    assert [b.count for b in rel4.bins] == [1, 1, 1, 1]
    # All predictions at confidence 1.0, half of them right: ECE = 1 − accuracy.
    assert expected_calibration_error([[1.0, 0.0]] * 4, [0, 1, 0, 1]) == 0.5


def test_ece_perfectly_calibrated_is_zero():
    probs = [[0.75, 0.25]] * 4
    assert expected_calibration_error(probs, [0, 0, 0, 1]) == 0.0


@pytest.mark.parametrize(
    "probs,gold,n_bins,match",
    [
        ([], [], 15, "at least one doc"),
        (numpy.zeros((0, 2)), [], 15, "at least one doc"),
        ([[0.5, 0.5]], [0, 1], 15, "one class index per doc"),
        ([[0.5, 0.5]], [2], 15, "within"),
        ([[0.5, 0.5]], [0.0], 15, "one class index per doc"),
        ([[float("nan"), 0.5]], [0], 15, "finite"),
        ([[1.5, -0.5]], [0], 15, "within \\[0, 1\\]"),
        ([[0.5, 0.5]], [0], 0, "n_bins"),
    ],
)
def test_ece_bad_input(probs, gold, n_bins, match):
    with pytest.raises(ValueError, match=match):
        reliability(probs, gold, n_bins)


@pytest.mark.parametrize("exclusive", [True, False])
def test_calibrate_probs_matches_label_calibration(exclusive):
    # The component computes what `spacy-distill label --calibration` does to the teacher.
    rows = [[0.7, 0.3], [0.1, 0.9], [1.0, 0.0], [0.5, 0.5]]
    calibration = Calibration(scale=SCALE, bias=dict(BIAS), exclusive_classes=exclusive)
    got = calibrate_probs(rows, SCALE, [BIAS["NEGATIVE"], BIAS["POSITIVE"]], exclusive)
    for row, out in zip(rows, got):
        expected, _ = calibration.apply(probs_to_logits({"NEGATIVE": row[0], "POSITIVE": row[1]}, exclusive))
        assert out.tolist() == pytest.approx([expected["NEGATIVE"], expected["POSITIVE"]], abs=1e-15)


# --- the component ------------------------------------------------------------


def make_doc(nlp, text, cats):
    doc = nlp.make_doc(text)
    doc.cats = dict(cats)
    return doc


def test_component_exclusive_values():
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("distill_calibration", config={"scale": 2.0, "labels": ["NEGATIVE", "POSITIVE"]})
    assert isinstance(pipe, CalibratedCats) and pipe.labels == ("NEGATIVE", "POSITIVE")
    assert nlp.config["components"]["distill_calibration"]["scale"] == 2.0
    doc = pipe(make_doc(nlp, "good", {"POSITIVE": 0.8, "NEGATIVE": 0.2, "OTHER": 0.3}))
    # softmax(2 · log p) = p² / Σ p²: .64 / .68 and .04 / .68; other labels untouched.
    assert doc.cats["POSITIVE"] == pytest.approx(0.64 / 0.68, abs=1e-12)
    assert doc.cats["NEGATIVE"] == pytest.approx(0.04 / 0.68, abs=1e-12)
    assert doc.cats["OTHER"] == 0.3
    # A bias moves the odds by e^bias: (.64 e^.5) / (.64 e^.5 + .04).
    biased = spacy.blank("en").add_pipe("distill_calibration", config={"scale": 2.0, "bias": {"POSITIVE": 0.5}})
    doc = biased(make_doc(nlp, "good", {"POSITIVE": 0.8, "NEGATIVE": 0.2}))
    e = math.exp(0.5)
    assert doc.cats["POSITIVE"] == pytest.approx(0.64 * e / (0.64 * e + 0.04), abs=1e-12)


def test_component_multilabel_log_odds():
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("distill_calibration", config={"scale": 2.0, "bias": {"B": 1.0}, "exclusive_classes": False})
    doc = pipe(make_doc(nlp, "x", {"A": 0.8, "B": 0.5}))
    # sigmoid(2 · log 4) = 16 / 17; sigmoid(2 · 0 + 1).
    assert doc.cats["A"] == pytest.approx(16 / 17, abs=1e-12)
    assert doc.cats["B"] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-12)


def test_component_guards_and_pipe_equals_call():
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("distill_calibration", config={"scale": 1.7, "bias": BIAS, "labels": ["NEGATIVE", "POSITIVE"]})
    empty = make_doc(nlp, "", {"POSITIVE": 0.0, "NEGATIVE": 0.0})
    assert pipe(empty).cats == {"POSITIVE": 0.0, "NEGATIVE": 0.0}
    assert pipe(nlp.make_doc("no cats")).cats == {}
    assert pipe(make_doc(nlp, "other", {"OTHER": 0.4})).cats == {"OTHER": 0.4}
    with pytest.raises(ValueError, match="lacks labels \\['NEGATIVE'\\]"):
        pipe(make_doc(nlp, "partial", {"POSITIVE": 0.4}))
    cats = [{"POSITIVE": p, "NEGATIVE": 1 - p} for p in (0.01, 0.3, 0.5, 0.77, 0.999)]
    one = [pipe(make_doc(nlp, "a b", c)).cats for c in cats]
    batched = [d.cats for d in pipe.pipe((make_doc(nlp, "a b", c) for c in cats), batch_size=2)]
    assert one == batched
    assert one[2]["POSITIVE"] != 0.5


@pytest.mark.parametrize(
    "config,match",
    [
        ({"scale": 0.0}, "scale must be"),
        ({"scale": -1.0}, "scale must be"),
        ({"bias": {"X": 1.0}, "labels": ["A", "B"]}, "not among its labels"),
    ],
)
def test_component_bad_config(config, match):
    with pytest.raises(ValueError, match=match):
        spacy.blank("en").add_pipe("distill_calibration", config=config)


def test_component_refuses_non_finite_parameters():
    # spaCy's config cannot hold them; a caller of the class could pass them.
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="scale must be"):
        CalibratedCats(nlp, scale=float("nan"))
    with pytest.raises(ValueError, match="every bias must be finite"):
        CalibratedCats(nlp, bias={"A": float("inf")})


def test_component_serialization(tmp_path):
    nlp = spacy.blank("en")
    params = {"scale": 2.5, "bias": {"POSITIVE": 0.1, "NEGATIVE": 0.0}, "exclusive_classes": True, "labels": ["NEGATIVE", "POSITIVE"]}
    pipe = nlp.add_pipe("distill_calibration", config=params)
    pipe.to_disk(tmp_path / "cal")
    assert srsly.read_json(tmp_path / "cal" / "cfg") == params
    fresh = spacy.blank("en").add_pipe("distill_calibration")
    assert fresh.from_disk(tmp_path / "cal").cfg == params
    assert spacy.blank("en").add_pipe("distill_calibration").from_bytes(pipe.to_bytes()).cfg == params
    # A config that disagrees with the stored values: the stored (fitted) ones win, with a warning.
    edited = spacy.blank("en").add_pipe("distill_calibration", config={**params, "scale": 9.0})
    with pytest.warns(UserWarning, match="replaces the one in the config"):
        edited.from_disk(tmp_path / "cal")
    assert edited.scale == 2.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nlp.to_disk(tmp_path / "nlp")
        loaded = spacy.load(tmp_path / "nlp")
    assert loaded.get_pipe("distill_calibration").cfg == params


# --- calibrate-pipeline, fresh-process load, serving --------------------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    raw = root / "raw"
    build_test_pipeline(with_tok2vec=False).to_disk(raw)
    cal_json = root / "cal.json"
    srsly.write_json(cal_json, Calibration(scale=SCALE, bias=dict(BIAS)).to_dict())
    out = root / "calibrated"
    result = CliRunner().invoke(app, ["calibrate-pipeline", str(raw), str(cal_json), str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out} = {raw} + 'calibration' (distill_calibration) after 'textcat'" in result.stderr
    return {"root": root, "raw": raw, "json": cal_json, "calibrated": out}


def expected_cats(raw_cats):
    labels = ["NEGATIVE", "POSITIVE"]
    q = calibrate_probs([[raw_cats[k] for k in labels]], SCALE, [BIAS[k] for k in labels], True)[0]
    return dict(zip(labels, q.tolist()))


def test_calibrate_pipeline_writes_a_calibrated_copy(pipelines):
    raw = spacy.load(pipelines["raw"])
    nlp = spacy.load(pipelines["calibrated"])
    assert nlp.pipe_names == ["textcat", "calibration"]
    assert nlp.get_pipe_meta("calibration").factory == "distill_calibration"
    assert nlp.config["components"]["calibration"]["scale"] == SCALE
    for text in TEXTS:
        before, after = raw(text).cats, nlp(text).cats
        assert after == pytest.approx(expected_cats(before), abs=1e-12)
        assert after["POSITIVE"] != pytest.approx(before["POSITIVE"], abs=1e-3)


def one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_calibrate_pipeline_refuses_to_overwrite(pipelines):
    out = pipelines["root"] / "again"
    args = ["calibrate-pipeline", str(pipelines["raw"]), str(pipelines["json"]), str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    (out / "marker").write_text("x")
    assert "exists" in one_error_line(CliRunner().invoke(app, args))
    assert (out / "marker").exists()
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "marker").exists() and spacy.load(out).pipe_names == ["textcat", "calibration"]


def test_calibrate_pipeline_errors(pipelines, tmp_path):
    raw, cal = str(pipelines["raw"]), str(pipelines["json"])
    out = str(tmp_path / "out")

    def run(*args):
        return one_error_line(CliRunner().invoke(app, ["calibrate-pipeline", *args]))

    assert "no such pipeline" in run(str(tmp_path / "missing"), cal, out)
    assert "no such calibration file" in run(raw, str(tmp_path / "missing.json"), out)
    bad = tmp_path / "bad.json"
    bad.write_text('{"scale": 2.0}')
    assert "not a calibration file" in run(raw, str(bad), out)
    multi = tmp_path / "multi.json"
    srsly.write_json(multi, Calibration(scale=2.0, exclusive_classes=False).to_dict())
    assert "multi-label classes (sigmoids), but 'textcat'" in run(raw, str(multi), out)
    other = tmp_path / "other.json"
    srsly.write_json(other, Calibration(scale=2.0, bias={"NEUTRAL": 1.0}).to_dict())
    assert "has a bias for ['NEUTRAL']" in run(raw, str(other), out)
    assert "already calibrated (component 'calibration')" in run(str(pipelines["calibrated"]), cal, out)
    assert "already has a component named 'textcat'" in run(raw, cal, out, "--name", "textcat")
    assert not Path(out).exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_fresh_process_loads_without_importing_the_package(pipelines):
    # The entry point registers the factory: spacy.load needs no --code / import.
    code = (
        "import json, sys, spacy\n"
        "assert 'spacy_distill' not in sys.modules\n"
        f"nlp = spacy.load({str(pipelines['calibrated'])!r})\n"
        "assert 'spacy_distill.pipeline.calibration' in sys.modules\n"
        f"print(json.dumps([nlp(t).cats for t in {TEXTS!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    here = spacy.load(pipelines["calibrated"])
    assert json.loads(result.stdout) == [here(t).cats for t in TEXTS]


def test_server_serves_calibrated_cats(pipelines):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from spacy_distill.serving.app import create_app
    from spacy_distill.serving.settings import ServeSettings

    models = {"raw": str(pipelines["raw"]), "calibrated": str(pipelines["calibrated"])}
    with TestClient(create_app(models, ServeSettings(load_in_background=False))) as client:
        served = {
            name: client.post("/classify", json={"texts": TEXTS, "model": name}).json()["results"]
            for name in models
        }
    for raw, cal in zip(served["raw"], served["calibrated"]):
        assert cal["cats"] == pytest.approx(expected_cats(raw["cats"]), abs=1e-12)
        assert cal["label"] == max(cal["cats"], key=cal["cats"].get) and cal["score"] == max(cal["cats"].values())
    assert all(r["cats"] != c["cats"] for r, c in zip(served["raw"], served["calibrated"]))
