"""The evaluation's data: gold test/dev DocBins, out-of-domain sets, seeded
per-language samples, and the per-doc predictions later steps (the cascade) read."""

import csv
import random
from pathlib import Path
from typing import Dict, List, Tuple

import spacy
import typer
from spacy.tokens import DocBin

from ..io import write_jsonl


def read_test(path: Path, langs: List[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Read the gold test DocBin.

    path (Path): corpus/test.spacy.
    langs (List[str]): Languages to keep.
    RETURNS (Tuple[List[str], List[Tuple[str, str]]]): Texts and (lang, label) pairs.
    """
    texts, gold = [], []
    for doc in DocBin().from_disk(path).get_docs(spacy.blank("xx").vocab):
        lang = doc.user_data.get("lang")
        if lang in langs:
            texts.append(doc.text)
            gold.append((lang, max(doc.cats, key=doc.cats.get)))
    return texts, gold


OOD_LABELS = {"1": "POSITIVE", "0": "NEGATIVE"}


def read_ood(path: Path) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Read an out-of-domain set: ``text<TAB>label`` (1 positive, 0 negative), a header
    line, no quoting; the language is the file name's prefix (``en_uci_yelp.tsv``).

    path (Path): The .tsv file.
    RETURNS (Tuple[List[str], List[Tuple[str, str]]]): Texts and (lang, label) pairs.
    """
    lang = path.name.split("_", 1)[0]
    texts, gold = [], []
    with path.open(encoding="utf8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != ["text", "label"]:
            raise typer.BadParameter(f"{path}:1: expected the header 'text<TAB>label', got {header!r}")
        for row in reader:
            if len(row) != 2 or row[1] not in OOD_LABELS or not row[0].strip():
                raise typer.BadParameter(f"{path}:{reader.line_num}: expected 'text<TAB>0|1', got {row!r}")
            texts.append(row[0])
            gold.append((lang, OOD_LABELS[row[1]]))
    return texts, gold


def write_predictions(path: Path, cats: List[Dict[str, float]], gold: List[Tuple[str, str]]) -> None:
    """Per-doc predictions for later steps (the cascade): one JSON object per doc, in order.

    path (Path): The .jsonl file.
    cats (List[Dict[str, float]]): Label → probability per doc.
    gold (List[Tuple[str, str]]): (lang, label) per doc.
    """
    write_jsonl(path, ({"lang": lang, "gold": label, "cats": c} for c, (lang, label) in zip(cats, gold)))


def sample_per_lang(gold: List[Tuple[str, str]], langs: List[str], n: int, seed: str) -> List[int]:
    """A seeded sample of ``n`` docs per language (all of them if ``n`` < 0), in corpus order.

    gold (List[Tuple[str, str]]): (lang, label) per doc.
    langs (List[str]): The languages.
    n (int): Docs per language; negative: all.
    seed (str): Seed of the draw.
    RETURNS (List[int]): Indices of the chosen docs.
    """
    rng = random.Random(seed)
    chosen: List[int] = []
    for lang in langs:
        idx = [i for i, (lg, _) in enumerate(gold) if lg == lang]
        chosen.extend(idx if n < 0 else rng.sample(idx, min(n, len(idx))))
    return sorted(chosen)


__all__ = ["OOD_LABELS", "read_ood", "read_test", "sample_per_lang", "write_predictions"]
