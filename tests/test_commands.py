"""``augment``, ``label`` and ``calibrate`` never destroy data: they refuse bad outputs
before any work, write atomically with normal file modes, leave the previous output
and no temporary file when interrupted (SIGTERM, SIGINT), and fail with one line.

The teacher here is a stock spaCy BoW textcat (``label`` accepts any textcat
pipeline): it labels thousands of texts a second, so a run lasts long enough to be
interrupted without making the suite slow."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import spacy
from spacy.training import Example
from typer.testing import CliRunner

from spacy_distill.cli import app
from spacy_distill.io import InputError, atomic_path, check_output, read_records
from spacy_distill.progress import LineProgress

TEXTS = ["good phone works well", "bad cable broke fast", "nice case fits", "poor battery died"]


@pytest.fixture(scope="module")
def bow_teacher(tmp_path_factory):
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("textcat")
    for label in ("POSITIVE", "NEGATIVE"):
        textcat.add_label(label)
    examples = []
    for text in TEXTS:
        ref = nlp.make_doc(text)
        pos = text.split()[0] in ("good", "nice")
        ref.cats = {"POSITIVE": float(pos), "NEGATIVE": float(not pos)}
        examples.append(Example(nlp.make_doc(text), ref))
    nlp.initialize(lambda: examples)
    path = tmp_path_factory.mktemp("bow") / "model"
    nlp.to_disk(path)
    return path


@pytest.fixture
def inputs(tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "lang": "en"}) + "\n" for t in TEXTS), encoding="utf8")
    cfg = tmp_path / "p0.cfg"
    cfg.write_text('[augment]\n@augmenters = "spacy-distill.PosAugmenter.v1"\nn_iter = 2\np_pos = 0.0\n')
    return jsonl, cfg


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _snapshot(path: Path) -> dict:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".scratch-" in p.name or ".old-" in p.name)


def _run(args):
    return CliRunner().invoke(app, args)


def _augment(inp, cfg, out, *extra):
    return _run(["augment", str(inp), str(out), "--lang", "en", "--config", str(cfg), "--no-progress", *extra])


def _label(teacher, inp, out, *extra):
    return _run(["label", str(teacher), str(inp), str(out), "--no-progress", *extra])


# --- refusals: (command, output kind) -> nothing touched --------------------------------------


@pytest.mark.parametrize(
    "command,make_output,message",
    [
        ("augment", lambda d, inp: (d / "victim").mkdir() or d / "victim", "exists and is a directory"),
        ("augment", lambda d, inp: inp, "is the input"),
        ("augment", lambda d, inp: _file(d / "old.jsonl", b"keep\n"), "exists; add --overwrite"),
        ("label", lambda d, inp: (d / "victim2").mkdir() or d / "victim2", "exists; add --overwrite"),
        ("label", lambda d, inp: _file(d / "plain.txt", b"keep\n"), "exists and is not a directory"),
        ("label", lambda d, inp: _file(d / "old.spacy", b"keep"), "exists; add --overwrite"),
        ("label", lambda d, inp: d, "contains the input"),
        ("label", lambda d, inp: inp.parent / "in.jsonl" / "x", "is inside the input"),
    ],
)
def test_refuses_to_write_over(bow_teacher, tmp_path, inputs, command, make_output, message):
    inp, cfg = inputs
    out = make_output(tmp_path, inp)
    if isinstance(out, Path) and out.is_dir():
        (out / "precious.txt").write_text("data")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = _augment(inp, cfg, out) if command == "augment" else _label(bow_teacher, inp, out)
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: ")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "-5"], "--batch-size"),
    ],
)
def test_augment_ranges_are_checked_before_anything_is_written(tmp_path, inputs, args, message):
    inp, cfg = inputs
    out = tmp_path / "old.jsonl"
    out.write_text("keep\n")
    r = _augment(inp, cfg, out, "--overwrite", *args)
    assert r.exit_code == 2 and message in r.output and "islice" not in r.output
    assert out.read_text() == "keep\n"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--limit", "-1"], "--limit"),
        (["--batch-size", "0"], "--batch-size"),
        (["--shard-size", "0"], "--shard-size"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_label_ranges_are_checked(bow_teacher, tmp_path, inputs, args, message):
    inp, _ = inputs
    r = _label(bow_teacher, inp, tmp_path / "o.spacy", *args)
    assert r.exit_code == 2 and message in r.output and "islice" not in r.output
    assert not (tmp_path / "o.spacy").exists()


def test_overwrite_replaces_an_output_of_the_same_kind_with_normal_modes(bow_teacher, tmp_path, inputs):
    inp, cfg = inputs
    aug, lab = tmp_path / "aug.jsonl", tmp_path / "labelled"
    aug.write_text("old\n")
    lab.mkdir()
    (lab / "stale.spacy").write_bytes(b"old")
    old_umask = os.umask(0o022)
    try:
        assert _augment(inp, cfg, aug, "--overwrite", "--include-original").exit_code == 0
        r = _label(bow_teacher, aug, lab, "--overwrite")
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old_umask)
    assert aug.read_text() != "old\n" and len(aug.read_text().splitlines()) >= len(TEXTS)
    assert sorted(p.name for p in lab.iterdir()) == ["shard-00000.spacy"]
    # The modes a plain open()/mkdir() gives under umask 022, not mkstemp's 0600.
    assert stat.S_IMODE(aug.stat().st_mode) == 0o644
    assert stat.S_IMODE(lab.stat().st_mode) == 0o755
    assert stat.S_IMODE((lab / "shard-00000.spacy").stat().st_mode) == 0o644
    assert _leftovers(tmp_path) == []


def test_label_reads_csv_and_augment_reads_spacy(bow_teacher, tmp_path):
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,text,lang\n1,good phone works,en\n2,\"bad, broke\",en\n", encoding="utf8")
    assert _label(bow_teacher, csv_in, tmp_path / "l.spacy").exit_code == 0
    cfg = tmp_path / "p0.cfg"
    cfg.write_text('[augment]\n@augmenters = "spacy-distill.PosAugmenter.v1"\nn_iter = 1\np_pos = 0.0\np_mask = 0.5\n')
    r = _augment(tmp_path / "l.spacy", cfg, tmp_path / "a.jsonl", "--include-original")
    assert r.exit_code == 0, r.output
    originals = [json.loads(line)["text"] for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert "good phone works" in originals and "bad, broke" in originals


@pytest.mark.parametrize(
    "content,where",
    [
        ('{"text": "ok"}\n{"text": "\\ud800"}\n', "in.jsonl:2: field 'text' is not valid Unicode"),
        ('{"text": "ok"}\n{"text": "x", "lang": 3}\n', "in.jsonl:2: field 'lang' must be a string"),
        ('{"text": "ok", "cats": {"A": "yes"}}\n', "in.jsonl:1: field 'cats' must map labels to numbers"),
    ],
)
def test_label_bad_records_are_one_line_errors(bow_teacher, tmp_path, content, where):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content, encoding="utf8")
    r = _label(bow_teacher, inp, tmp_path / "o.spacy")
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"error: {inp.parent}/{where}" + r.output.strip().split(where, 1)[1]]
    assert not (tmp_path / "o.spacy").exists() and _leftovers(tmp_path) == []


def test_calibrate_refuses_to_overwrite_and_reports_bad_files(bow_teacher, tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"text": t, "cats": {"POSITIVE": 1.0, "NEGATIVE": 0.0}}) + "\n" for t in TEXTS))
    out = tmp_path / "cal.json"
    out.write_text("{}")
    r = _run(["calibrate", str(bow_teacher), str(gold), str(out)])
    assert r.exit_code == 1 and "add --overwrite" in r.output and out.read_text() == "{}"
    r = _run(["calibrate", str(bow_teacher), str(gold), str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["report"]["n_docs"] == len(TEXTS)
    r = _label(bow_teacher, gold, tmp_path / "o.spacy", "--calibration", str(gold))
    assert r.exit_code == 1 and f"error: {gold}: invalid JSON" in r.output


@pytest.mark.parametrize(
    "cats,message",
    [
        ({"GOOD": 1.0, "BAD": 0.0}, "have the labels ['BAD', 'GOOD']"),
        ({"POSITIVE": 1.0}, "have the labels ['POSITIVE']"),
        ({"POSITIVE": 1.0, "NEGATIVE": 0.0, "NEUTRAL": 0.0}, "predicts ['NEGATIVE', 'POSITIVE']"),
    ],
)
def test_calibrate_refuses_labels_the_pipeline_does_not_predict(bow_teacher, tmp_path, cats, message):
    # Issue #19: {"GOOD", "BAD"} against a POSITIVE/NEGATIVE classifier gave "accuracy 1.000" and a scale of 0.011.
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"text": t, "cats": cats}) + "\n" for t in TEXTS))
    out = tmp_path / "cal.json"
    r = _run(["calibrate", str(bow_teacher), str(gold), str(out)])
    assert r.exit_code == 1 and message in r.output and not out.exists()
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith(f"error: {gold}:1: ")


def test_augment_refuses_a_table_on_its_output(tmp_path, inputs):
    # Issue #19: --save-table equal to OUTPUT (a new path) left the POS table where the variants should be.
    inp, cfg = inputs
    out = tmp_path / "new.jsonl"
    r = _augment(inp, cfg, out, "--save-table", str(out))
    assert r.exit_code == 1 and "other output" in r.output and not out.exists()
    r = _augment(inp, cfg, tmp_path / "v.jsonl", "--save-table", str(tmp_path / "v.jsonl" / "table.json"))
    assert r.exit_code == 1 and "other output" in r.output and not (tmp_path / "v.jsonl").exists()


def test_calibrate_pipeline_keeps_the_scale_exact_and_loads_without_a_warning(bow_teacher, tmp_path):
    # Issue #19: the component's JSON held 0.3390819339 (config.cfg: 0.33908193394310604), so
    # every spacy.load warned that the stored calibration replaces the config's.
    scale = 0.33908193394310604
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"scale": scale, "bias": {}, "exclusive_classes": True}))
    out = tmp_path / "calibrated"
    r = _run(["calibrate-pipeline", str(bow_teacher), str(cal), str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "calibration" / "cfg").read_text())["scale"] == scale
    # A fresh process, every warning an error: the load must be silent.
    code = f"import spacy; nlp = spacy.load({str(out)!r}); assert nlp.get_pipe('calibration').scale == {scale!r}"
    p = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "replaces the one in the config" not in p.stderr, p.stderr
    # Pipelines written before (10 significant digits stored) load without the warning too.
    cfg = out / "calibration" / "cfg"
    cfg.write_text(cfg.read_text().replace(repr(scale), "0.3390819339"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spacy.load(out).get_pipe("calibration").scale == pytest.approx(scale, rel=1e-9)


def test_augment_refuses_a_pos_pipeline_that_sets_no_pos(tmp_path, inputs):
    # Issue #19: --pos en=PIPELINE with a pipeline that sets no POS ran with exit 0 (no swap could happen).
    inp, _ = inputs
    untagged = tmp_path / "untagged"
    spacy.blank("en").to_disk(untagged)
    cfg = tmp_path / "p1.cfg"
    cfg.write_text('[augment]\n@augmenters = "spacy-distill.PosAugmenter.v1"\nn_iter = 2\np_pos = 0.5\n')
    out = tmp_path / "v.jsonl"
    r = _augment(inp, cfg, out, "--pos", f"en={untagged}")
    assert r.exit_code == 1, r.output
    assert f"--pos en={untagged}: the pipeline sets no POS" in r.output and "4 text(s)" in r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: ")
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["label", "augment", "calibrate"])
def test_an_over_long_record_fails_at_its_line_before_the_model_loads(bow_teacher, tmp_path, inputs, command):
    # Issue #19: a 20 MB record gave spaCy's E088, without file:line, after the model had loaded.
    _, cfg = inputs
    inp = tmp_path / "long.jsonl"
    rows = [{"text": t, "cats": {"POSITIVE": 1.0, "NEGATIVE": 0.0}, "lang": "en"} for t in TEXTS]
    rows.insert(2, {**rows[0], "text": "x" * 1_000_001})
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A pipeline that cannot load: reaching spacy.load would be a different error.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.cfg").write_text("[nlp]\nlang = 'no-such-language'\n")
    if command == "label":
        r = _label(broken, inp, tmp_path / "out.spacy")
    elif command == "calibrate":
        r = _run(["calibrate", str(broken), str(inp), str(tmp_path / "cal.json")])
    else:
        r = _augment(inp, cfg, tmp_path / "out.jsonl", "--pos", f"en={broken}")
    assert r.exit_code == 1, r.output
    assert r.output.startswith(f"error: {inp}:3: the text has 1,000,001 characters, over the limit of 1,000,000")
    assert len(r.output.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", "cal"))] == []


def test_read_records_length_limit(tmp_path):
    path = _file(tmp_path / "t.txt", b"short\n" + b"y" * 11 + b"\n")
    with pytest.raises(InputError, match=r"t.txt:2: the text has 11 characters, over the limit of 10"):
        list(read_records(path, max_length=10))
    assert len(list(read_records(path, max_length=11))) == 2
    assert len(list(read_records(path, max_length=None))) == 2


# --- interruption: SIGTERM and SIGINT mid-run -------------------------------------------------


def _interrupt_mid_run(args, out: Path, sig: int, folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A job started in the background inherits SIGINT ignored (and Python then keeps
    # ignoring it); Ctrl-C reaches a foreground process, whose SIGINT is the default.
    proc = subprocess.Popen(
        [sys.executable, "-m", "spacy_distill.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    # Wait until the command is writing (a temporary path exists), then signal it.
    while time.monotonic() < deadline and proc.poll() is None and not _leftovers(folder):
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
    time.sleep(0.3)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("command", ["augment", "label"])
def test_interrupted_run_keeps_the_previous_output_and_no_temp_files(bow_teacher, tmp_path, command, sig, code):
    big = tmp_path / "big.txt"
    big.write_text("".join(f"{TEXTS[i % 4]} number {i}\n" for i in range(60000)), encoding="utf8")
    cfg = tmp_path / "p0.cfg"
    cfg.write_text('[augment]\n@augmenters = "spacy-distill.PosAugmenter.v1"\nn_iter = 2\np_pos = 0.0\n')
    out = tmp_path / ("prev.jsonl" if command == "augment" else "prev")
    if command == "augment":
        out.write_text("previous\n")
        args = ["augment", str(big), str(out), "--lang", "en", "--config", str(cfg), "--overwrite"]
    else:
        out.mkdir()
        (out / "shard-00000.spacy").write_bytes(b"previous")
        args = ["label", str(bow_teacher), str(big), str(out), "--overwrite", "--shard-size", "1000"]
    before = _snapshot(out)
    result = _interrupt_mid_run(args, out, sig, tmp_path)
    assert result.returncode == code, result.stderr.decode()[-2000:]
    assert b"Traceback" not in result.stderr
    assert _snapshot(out) == before
    assert _leftovers(tmp_path) == []


# --- units ------------------------------------------------------------------------------------


def test_atomic_path_failure_keeps_target(tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "output,is_dir,overwrite,message",
    [
        ("", False, False, "the output path is empty"),
        ("dir", False, True, "exists and is a directory"),
        ("file.txt", True, True, "exists and is not a directory"),
        ("file.txt", False, False, "exists; add --overwrite"),
        ("file.txt/sub.json", False, False, "is not a directory"),
        ("in.txt", False, True, "the input"),
        ("dir/in2.txt", False, True, None),
    ],
)
def test_check_output(tmp_path, output, is_dir, overwrite, message):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "in.txt").write_text("x")
    out = tmp_path / output if output else ""
    if message is None:
        assert check_output(out, inputs=[tmp_path / "in.txt"], overwrite=overwrite, is_dir=is_dir) == out
    else:
        with pytest.raises(ValueError, match=message):
            check_output(out, inputs=[tmp_path / "in.txt"], overwrite=overwrite, is_dir=is_dir)


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("a.txt", "one\n\n two \n", [("one", 1), (" two ", 3)]),
        ("a.jsonl", '{"text": "x", "id": 7}\n\n{"text": "y"}\n', [("x", 1), ("y", 3)]),
        ("a.ndjson", '{"text": "x"}\n', [("x", 1)]),
        ("a.csv", 'text,stars\n"multi\nline",5\nz,1\n', [("multi\nline", 2), ("z", 4)]),
        ("b.csv", "\ufefftext\nbom\n", [("bom", 2)]),
    ],
)
def test_one_reader_for_every_format(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf8")
    assert [(r.text, r.line) for r in read_records(path)] == expected


def test_reader_errors_name_file_and_line(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,stars\nok,5\nbad\n", encoding="utf8")
    with pytest.raises(InputError, match=r"a\.csv:3: expected 2 fields, got 1"):
        list(read_records(path))


def test_progress_lines_when_not_a_terminal(tmp_path):
    with (tmp_path / "log.txt").open("w") as stream:
        bar = LineProgress(total=10, desc="label", unit="doc", stream=stream, interval=0.0)
        bar.update(4)
        bar.close()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert lines[0].startswith("label: 4/10 docs (40.0%), ") and "left" in lines[0]
    assert "\r" not in (tmp_path / "log.txt").read_text()
    assert lines[-1].startswith("label: 4/10 docs (40.0%)")


def test_atomic_dir_replaces_a_symlink_not_its_target(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "out"
    link.symlink_to(real, target_is_directory=True)
    with atomic_path(link, is_dir=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert not link.is_symlink() and (link / "new.txt").read_text() == "new"
    assert (real / "keep.txt").read_text() == "keep" and _leftovers(tmp_path) == []
