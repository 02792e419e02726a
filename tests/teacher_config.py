"""A transformer + textcat teacher config for tests and benchmarks, built from the
project's fine-tuned teacher config (``configs/teacher_finetune.cfg``) so that
there is one copy of it. Not part of the plugin."""

from pathlib import Path

from spacy.util import load_config
from thinc.api import Config

TEACHER_FINETUNE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "teacher_finetune.cfg"


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
