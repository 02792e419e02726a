import math
import subprocess
import sys
import textwrap

import numpy
import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import registry

from spacy_distill.pipeline.component import DistillTextCategorizer
from spacy_distill.pipeline.layers import with_nonempty_docs
from spacy_distill.pipeline.teacher_scores import get_teacher_logits, set_teacher_scores

from .util import (
    LABELS,
    SOFT_DATA,
    STUDENT_BOW_CONFIG,
    STUDENT_CHARS_CONFIG,
    STUDENT_CONFIG,
    blank_xx,
    run_without_torch,
    soft_examples,
    train,
)

# Overfitting tolerance: after 100 updates on 12 docs the student's P(POSITIVE)
# must be within this distance of the teacher's for every doc.
OVERFIT_TOL = 0.05


@pytest.fixture(scope="module", params=["bilstm", "bilstm+bow", "bilstm+bow+chars"])
def trained(request):
    config = {"bilstm": STUDENT_CONFIG, "bilstm+bow": STUDENT_BOW_CONFIG, "bilstm+bow+chars": STUDENT_CHARS_CONFIG}[request.param]
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=config)
    losses = train(nlp, soft_examples(nlp), n_iter=100)
    return nlp, losses, config


def test_overfits_teacher_soft_targets_and_round_trips(trained, tmp_path):
    nlp, losses, config = trained
    assert losses["distill_textcat"] < 0.01
    for text, p in SOFT_DATA:
        assert nlp(text).cats["POSITIVE"] == pytest.approx(p, abs=OVERFIT_TOL), text
    nlp.to_disk(tmp_path / "student")
    nlp2 = spacy.load(tmp_path / "student")
    for text, _ in SOFT_DATA:
        assert nlp2(text).cats == pytest.approx(nlp(text).cats, abs=1e-6)
    nlp3 = blank_xx()
    nlp3.add_pipe("distill_textcat", config=config)
    nlp3.get_pipe("distill_textcat").from_bytes(nlp.get_pipe("distill_textcat").to_bytes())
    assert nlp3(SOFT_DATA[0][0]).cats == pytest.approx(nlp(SOFT_DATA[0][0]).cats, abs=1e-6)


def test_learns_from_probabilities_only():
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=STUDENT_CONFIG)
    train(nlp, soft_examples(nlp, with_logits=False), n_iter=100)
    for text, p in SOFT_DATA:
        assert nlp(text).cats["POSITIVE"] == pytest.approx(p, abs=OVERFIT_TOL)


def test_pipe_equals_call_and_handles_empty_docs(trained):
    nlp, _, _ = trained
    texts = [t for t, _ in SOFT_DATA] + ["", "   "]
    piped = list(nlp.pipe(texts, batch_size=5))
    for text, doc in zip(texts, piped):
        assert doc.cats == pytest.approx(nlp(text).cats, abs=1e-6)
        assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
    only_empty = list(nlp.pipe(["", ""]))
    assert all(set(d.cats) == set(LABELS) for d in only_empty)
    assert only_empty[0].cats == pytest.approx(nlp("").cats, abs=1e-6)


def test_token_vectors_are_stored_as_doc_tensor(trained):
    nlp, _, _ = trained
    texts = [SOFT_DATA[0][0], "", SOFT_DATA[-1][0]]
    for doc, alone in zip(nlp.pipe(texts), (nlp(t) for t in texts)):
        assert doc.tensor.shape == (len(doc), 32)
        numpy.testing.assert_allclose(doc.tensor, alone.tensor, atol=1e-6)
    nlp.get_pipe("distill_textcat").cfg["store_tensor"] = False
    try:
        assert nlp(SOFT_DATA[0][0]).tensor.size == 0
    finally:
        nlp.get_pipe("distill_textcat").cfg["store_tensor"] = True


def test_store_tensor_on_and_off_give_the_same_cats(trained):
    nlp, _, _ = trained
    textcat = nlp.get_pipe("distill_textcat")
    texts = [t for t, _ in SOFT_DATA] + ["", "   "]
    with_tensors = list(nlp.pipe(texts, batch_size=4))
    textcat.cfg["store_tensor"] = False
    try:
        without = list(nlp.pipe(texts, batch_size=4))
        alone = [nlp(t) for t in texts]
    finally:
        textcat.cfg["store_tensor"] = True
    # One forward pass gives the logits either way: the cats are the same to the bit.
    for a, b, c in zip(with_tensors, without, alone):
        assert a.cats == b.cats == c.cats
        assert b.tensor.size == 0 and a.tensor.shape == (len(a), 32)
    scores = textcat.predict([nlp.make_doc(t) for t in texts])
    assert [[d.cats[label] for label in textcat.labels] for d in with_tensors] == scores.tolist()


def test_model_without_token_vectors_classifies_and_leaves_tensor_unset():
    # The component treats its model as opaque: any docs → logits model works,
    # here the stock bag-of-words model, which exposes no token vectors.
    bow = {"@architectures": "spacy.TextCatBOW.v3", "exclusive_classes": True, "ngram_size": 1,
           "no_output_layer": True, "length": 4096, "nO": None}
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config={"model": bow, "store_tensor": True})
    train(nlp, soft_examples(nlp), n_iter=50)
    texts = [SOFT_DATA[0][0], "", SOFT_DATA[1][0]]
    for doc, alone in zip(nlp.pipe(texts), (nlp(t) for t in texts)):
        assert doc.cats == alone.cats and set(doc.cats) == set(LABELS)
        assert doc.tensor.size == 0
    assert nlp(SOFT_DATA[0][0]).cats["POSITIVE"] > nlp(SOFT_DATA[1][0]).cats["POSITIVE"]


def test_update_on_only_empty_docs_is_a_no_op(trained):
    nlp, _, _ = trained
    eg = Example(nlp.make_doc(""), nlp.make_doc(""))
    set_teacher_scores(eg.reference, {"POSITIVE": 0.5, "NEGATIVE": 0.5})
    losses = nlp.update([eg, eg])
    assert losses["distill_textcat"] == 0.0


def test_gold_cats_and_teacher_scores_mix():
    nlp = blank_xx()
    nlp.add_pipe(
        "distill_textcat",
        config={**STUDENT_CONFIG, "loss": {"@losses": "spacy-distill.DistillLoss.v1", "alpha": 0.5}},
    )
    examples = soft_examples(nlp, SOFT_DATA[:6])
    for text, label in [("Absolutely wonderful.", "POSITIVE"), ("Awful, awful, awful.", "NEGATIVE")]:
        ref = nlp.make_doc(text)
        ref.cats = {k: float(k == label) for k in LABELS}
        examples.append(Example(nlp.make_doc(text), ref))
    train(nlp, examples, n_iter=60)
    assert nlp("Absolutely wonderful.").cats["POSITIVE"] > 0.9
    assert nlp("Awful, awful, awful.").cats["NEGATIVE"] > 0.9
    scores = nlp.evaluate(examples[-2:])
    assert scores["cats_macro_f"] == 1.0
    assert "cats_score" in scores


def test_doc_without_targets_is_an_error_naming_it(trained):
    nlp, _, _ = trained
    bare = Example(nlp.make_doc("no labels here"), nlp.make_doc("no labels here"))
    with pytest.raises(ValueError, match=r"Doc 1 of the batch has neither teacher scores nor gold cats.*no labels here"):
        nlp.update(soft_examples(nlp, SOFT_DATA[:1]) + [bare])


def test_soft_gold_cats_are_rejected(trained):
    nlp, _, _ = trained
    ref = nlp.make_doc("soft gold")
    ref.cats = {"POSITIVE": 0.7, "NEGATIVE": 0.3}
    with pytest.raises(ValueError, match="gold cats must be 0 or 1"):
        nlp.update([Example(nlp.make_doc("soft gold"), ref)])


def test_nan_loss_raises():
    nlp = blank_xx()
    tc = nlp.add_pipe("distill_textcat", config=STUDENT_CONFIG)
    examples = soft_examples(nlp)
    nlp.initialize(lambda: examples)
    out = tc.model.get_ref("output_layer")
    out.set_param("W", out.get_param("W") * numpy.nan)
    with pytest.raises(ValueError, match="loss is nan"):
        nlp.update(examples)


def test_nonfinite_teacher_scores_raise():
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=STUDENT_CONFIG)
    examples = soft_examples(nlp)
    nlp.initialize(lambda: examples)
    bad = nlp.make_doc("bad teacher")
    set_teacher_scores(bad, {"POSITIVE": 0.5, "NEGATIVE": 0.5}, {"POSITIVE": math.inf, "NEGATIVE": 0.0})
    with pytest.raises(ValueError, match="non-finite teacher scores"):
        nlp.update([Example(nlp.make_doc("bad teacher"), bad)])


def test_multilabel_sigmoid():
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config={**STUDENT_CONFIG, "exclusive_classes": False})
    examples = []
    for text, p in SOFT_DATA:
        ref = nlp.make_doc(text)
        set_teacher_scores(ref, {"POSITIVE": p, "SHIPPING": 0.5 if "arrived" in text else 0.1})
        examples.append(Example(nlp.make_doc(text), ref))
    train(nlp, examples, n_iter=100)
    doc = nlp(SOFT_DATA[0][0])
    assert sum(doc.cats.values()) != pytest.approx(1.0, abs=0.05)
    assert doc.cats["POSITIVE"] == pytest.approx(0.95, abs=OVERFIT_TOL)
    assert doc.cats["SHIPPING"] == pytest.approx(0.5, abs=OVERFIT_TOL)
    scores = nlp.evaluate(examples)
    assert "cats_macro_auc" in scores


def test_teacher_scores_survive_docbin(tmp_path):
    nlp = blank_xx()
    doc = nlp.make_doc("Gut")
    set_teacher_scores(doc, {"POSITIVE": 0.8, "NEGATIVE": 0.2}, {"POSITIVE": math.log(0.8), "NEGATIVE": math.log(0.2)})
    DocBin(store_user_data=True, docs=[doc]).to_disk(tmp_path / "x.spacy")
    back = list(DocBin().from_disk(tmp_path / "x.spacy").get_docs(nlp.vocab))[0]
    assert get_teacher_logits(back)["POSITIVE"] == pytest.approx(math.log(0.8))
    assert back._.teacher_probs == {"POSITIVE": 0.8, "NEGATIVE": 0.2}


def test_initialize_needs_two_labels():
    nlp = blank_xx()
    nlp.add_pipe("distill_textcat", config=STUDENT_CONFIG)
    ref = nlp.make_doc("x")
    set_teacher_scores(ref, {"ONLY": 1.0})
    with pytest.raises(ValueError, match="at least two labels"):
        nlp.initialize(lambda: [Example(nlp.make_doc("x"), ref)])


def test_default_config_resolves_and_is_a_bilstm():
    nlp = blank_xx()
    tc = nlp.add_pipe("distill_textcat")
    assert isinstance(tc, DistillTextCategorizer)
    assert tc.model.attrs["outputs"] == "logits"
    names = [layer.name for layer in tc.model.walk()]
    assert "lstm" in names and "meanmax_pool" in names
    # The BiLSTM alone, with the LSTM that trains (BiLSTMTextCat.v3).
    assert not tc.model.has_ref("bow") and "sparse_linear" not in names
    assert nlp.config["components"]["distill_textcat"]["model"]["@architectures"] == "spacy-distill.BiLSTMTextCat.v3"
    assert nlp.config["components"]["distill_textcat"]["loss"]["@losses"] == "spacy-distill.SoftCrossEntropy.v1"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_entry_points_load_everything_without_importing_the_package():
    code = """
    import sys
    import spacy
    from spacy.util import registry
    assert "spacy_distill" not in sys.modules
    nlp = spacy.blank("xx", config={"nlp": {"tokenizer": {"@tokenizers": "spacy-distill.CJKCharTokenizer.v1"}}})
    nlp.add_pipe("distill_textcat")
    for reg, name in [
        ("architectures", "spacy-distill.BiLSTMTextCat.v1"),
        ("architectures", "spacy-distill.BiLSTMTextCat.v2"),
        ("architectures", "spacy-distill.BiLSTMTextCat.v3"),
        ("layers", "spacy-distill.LSTM.v1"),
        ("layers", "spacy-distill.MeanMaxPool.v1"),
        ("losses", "spacy-distill.LogitMSE.v1"),
        ("losses", "spacy-distill.SoftCrossEntropy.v1"),
        ("losses", "spacy-distill.DistillLoss.v1"),
        ("scorers", "spacy-distill.textcat_scorer.v1"),
        ("tokenizers", "spacy-distill.CJKCharTokenizer.v1"),
        ("augmenters", "spacy-distill.PosAugmenter.v1"),
        ("readers", "spacy-distill.TeacherLabelled.v1"),
    ]:
        assert registry.has(reg, name), (reg, name)
    print([t.text for t in nlp.make_doc("很好")], nlp.pipe_names)
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "['很', '好'] ['distill_textcat']" in result.stdout


def test_student_loads_and_predicts_without_torch(trained, tmp_path):
    nlp, _, _ = trained
    nlp.to_disk(tmp_path / "student")
    expected = nlp(SOFT_DATA[0][0]).cats["POSITIVE"]
    result = run_without_torch(f"""
    try:
        import torch  # noqa
        raise SystemExit("torch imported")
    except ImportError:
        pass
    import spacy
    nlp = spacy.load({str(tmp_path / "student")!r})
    doc = nlp({SOFT_DATA[0][0]!r})
    print(round(doc.cats["POSITIVE"], 6), doc.tensor.shape[1])
    """)
    assert result.returncode == 0, result.stderr
    p, width = result.stdout.split()
    assert float(p) == pytest.approx(expected, abs=1e-5)
    # The token vectors come with the cats (store_tensor), without torch too.
    assert int(width) == 32


def test_nonempty_docs_guard_scatters_rows_and_gradients():
    # The stock bag-of-n-grams model fails on a zero-token doc (bigrams of an
    # empty array); the guard gives such docs zero logits and no gradient.
    nlp = blank_xx()
    bow = registry.resolve({"m": {"@architectures": "spacy.TextCatBOW.v3", "exclusive_classes": True,
                                  "ngram_size": 2, "no_output_layer": True, "length": 1024, "nO": 2}})["m"]
    model = with_nonempty_docs(bow)
    docs = [nlp.make_doc(SOFT_DATA[0][0]), nlp.make_doc(""), nlp.make_doc(SOFT_DATA[9][0])]
    model.initialize(X=docs, Y=model.ops.alloc2f(3, 2))
    sparse = [n for n in model.walk() if n.name == "sparse_linear"][0]
    sparse.set_param("W", numpy.random.default_rng(0).normal(size=sparse.get_param("W").shape).astype("f"))
    Y, backprop = model.begin_update(docs)
    numpy.testing.assert_allclose(Y[[0, 2]], bow.predict([docs[0], docs[2]]), atol=1e-6)
    assert Y[1].tolist() == [0.0, 0.0]
    dY = numpy.asarray([[1.0, -1.0], [5.0, 5.0], [0.5, 0.5]], dtype="f")
    backprop(dY)
    grad_b = sparse.get_grad("b")
    # Only the non-empty docs' rows reach the bias gradient.
    numpy.testing.assert_allclose(grad_b, [1.5, -0.5], atol=1e-6)
    assert model.predict([nlp.make_doc(""), nlp.make_doc("")]).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_a_configured_bow_sum_keeps_exactly_its_own_blocks():
    # spaCy fills a component's config from the factory's defaults: a default add.v1
    # bow block would add its summands to the config's own sum (the shipped mix
    # got a word n-gram block that way). The default has no bow block.
    chars = {"@architectures": "spacy-distill.CharNgramBOW.v1", "exclusive_classes": True, "min_n": 1,
             "max_n": 4, "length": 1024, "no_output_layer": True, "nO": None}
    nlp = spacy.blank("xx")
    nlp.add_pipe("distill_textcat", config={"model": {
        "@architectures": "spacy-distill.BiLSTMTextCat.v3",
        "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 16, "attrs": ["NORM"], "rows": [100],
                  "include_static_vectors": False},
        "bow": {"@layers": "add.v1", "*": {"a": chars, "b": {**chars, "max_n": 2}}},
    }})
    assert list(nlp.config["components"]["distill_textcat"]["model"]["bow"]["*"]) == ["a", "b"]
    default = spacy.blank("xx")
    default.add_pipe("distill_textcat")
    assert default.config["components"]["distill_textcat"]["model"]["bow"] is None
