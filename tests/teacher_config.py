"""A transformer + textcat teacher config for tests and benchmarks, built from the
project's fine-tuned teacher config (``configs/teacher_finetune.cfg``) so that
there is one copy of it. Not part of the plugin."""

import sys
from pathlib import Path
from typing import List

from spacy.util import load_config
from thinc.api import Config

ROOT = Path(__file__).resolve().parents[1]
TEACHER_FINETUNE_CONFIG = ROOT / "configs" / "teacher_finetune.cfg"


def transformer_textcat_config(name: str, *, lang: str = "xx", window: int = 128, stride: int = 96) -> Config:
    """The pipeline of ``configs/teacher_finetune.cfg`` with another transformer, language and span window.

    The spacy-transformers ``transformer`` + stock ``textcat`` pipeline, without
    the training settings. For ``lang = "xx"`` the tokenizer stays
    ``spacy-distill.CJKCharTokenizer.v1``, so a span window of ``window`` tokens
    bounds the wordpieces of ja/zh text too; other languages get their stock
    tokenizer.

    name (str): A Hugging Face model name or a local folder.
    lang (str): The pipeline's language.
    window (int): Span window, in spaCy tokens.
    stride (int): Span stride, in spaCy tokens.
    RETURNS (Config): The config; build it with ``spacy.util.load_model_from_config``.
    """
    full = load_config(TEACHER_FINETUNE_CONFIG)
    config = Config({"nlp": full["nlp"], "components": full["components"]})
    config["nlp"]["lang"] = lang
    if lang != "xx":
        config["nlp"]["tokenizer"] = {"@tokenizers": "spacy.Tokenizer.v1"}
    transformer = config["components"]["transformer"]["model"]
    transformer["name"] = name
    transformer["get_spans"]["window"] = window
    transformer["get_spans"]["stride"] = stride
    return config


def train_teacher_command(out: Path, train: Path, dev: Path, encoder: str, *overrides: str) -> List[str]:
    """The ``scripts/train_teacher.py`` command over ``configs/teacher.cfg`` that the tests run.

    out (Path): The output folder.
    train (Path): Training DocBin.
    dev (Path): Dev DocBin.
    encoder (str): The encoder's name or folder (the test model's).
    overrides (str): More ``--section.key value`` arguments.
    RETURNS (List[str]): The command, for ``subprocess.run(..., cwd=ROOT)``.
    """
    return [
        sys.executable, str(ROOT / "scripts" / "train_teacher.py"), str(ROOT / "configs" / "teacher.cfg"), str(out),
        "--paths.train", str(train), "--paths.dev", str(dev),
        "--components.textcat.model.encoder.name", encoder, *overrides,
    ]
