"""The teacher-labelled corpus readers: v2's per-part caps and label-prior correction."""

import math
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from spacy.tokens import DocBin
from spacy.util import registry

from spacy_distill.pipeline.readers import (
    create_teacher_labelled_reader,
    create_teacher_labelled_reader_v2,
    iter_labelled_docs,
    teacher_prior_shift,
)
from spacy_distill.pipeline.teacher_scores import (
    get_teacher_logits,
    get_teacher_probs,
    set_teacher_scores,
)

from .util import blank_xx


def write_part(root: Path, part: str, rows, gold: bool = False) -> None:
    """One DocBin per part: rows of (lang, P(POSITIVE)); logits are log-probs, as `label` stores them."""
    nlp = blank_xx()
    db = DocBin(store_user_data=True)
    for j, (lang, p) in enumerate(rows):
        doc = nlp.make_doc(f"{part} {lang} {j}")
        doc.user_data["lang"] = lang
        set_teacher_scores(
            doc, {"NEGATIVE": 1 - p, "POSITIVE": p}, {"NEGATIVE": math.log(1 - p), "POSITIVE": math.log(p)}
        )
        if gold:
            doc.cats = {"NEGATIVE": float(p <= 0.5), "POSITIVE": float(p > 0.5)}
        db.add(doc)
    (root / part).mkdir(parents=True, exist_ok=True)
    db.to_disk(root / part / "0.spacy")


@pytest.fixture
def labelled(tmp_path):
    write_part(tmp_path, "gold", [("en", 0.9), ("en", 0.2), ("de", 0.7)], gold=True)
    # en transfer: mean P(POSITIVE) = (0.9 + 0.7 + 0.4 + 0.8) / 4 = 0.7; de: 0.5 exactly.
    write_part(tmp_path, "transfer", [("en", 0.9), ("en", 0.7), ("en", 0.4), ("en", 0.8), ("de", 0.6), ("de", 0.4)])
    write_part(tmp_path, "ud", [("en", 0.5), ("de", 0.3)])
    return tmp_path


@pytest.mark.parametrize(
    "probs,expected",
    [
        # Uniform mean: no shift.
        ([[0.5, 0.5]], [0.0, 0.0]),
        ([[0.2, 0.8], [0.8, 0.2]], [0.0, 0.0]),
        # Mean (0.25, 0.75): shift = -log(2 * mean).
        ([[0.25, 0.75]], [-math.log(0.5), -math.log(1.5)]),
        ([[0.1, 0.9], [0.3, 0.7], [0.6, 0.4]], [-math.log(2 / 3), -math.log(4 / 3)]),
        # Three classes, mean (0.5, 0.25, 0.25): shift = -log(3 * mean).
        ([[0.5, 0.25, 0.25]], [-math.log(1.5), -math.log(0.75), -math.log(0.75)]),
    ],
)
def test_teacher_prior_shift(probs, expected):
    assert teacher_prior_shift(probs) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("probs", [[], [[0.3, 0.3]], [[0.9, 0.9], [0.1, 0.1]]])
def test_teacher_prior_shift_rejects_non_exclusive_or_empty(probs):
    with pytest.raises(ValueError):
        teacher_prior_shift(probs)


@pytest.mark.parametrize(
    "caps,langs,expected",
    [
        (None, None, {"gold": 3, "transfer": 6, "ud": 2}),
        ({"transfer": 1}, None, {"gold": 3, "transfer": 2, "ud": 2}),
        ({"transfer": 0, "ud": 0}, None, {"gold": 3}),
        ({"transfer": -1}, ["de"], {"gold": 1, "transfer": 2, "ud": 1}),
        ({"transfer": 3, "gold": 1}, ["en"], {"gold": 1, "transfer": 3, "ud": 1}),
    ],
)
def test_caps_per_part_and_language(labelled, caps, langs, expected):
    counts = {}
    for part, _ in iter_labelled_docs(labelled, blank_xx().vocab, langs=langs, max_per_lang=caps):
        counts[part] = counts.get(part, 0) + 1
    assert counts == expected


def test_caps_keep_the_first_docs_in_file_order(labelled):
    reader = create_teacher_labelled_reader_v2(str(labelled), max_per_lang={"transfer": 2, "gold": 0, "ud": 0})
    assert [eg.reference.text for eg in reader(blank_xx())] == [
        "transfer en 0", "transfer en 1", "transfer de 4", "transfer de 5"
    ]


def test_prior_correction_exact_values(labelled):
    reader = create_teacher_labelled_reader_v2(str(labelled), prior_correction=True)
    out = {eg.reference.text: eg.reference for eg in reader(blank_xx())}
    # en transfer: prior 0.7 -> p' = p/0.7 / (p/0.7 + (1-p)/0.3).
    for j, p in enumerate([0.9, 0.7, 0.4, 0.8]):
        doc = out[f"transfer en {j}"]
        expected = (p / 0.7) / (p / 0.7 + (1 - p) / 0.3)
        assert get_teacher_probs(doc)["POSITIVE"] == pytest.approx(expected, abs=1e-9)
        logits = get_teacher_logits(doc)
        assert logits["POSITIVE"] - logits["NEGATIVE"] == pytest.approx(math.log(expected / (1 - expected)), abs=1e-9)
    corrected = [get_teacher_probs(out[f"transfer en {j}"])["POSITIVE"] for j in range(4)]
    # The corrected mean moves to 0.5 (one Saerens step: close, not exact).
    assert abs(numpy.mean(corrected) - 0.5) < abs(0.7 - 0.5) / 2
    # de transfer has a uniform prior: unchanged. Gold docs are never shifted.
    assert get_teacher_probs(out["transfer de 4"])["POSITIVE"] == pytest.approx(0.6, abs=1e-12)
    assert get_teacher_probs(out["gold en 0"])["POSITIVE"] == pytest.approx(0.9, abs=1e-12)
    # Each part and language has its own prior: ud en is a single doc at 0.5.
    assert get_teacher_probs(out["ud en 0"])["POSITIVE"] == pytest.approx(0.5, abs=1e-12)
    # A one-doc group is moved to exactly uniform.
    assert get_teacher_probs(out["ud de 1"])["POSITIVE"] == pytest.approx(0.5, abs=1e-12)


def test_prior_correction_is_the_same_every_epoch_and_off_by_default(labelled):
    reader = create_teacher_labelled_reader_v2(str(labelled), prior_correction=True)
    nlp = blank_xx()
    first = [get_teacher_probs(eg.reference) for eg in reader(nlp)]
    second = [get_teacher_probs(eg.reference) for eg in reader(nlp)]
    assert first == second
    plain = create_teacher_labelled_reader_v2(str(labelled))
    v1 = create_teacher_labelled_reader(str(labelled))
    assert [get_teacher_probs(eg.reference) for eg in plain(nlp)] == [get_teacher_probs(eg.reference) for eg in v1(nlp)]


def test_v2_errors_name_the_problem(tmp_path):
    nlp = blank_xx()
    with pytest.raises(ValueError, match="does not exist"):
        list(create_teacher_labelled_reader_v2(str(tmp_path / "missing"))(nlp))
    with pytest.raises(ValueError, match="no path"):
        list(create_teacher_labelled_reader_v2(None)(nlp))
    db = DocBin(store_user_data=True)
    db.add(nlp.make_doc("unlabelled"))
    (tmp_path / "transfer").mkdir()
    db.to_disk(tmp_path / "transfer" / "0.spacy")
    with pytest.raises(ValueError, match=r"0\.spacy, doc 0 has no teacher scores"):
        list(create_teacher_labelled_reader_v2(str(tmp_path))(nlp))


def test_v2_resolves_from_the_registry(labelled):
    block = {"@readers": "spacy-distill.TeacherLabelled.v2", "path": str(labelled), "max_per_lang": {"ud": 0}, "prior_correction": True}
    reader = registry.resolve({"x": block})["x"]
    assert len(list(reader(blank_xx()))) == 9


def test_v2_entry_point_in_a_fresh_process(labelled):
    code = (
        "import sys, spacy\n"
        "from spacy.util import registry\n"
        "assert 'spacy_distill' not in sys.modules\n"
        f"r = registry.resolve({{'x': {{'@readers': 'spacy-distill.TeacherLabelled.v2', 'path': {str(labelled)!r}}}}})['x']\n"
        "print(len(list(r(spacy.blank('xx')))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "11"
