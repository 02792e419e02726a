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
    create_init_logit_mix,
)
from spacy_distill.pipeline.models import predict_with_token_vectors

from .util import (
    SOFT_DATA,
    STUDENT_BOW_CONFIG,
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


def test_mix_config_holds_exactly_the_two_trained_models():
    configs = ROOT / "configs"
    assert _model_block(configs / "student_mix.cfg", "first") == _model_block(configs / "student.cfg")
    assert _model_block(configs / "student_mix.cfg", "second") == _model_block(configs / "student_chars.cfg")
    mix, student = (Config().from_disk(configs / name, interpolate=False) for name in ("student_mix.cfg", "student.cfg"))
    assert mix["nlp"] == student["nlp"]
    assert mix["initialize"]["components"] == student["initialize"]["components"]


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
