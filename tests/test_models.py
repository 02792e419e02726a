"""The BiLSTMTextCat architectures expose their token vectors themselves, and a
student saved before they did (its top layers thinc's ``chain``/``add``) still
loads and scores the same.

``legacy_bilstm_textcat`` below is the v1/v2 model as built before the change,
kept here verbatim (thinc's chain and add over the same layers) to stand in for
a pipeline trained then: the component is given that model, trained, saved with
a config naming ``spacy-distill.BiLSTMTextCat.v1``/``.v2``, and loaded by the
current code.
"""

from typing import List, Optional

import numpy
import pytest
import spacy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import LSTM, Linear, Model, add, chain, with_padded
from thinc.types import Floats2d

from spacy_distill.pipeline.layers import (
    MeanMaxPool,
    output_width,
    with_nonempty,
    with_nonempty_docs,
)
from spacy_distill.pipeline.models import FORWARD_WITH_TOKEN_VECTORS, predict_with_token_vectors

from .util import SOFT_DATA, STUDENT_CHARS_CONFIG, STUDENT_CONFIG, blank_xx, soft_examples, train

TEXTS = [text for text, _ in SOFT_DATA] + ["", "  "]


def legacy_bilstm_textcat(
    embed: Model, bow: Optional[Model] = None, depth: int = 1, dropout: float = 0.0,
    pooling: str = "meanmax", nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """BiLSTMTextCat.v1 (bow None) / .v2 as built before the models exposed token vectors."""
    width = output_width(embed)
    lstm = LSTM(nO=width, nI=width, bi=True, depth=depth, dropout=dropout)
    pool = MeanMaxPool(pooling)
    pool.set_dim("nI", width)
    pool.set_dim("nO", width * (2 if pooling == "meanmax" else 1))
    output = Linear(nO=nO, nI=pool.get_dim("nO"))
    encoder = chain(embed, with_nonempty(with_padded(lstm)))
    head = chain(pool, output)
    bilstm = chain(encoder, head)
    bilstm.set_ref("encoder", encoder)
    bilstm.set_ref("head", head)
    bilstm.set_ref("embed", embed)
    bilstm.set_ref("output_layer", output)
    bilstm.attrs["outputs"] = "logits"
    if bow is None:
        return bilstm
    bow = with_nonempty_docs(bow)
    model = add(bilstm, bow)
    for name in bilstm.ref_names:
        model.set_ref(name, bilstm.get_ref(name))
    model.set_ref("bow", bow)
    model.attrs["outputs"] = "logits"
    return model


def _legacy_pipeline(config: dict):
    """A pipeline whose config names the current architecture but whose model is the legacy one."""
    nlp = blank_xx()
    textcat = nlp.add_pipe("distill_textcat", config=config)
    block = nlp.config["components"]["distill_textcat"]["model"]
    parts = registry.resolve({"embed": block["embed"], "bow": block.get("bow")})
    textcat.model = legacy_bilstm_textcat(
        parts["embed"], parts["bow"], depth=block["depth"], dropout=block["dropout"], pooling=block["pooling"]
    )
    return nlp


def _params(model: Model) -> List[numpy.ndarray]:
    return [node.get_param(name) for node in model.walk() for name in node.param_names if node.has_param(name)]


@pytest.mark.parametrize("config", [STUDENT_CONFIG, STUDENT_CHARS_CONFIG], ids=["v1", "v2+words+chars"])
def test_student_saved_before_loads_and_scores_the_same(config, tmp_path):
    legacy = _legacy_pipeline(config)
    train(legacy, soft_examples(legacy), n_iter=20)
    legacy.to_disk(tmp_path / "student")
    legacy_model = legacy.get_pipe("distill_textcat").model
    assert FORWARD_WITH_TOKEN_VECTORS not in legacy_model.attrs
    loaded = spacy.load(tmp_path / "student")
    model = loaded.get_pipe("distill_textcat").model
    assert FORWARD_WITH_TOKEN_VECTORS in model.attrs
    # The saved weights load unchanged: the model serializes back to the same bytes.
    assert model.to_bytes() == legacy_model.to_bytes()
    docs = [legacy.make_doc(t) for t in TEXTS]
    expected = legacy_model.predict(docs)
    # What the component stored as doc.tensor before: the encoder's output.
    expected_vectors = legacy_model.get_ref("encoder").predict(docs)
    assert numpy.array_equal(model.predict(docs), expected)
    for doc, old, vectors in zip(loaded.pipe(TEXTS, batch_size=4), legacy.pipe(TEXTS, batch_size=4), expected_vectors):
        assert doc.cats == old.cats
        assert numpy.array_equal(doc.tensor, vectors)


# v1 and v2 as named in a config (the tests' students are v3, whose LSTM trains otherwise).
V1_CONFIG = {"model": {"@architectures": "spacy-distill.BiLSTMTextCat.v1",
                       "embed": {**STUDENT_CHARS_CONFIG["model"]["embed"]}}}
V2_CONFIG = {"model": {**STUDENT_CHARS_CONFIG["model"], "@architectures": "spacy-distill.BiLSTMTextCat.v2"}}


@pytest.mark.parametrize("config", [V1_CONFIG, V2_CONFIG], ids=["v1", "v2+words+chars"])
def test_model_trains_exactly_as_the_legacy_tree(config):
    # Same initialization, forward and backward as thinc's chain/add: a new v1/v2
    # student trains to the very weights it trained to before (thinc's LSTM
    # gradient included; v3 differs only there, tests/test_lstm.py).
    legacy = _legacy_pipeline(config)
    current = blank_xx()
    current.add_pipe("distill_textcat", config=config)
    losses = [train(nlp, soft_examples(nlp), n_iter=5)["distill_textcat"] for nlp in (legacy, current)]
    assert losses[0] == losses[1]
    old = _params(legacy.get_pipe("distill_textcat").model)
    new = _params(current.get_pipe("distill_textcat").model)
    assert len(old) == len(new) > 0
    assert all(numpy.array_equal(a, b) for a, b in zip(old, new))


@pytest.mark.parametrize("config", [STUDENT_CONFIG, STUDENT_CHARS_CONFIG], ids=["v1", "v2+words+chars"])
def test_token_vectors_come_from_the_forward_pass_of_the_logits(config):
    nlp = blank_xx()
    model = nlp.add_pipe("distill_textcat", config=config).model
    train(nlp, soft_examples(nlp), n_iter=3)
    docs = [nlp.make_doc(t) for t in TEXTS]
    logits, vectors = predict_with_token_vectors(model, docs)
    assert numpy.array_equal(logits, model.predict(docs))
    assert vectors is not None
    assert [v.shape for v in vectors] == [(len(doc), 32) for doc in docs]
    assert all(numpy.array_equal(a, b) for a, b in zip(vectors, model.get_ref("encoder").predict(docs)))


def test_models_without_token_vectors_give_none():
    nlp = blank_xx()
    bow = registry.resolve({"m": {"@architectures": "spacy.TextCatBOW.v3", "exclusive_classes": True,
                                  "ngram_size": 1, "no_output_layer": True, "length": 1024, "nO": 2}})["m"]
    docs = [nlp.make_doc(t) for t in TEXTS[:3]]
    bow.initialize(X=docs, Y=bow.ops.alloc2f(3, 2))
    logits, vectors = predict_with_token_vectors(bow, docs)
    assert vectors is None
    assert numpy.array_equal(logits, bow.predict(docs))
