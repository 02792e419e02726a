"""Reading text records with precise errors, and writing outputs atomically."""

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional

from spacy.tokens import DocBin
from spacy.vocab import Vocab


class InputError(ValueError):
    """Bad input: the message names the file, line and field."""


@dataclass
class Record:
    """One text to augment or label.

    text (str): The text.
    lang (Optional[str]): Its language, if known.
    cats (Dict[str, float]): Gold cats, if any.
    meta (Dict): Other fields to carry along.
    """

    text: str
    lang: Optional[str] = None
    cats: Dict[str, float] = field(default_factory=dict)
    meta: Dict = field(default_factory=dict)


def count_records(path: Path) -> Optional[int]:
    """Number of records in a text/JSONL file (None for DocBins: unknown cheaply).

    path (Path): The input.
    RETURNS (Optional[int]): The count.
    """
    if path.is_file() and path.suffix in (".jsonl", ".txt"):
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return None


def read_records(path: Path) -> Iterator[Record]:
    """Stream records from JSONL (``{"text", "lang"?, "cats"?}``), plain text (one
    per line) or DocBins (a ``.spacy`` file or a directory of them).

    path (Path): The input.
    YIELDS (Record): One record per text, in file order.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".spacy":
        yield from _read_docbins(path)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif path.suffix == ".txt":
        yield from _read_txt(path)
    else:
        raise InputError(f"{path}: unknown input format {path.suffix!r} (use .jsonl, .txt, .spacy or a directory)")


def _decoded_lines(path: Path) -> Iterator[tuple]:
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                yield i, raw.decode("utf8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _read_txt(path: Path) -> Iterator[Record]:
    for i, line in _decoded_lines(path):
        text = line.rstrip("\r\n")
        if text.strip():
            yield Record(text=text, meta={"line": i})


def _read_jsonl(path: Path) -> Iterator[Record]:
    for i, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        text = obj.get("text")
        if not isinstance(text, str):
            raise InputError(f"{path}:{i}: field 'text' is missing or not a string")
        lang = obj.get("lang")
        if lang is not None and not isinstance(lang, str):
            raise InputError(f"{path}:{i}: field 'lang' must be a string")
        cats = obj.get("cats") or {}
        if not isinstance(cats, dict) or not all(isinstance(v, (int, float)) for v in cats.values()):
            raise InputError(f"{path}:{i}: field 'cats' must map labels to numbers")
        meta = {k: v for k, v in obj.items() if k not in ("text", "lang", "cats")}
        meta["line"] = i
        yield Record(text=text, lang=lang, cats={k: float(v) for k, v in cats.items()}, meta=meta)


def _read_docbins(path: Path) -> Iterator[Record]:
    files = sorted(path.rglob("*.spacy")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path}: no .spacy files in this directory")
    vocab = Vocab()
    for file in files:
        try:
            docbin = DocBin().from_disk(file)
        except Exception as e:  # msgpack/zlib errors have no common base class
            raise InputError(f"{file}: not a readable DocBin ({type(e).__name__}: {e})") from None
        for i, doc in enumerate(docbin.get_docs(vocab)):
            lang = doc.user_data.get("lang")
            yield Record(text=doc.text, lang=lang, cats=dict(doc.cats), meta={"doc": i, "file": str(file)})


@contextlib.contextmanager
def atomic_path(target: Path, *, is_dir: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target`` that replaces it only on success.

    An interrupted run leaves a ``.tmp-*`` path behind, never a half-written
    ``target`` that looks complete.

    target (Path): The final file or directory.
    is_dir (bool): Create a directory rather than a file path.
    YIELDS (Path): The temporary path to write to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
