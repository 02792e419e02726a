"""Convert UD treebanks (.conllu) into POS-tagged DocBins, split by sentence.

Per language, all ``.conllu`` files under ``<ud_dir>/<lang>/`` are pooled and
split (seeded) into ``heldout`` (reported: UPOS accuracy, segmentation
agreement), ``dev`` (the tagger's model selection) and ``train``.

Tokens are the treebank's surface tokens, with UPOS. A multiword token whose
words spell it exactly (``don't`` = ``do`` + ``n't``, ``cannot``) is split into its
words, as spaCy's tokenizers do; otherwise (``du`` = ``de`` + ``le``, ``zum``,
``del``) it stays one token and takes its first word's UPOS (ADP for the
contractions, VERB for Spanish verb + clitic).
"""

import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import spacy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.tokens import Doc, DocBin

from spacy_distill.io import atomic_path, write_json
from spacy_distill.project import load_section, run, split_langs

UPOS = {
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
}
Sentence = Dict[str, Any]


class BadConllu(ValueError):
    """Malformed CoNLL-U; the message names file:line and field."""


def _space_after(misc: str) -> bool:
    """Whether a token is followed by a space, from the MISC column.

    misc (str): The MISC field.
    RETURNS (bool): False if ``SpaceAfter=No`` is set.
    """
    return "SpaceAfter=No" not in misc.split("|")


def read_conllu(path: Path) -> List[Sentence]:
    """Read a CoNLL-U file into sentences of (word, space, upos) tokens.

    path (Path): The file.
    RETURNS (List[Sentence]): Dicts with "id", "words", "spaces", "pos" and "line".
    """
    sentences: List[Sentence] = []
    words: List[str] = []
    spaces: List[bool] = []
    pos: List[Optional[str]] = []
    sent_id: Optional[str] = None
    start = 1
    mwt: Optional[Tuple[int, int, str, bool, int]] = None
    mwt_words: List[Tuple[str, str]] = []

    def flush_mwt() -> None:
        nonlocal mwt, mwt_words
        assert mwt is not None
        first, last, surface, space, line_no = mwt
        if len(mwt_words) != last - first + 1:
            raise BadConllu(f"{path}:{line_no}: field 'ID': multiword token {first}-{last} has {len(mwt_words)} words")
        if "".join(w for w, _ in mwt_words) == surface:
            for i, (w, p) in enumerate(mwt_words):
                words.append(w)
                spaces.append(space if i == len(mwt_words) - 1 else False)
                pos.append(p)
        else:
            words.append(surface)
            spaces.append(space)
            pos.append(mwt_words[0][1])
        mwt, mwt_words = None, []

    with path.open(encoding="utf8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                if words or mwt:
                    if mwt:
                        flush_mwt()
                    sentences.append({"id": sent_id, "words": words, "spaces": spaces, "pos": pos, "line": start})
                words, spaces, pos, sent_id, mwt = [], [], [], None, None
                start = line_no + 1
                continue
            if line.startswith("#"):
                if line.startswith("# sent_id"):
                    sent_id = line.split("=", 1)[-1].strip()
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise BadConllu(f"{path}:{line_no}: {len(cols)} columns, expected 10")
            tid, form, upos, misc = cols[0], cols[1], cols[3], cols[9]
            if "." in tid:
                continue  # empty node: no UPOS
            if "-" in tid:
                if mwt:
                    flush_mwt()
                try:
                    first, last = (int(x) for x in tid.split("-"))
                except ValueError:
                    raise BadConllu(f"{path}:{line_no}: field 'ID': {tid!r} is not a range") from None
                mwt = (first, last, form, _space_after(misc), line_no)
                continue
            if not tid.isdigit():
                raise BadConllu(f"{path}:{line_no}: field 'ID': {tid!r} is not an integer")
            if upos not in UPOS and upos != "_":
                raise BadConllu(f"{path}:{line_no}: field 'UPOS': {upos!r} is not a UPOS tag")
            if not form:
                raise BadConllu(f"{path}:{line_no}: field 'FORM': empty")
            tag = upos if upos != "_" else None
            if mwt and mwt[0] <= int(tid) <= mwt[1]:
                mwt_words.append((form, tag))
                if int(tid) == mwt[1]:
                    flush_mwt()
                continue
            if mwt:
                flush_mwt()
            words.append(form)
            spaces.append(_space_after(misc))
            pos.append(tag)
    if words:
        sentences.append({"id": sent_id, "words": words, "spaces": spaces, "pos": pos, "line": start})
    return sentences


def split_sentences(sentences: List[Sentence], heldout: float, dev: float, seed: int, lang: str) -> Dict[str, List[Sentence]]:
    """Seeded split into heldout / dev / train.

    sentences (List[Sentence]): All sentences of a language.
    heldout (float): Fraction held out for reporting.
    dev (float): Fraction of the rest used as the tagger's dev set.
    seed (int): Random seed.
    lang (str): Language code (part of the seed).
    RETURNS (Dict[str, List[Sentence]]): Split name -> sentences.
    """
    order = list(range(len(sentences)))
    random.Random(f"{seed}:{lang}:ud").shuffle(order)
    n_held = max(1, round(len(order) * heldout))
    rest = order[n_held:]
    n_dev = max(1, round(len(rest) * dev))
    parts = {"heldout": order[:n_held], "dev": rest[:n_dev], "train": rest[n_dev:]}
    return {name: [sentences[i] for i in idx] for name, idx in parts.items()}


def main(
    ctx: typer.Context,
    ud_dir: Path = typer.Argument(..., help="UD folder with <lang>/*.conllu"),
    output_dir: Path = typer.Argument(..., help="Output folder, e.g. corpus/ud"),
    config: Path = typer.Option(Path("configs/data.cfg"), "--config", help="Config with a [ud] section"),
) -> None:
    """Write ``<output_dir>/<lang>/{train,dev,heldout}.spacy`` and ``summary.json``.

    ctx (typer.Context): Extra args are dotted overrides, e.g. --ud.heldout 0.2.
    ud_dir (Path): UD data folder.
    output_dir (Path): Output folder.
    config (Path): The data config.
    """
    settings = load_section(config, "ud", parse_config_overrides(ctx.args))
    summary: Dict[str, Any] = {"settings": settings, "languages": {}}
    for lang in split_langs(settings["langs"]):
        files = sorted((ud_dir / lang).glob("*.conllu"))
        if not files:
            typer.echo(f"Error: {ud_dir / lang}: no .conllu files", err=True)
            sys.exit(1)
        sentences: List[Sentence] = []
        try:
            for path in files:
                sentences.extend(read_conllu(path))
        except BadConllu as err:
            typer.echo(f"Error: {err}", err=True)
            sys.exit(1)
        parts = split_sentences(sentences, float(settings["heldout"]), float(settings["dev"]), int(settings["seed"]), lang)
        vocab = spacy.blank("xx").vocab
        counts: Dict[str, Any] = {"files": [p.name for p in files]}
        for name, sents in parts.items():
            db = DocBin(attrs=["ORTH", "POS", "SPACY"])
            for s in sents:
                db.add(Doc(vocab, words=s["words"], spaces=s["spaces"], pos=s["pos"]))
            with atomic_path(output_dir / lang / f"{name}.spacy") as tmp:
                db.to_disk(tmp)
            counts[name] = {"sentences": len(sents), "tokens": sum(len(s["words"]) for s in sents)}
        summary["languages"][lang] = counts
        typer.echo(f"{lang}: " + ", ".join(f"{k} {v['sentences']} sents / {v['tokens']} tokens" for k, v in counts.items() if k != "files"))
    write_json(output_dir / "summary.json", summary)


if __name__ == "__main__":
    run(main)
