"""Check that a packaged pipeline wheel holds no review data.

Fails (exit 1) if the wheel has a data file (.csv, .spacy, .jsonl, .conllu, .txt
other than licence files) or if any 24-character stretch of any review text of the
corpus (train, dev, test, transfer) occurs in any file of the wheel.
"""

import json
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Set

import spacy
import typer
from spacy.tokens import DocBin

from spacy_distill.io import write_json
from spacy_distill.project import run

DATA_SUFFIXES = (".csv", ".tsv", ".spacy", ".jsonl", ".conllu", ".parquet")
WINDOW = 24


def review_windows(corpus_dir: Path) -> Set[str]:
    """One 24-character window from the middle of every review in the corpus folder.

    corpus_dir (Path): corpus/ with *.spacy and *.jsonl files.
    RETURNS (Set[str]): The windows (reviews shorter than the window are skipped).
    """
    texts: List[str] = []
    vocab = spacy.blank("xx").vocab
    for path in sorted(corpus_dir.glob("*.spacy")):
        texts.extend(doc.text for doc in DocBin().from_disk(path).get_docs(vocab))
    for path in sorted(corpus_dir.glob("*.jsonl")):
        with path.open(encoding="utf8") as f:
            texts.extend(json.loads(line)["text"] for line in f if line.strip())
    windows = set()
    for text in texts:
        text = text.strip()
        if len(text) >= WINDOW:
            mid = (len(text) - WINDOW) // 2
            windows.add(text[mid : mid + WINDOW])
    return windows


def find_reviews(blob: str, windows: Set[str]) -> List[str]:
    """Review windows that occur in a text.

    blob (str): A file's content.
    windows (Set[str]): Review windows.
    RETURNS (List[str]): Up to 5 windows found.
    """
    found = []
    for i in range(len(blob) - WINDOW + 1):
        if blob[i : i + WINDOW] in windows:
            found.append(blob[i : i + WINDOW])
            if len(found) >= 5:
                break
    return found


def main(
    wheel_dir: Path = typer.Argument(..., help="Folder searched recursively for *.whl (packages/)"),
    corpus_dir: Path = typer.Argument(..., help="corpus/ (the review texts to look for)"),
    output_path: Path = typer.Argument(..., help="Report JSON (metrics/package_check.json)"),
) -> None:
    """Inspect every wheel and write a report; exit 1 on review data.

    wheel_dir (Path): Where the wheel is.
    corpus_dir (Path): The corpus folder.
    output_path (Path): Report path.
    """
    wheels = sorted(wheel_dir.rglob("*.whl"))
    if not wheels:
        typer.echo(f"Error: no .whl under {wheel_dir}", err=True)
        sys.exit(1)
    windows = review_windows(corpus_dir)
    report: Dict[str, Dict] = {}
    ok = True
    for wheel in wheels:
        problems: List[str] = []
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            for name in names:
                if name.lower().endswith(DATA_SUFFIXES):
                    problems.append(f"{name}: data file")
                blob = zf.read(name).decode("utf8", errors="ignore")
                for hit in find_reviews(blob, windows):
                    problems.append(f"{name}: contains review text {hit!r}")
        report[str(wheel)] = {"files": len(names), "bytes": wheel.stat().st_size, "problems": problems}
        ok = ok and not problems
        typer.echo(f"{wheel}: {len(names)} files, {wheel.stat().st_size / 1e6:.1f} MB, {len(problems)} problem(s)")
        for p in problems[:20]:
            typer.echo(f"  {p}")
    write_json(output_path, {"ok": ok, "review_windows_checked": len(windows), "wheels": report})
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
