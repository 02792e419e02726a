"""Sentences of the UD treebanks as unlabelled text for the teacher to label.

The treebanks are news, web, wiki and (ja) blog text: teacher-labelled text beyond
Amazon reviews, so the student sees the teacher's judgement of neutral and
out-of-domain language too. The sentence is each ``# text = ...`` comment of the
``.conllu`` files under ``<ud_dir>/<lang>/``; per language a seeded sample of
``n_per_lang`` of them (-1 = all) is written as JSONL ``{"text", "lang"}``, the
format of ``corpus/transfer.jsonl``.
"""

import random
from pathlib import Path
from typing import Dict, List

import typer
from spacy.cli._util import parse_config_overrides

from spacy_distill.io import write_json, write_jsonl
from spacy_distill.project import load_section, run, split_langs

TEXT_PREFIX = "# text ="


def read_sentences(path: Path) -> List[str]:
    """The ``# text =`` sentences of one CoNLL-U file, in file order.

    path (Path): The .conllu file.
    RETURNS (List[str]): The sentences (stripped; empty ones dropped).
    """
    sentences = []
    with path.open(encoding="utf8") as f:
        for line in f:
            if line.startswith(TEXT_PREFIX):
                text = line[len(TEXT_PREFIX):].strip()
                if text:
                    sentences.append(text)
    return sentences


def sample_sentences(ud_dir: Path, langs: List[str], n_per_lang: int, seed: int) -> Dict[str, List[str]]:
    """Per language, the deduplicated sentences of its treebanks, a seeded sample of them.

    ud_dir (Path): Folder with one sub-folder of .conllu files per language.
    langs (List[str]): Language codes.
    n_per_lang (int): Sentences per language; -1 = all.
    seed (int): Seed of the sample (and of the order).
    RETURNS (Dict[str, List[str]]): The sentences per language.
    """
    out: Dict[str, List[str]] = {}
    for lang in langs:
        files = sorted((ud_dir / lang).glob("*.conllu"))
        if not files:
            raise ValueError(f"{ud_dir / lang}: no .conllu files")
        # dict.fromkeys: deduplicated, first occurrence order (repeated headlines).
        sentences = list(dict.fromkeys(s for file in files for s in read_sentences(file)))
        random.Random(f"{seed}-{lang}").shuffle(sentences)
        out[lang] = sentences if n_per_lang < 0 else sentences[:n_per_lang]
    return out


def main(
    ctx: typer.Context,
    ud_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="UD folder (<lang>/*.conllu)"),
    output: Path = typer.Argument(..., dir_okay=False, help="Output JSONL (text, lang)"),
    config: Path = typer.Option(Path("configs/data.cfg"), "--config", help="Config with a [ud_text] section"),
) -> None:
    """Write UD treebank sentences as unlabelled text (JSONL) for `spacy-distill label`.

    ctx (typer.Context): Holds the dotted overrides, e.g. --ud_text.n_per_lang 500.
    ud_dir (Path): The UD folder.
    output (Path): The JSONL file to write.
    config (Path): The data config.
    """
    settings = load_section(config, "ud_text", parse_config_overrides(ctx.args))
    langs = split_langs(settings["langs"])
    sentences = sample_sentences(ud_dir, langs, int(settings["n_per_lang"]), int(settings["seed"]))
    write_jsonl(output, [{"text": text, "lang": lang} for lang in langs for text in sentences[lang]])
    counts = {lang: len(texts) for lang, texts in sentences.items()}
    write_json(output.with_suffix(".summary.json"), counts)
    typer.echo(f"ud_text: {sum(counts.values())} sentences -> {output} ({counts})")


if __name__ == "__main__":
    run(main)
