"""Two trained classifiers' logits mixed (``spacy-distill.LogitMix.v1``) and the callback that
assembles the shipped student from trained pipelines (``spacy-distill.init_logit_mix.v1``):
the exact mix, token vectors, training, round trip, empty docs, pipe == call, the weight
chosen on dev, errors, the configs of the `student-mix` step, and loading without torch."""

import copy
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy
import pytest
import spacy
from spacy.language import Language
from spacy.tokens import DocBin
from spacy.training import Example
from thinc.api import Config

from spacy_distill.pipeline.mix import (
    MIX_WEIGHT,
    build_logit_mix,
    choose_mix_weight,
    create_fold_char_mix,
    create_init_logit_mix,
    output_terms,
)
from spacy_distill.pipeline.models import predict_with_token_vectors

from .util import (
    SOFT_DATA,
    STUDENT_BOW_CONFIG,
    STUDENT_CHARS_CONFIG,
    assert_fits_soft_data,
    blank_xx,
    run_without_torch,
    soft_examples,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [text for text, _ in SOFT_DATA]

# The small chars-alone model (configs/student_chars.cfg's shape).
CHARS_MODEL: Dict[str, Any] = {
    "@architectures": "spacy-distill.NgramTextCat.v1",
    "bow": {
        "@architectures": "spacy-distill.CharNgramBOW.v1",
        "exclusive_classes": True,
        "min_n": 1,
        "max_n": 4,
        "length": 4096,
        "no_output_layer": True,
        "nO": None,
    },
}


def mix_config(weight: float = 0.5) -> Dict[str, Any]:
    return {
        "model": {
            "@architectures": "spacy-distill.LogitMix.v1",
            "weight": weight,
            "first": copy.deepcopy(STUDENT_BOW_CONFIG["model"]),
            "second": copy.deepcopy(CHARS_MODEL),
        }
    }


def trained(config: Dict[str, Any], n_iter: int, seed: int) -> Language:
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", name="textcat", config=config)
    train(nlp, soft_examples(nlp), n_iter=n_iter, seed=seed)
    return nlp


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Tuple[Path, Path]:
    """Two trained pipelines on disk: the BiLSTM student and the chars-alone model."""
    root = tmp_path_factory.mktemp("parts")
    trained(STUDENT_BOW_CONFIG, 15, 0).to_disk(root / "student")
    trained({"model": CHARS_MODEL}, 15, 1).to_disk(root / "chars")
    return root / "student", root / "chars"


def assembled(parts: Tuple[Path, Path], weight: float = 0.5) -> Language:
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", name="textcat", config=mix_config(weight))
    nlp.initialize(lambda: soft_examples(nlp))
    create_init_logit_mix(*parts)(nlp)
    return nlp


def logits(nlp: Language, texts) -> numpy.ndarray:
    pipe = nlp.get_pipe(nlp.pipe_names[0])
    return numpy.asarray(pipe.model.predict([nlp.make_doc(t) for t in texts]))


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.8, 1.0])
def test_mix_is_the_weighted_sum_of_the_two_models(parts, weight):
    nlp = assembled(parts, weight)
    student, chars = (spacy.load(p) for p in parts)
    expected = (1 - weight) * logits(student, TEXTS) + weight * logits(chars, TEXTS)
    numpy.testing.assert_allclose(logits(nlp, TEXTS), expected, rtol=1e-6, atol=1e-6)


def test_token_vectors_are_the_first_models(parts):
    nlp = assembled(parts, 0.7)
    student = spacy.load(parts[0])
    docs = [nlp.make_doc(t) for t in TEXTS]
    mixed, vectors = predict_with_token_vectors(nlp.get_pipe("textcat").model, docs)
    _, expected = predict_with_token_vectors(student.get_pipe("textcat").model, docs)
    assert vectors is not None and len(vectors) == len(docs)
    for got, want in zip(vectors, expected):
        numpy.testing.assert_allclose(got, want, rtol=1e-6)
    numpy.testing.assert_allclose(mixed, logits(nlp, TEXTS), rtol=1e-6)


def test_a_first_model_without_token_vectors_mixes_too():
    config = mix_config(0.5)
    config["model"]["first"] = copy.deepcopy(CHARS_MODEL)
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=config)
    nlp.initialize(lambda: soft_examples(nlp))
    model = nlp.get_pipe("distill_textcat").model
    first, second = model.get_ref("first"), model.get_ref("second")
    docs = [nlp.make_doc(t) for t in TEXTS]
    numpy.testing.assert_allclose(model.predict(docs), 0.5 * first.predict(docs) + 0.5 * second.predict(docs), rtol=1e-6)
    assert predict_with_token_vectors(model, docs)[1] is None


@pytest.mark.parametrize("weight", [-0.1, 1.5, "0.5", None])
def test_bad_weight_is_an_error(weight):
    with pytest.raises(ValueError, match="weight must be a number in"):
        build_logit_mix(build_chars(), build_chars(), weight=weight)


def build_chars():
    from spacy.util import registry

    return registry.resolve(Config({"m": CHARS_MODEL}))["m"]


def test_mix_trains_on_soft_labels():
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=mix_config(0.5))
    losses = train(nlp, soft_examples(nlp), n_iter=60, seed=0)
    assert_fits_soft_data(nlp, losses)


def test_round_trip_keeps_the_chosen_weight(parts, tmp_path):
    nlp = assembled(parts, 0.5)
    nlp.get_pipe("textcat").model.attrs[MIX_WEIGHT] = 0.3
    nlp.to_disk(tmp_path / "mix")
    loaded = spacy.load(tmp_path / "mix")
    # The config still says 0.5: the weight comes with the model's own data.
    assert loaded.config["components"]["textcat"]["model"]["weight"] == 0.5
    assert loaded.get_pipe("textcat").model.attrs[MIX_WEIGHT] == 0.3
    numpy.testing.assert_allclose(logits(loaded, TEXTS), logits(nlp, TEXTS), rtol=1e-6)
    restored = blank_xx()
    restored.add_pipe("distill_textcat", name="textcat", config=mix_config(0.9)).from_bytes(nlp.get_pipe("textcat").to_bytes())
    assert restored.get_pipe("textcat").model.attrs[MIX_WEIGHT] == 0.3


def test_empty_docs_and_pipe_equals_call(parts):
    nlp = assembled(parts, 0.6)
    texts = ["", *TEXTS[:3], "", " "]
    piped = list(nlp.pipe(texts, batch_size=2))
    for text, doc in zip(texts, piped):
        single = nlp(text)
        assert doc.cats == pytest.approx(single.cats, abs=1e-6)
        assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
        assert doc.tensor.shape[0] == len(doc)
    assert [doc.cats for doc in nlp.pipe(["", ""])] == [nlp("").cats] * 2


def gold_examples(nlp: Language, data) -> list:
    examples = []
    for text, p in data:
        doc = nlp.make_doc(text)
        examples.append(Example.from_dict(doc, {"cats": {"POSITIVE": float(p > 0.5), "NEGATIVE": float(p <= 0.5)}}))
    return examples


def test_choose_mix_weight_keeps_the_best_on_dev(parts):
    nlp = assembled(parts, 0.5)
    examples = gold_examples(nlp, SOFT_DATA)
    weights = [0.0, 0.5, 1.0]
    scores = choose_mix_weight(nlp, examples, weights)
    model = nlp.get_pipe("textcat").model
    for w in weights:
        model.attrs[MIX_WEIGHT] = w
        assert scores[str(w)] == pytest.approx(nlp.evaluate(examples)["cats_score"])
    best = max(weights, key=lambda w: scores[str(w)])
    assert nlp.meta["mix_weight"] == {"weight": best, "score": "cats_score", "scores": scores}
    # The first of equals: one weight given twice keeps the first.
    choose_mix_weight(nlp, examples, [0.5, 0.5])
    assert nlp.get_pipe("textcat").model.attrs[MIX_WEIGHT] == 0.5


def test_callback_with_dev_chooses_the_weight(parts, tmp_path):
    nlp = assembled(parts, 0.5)
    dev = tmp_path / "dev.spacy"
    DocBin(docs=[eg.reference for eg in gold_examples(nlp, SOFT_DATA)]).to_disk(dev)
    create_init_logit_mix(*parts, dev=dev, weights=[0.2, 0.9])(nlp)
    chosen = nlp.meta["mix_weight"]
    assert chosen["weight"] in (0.2, 0.9) and set(chosen["scores"]) == {"0.2", "0.9"}
    assert nlp.get_pipe("textcat").model.attrs[MIX_WEIGHT] == chosen["weight"]


def test_callback_errors_say_what(parts, tmp_path):
    nlp = assembled(parts)
    with pytest.raises(ValueError, match="no trained pipeline at"):
        create_init_logit_mix(tmp_path / "missing", parts[1])(nlp)
    # The layer trees must match: the chars model cannot go into `first`.
    with pytest.raises(ValueError, match="first from .*layers with weights"):
        create_init_logit_mix(parts[1], parts[1])(nlp)
    with pytest.raises(ValueError, match="has no 'tc'"):
        create_init_logit_mix(*parts, component="tc")(nlp)
    with pytest.raises(ValueError, match="weight must be a number"):
        create_init_logit_mix(*parts, weights=[0.5, 2.0])
    with pytest.raises(ValueError, match="no weights"):
        create_init_logit_mix(*parts, weights=[])
    student = blank_xx()
    student.add_pipe("distill_textcat", name="textcat", config=STUDENT_BOW_CONFIG)
    student.initialize(lambda: soft_examples(student))
    with pytest.raises(ValueError, match="not a spacy-distill.LogitMix.v1"):
        create_init_logit_mix(*parts)(student)


def test_callback_checks_the_labels(parts):
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", name="textcat", config=mix_config())
    examples = [Example.from_dict(nlp.make_doc(t), {"cats": {"A": 1.0, "B": 0.0}}) for t in TEXTS]
    nlp.initialize(lambda: examples)
    with pytest.raises(ValueError, match="has the labels"):
        create_init_logit_mix(*parts)(nlp)


def _model_block(path: Path, *keys: str) -> Dict[str, Any]:
    block = Config().from_disk(path, interpolate=False)["components"]["textcat"]["model"]
    for key in keys:
        block = block[key]
    return dict(block)


def test_mix_configs_hold_exactly_the_students_model():
    configs = ROOT / "configs"
    student = _model_block(configs / "student.cfg")
    mixed = _model_block(configs / "student_mix.cfg")
    # The mixed pipeline is the BiLSTM student (alone: bow = null) plus exactly the
    # fitted blocks, so that the fold fills them.
    assert student["bow"] is None
    assert {k: v for k, v in mixed.items() if k != "bow"} == {k: v for k, v in student.items() if k != "bow"}
    assert mixed["bow"] == _model_block(configs / "student_chars.cfg", "bow")
    mix, base = (Config().from_disk(configs / name, interpolate=False) for name in ("student_mix.cfg", "student.cfg"))
    assert mix["nlp"] == base["nlp"]
    mix_textcat = {k: v for k, v in mix["components"]["textcat"].items() if k != "model"}
    assert mix_textcat == {k: v for k, v in base["components"]["textcat"].items() if k != "model"}
    assert mix["initialize"]["components"] == base["initialize"]["components"]
    assert mix["initialize"]["after_init"]["@callbacks"] == "spacy-distill.fold_linear_mix.v1"


# The fold: the student with a char block (STUDENT_CHARS_CONFIG) and that block fitted alone.
CHARS_BLOCK = STUDENT_CHARS_CONFIG["model"]["bow"]["*"]["chars"]


@pytest.fixture(scope="module")
def fold_parts(tmp_path_factory) -> Tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fold")
    trained(STUDENT_CHARS_CONFIG, 15, 0).to_disk(root / "student")
    block = {"@architectures": "spacy-distill.NgramTextCat.v1", "bow": {**CHARS_BLOCK, "no_output_layer": True}}
    trained({"model": block}, 15, 1).to_disk(root / "chars")
    return root / "student", root / "chars"


def folded(parts: Tuple[Path, Path], **kwargs: Any) -> Language:
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", name="textcat", config=copy.deepcopy(STUDENT_CHARS_CONFIG))
    nlp.initialize(lambda: soft_examples(nlp))
    create_fold_char_mix(*parts, **kwargs)(nlp)
    return nlp


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.9, 1.0])
def test_fold_predicts_the_mix(fold_parts, weight):
    nlp = folded(fold_parts, weight=weight)
    student, chars = (spacy.load(p) for p in fold_parts)
    texts = [*TEXTS, "Great, terrible.", "x"]
    expected = (1 - weight) * logits(student, texts) + weight * logits(chars, texts)
    numpy.testing.assert_allclose(logits(nlp, texts), expected, rtol=1e-5, atol=1e-5)
    assert nlp.meta["mix_weight"]["weight"] == weight
    # The same as the general LogitMix of the two pipelines.
    mix = blank_xx()
    config = mix_config(weight)
    config["model"]["first"] = copy.deepcopy(STUDENT_CHARS_CONFIG["model"])
    config["model"]["second"] = {"@architectures": "spacy-distill.NgramTextCat.v1", "bow": {**CHARS_BLOCK, "no_output_layer": True}}
    mix.add_pipe("distill_textcat", name="textcat", config=config)
    mix.initialize(lambda: soft_examples(mix))
    create_init_logit_mix(*fold_parts)(mix)
    for text in texts:
        assert nlp(text).cats == pytest.approx(mix(text).cats, abs=1e-5)


def test_output_terms_scale_the_logits(fold_parts):
    model = spacy.load(fold_parts[0]).get_pipe("textcat").model
    terms = output_terms(model)
    # The BiLSTM's output layer, the word n-grams and the char n-grams.
    assert [t.name for t in terms] == ["linear", "sparse_linear", "sparse_linear"]
    docs = [spacy.load(fold_parts[0]).make_doc(t) for t in TEXTS]
    before = model.predict(docs)
    for term in terms:
        term.set_param("W", term.get_param("W") * 0.25)
        term.set_param("b", term.get_param("b") * 0.25)
    numpy.testing.assert_allclose(model.predict(docs), 0.25 * before, rtol=1e-5, atol=1e-6)


def test_fold_chooses_on_dev_and_round_trips(fold_parts, tmp_path):
    dev = tmp_path / "dev.spacy"
    nlp0 = blank_xx()
    DocBin(docs=[eg.reference for eg in gold_examples(nlp0, SOFT_DATA)]).to_disk(dev)
    nlp = folded(fold_parts, dev=dev, weights=[0.1, 0.6])
    chosen = nlp.meta["mix_weight"]
    assert chosen["weight"] in (0.1, 0.6) and set(chosen["scores"]) == {"0.1", "0.6"}
    assert chosen["scores"][str(chosen["weight"])] == max(chosen["scores"].values())
    nlp.to_disk(tmp_path / "folded")
    loaded = spacy.load(tmp_path / "folded")
    numpy.testing.assert_allclose(logits(loaded, TEXTS), logits(nlp, TEXTS), rtol=1e-6)
    texts = ["", *TEXTS[:3], ""]
    assert [d.cats for d in loaded.pipe(texts, batch_size=2)] == [loaded(t).cats for t in texts]
    assert loaded.meta["mix_weight"]["weight"] == chosen["weight"]


def test_fold_errors_say_what(fold_parts, parts, tmp_path):
    with pytest.raises(ValueError, match="no trained pipeline at"):
        folded((tmp_path / "missing", fold_parts[1]))
    # The chars model of the LogitMix tests has a 4,096-row table, the student's 16,384.
    with pytest.raises(ValueError, match="differ in length"):
        folded((fold_parts[0], parts[1]))
    # A student without a char block: its layers do not match, or no block to fold into.
    with pytest.raises(ValueError, match="first from|exactly one character"):
        folded((parts[0], fold_parts[1]))
    with pytest.raises(ValueError, match="weight must be a number"):
        create_fold_char_mix(*fold_parts, weight=1.2)


def test_mixed_pipeline_loads_and_runs_without_torch(parts, tmp_path):
    nlp = assembled(parts, 0.4)
    nlp.to_disk(tmp_path / "mix")
    expected = nlp("Great product, works perfectly and arrived early.").cats["POSITIVE"]
    result = run_without_torch(
        f"""
        import spacy
        nlp = spacy.load({str(tmp_path / "mix")!r})
        p = nlp("Great product, works perfectly and arrived early.").cats["POSITIVE"]
        assert abs(p - {expected!r}) < 1e-6, p
        assert nlp.get_pipe("textcat").model.attrs["mix_weight"] == 0.4
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
