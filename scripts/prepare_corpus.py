"""Split the MARC review CSVs into seeded, balanced train/dev/test DocBins.

Per language: train and dev from ``train_pool.csv`` (disjoint), test from
``test.csv``, each 50 % POSITIVE (stars >= 3) and 50 % NEGATIVE (stars <= 2),
both cats set (exclusive). The remaining ``train_pool`` reviews are written as
unlabelled transfer text (JSONL) for the teacher to label.
"""

import csv
import random
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import spacy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.tokens import DocBin

from spacy_distill.io import atomic_path, write_json, write_jsonl
from spacy_distill.project import LABELS, load_section, run, split_langs

HEADER = ["marc_idx", "text", "stars"]
Row = Dict[str, Any]


class BadRow(ValueError):
    """A CSV row that breaks the expected format; the message names file:line and field."""


def _decoded_lines(path: Path, bad_lines: set) -> Iterator[str]:
    """Yield the file's lines decoded as UTF-8; undecodable lines are recorded.

    path (Path): The CSV file.
    bad_lines (set): Receives the 1-based numbers of lines that are not valid UTF-8.
    YIELDS (str): Each line, with its line ending.
    """
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf8")
            except UnicodeDecodeError:
                bad_lines.add(i)
                yield raw.decode("utf8", errors="replace")


def read_reviews(path: Path, skip_bad: bool = False) -> Tuple[List[Row], List[str]]:
    """Read and validate a MARC CSV (header ``marc_idx,text,stars``).

    path (Path): The CSV file.
    skip_bad (bool): Skip bad rows (and report them) instead of raising.
    RETURNS (Tuple[List[Row], List[str]]): Valid rows (with their line number) and
        one message per skipped row.
    """
    if not path.exists():
        raise BadRow(f"{path}: file not found")
    bad_lines: set = set()
    reader = csv.reader(_decoded_lines(path, bad_lines))
    rows: List[Row] = []
    skipped: List[str] = []
    seen: Dict[int, int] = {}
    try:
        header = next(reader)
    except StopIteration:
        raise BadRow(f"{path}:1: empty file, expected header {','.join(HEADER)}") from None
    if [h.strip().lstrip("\ufeff") for h in header] != HEADER:
        raise BadRow(f"{path}:1: header is {','.join(header)!r}, expected {','.join(HEADER)!r}")
    last = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise BadRow(f"{path}:{reader.line_num}: CSV syntax error: {err}") from None
        start, last = last + 1, reader.line_num
        lines = range(start, last + 1)
        try:
            if not fields or fields == [""]:
                raise BadRow(f"{path}:{start}: empty line (expected fields {','.join(HEADER)})")
            if any(n in bad_lines for n in lines):
                raise BadRow(f"{path}:{start}: field 'text': bad encoding (not UTF-8)")
            if len(fields) != 3:
                missing = HEADER[len(fields)] if len(fields) < 3 else None
                what = f"missing field {missing!r}" if missing else f"{len(fields)} fields, expected 3"
                raise BadRow(f"{path}:{start}: {what}")
            idx_s, text, stars_s = fields
            try:
                idx = int(idx_s)
            except ValueError:
                raise BadRow(f"{path}:{start}: field 'marc_idx': {idx_s!r} is not an integer") from None
            if not text.strip():
                raise BadRow(f"{path}:{start}: field 'text': empty")
            try:
                stars = int(stars_s)
            except ValueError:
                raise BadRow(f"{path}:{start}: field 'stars': {stars_s!r} is not an integer") from None
            if not 1 <= stars <= 5:
                raise BadRow(f"{path}:{start}: field 'stars': {stars} is outside 1-5")
            if idx in seen:
                raise BadRow(f"{path}:{start}: field 'marc_idx': {idx} repeats line {seen[idx]}")
        except BadRow as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        seen[idx] = start
        rows.append({"marc_idx": idx, "text": text, "stars": stars, "line": start})
    return rows, skipped


def as_bool(value: Any) -> bool:
    """Read a flag that may arrive as a bool or as text ("false", "True", "1").

    value (Any): The setting.
    RETURNS (bool): The flag.
    """
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def label_of(stars: int) -> str:
    """The binary label of a star rating.

    stars (int): 1-5.
    RETURNS (str): "NEGATIVE" for stars <= 2, else "POSITIVE".
    """
    return "NEGATIVE" if stars <= 2 else "POSITIVE"


def balanced_sample(rows: List[Row], n: int, rng: random.Random, where: str) -> Tuple[List[Row], List[Row]]:
    """Draw ``n`` rows, half POSITIVE, half NEGATIVE (NEGATIVE gets the odd one).

    rows (List[Row]): The pool (not modified).
    n (int): How many to draw.
    rng (random.Random): Seeded generator.
    where (str): Names the pool in errors.
    RETURNS (Tuple[List[Row], List[Row]]): The sample (shuffled) and the rest of the pool.
    """
    n_pos = n // 2
    want = {"POSITIVE": n_pos, "NEGATIVE": n - n_pos}
    chosen: List[Row] = []
    rest: List[Row] = []
    for label in LABELS:
        pool = [r for r in rows if label_of(r["stars"]) == label]
        if len(pool) < want[label]:
            raise BadRow(f"{where}: needs {want[label]} {label} reviews, has {len(pool)}")
        pool = sorted(pool, key=lambda r: r["marc_idx"])
        rng.shuffle(pool)
        chosen.extend(pool[: want[label]])
        rest.extend(pool[want[label] :])
    rng.shuffle(chosen)
    rest.sort(key=lambda r: r["marc_idx"])
    return chosen, rest


def to_docbin(nlp: Any, items: List[Tuple[str, Row]]) -> DocBin:
    """Make a DocBin of gold docs (cats, and ``user_data`` lang/marc_idx/stars).

    nlp (Language): Tokenizes the text (the training pipelines re-tokenize it anyway).
    items (List[Tuple[str, Row]]): (lang, row) pairs.
    RETURNS (DocBin): Docs with ``store_user_data``.
    """
    db = DocBin(store_user_data=True)
    for lang, row in items:
        doc = nlp.make_doc(row["text"])
        label = label_of(row["stars"])
        doc.cats = {name: float(name == label) for name in LABELS}
        doc.user_data["lang"] = lang
        doc.user_data["marc_idx"] = row["marc_idx"]
        doc.user_data["stars"] = row["stars"]
        db.add(doc)
    return db


def make_splits(data_dir: Path, settings: Dict[str, Any]) -> Tuple[Dict[str, List[Tuple[str, Row]]], Dict[str, Any]]:
    """Read every language's CSVs and draw the splits.

    data_dir (Path): Folder with ``<lang>/train_pool.csv`` and ``<lang>/test.csv``.
    settings (Dict[str, Any]): The ``[corpus]`` config section.
    RETURNS (Tuple[Dict[str, List[Tuple[str, Row]]], Dict[str, Any]]): Split name ->
        (lang, row) pairs, and the summary (counts, skipped rows).
    """
    seed = int(settings["seed"])
    skip_bad = as_bool(settings["skip_bad"])
    splits: Dict[str, List[Tuple[str, Row]]] = {k: [] for k in ("train", "dev", "dev_teacher", "test", "transfer", "transfer_more")}
    summary: Dict[str, Any] = {"settings": settings, "languages": {}, "skipped": []}
    for lang in split_langs(settings["langs"]):
        counts: Dict[str, Any] = {}
        pool_path = data_dir / lang / "train_pool.csv"
        test_path = data_dir / lang / "test.csv"
        pool, skipped = read_reviews(pool_path, skip_bad)
        test_rows, skipped_test = read_reviews(test_path, skip_bad)
        summary["skipped"].extend(skipped + skipped_test)
        counts["skipped_rows"] = len(skipped) + len(skipped_test)
        rng = random.Random(f"{seed}:{lang}:train_pool")
        train, rest = balanced_sample(pool, int(settings["n_train"]), rng, f"{pool_path} (train)")
        dev, rest = balanced_sample(rest, int(settings["n_dev"]), rng, f"{pool_path} (dev)")
        dev_teacher, _ = balanced_sample(dev, min(int(settings["n_dev_teacher"]), len(dev)), rng, f"{pool_path} (dev_teacher)")
        rng.shuffle(rest)
        n_transfer = int(settings["n_transfer"])
        transfer = rest if n_transfer < 0 else rest[:n_transfer]
        # The rows after the transfer rows, for the fitted linear blocks only (n_transfer_more).
        more = [] if n_transfer < 0 else rest[n_transfer:]
        n_more = int(settings["n_transfer_more"])
        more = more if n_more < 0 else more[:n_more]
        test, _ = balanced_sample(test_rows, int(settings["n_test"]), random.Random(f"{seed}:{lang}:test"), f"{test_path} (test)")
        for name, rows in (("train", train), ("dev", dev), ("dev_teacher", dev_teacher), ("test", test), ("transfer", transfer), ("transfer_more", more)):
            splits[name].extend((lang, r) for r in rows)
            counts[name] = len(rows)
        counts["transfer_available"] = len(rest)
        summary["languages"][lang] = counts
    for name in ("train", "dev", "dev_teacher", "test"):
        random.Random(f"{seed}:{name}:order").shuffle(splits[name])
    return splits, summary


def main(
    ctx: typer.Context,
    data_dir: Path = typer.Argument(..., help="MARC folder with <lang>/train_pool.csv and <lang>/test.csv"),
    output_dir: Path = typer.Argument(..., help="Output folder (corpus/)"),
    config: Path = typer.Option(Path("configs/data.cfg"), "--config", help="Config with a [corpus] section"),
) -> None:
    """Write train/dev/dev_teacher/test DocBins, train.jsonl, transfer.jsonl and transfer_more.jsonl.

    ctx (typer.Context): Extra args are dotted overrides, e.g. --corpus.n_train 40.
    data_dir (Path): MARC data folder.
    output_dir (Path): Where the splits go.
    config (Path): The data config.
    """
    settings = load_section(config, "corpus", parse_config_overrides(ctx.args))
    try:
        splits, summary = make_splits(data_dir, settings)
    except BadRow as err:
        typer.echo(f"Error: {err}", err=True)
        typer.echo("(set corpus.skip_bad to skip bad rows and count them instead)", err=True)
        sys.exit(1)
    nlp = spacy.blank("xx")
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "dev", "dev_teacher", "test"):
        with atomic_path(output_dir / f"{name}.spacy") as tmp:
            to_docbin(nlp, splits[name]).to_disk(tmp)
    write_jsonl(output_dir / "train.jsonl", [{"text": r["text"], "lang": lang} for lang, r in splits["train"]])
    for name in ("transfer", "transfer_more"):
        write_jsonl(output_dir / f"{name}.jsonl", [{"text": r["text"], "lang": lang} for lang, r in splits[name]])
    write_json(output_dir / "summary.json", summary)
    for lang, counts in summary["languages"].items():
        typer.echo(f"{lang}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    typer.echo(f"skipped bad rows: {len(summary['skipped'])}")
    for message in summary["skipped"][:20]:
        typer.echo(f"  skipped {message}")


if __name__ == "__main__":
    run(main)
