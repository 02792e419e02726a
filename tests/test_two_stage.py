"""The two-stage student: an n-gram model trained alone (``spacy-distill.NgramTextCat.v1``),
its weights copied into the student's ``bow`` block (``spacy-distill.init_layer_from.v1``)
and kept there (``spacy-distill.frozen.v1``) while the BiLSTM trains."""

import copy
import shutil
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.util import registry
from thinc.api import Adam, Config, Linear, Model, chain

from spacy_distill.pipeline.layers import frozen
from spacy_distill.pipeline.weights import copy_weights, create_init_layer_from

from .util import SOFT_DATA, STUDENT_CHARS_CONFIG, blank_xx, soft_examples, train

BOW = STUDENT_CHARS_CONFIG["model"]["bow"]
NGRAM_CONFIG = {"model": {"@architectures": "spacy-distill.NgramTextCat.v1", "bow": BOW}, "store_tensor": False}


def _student_config(bow_block: dict) -> dict:
    config = copy.deepcopy(STUDENT_CHARS_CONFIG)
    config["model"]["bow"] = bow_block
    return config


FROZEN_STUDENT = _student_config({"@layers": "spacy-distill.frozen.v1", "layer": copy.deepcopy(BOW)})


def _params(model: Model) -> list:
    return [node.get_param(name).copy() for node in model.walk() for name in node.param_names]


def _ngram_pipeline(n_iter: int = 40):
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=NGRAM_CONFIG)
    examples = soft_examples(nlp)
    losses = train(nlp, examples, n_iter=n_iter)
    return nlp, examples, losses


def _docs_linear() -> Model:
    """A docs → rows layer with weights, for the frozen wrapper's unit tests."""
    nlp = blank_xx()
    words = registry.resolve({"x": {**BOW["*"]["words"], "nO": 2}})["x"]
    docs = [nlp.make_doc(text) for text in ("good stuff", "bad stuff here")]
    return words, docs


@pytest.mark.parametrize("L2", [0.0, 0.01])
def test_frozen_layer_predicts_as_the_layer_and_never_changes(L2):
    layer, docs = _docs_linear()
    model = frozen(layer)
    model.initialize(X=docs)
    # Weights that are not zero, so that weight decay would show.
    for node in layer.walk():
        for name in node.param_names:
            node.set_param(name, node.get_param(name) + 0.5)
    before = _params(model)
    Y, backprop = model(docs, is_train=True)
    numpy.testing.assert_array_equal(Y, layer.predict(docs))
    assert backprop(numpy.ones_like(Y)) == []
    model.finish_update(Adam(0.1, L2=L2, L2_is_weight_decay=True, grad_clip=0.0))
    for old, new in zip(before, _params(model)):
        numpy.testing.assert_array_equal(old, new)
    assert model.get_dim("nO") == 2


def test_the_layers_around_a_frozen_one_still_train():
    """A frozen part inside a chain: the part keeps its weights, the layer above it learns."""
    layer, docs = _docs_linear()
    model = chain(frozen(layer), Linear(nO=2, nI=2))
    model.initialize(X=docs)
    frozen_before, top_before = _params(model.layers[0]), _params(model.layers[1])
    optimizer = Adam(0.1)
    for _ in range(3):
        Y, backprop = model(docs, is_train=True)
        backprop(Y - numpy.asarray([[1.0, 0.0], [0.0, 1.0]], dtype="f"))
        model.finish_update(optimizer)
    assert all((a == b).all() for a, b in zip(frozen_before, _params(model.layers[0])))
    assert not all((a == b).all() for a, b in zip(top_before, _params(model.layers[1])))


def test_ngram_textcat_overfits_round_trips_and_handles_empty_docs(tmp_path):
    nlp, examples, losses = _ngram_pipeline()
    assert losses["distill_textcat"] < 0.05
    texts = [eg.reference.text for eg in examples] + ["", " "]
    cats = [doc.cats for doc in nlp.pipe(texts, batch_size=3)]
    assert cats == [nlp(text).cats for text in texts]
    assert cats[-2] == {"NEGATIVE": 0.5, "POSITIVE": 0.5}  # no n-grams: zero logits
    # Overfit: each training doc's probability is the teacher's.
    for (_, p), doc_cats in zip(SOFT_DATA, cats):
        assert doc_cats["POSITIVE"] == pytest.approx(p, abs=0.1)
    nlp.to_disk(tmp_path / "ngrams")
    loaded = spacy.load(tmp_path / "ngrams")
    assert [loaded(text).cats for text in texts] == [nlp(text).cats for text in texts]
    model = loaded.get_pipe("distill_textcat").model
    assert model.attrs["outputs"] == "logits" and model.get_ref("bow") is model


def test_copy_weights_copies_exactly_through_a_frozen_wrapper():
    source_nlp, examples, _ = _ngram_pipeline(n_iter=10)
    student = blank_xx()
    student.add_pipe("distill_textcat", config=FROZEN_STUDENT)
    student.initialize(lambda: soft_examples(student))
    source = source_nlp.get_pipe("distill_textcat").model.get_ref("bow")
    target = student.get_pipe("distill_textcat").model.get_ref("bow")
    n = copy_weights(source, target)
    assert n == sum(p.size for p in _params(source))
    for a, b in zip(_params(source), _params(target)):
        numpy.testing.assert_array_equal(a, b)
    docs = [eg.predicted for eg in examples]
    numpy.testing.assert_array_equal(source.predict(docs), target.predict(docs))


def _linear(nO: int, nI: int) -> Model:
    model = Linear(nO=nO, nI=nI)
    model.initialize()
    return model


@pytest.mark.parametrize(
    "source,target,message",
    [
        (lambda: _linear(2, 3), lambda: chain(_linear(2, 3), _linear(2, 2)), "has 1 layers with weights"),
        (lambda: _linear(2, 3), lambda: _linear(2, 4), r"shape \(2, 3\) in the source but \(2, 4\)"),
        (lambda: _linear(2, 3), lambda: Linear(nO=2, nI=3), "initialize the target model first"),
        (lambda: _linear(2, 3), lambda: frozen(_docs_linear()[0]), "'linear' .* in the source but 'sparse_linear'"),
    ],
)
def test_copy_weights_names_the_mismatch(source, target, message):
    with pytest.raises(ValueError, match=message):
        copy_weights(source(), target())


def test_init_layer_from_then_train_keeps_the_ngrams_and_trains_the_bilstm(tmp_path):
    ngrams, examples, _ = _ngram_pipeline()
    ngrams.to_disk(tmp_path / "ngrams")
    student = blank_xx()
    student.add_pipe("distill_textcat", config=FROZEN_STUDENT)
    init = registry.resolve(
        {"x": {"@callbacks": "spacy-distill.init_layer_from.v1", "path": str(tmp_path / "ngrams"),
               "component": "distill_textcat", "ref": "bow"}}
    )["x"]
    optimizer = student.initialize(lambda: examples)
    init(student)
    model = student.get_pipe("distill_textcat").model
    docs = [eg.predicted for eg in examples]
    source_logits = ngrams.get_pipe("distill_textcat").model.predict(docs)
    numpy.testing.assert_array_equal(model.get_ref("bow").predict(docs), source_logits)
    bow_before, lstm_before = _params(model.get_ref("bow")), _params(model.get_ref("encoder"))
    for _ in range(5):
        student.update(examples, sgd=optimizer)
    assert all((a == b).all() for a, b in zip(bow_before, _params(model.get_ref("bow"))))
    assert not all((a == b).all() for a, b in zip(lstm_before, _params(model.get_ref("encoder"))))
    # The student keeps the n-gram weights in its own files: it loads without the stage-1 pipeline.
    student.to_disk(tmp_path / "student")
    shutil.rmtree(tmp_path / "ngrams")
    loaded = spacy.load(tmp_path / "student")
    texts = [doc.text for doc in docs] + [""]
    assert [loaded(text).cats for text in texts] == [student(text).cats for text in texts]
    assert [doc.cats for doc in loaded.pipe(texts, batch_size=4)] == [loaded(text).cats for text in texts]
    numpy.testing.assert_array_equal(
        loaded.get_pipe("distill_textcat").model.get_ref("bow").predict(docs), source_logits
    )


@pytest.mark.parametrize(
    "setup,component,ref,message",
    [
        (lambda path: None, "distill_textcat", "bow", "no trained pipeline at"),
        (lambda path: _ngram_pipeline(1)[0].to_disk(path), "textcat", "bow", "has no 'textcat'"),
        (lambda path: _ngram_pipeline(1)[0].to_disk(path), "distill_textcat", "encoder", "no ref 'encoder'"),
    ],
)
def test_init_layer_from_names_what_is_missing(tmp_path, setup, component, ref, message):
    setup(tmp_path / "ngrams")
    student = blank_xx()
    student.add_pipe("distill_textcat", config=FROZEN_STUDENT)
    student.initialize(lambda: soft_examples(student))
    with pytest.raises(ValueError, match=message):
        create_init_layer_from(tmp_path / "ngrams", component=component, ref=ref)(student)


def test_the_two_stage_configs_stay_copies_of_the_student_config():
    """spaCy configs cannot include one another, so stage 1 and stage 2 copy
    configs/student.cfg: a change made there and not in the copies would train the
    two stages on other data or blocks, and init_layer_from would fail only at
    train time. They may differ only where the two-stage student needs it."""
    configs = Path(__file__).parent.parent / "configs"
    base, stage1, stage2 = (
        Config().from_disk(configs / name, interpolate=False)
        for name in ("student.cfg", "student_ngrams.cfg", "student_two_stage.cfg")
    )
    # The student is the BiLSTM alone (bow = null); the two stages add one n-gram block.
    assert base["components"]["textcat"]["model"]["bow"] is None
    bow = stage1["components"]["textcat"]["model"]["bow"]
    assert stage2["components"]["textcat"]["model"]["bow"] == {"@layers": "spacy-distill.frozen.v1", "layer": bow}
    assert stage2["initialize"]["after_init"]["@callbacks"] == "spacy-distill.init_layer_from.v1"
    # Stage 2 is the student with only the frozen block, its source path and the callback changed.
    unwrapped = copy.deepcopy(dict(stage2))
    unwrapped["components"]["textcat"]["model"]["bow"] = None
    unwrapped["initialize"]["after_init"] = base["initialize"]["after_init"]
    del unwrapped["paths"]["ngrams"]
    assert unwrapped == dict(base)
    # Stage 1 reads and trains as the student does; only its model is the n-gram block alone.
    for section in ("paths", "system", "nlp", "corpora", "training", "pretraining"):
        assert stage1[section] == base[section], section
    assert stage1["components"]["textcat"]["loss"] == base["components"]["textcat"]["loss"]
