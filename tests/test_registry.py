"""Every registered function resolves from config, and `spacy train` trains a
student from teacher-labelled DocBins with no --code (entry points only)."""

import subprocess
import sys

import pytest
from spacy.tokens import DocBin
from spacy.util import registry

from spacy_distill.augment.augmenter import PosAugmenter
from spacy_distill.pipeline.layers import MeanMaxPool
from spacy_distill.pipeline.models import FORWARD_WITH_TOKEN_VECTORS

from .util import LABELS, SOFT_DATA, blank_xx, soft_examples

RESOLVE_CASES = [
    (
        {"@architectures": "spacy-distill.BiLSTMTextCat.v1", "depth": 2, "dropout": 0.1, "pooling": "max",
         "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 16, "attrs": ["NORM"], "rows": [100],
                   "include_static_vectors": False}},
        lambda m: m.attrs["outputs"] == "logits" and any(n.name == "max_pool" for n in m.walk()),
    ),
    (
        {"@architectures": "spacy-distill.BiLSTMTextCat.v2", "pooling": "mean",
         "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 16, "attrs": ["NORM"], "rows": [100],
                   "include_static_vectors": False},
         "bow": {"@architectures": "spacy.TextCatBOW.v3", "exclusive_classes": True, "ngram_size": 2,
                 "no_output_layer": True, "length": 1024, "nO": None}},
        lambda m: m.name == "add_logits" and m.has_ref("bow") and m.get_ref("bow").name.startswith("nonempty_docs")
        and FORWARD_WITH_TOKEN_VECTORS in m.attrs,
    ),
    (
        {"@architectures": "spacy-distill.BiLSTMTextCat.v2", "bow": None,
         "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 16, "attrs": ["NORM"], "rows": [100],
                   "include_static_vectors": False}},
        lambda m: not m.has_ref("bow") and m.has_ref("encoder"),
    ),
    ({"@layers": "spacy-distill.MeanMaxPool.v1", "pooling": "mean"}, lambda m: m.name == "mean_pool"),
    ({"@scorers": "spacy-distill.textcat_scorer.v1"}, callable),
    ({"@tokenizers": "spacy-distill.CJKCharTokenizer.v1"}, callable),
    ({"@augmenters": "spacy-distill.PosAugmenter.v1", "n_iter": 3, "p_pos": 0.0},
     lambda a: isinstance(a, PosAugmenter) and a.n_iter == 3),
    ({"@readers": "spacy-distill.TeacherLabelled.v1", "path": "x.spacy", "langs": ["de"]}, callable),
]


@pytest.mark.parametrize("block,check", RESOLVE_CASES)
def test_registered_functions_resolve(block, check):
    assert check(registry.resolve({"x": block})["x"])


def test_meanmax_pool_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="pooling"):
        MeanMaxPool("sum")


STUDENT_CFG = """
[paths]
train = null
dev = null

[system]
seed = 0
gpu_allocator = null

[nlp]
lang = "xx"
pipeline = ["textcat"]
batch_size = 64

[nlp.tokenizer]
@tokenizers = "spacy-distill.CJKCharTokenizer.v1"

[components]

[components.textcat]
factory = "distill_textcat"

[components.textcat.loss]
@losses = "spacy-distill.DistillLoss.v1"
alpha = 0.5

[components.textcat.loss.soft_loss]
@losses = "spacy-distill.SoftCrossEntropy.v1"
temperature = 2.0

[components.textcat.model]
@architectures = "spacy-distill.BiLSTMTextCat.v1"

[components.textcat.model.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 16
attrs = ["NORM", "PREFIX"]
rows = [500, 200]
include_static_vectors = false

[corpora]

[corpora.train]
@readers = "spacy-distill.TeacherLabelled.v1"
path = ${paths.train}

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${paths.dev}

[training]
seed = ${system.seed}
max_steps = 30
eval_frequency = 10
patience = 0

[training.batcher]
@batchers = "spacy.batch_by_words.v1"
size = 200
"""


def test_spacy_train_without_code(tmp_path):
    nlp = blank_xx()
    DocBin(store_user_data=True, docs=[eg.reference for eg in soft_examples(nlp)]).to_disk(tmp_path / "train.spacy")
    dev = []
    for text, p in SOFT_DATA:
        doc = nlp.make_doc(text)
        doc.cats = {label: float((p > 0.5) == (label == "POSITIVE")) for label in LABELS}
        dev.append(doc)
    DocBin(docs=dev).to_disk(tmp_path / "dev.spacy")
    (tmp_path / "base.cfg").write_text(STUDENT_CFG)
    fill = [sys.executable, "-m", "spacy", "init", "fill-config", str(tmp_path / "base.cfg"), str(tmp_path / "student.cfg")]
    filled = subprocess.run(fill, capture_output=True, text=True, timeout=300)
    assert filled.returncode == 0, filled.stderr[-3000:]
    cmd = [
        sys.executable, "-m", "spacy", "train", str(tmp_path / "student.cfg"), "--output", str(tmp_path / "out"),
        "--paths.train", str(tmp_path / "train.spacy"), "--paths.dev", str(tmp_path / "dev.spacy"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CATS_SCORE" in result.stdout or "CATS_SCORE" in result.stderr
    evaluated = subprocess.run(
        [sys.executable, "-m", "spacy", "evaluate", str(tmp_path / "out" / "model-last"), str(tmp_path / "dev.spacy")],
        capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "TEXTCAT (macro F)" in evaluated.stdout



# Entry-point group -> the spaCy/thinc registry that reads it (catalogue reads the group
# "<namespace>_<registry>"; factories are read by spaCy's Language.factory lookup).
GROUP_REGISTRY = {
    "spacy_architectures": "architectures",
    "spacy_scorers": "scorers",
    "spacy_tokenizers": "tokenizers",
    "spacy_augmenters": "augmenters",
    "spacy_readers": "readers",
    "spacy_loggers": "loggers",
    "spacy_callbacks": "callbacks",
    "thinc_layers": "layers",
    "thinc_losses": "losses",
    "thinc_optimizers": "optimizers",
}


def _declared_entry_points():
    from importlib.metadata import distribution

    groups = {}
    for ep in distribution("spacy-distill").entry_points:
        groups.setdefault(ep.group, []).append(ep.name)
    return groups


def test_every_declared_group_is_read_by_a_registry():
    groups = set(_declared_entry_points()) - {"console_scripts"}
    assert groups - {"spacy_factories"} <= set(GROUP_REGISTRY), groups


@pytest.mark.parametrize(
    "group,name",
    [(g, n) for g, names in sorted(_declared_entry_points().items()) if g in GROUP_REGISTRY for n in names],
)
def test_entry_point_resolves_in_a_fresh_process(group, name):
    # No `import spacy_distill`: the name must be found through its entry point alone.
    code = (
        "import sys\n"
        "from spacy.util import registry\n"
        f"assert registry.has({GROUP_REGISTRY[group]!r}, {name!r})\n"
        f"assert callable(registry.get({GROUP_REGISTRY[group]!r}, {name!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_factory_resolves_in_a_fresh_process():
    code = "import spacy\nnlp = spacy.blank('xx')\nnlp.add_pipe('distill_textcat')\nprint(nlp.pipe_names)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "distill_textcat" in result.stdout, result.stderr[-2000:]
