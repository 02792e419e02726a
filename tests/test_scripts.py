"""Unit tests of the project scripts (scripts/*.py) and the evaluation library they run on
(spacy_distill.evaluation): bad-row errors name file:line and field, splits are seeded and
balanced, CoNLL-U conversion, metrics helpers."""

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import check_package  # noqa: E402
import eval_taggers  # noqa: E402
import evaluate_systems  # noqa: E402
import label_stats  # noqa: E402
import prepare_corpus  # noqa: E402
import tradeoff  # noqa: E402
import ud_to_docbin  # noqa: E402
from prepare_corpus import BadRow, make_splits, read_reviews  # noqa: E402

from spacy_distill.evaluation.calibration import calibration_report  # noqa: E402
from spacy_distill.evaluation.data import read_ood  # noqa: E402
from spacy_distill.evaluation.markdown import calibration_markdown  # noqa: E402
from spacy_distill.evaluation.scoring import score  # noqa: E402
from spacy_distill.evaluation.timing import time_systems  # noqa: E402

from .util import write_labelled as write_docbin  # noqa: E402

HEADER = "marc_idx,text,stars\n"


def write_csv(path: Path, body: str) -> Path:
    path.write_bytes((HEADER + body).encode("utf8") if isinstance(body, str) else HEADER.encode() + body)
    return path


@pytest.mark.parametrize(
    "body,line,field",
    [
        ("1,good,5\n2,bad,7\n", 3, "'stars'"),
        ("1,good,5\n2,,1\n", 3, "'text'"),
        ("1,good,5\n2,   ,1\n", 3, "'text'"),
        ("1,good,5\n2,nice\n", 3, "'stars'"),
        ("1,good,5\nx,nice,4\n", 3, "'marc_idx'"),
        ("1,good,5\n2,nice,four\n", 3, "'stars'"),
        ('1,"multi\nline",5\n2,ok,0\n', 4, "'stars'"),
        ("1,good,5\n1,again,4\n", 3, "'marc_idx'"),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, body, line, field):
    path = write_csv(tmp_path / "train_pool.csv", body)
    with pytest.raises(BadRow) as err:
        read_reviews(path)
    assert f"{path}:{line}:" in str(err.value)
    assert field in str(err.value)


def test_bad_encoding_names_line(tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes(HEADER.encode() + b"1,fine,5\n2,caf\xe9,4\n")
    with pytest.raises(BadRow, match=r"test\.csv:3: field 'text': bad encoding"):
        read_reviews(path)


def test_bad_header(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("idx,text,stars\n1,a,5\n", encoding="utf8")
    with pytest.raises(BadRow, match=r"x\.csv:1: header"):
        read_reviews(path)


def test_skip_bad_counts_rows(tmp_path):
    path = write_csv(tmp_path / "t.csv", "1,good,5\n2,bad,9\n3,,1\n4,fine,2\n")
    rows, skipped = read_reviews(path, skip_bad=True)
    assert [r["marc_idx"] for r in rows] == [1, 4]
    assert len(skipped) == 2 and f"{path}:3:" in skipped[0] and f"{path}:4:" in skipped[1]


def make_data(root: Path, langs=("de", "ja"), n=60) -> Path:
    for lang in langs:
        (root / lang).mkdir(parents=True)
        for name, offset in (("train_pool.csv", 0), ("test.csv", 10000)):
            body = "".join(f"{offset + i},{lang} review {i},{i % 5 + 1}\n" for i in range(n))
            write_csv(root / lang / name, body)
    return root


SETTINGS = {"langs": "de,ja", "n_train": 10, "n_dev": 8, "n_test": 12, "n_dev_teacher": 4, "n_transfer": -1, "n_transfer_more": 0, "seed": 0, "skip_bad": "false"}


def test_splits_balanced_disjoint_and_seeded(tmp_path):
    data = make_data(tmp_path / "marc")
    splits, summary = make_splits(data, SETTINGS)
    for name, n in (("train", 10), ("dev", 8), ("test", 12), ("dev_teacher", 4)):
        for lang in ("de", "ja"):
            rows = [r for lg, r in splits[name] if lg == lang]
            assert len(rows) == n
            labels = [prepare_corpus.label_of(r["stars"]) for r in rows]
            assert labels.count("POSITIVE") == n // 2 and labels.count("NEGATIVE") == n - n // 2
    for lang in ("de", "ja"):
        ids = {name: {r["marc_idx"] for lg, r in splits[name] if lg == lang} for name in ("train", "dev", "transfer")}
        assert not ids["train"] & ids["dev"] and not ids["train"] & ids["transfer"] and not ids["dev"] & ids["transfer"]
        assert len(ids["train"] | ids["dev"] | ids["transfer"]) == 60
        dev_teacher = {r["marc_idx"] for lg, r in splits["dev_teacher"] if lg == lang}
        assert dev_teacher <= ids["dev"]
    again, _ = make_splits(data, SETTINGS)
    assert [r["marc_idx"] for _, r in again["train"]] == [r["marc_idx"] for _, r in splits["train"]]
    other, _ = make_splits(data, {**SETTINGS, "seed": 1})
    assert [r["marc_idx"] for _, r in other["train"]] != [r["marc_idx"] for _, r in splits["train"]]
    assert summary["languages"]["de"]["transfer"] == 60 - 18


@pytest.mark.parametrize(
    "n_transfer,n_more,expected",
    # 60 reviews per language, 18 in train and dev: 42 left for transfer and transfer_more.
    [(-1, -1, (42, 0)), (-1, 5, (42, 0)), (10, 0, (10, 0)), (10, 5, (10, 5)), (10, -1, (10, 32)), (40, -1, (40, 2))],
)
def test_transfer_more_follows_the_transfer_rows(tmp_path, n_transfer, n_more, expected):
    data = make_data(tmp_path / "marc")
    settings = {**SETTINGS, "n_transfer": n_transfer, "n_transfer_more": n_more}
    splits, summary = make_splits(data, settings)
    everything, _ = make_splits(data, {**settings, "n_transfer": -1})
    for lang in ("de", "ja"):
        transfer = [r["marc_idx"] for lg, r in splits["transfer"] if lg == lang]
        more = [r["marc_idx"] for lg, r in splits["transfer_more"] if lg == lang]
        assert (len(transfer), len(more)) == expected
        assert (summary["languages"][lang]["transfer"], summary["languages"][lang]["transfer_more"]) == expected
        # The transfer rows are the first of the seeded order whatever n_transfer_more is, and
        # transfer_more the rows right after them, so both are prefixes of one order.
        order = [r["marc_idx"] for lg, r in everything["transfer"] if lg == lang]
        assert transfer + more == order[: len(transfer) + len(more)]
    # The other splits do not depend on it.
    for name in ("train", "dev", "dev_teacher", "test"):
        assert splits[name] == everything[name]


def test_not_enough_reviews_is_an_error(tmp_path):
    data = make_data(tmp_path / "marc", n=20)
    with pytest.raises(BadRow, match="needs"):
        make_splits(data, {**SETTINGS, "n_train": 30})


def test_cli_error_exit_and_message(tmp_path, capsys):
    data = make_data(tmp_path / "marc")
    with (data / "de" / "test.csv").open("a", encoding="utf8") as f:
        f.write("99999,broken,6\n")
    cfg = tmp_path / "data.cfg"
    cfg.write_text("[corpus]\n" + "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in SETTINGS.items()).replace("'", '"') + "\n", encoding="utf8")
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(prepare_corpus.main)
    result = CliRunner().invoke(app, [str(data), str(tmp_path / "out"), "--config", str(cfg)])
    assert result.exit_code == 1
    assert "test.csv:62: field 'stars': 6 is outside 1-5" in result.output
    result = CliRunner().invoke(app, [str(data), str(tmp_path / "out"), "--config", str(cfg), "--corpus.skip_bad", "true"])
    assert result.exit_code == 0, result.output
    assert "skipped bad rows: 1" in result.output
    assert (tmp_path / "out" / "train.spacy").exists() and (tmp_path / "out" / "summary.json").exists()


CONLLU = """# sent_id = 1
# text = I don't know du vin.
1\tI\tI\tPRON\t_\t_\t0\t_\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\t_\t_\t0\t_\t_\t_
3\tn't\tnot\tPART\t_\t_\t0\t_\t_\t_
4\tknow\tknow\tVERB\t_\t_\t0\t_\t_\t_
5-6\tdu\t_\t_\t_\t_\t_\t_\t_\t_
5\tde\tde\tADP\t_\t_\t0\t_\t_\t_
6\tle\tle\tDET\t_\t_\t0\t_\t_\t_
7\tvin\tvin\tNOUN\t_\t_\t0\t_\t_\tSpaceAfter=No
8\t.\t.\tPUNCT\t_\t_\t0\t_\t_\t_

"""


def test_conllu_multiword_tokens(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(CONLLU, encoding="utf8")
    (sent,) = ud_to_docbin.read_conllu(path)
    assert sent["words"] == ["I", "do", "n't", "know", "du", "vin", "."]
    assert sent["pos"] == ["PRON", "AUX", "PART", "VERB", "ADP", "NOUN", "PUNCT"]
    assert sent["spaces"] == [True, False, True, True, True, False, True]


def test_conllu_bad_line(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(CONLLU.replace("4\tknow\tknow\tVERB", "4\tknow\tknow\tVERBAL"), encoding="utf8")
    with pytest.raises(ud_to_docbin.BadConllu, match=r"x\.conllu:7: field 'UPOS'"):
        ud_to_docbin.read_conllu(path)
    path.write_text(CONLLU.replace("1\tI\tI\tPRON\t_\t_\t0\t_\t_\t_", "1\tI\tI"), encoding="utf8")
    with pytest.raises(ud_to_docbin.BadConllu, match=r"x\.conllu:3: 3 columns"):
        ud_to_docbin.read_conllu(path)


def test_ud_split_is_seeded_and_complete():
    sents = [{"words": [str(i)]} for i in range(100)]
    a = ud_to_docbin.split_sentences(sents, 0.1, 0.05, 0, "de")
    b = ud_to_docbin.split_sentences(sents, 0.1, 0.05, 0, "de")
    assert a == b
    assert [len(a[k]) for k in ("heldout", "dev", "train")] == [10, 4, 86]


def test_segmentation_prf():
    import spacy
    from spacy.tokens import Doc

    vocab = spacy.blank("xx").vocab
    gold = [Doc(vocab, words=["这是", "一个", "好", "产品"])]
    pred = [Doc(vocab, words=["这是", "一个", "好产品"])]
    prf = eval_taggers.segmentation_prf(gold, pred)
    assert prf["p"] == pytest.approx(200 / 3) and prf["r"] == pytest.approx(50.0)


def test_macro_f_and_score():
    gold = [("de", "POSITIVE"), ("de", "NEGATIVE"), ("ja", "POSITIVE"), ("ja", "NEGATIVE")]
    pred = ["POSITIVE", "POSITIVE", "POSITIVE", "NEGATIVE"]
    s = score(gold, pred, ["de", "ja"], ["NEGATIVE", "POSITIVE"])
    assert s["per_lang"]["ja"]["acc"] == 100 and s["per_lang"]["de"]["acc"] == 50
    assert s["per_lang"]["de"]["macro_f"] == pytest.approx(100 * (0 + 2 / 3) / 2)
    assert s["mean"]["acc"] == 75


def test_find_reviews_in_blob():
    review = "Dieses Produkt ist wirklich großartig, ich kaufe es wieder."
    mid = (len(review) - check_package.WINDOW) // 2
    windows = {review[mid : mid + check_package.WINDOW]}
    assert check_package.find_reviews("xx" + review + "yy", windows)
    assert not check_package.find_reviews('{"strings": ["Dieses", "Produkt"]}', windows)


TRADEOFF_BASE = {
    "paths.train": "corpus/labelled",
    "paths.dev": "corpus/dev.spacy",
    "system.seed": 0,
    "components.textcat.model.embed.width": 32,
    "components.textcat.model.embed.rows": [5000, 2500, 2500, 2500],
}


@pytest.mark.parametrize(
    "changed,same",
    [
        ({}, True),
        ({"components.textcat.model.embed.width": 16}, False),
        ({"components.textcat.model.depth": 2}, False),
        ({"components.textcat.model.pooling": "mean"}, False),
        ({"training.max_steps": 10}, False),
        ({"paths.train": "elsewhere"}, False),
    ],
)
def test_tradeoff_reuses_only_a_variant_trained_with_the_same_config(tmp_path, changed, same):
    # --reuse must never pass off a model trained with other settings as a variant.
    from spacy.util import load_config

    student_cfg = SCRIPTS.parent / "configs" / "student.cfg"
    model_best = tmp_path / "model-best"
    model_best.mkdir()
    assert not tradeoff._same_training(model_best, student_cfg, TRADEOFF_BASE)
    load_config(student_cfg, overrides=TRADEOFF_BASE).to_disk(model_best / "config.cfg")
    (model_best / "meta.json").write_text("{}", encoding="utf8")
    assert tradeoff._same_training(model_best, student_cfg, {**TRADEOFF_BASE, **changed}) is same


@pytest.mark.parametrize(
    "points,front",
    [
        ({"a": (1.0, 1.0)}, ["a"]),
        # b is faster and better than a: a is dominated.
        ({"a": (1.0, 1.0), "b": (2.0, 2.0)}, ["b"]),
        # Trade-off: both stay, fastest first.
        ({"teacher": (1.0, 80.0), "student": (100.0, 78.0), "bow": (300.0, 74.0), "ensemble": (50.0, 71.0)},
         ["bow", "student", "teacher"]),
        # Equal points do not dominate each other.
        ({"a": (1.0, 1.0), "b": (1.0, 1.0)}, ["a", "b"]),
        # Equal speed, lower accuracy: dominated.
        ({"a": (5.0, 1.0), "b": (5.0, 2.0)}, ["b"]),
    ],
)
def test_pareto_front(points, front):
    from spacy_distill.evaluation.plots import pareto_front

    assert sorted(pareto_front(points)) == sorted(front)
    assert pareto_front(points)[0] == max(front, key=lambda n: points[n][0])


CALLS = []


def test_time_systems_interleaves_and_totals():
    import spacy
    from spacy.language import Language

    @Language.factory("test_record_system", default_config={"system": ""})
    def make_recorder(nlp, name, system):
        # Records which pipeline ran, in order.
        def record(doc):
            CALLS.append(system)
            return doc

        return record

    systems = {}
    for name in ("A", "B"):
        nlp = spacy.blank("xx")
        nlp.add_pipe("test_record_system", config={"system": name})
        systems[name] = nlp
    CALLS.clear()
    out = time_systems(systems, ["a b", "c d e"], 2, 1, 0.0, rounds=2)
    # Warm-up A, B (1 doc each); batched passes A B A B (2 docs each); then one-doc
    # passes, also A B A B.
    assert CALLS == ["A", "B"] + ["A", "A", "B", "B"] * 2 + ["A", "A", "B", "B"] * 2
    for name in ("A", "B"):
        assert out[name]["batch"]["passes"] == 2 and out[name]["batch"]["tokens"] == 10
        assert out[name]["single"]["docs"] == 4 and out[name]["batch"]["rounds"] == 2


def test_evaluate_systems_reports_calibration(tmp_path):
    """ECE before and after a temperature fitted on --dev (never on test) for every system,
    in results.json, results.md and reliability.png; without --dev, ECE before only."""
    import json

    import numpy
    import spacy
    import srsly
    import typer
    from spacy.tokens import DocBin
    from typer.testing import CliRunner

    from spacy_distill.evaluation.calibration import reliability
    from spacy_distill.pipeline.calibration import calibrate_probs
    from spacy_distill.teacher.calibrate import fit_calibration
    from spacy_distill.teacher.label import probs_to_logits

    from .serving_harness import TRAIN_DATA, save_test_pipeline

    test_data = [
        ("Great blender, love it", "POSITIVE"), ("Broke after a week", "NEGATIVE"), ("Fast delivery, nice quality", "POSITIVE"),
        ("Awful, do not buy", "NEGATIVE"), ("Comfortable shoes", "POSITIVE"), ("Support never answered", "NEGATIVE"),
        ("Would buy again", "POSITIVE"), ("Smells bad and disappointing", "NEGATIVE"),
    ]

    def docbin(rows, path):
        db = DocBin(store_user_data=True)
        for text, label in rows:
            doc = spacy.blank("en").make_doc(text)
            doc.cats = {lab: float(lab == label) for lab in ("NEGATIVE", "POSITIVE")}
            doc.user_data["lang"] = "en"
            db.add(doc)
        db.to_disk(path)
        return path

    test, dev = docbin(test_data, tmp_path / "test.spacy"), docbin(TRAIN_DATA, tmp_path / "dev.spacy")
    bow = save_test_pipeline(tmp_path / "bow", with_tok2vec=False)
    for kind in ("random", "majority"):
        (tmp_path / kind).mkdir()
        srsly.write_json(tmp_path / kind / "model.json", {"kind": kind, "label": "POSITIVE", "seed": 0, "labels": ["NEGATIVE", "POSITIVE"]})
    app = typer.Typer()
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(evaluate_systems.main)
    base = [str(test), "--config", str(SCRIPTS.parent / "configs" / "evaluate.cfg"), "--system", f"bow={bow}",
            "--system", f"majority={tmp_path / 'majority'}", "--system", f"random={tmp_path / 'random'}",
            "--evaluate.langs", "en", "--evaluate.n_speed", "2", "--evaluate.min_seconds", "0", "--evaluate.rounds", "1",
            "--evaluate.n_warmup", "1", "--evaluate.n_calibration", "-1"]
    results = {}
    for name, extra in (("dev", ["--dev", str(dev)]), ("none", [])):
        out = tmp_path / name
        result = CliRunner().invoke(app, [base[0], str(out), *base[1:], *extra])
        assert result.exit_code == 0, result.output
        results[name] = json.loads((out / "results.json").read_text(encoding="utf8"))
        assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["dev"]["calibration"]["n_dev_docs"] == len(TRAIN_DATA) and results["dev"]["calibration"]["n_bins"] == 15
    # The same numbers, recomputed: ECE of the test probabilities; the temperature fitted on dev.
    nlp = spacy.load(bow)
    labels = ["NEGATIVE", "POSITIVE"]
    P = numpy.asarray([[d.cats[k] for k in labels] for d in nlp.pipe([t for t, _ in test_data], batch_size=64)])
    y = numpy.asarray([labels.index(label) for _, label in test_data])
    D = [d.cats for d in nlp.pipe([t for t, _ in TRAIN_DATA], batch_size=64)]
    fit = fit_calibration([probs_to_logits(c, True) for c in D], [{k: float(k == g) for k in labels} for _, g in TRAIN_DATA], True)
    c = results["dev"]["systems"]["bow"]["calibration"]
    assert c["measured"] and not c["hard_labels"] and c["n_dev_docs"] == len(TRAIN_DATA)
    assert c["ece_before"] == 100 * reliability(P, y).ece
    assert c["temperature"] == pytest.approx(1 / fit.scale, rel=1e-12)
    assert c["ece_after"] == pytest.approx(100 * reliability(calibrate_probs(P, fit.scale), y).ece, abs=1e-12)
    assert c["per_lang"]["en"] == {"ece_before": c["ece_before"], "ece_after": c["ece_after"]}
    # 0/1 outputs: confidence 1, so ECE = 100 − accuracy.
    majority = results["dev"]["systems"]["majority"]
    assert majority["calibration"]["hard_labels"]
    assert majority["calibration"]["ece_before"] == pytest.approx(100 - majority["mean"]["acc"], abs=1e-9)
    # The dev pass runs after the test pass: the seeded random baseline's test scores are unchanged.
    assert results["dev"]["systems"]["random"]["per_lang"] == results["none"]["systems"]["random"]["per_lang"]
    plain = results["none"]["systems"]["bow"]["calibration"]
    assert (plain["measured"], plain["ece_after"], plain["temperature"]) == (False, None, None)
    assert plain["ece_before"] == c["ece_before"] and results["none"]["calibration"]["dev"] is None
    md = (tmp_path / "dev" / "results.md").read_text(encoding="utf8")
    assert f"| bow | {c['ece_before']:.1f} | {c['temperature']:.3f} | {c['ece_after']:.1f} |" in md
    assert "| majority |" in md and "n/a¹" in md
    assert "not measured: no dev docs" in (tmp_path / "none" / "results.md").read_text(encoding="utf8")
    # Multi-label classes: no top-class ECE, reported as n/a with the reason.
    multi = calibration_report([{"NEGATIVE": 0.7, "POSITIVE": 0.6}], [("en", "NEGATIVE")], ["en"], 15, exclusive=False)
    assert multi["measured"] is False and multi.get("ece_before") is None
    results["dev"]["systems"]["bow"]["calibration"] = multi
    assert "| bow | n/a | n/a | n/a | multi-label classes:" in "\n".join(calibration_markdown(results["dev"]))


@pytest.mark.parametrize(
    "content,expected",
    [
        ("text\tlabel\nGreat food.\t1\n\"Quoted start\tno\t0\n", None),
        ("text\tlabel\nGreat food.\t1\n\"Quoted start.\t0\n", (["Great food.", '"Quoted start.'], [("en", "POSITIVE"), ("en", "NEGATIVE")])),
        ("text\tlabel\nok\t2\n", None),
        ("txt\tlab\nok\t1\n", None),
    ],
)
def test_read_ood(tmp_path, content, expected):
    import typer

    path = tmp_path / "en_test.tsv"
    path.write_text(content, encoding="utf8")
    if expected is None:
        with pytest.raises(typer.BadParameter, match=r"en_test\.tsv:\d"):
            read_ood(path)
    else:
        assert read_ood(path) == expected


def write_labelled(folder: Path, rows) -> None:
    """One DocBin of teacher-labelled docs: rows of (lang, P(POSITIVE), gold label or None)."""
    write_docbin(folder / "0.spacy", [(f"doc {i}", p, lang, gold) for i, (lang, p, gold) in enumerate(rows)])


def test_label_stats_with_an_extra_folder(tmp_path):
    labelled, more = tmp_path / "labelled", tmp_path / "labelled_more"
    write_labelled(labelled / "gold", [("de", 0.9, "POSITIVE"), ("de", 0.8, "NEGATIVE"), ("ja", 0.2, "NEGATIVE")])
    write_labelled(labelled / "transfer", [("de", 0.6, None)])
    write_labelled(more / "transfer_more", [("ja", 0.7, None), ("ja", 0.1, None)])
    write_labelled(more / "empty", [])
    prefix = tmp_path / "stats"
    label_stats.main(labelled, prefix, parts="gold,transfer", extra=more, label="POSITIVE")
    import json

    stats = json.loads(prefix.with_suffix(".json").read_text(encoding="utf8"))
    assert list(stats) == ["gold", "transfer", "empty", "transfer_more"]
    assert stats["gold"]["all"]["n_docs"] == 3 and stats["gold"]["de"]["gold_accuracy"] == 0.5
    assert stats["gold"]["all"]["mean_prob"]["POSITIVE"] == pytest.approx((0.9 + 0.8 + 0.2) / 3)
    assert stats["transfer_more"]["ja"]["n_docs"] == 2 and stats["transfer_more"]["ja"]["argmax_share"]["POSITIVE"] == 0.5
    assert "gold_accuracy" not in stats["transfer_more"]["all"] and stats["empty"] == {}
    md = prefix.with_suffix(".md").read_text(encoding="utf8")
    assert "| empty | all | 0 | - | - | - |" in md and "| transfer_more | ja | 2 | 0.400 | 50.0 % | - |" in md


@pytest.mark.parametrize(
    "make_extra,message",
    [
        (lambda root: root / "missing", "not a folder"),
        (lambda root: (write_labelled(root / "more" / "gold", [("de", 0.5, None)]), root / "more")[1], "also parts of"),
        (lambda root: ((root / "more" / "part").mkdir(parents=True), root / "more")[1], "no .spacy files"),
    ],
)
def test_label_stats_bad_extra(tmp_path, make_extra, message):
    import typer

    write_labelled(tmp_path / "labelled" / "gold", [("de", 0.9, "POSITIVE")])
    with pytest.raises(typer.BadParameter, match=message):
        label_stats.main(tmp_path / "labelled", tmp_path / "stats", parts="gold", extra=make_extra(tmp_path), label="POSITIVE")
    assert not (tmp_path / "stats.json").exists()
