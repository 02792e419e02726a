"""Small real data for the tests: reviews written for the tests, in six languages."""

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import spacy
from spacy.language import Language
from spacy.tokens import DocBin
from spacy.training import Example

from spacy_distill.pipeline.teacher_scores import set_teacher_scores

# (text, teacher P(POSITIVE)) — invented reviews, not MARC data.
SOFT_DATA: List[Tuple[str, float]] = [
    ("Great product, works perfectly and arrived early.", 0.95),
    ("Terrible quality, it broke after one day.", 0.05),
    ("It is okay, nothing special but does the job.", 0.65),
    ("Das Produkt ist super, sehr zu empfehlen.", 0.9),
    ("Leider kaputt angekommen, nie wieder.", 0.1),
    ("Muy buena calidad, lo recomiendo.", 0.85),
    ("No funciona, una pérdida de dinero.", 0.15),
    ("Produit correct mais un peu cher.", 0.55),
    ("とても良い商品です。また買います。", 0.9),
    ("すぐに壊れました。最悪です。", 0.08),
    ("质量很好，推荐购买！", 0.92),
    ("太差了，完全不能用。", 0.06),
]

LABELS = ("NEGATIVE", "POSITIVE")

# The BiLSTM alone (bow = None), as BiLSTMTextCat.v1.
STUDENT_CONFIG = {
    "model": {"embed": {"width": 32, "rows": [1000, 500, 500, 500]}, "bow": None},
}

# BiLSTMTextCat.v3: the same BiLSTM (its LSTM trained: spacy-distill.LSTM.v1) plus the stock bag-of-n-grams model's logits.
STUDENT_BOW_CONFIG = {
    "model": {
        "@architectures": "spacy-distill.BiLSTMTextCat.v3",
        "embed": {
            "@architectures": "spacy.MultiHashEmbed.v2",
            "width": 32,
            "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
            "rows": [1000, 500, 500, 500],
            "include_static_vectors": False,
        },
        "bow": {
            "@architectures": "spacy.TextCatBOW.v3",
            "exclusive_classes": True,
            "ngram_size": 2,
            "no_output_layer": True,
            "length": 4096,
            "nO": None,
        },
    },
}

# The shipped student's shape (configs/student.cfg), small: the BiLSTM plus the word
# n-gram and the char n-gram models, their logits summed by thinc's add.v1.
STUDENT_CHARS_CONFIG = {
    "model": {
        **STUDENT_BOW_CONFIG["model"],
        "bow": {
            "@layers": "add.v1",
            "*": {
                "words": STUDENT_BOW_CONFIG["model"]["bow"],
                "chars": {
                    "@architectures": "spacy-distill.CharNgramBOW.v1",
                    "exclusive_classes": True,
                    "min_n": 1,
                    "max_n": 4,
                    "length": 16384,
                    "nO": None,
                },
            },
        },
    },
}


def blank_xx() -> Language:
    return spacy.blank("xx", config={"nlp": {"tokenizer": {"@tokenizers": "spacy-distill.CJKCharTokenizer.v1"}}})


def write_labelled(path: Path, rows: Sequence[tuple], *, logits: bool = False, lang: Optional[str] = None) -> Path:
    """One DocBin of teacher-labelled docs, stored as `spacy-distill label` stores them.

    path (Path): The ``.spacy`` file to write (its folders are made).
    rows (Sequence[tuple]): ``(text, P(POSITIVE))`` or ``(text, P(POSITIVE), lang, gold label or None)``;
        a P of None leaves the doc without teacher scores.
    logits (bool): Also store the log-probabilities as the teacher's logits.
    lang (Optional[str]): ``user_data["lang"]`` for rows that name none.
    RETURNS (Path): ``path``.
    """
    nlp = blank_xx()
    docs = []
    for text, p, *rest in rows:
        doc_lang, gold = rest if rest else (None, None)
        doc_lang = lang if doc_lang is None else doc_lang
        doc = nlp.make_doc(text)
        if p is not None:
            probs = {"POSITIVE": p, "NEGATIVE": 1 - p}
            set_teacher_scores(doc, probs, {k: math.log(v) for k, v in probs.items()} if logits else None)
        if doc_lang is not None:
            doc.user_data["lang"] = doc_lang
        if gold is not None:
            doc.cats = {label: float(gold == label) for label in LABELS}
        docs.append(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=True).to_disk(path)
    return path


def soft_examples(nlp: Language, data=SOFT_DATA, with_logits: bool = True) -> List[Example]:
    examples = []
    for text, p in data:
        ref = nlp.make_doc(text)
        probs = {"POSITIVE": p, "NEGATIVE": 1 - p}
        logits = {k: math.log(v) for k, v in probs.items()} if with_logits else None
        set_teacher_scores(ref, probs, logits)
        examples.append(Example(nlp.make_doc(text), ref))
    return examples


def train(nlp: Language, examples: List[Example], n_iter: int = 100, seed: int = 0):
    from thinc.api import fix_random_seed

    fix_random_seed(seed)
    optimizer = nlp.initialize(lambda: examples)
    losses = {}
    for _ in range(n_iter):
        losses = nlp.update(examples, sgd=optimizer)
    return losses


def assert_fits_soft_data(nlp: Language, losses: dict, component: str = "distill_textcat") -> None:
    """A student trained on SOFT_DATA: low loss, and every text on the teacher's side of 0.5."""
    assert losses[component] < 0.5, losses
    for text, p in SOFT_DATA:
        assert (nlp(text).cats["POSITIVE"] > 0.5) == (p > 0.5), text


# Run before the code of run_without_torch: torch cannot be imported, and neither can
# spacy-transformers (it needs torch, so an environment without torch has no
# spacy-transformers either: its entry points are hidden, as if not installed).
_BLOCK_TORCH = """
import sys, importlib.abc, importlib.metadata, catalogue

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, BlockTorch())
catalogue.AVAILABLE_ENTRY_POINTS = importlib.metadata.EntryPoints(
    ep for dist in importlib.metadata.distributions() for ep in dist.entry_points
    if not ep.value.startswith("spacy_transformers")
)
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process in which torch cannot be imported.

    code (str): Python source (dedented here); it runs after the import blocker.
    RETURNS (subprocess.CompletedProcess): The finished process, output captured.
    """
    source = _BLOCK_TORCH + textwrap.dedent(code) + "\nassert 'torch' not in sys.modules\n"
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
