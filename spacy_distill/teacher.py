"""A transformer + textcat teacher pipeline config, for code that builds a teacher
without a config file (tests, benchmarks, quick experiments). The project's
fine-tuned teacher config is ``configs/teacher_finetune.cfg``; the default teacher
is the frozen encoder of ``configs/teacher.cfg`` (``spacy_distill.encoder``)."""

from spacy.util import load_config_from_str
from thinc.api import Config

_TEACHER_CONFIG = """
[nlp]
lang = "{lang}"
pipeline = ["transformer", "textcat"]

[components]

[components.transformer]
factory = "transformer"
max_batch_items = 4096

[components.transformer.model]
@architectures = "spacy-transformers.TransformerModel.v3"
name = "{name}"

[components.transformer.model.tokenizer_config]
use_fast = true

[components.transformer.model.get_spans]
@span_getters = "spacy-transformers.strided_spans.v1"
window = {window}
stride = {stride}

[components.textcat]
factory = "{factory}"

[components.textcat.model]
@architectures = "spacy.TextCatReduce.v1"
exclusive_classes = {exclusive}
use_reduce_first = false
use_reduce_last = false
use_reduce_max = false
use_reduce_mean = true
nO = null

[components.textcat.model.tok2vec]
@architectures = "spacy-transformers.TransformerListener.v1"
grad_factor = 1.0
upstream = "*"

[components.textcat.model.tok2vec.pooling]
@layers = "reduce_mean.v1"
"""


def transformer_textcat_config(
    name: str,
    *,
    lang: str = "xx",
    window: int = 128,
    stride: int = 96,
    exclusive_classes: bool = True,
) -> Config:
    """The config of a spacy-transformers ``transformer`` + stock ``textcat`` pipeline.

    For ``lang = "xx"`` the tokenizer is ``spacy-distill.CJKCharTokenizer.v1``, so
    a span window of ``window`` tokens bounds the wordpieces of ja/zh text too.

    name (str): A Hugging Face model name or a local folder.
    lang (str): The pipeline's language.
    window (int): Span window, in spaCy tokens.
    stride (int): Span stride, in spaCy tokens.
    exclusive_classes (bool): ``textcat`` (True) or ``textcat_multilabel`` (False).
    RETURNS (Config): The config; build it with ``spacy.util.load_model_from_config``.
    """
    text = _TEACHER_CONFIG.format(
        name=name,
        lang=lang,
        window=window,
        stride=stride,
        factory="textcat" if exclusive_classes else "textcat_multilabel",
        exclusive="true" if exclusive_classes else "false",
    )
    config = load_config_from_str(text)
    if lang == "xx":
        config["nlp"]["tokenizer"] = {"@tokenizers": "spacy-distill.CJKCharTokenizer.v1"}
    return config
