"""Reading texts and writing outputs: the one place every command and the server use.

Reading: ``read_records`` streams ``.txt`` (one text per line), ``.jsonl`` /
``.ndjson`` (one JSON object per line), ``.csv`` (a header row with a text
column) and ``.spacy`` DocBins (a file, or a directory of them). Every problem is
an ``InputError`` that names the file and the line (or the doc) and the field.

Writing: ``atomic_path`` gives a temporary path beside the output that replaces
it only when the command succeeds, with the permissions a plain ``open()`` or
``mkdir()`` would give; ``check_output`` refuses, before any work, an output that
would destroy something (a path of another kind, an input, an existing output
without ``overwrite``). ``exit_on_sigterm`` makes SIGTERM unwind like Ctrl-C, so
the temporary paths are removed and the previous output stays intact.
"""

import contextlib
import csv
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]

#: Input formats, by suffix (a directory is read as ``.spacy`` shards).
SUFFIXES = (".txt", ".jsonl", ".ndjson", ".csv", ".spacy")

#: Longest text (characters) ``read_records`` accepts by default: spaCy's default
#: ``nlp.max_length``, past which ``nlp(text)`` raises E088 (after the model has
#: loaded, without saying where the text came from).
MAX_LENGTH = 1_000_000


class InputError(ValueError):
    """A problem in an input file, with where it is.

    path (PathLike): The file.
    line (Optional[int]): 1-based line number (text formats) if known.
    message (str): What is wrong.
    doc (Optional[int]): 0-based doc index (``.spacy`` files), if known.
    """

    def __init__(self, path: PathLike, line: Optional[int], message: str, *, doc: Optional[int] = None) -> None:
        self.path = str(path)
        self.line = line
        self.doc = doc
        self.message = message
        super().__init__(f"{_where(self.path, line, doc)}: {message}")


class UsageError(ValueError):
    """A bad command-line argument or option; the message names it."""


def _where(path: str, line: Optional[int], doc: Optional[int]) -> str:
    if line is not None:
        return f"{path}:{line}"
    if doc is not None:
        return f"{path}: doc {doc}"
    return path


@dataclass
class Record:
    """One text read from an input.

    text (str): The text.
    lang (Optional[str]): Its language (a ``lang`` field or column, or a DocBin doc's
        ``user_data["lang"]``), if known.
    cats (Dict[str, float]): Gold cats, if any.
    meta (Dict[str, Any]): Other fields (``id``, CSV columns ...), carried along.
    path (Optional[str]): The file it came from.
    line (Optional[int]): 1-based line where it starts (text formats).
    doc (Optional[int]): 0-based index in its DocBin (``.spacy``).
    """

    text: str
    lang: Optional[str] = None
    cats: Dict[str, float] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None
    line: Optional[int] = None
    doc: Optional[int] = None

    @property
    def id(self) -> Any:
        """The record's ``id`` field or column, if it has one."""
        return self.meta.get("id")

    @property
    def where(self) -> str:
        """``file:line`` (or ``file: doc N``), for error messages."""
        return _where(self.path or "<input>", self.line, self.doc)


def read_records(path: PathLike, text_field: str = "text", max_length: Optional[int] = MAX_LENGTH) -> Iterator[Record]:
    """Stream the records of an input file (see the module docstring for formats).

    path (PathLike): The input: a file, or a directory of ``.spacy`` files.
    text_field (str): JSON field or CSV column that holds the text.
    max_length (Optional[int]): Longest text in characters (a longer one is an
        ``InputError`` at its file:line); pass the pipeline's ``nlp.max_length``
        where it differs, None for no limit.
    YIELDS (Record): One record per text, in file order (blank lines skipped).
    """
    for record in _read_records(Path(path), text_field):
        if max_length is not None and len(record.text) > max_length:
            raise InputError(
                record.path or path, record.line,
                f"the text has {len(record.text):,} characters, over the limit of {max_length:,} (the pipeline's nlp.max_length)",
                doc=record.doc,
            )
        yield record


def check_records(path: PathLike, text_field: str = "text", max_length: Optional[int] = MAX_LENGTH) -> int:
    """Read a whole input once, so that a bad record fails before any model loads.

    path (PathLike): The input.
    text_field (str): JSON field or CSV column that holds the text.
    max_length (Optional[int]): As for :func:`read_records`.
    RETURNS (int): The number of records.
    """
    return sum(1 for _ in read_records(path, text_field, max_length))


def _read_records(path: Path, text_field: str) -> Iterator[Record]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file or directory")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".spacy":
        yield from _read_docbins(path)
    elif suffix not in SUFFIXES:
        raise InputError(path, None, f"unknown input format {path.suffix!r}; use one of {', '.join(SUFFIXES)} or a directory of .spacy files")
    elif suffix == ".csv":
        yield from _read_csv(path, text_field)
    else:
        yield from _read_lines(path, text_field, jsonl=suffix != ".txt")


def count_records(path: PathLike) -> Optional[int]:
    """How many records ``read_records`` will yield (for progress bars), or None.

    Text formats count non-blank lines (a CSV counts its rows); DocBins are
    opened and counted. Returns None where counting would need to parse fully
    (malformed input is reported by ``read_records``, not here).

    path (PathLike): The input.
    RETURNS (Optional[int]): The count.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if path.is_file() and suffix in (".txt", ".jsonl", ".ndjson"):
            with path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        if path.is_file() and suffix == ".csv":
            with path.open("r", encoding="utf-8-sig", newline="") as f:
                return max(0, sum(1 for row in csv.reader(f) if row) - 1)
        if path.is_dir() or suffix == ".spacy":
            from spacy.tokens import DocBin

            return sum(len(DocBin().from_disk(f)) for f in _docbin_files(path))
    except Exception:  # noqa: BLE001 - a count is only for display
        return None
    return None


def _decoded_lines(path: Path, keep_ends: bool = False) -> Iterator[Tuple[int, str]]:
    # Decode line by line (not the whole stream) so a bad byte is reported on
    # the line where it is.
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise InputError(path, number, f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
            yield number, line if keep_ends else line.rstrip("\r\n")


def _check_unicode(path: Path, number: int, name: str, value: Any) -> None:
    # JSON escapes can encode lone surrogates ("\ud800"): no UTF-8 writer or
    # spaCy hash can take them, so refuse them here, naming the line.
    if not isinstance(value, str):
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            path, number, f"field {name!r} is not valid Unicode ({err.reason} {value[err.start]!r} at position {err.start})"
        ) from None


def _record(path: Path, number: int, obj: Dict[str, Any], text_field: str) -> Record:
    text = obj.get(text_field)
    if text is None:
        raise InputError(path, number, f"missing field {text_field!r}")
    if not isinstance(text, str):
        raise InputError(path, number, f"field {text_field!r} must be a string, got {type(text).__name__}")
    lang = obj.get("lang") or None
    if lang is not None and not isinstance(lang, str):
        raise InputError(path, number, f"field 'lang' must be a string, got {type(lang).__name__}")
    cats = obj.get("cats") or {}
    if not isinstance(cats, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in cats.values()
    ):
        raise InputError(path, number, "field 'cats' must map labels to numbers")
    for name in (text_field, "lang", "id"):
        _check_unicode(path, number, name, obj.get(name))
    meta = {k: v for k, v in obj.items() if k not in (text_field, "lang", "cats")}
    return Record(
        text=text, lang=lang, cats={str(k): float(v) for k, v in cats.items()}, meta=meta, path=str(path), line=number
    )


def _read_lines(path: Path, text_field: str, jsonl: bool) -> Iterator[Record]:
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        if not jsonl:
            yield Record(text=line, path=str(path), line=number)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(path, number, f"invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(path, number, f"expected a JSON object with a {text_field!r} field, got {type(obj).__name__}")
        yield _record(path, number, obj, text_field)


def _read_csv(path: Path, text_field: str) -> Iterator[Record]:
    # Reviews can be long; the csv module's default field limit is 128 KiB.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # The csv module reads decoded physical lines, so a bad byte is reported on
    # its own line; strict: an unclosed quote is an error, not a field that
    # silently swallows the rest of the file.
    lines = (line for _, line in _decoded_lines(path, keep_ends=True))
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise InputError(path, 1, f"cannot read the header: {err}") from None
    if header is None:
        return
    if text_field not in header:
        raise InputError(path, 1, f"no {text_field!r} column (columns: {', '.join(header) or 'none'})")
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                raise InputError(path, start, "malformed CSV: a quoted field opened here is never closed") from None
            raise InputError(path, reader.line_num, f"malformed CSV: {err}") from None
        number, start = start, reader.line_num + 1
        if not row:
            continue  # blank line
        if len(row) != len(header):
            raise InputError(path, number, f"expected {len(header)} fields, got {len(row)}")
        yield _record(path, number, dict(zip(header, row)), text_field)


def _docbin_files(path: Path) -> List[Path]:
    files = sorted(path.rglob("*.spacy")) if path.is_dir() else [path]
    if not files:
        raise InputError(path, None, "no .spacy files in this directory")
    return files


def _read_docbins(path: Path) -> Iterator[Record]:
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    vocab = Vocab()
    for file in _docbin_files(path):
        try:
            docbin = DocBin().from_disk(file)
        except Exception as e:  # noqa: BLE001 - msgpack/zlib errors have no common base class
            raise InputError(file, None, f"not a readable DocBin ({type(e).__name__}: {e})") from None
        for i, doc in enumerate(docbin.get_docs(vocab)):
            lang = doc.user_data.get("lang")
            yield Record(text=doc.text, lang=lang, cats=dict(doc.cats), path=str(file), doc=i)


def record_to_dict(record: Record, result: Dict[str, Any]) -> Dict[str, Any]:
    """The JSONL output line for one scored record: where it was, its id and text, its scores.

    record (Record): The input record.
    result (Dict[str, Any]): ``{"cats", "label", "score"}``.
    RETURNS (Dict[str, Any]): Output object.
    """
    out: Dict[str, Any] = {"line": record.line} if record.doc is None else {"doc": record.doc}
    if record.id is not None:
        out["id"] = record.id
    out["text"] = record.text
    out.update(result)
    return out


def batched(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    """Lists of ``size`` items (the last may be shorter), streamed.

    ``spacy.util.minibatch`` does the same where spaCy is loaded anyway; this
    one keeps ``spacy-distill client`` free of spaCy (and of the torch that
    thinc imports with it).

    items (Iterable[Any]): The items.
    size (int): Items per batch (>= 1).
    YIELDS (List[Any]): The batches, in order.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    batch: List[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- writing -----------------------------------------------------------------

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # The only portable way to read the umask is to set it and set it back.
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _same_or_inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside directory ``b`` (symlinks resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_output(
    output: PathLike,
    *,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = False,
    is_dir: bool = False,
    name: str = "OUTPUT",
    outputs: Sequence[PathLike] = (),
) -> Path:
    """Refuse, before any work, an output that would destroy something.

    An output is refused when its path is empty, is a path of the other kind
    (a directory where a file is written, or the reverse), is or contains or
    lies inside one of the inputs, exists and ``overwrite`` is False, or cannot
    be created (a parent that is a file, or not writable). Missing parent
    directories are created.

    output (PathLike): The output path.
    inputs (Sequence[PathLike]): Paths the command reads (never written).
    overwrite (bool): Replace an existing output of the same kind.
    is_dir (bool): The output is a directory (else a file).
    name (str): The argument's name, for the message (``OUTPUT``, ``-o/--output``).
    outputs (Sequence[PathLike]): The command's other outputs: the same path as
        one of them, or one inside the other, is refused whether or not it exists yet.
    RETURNS (Path): The output path.
    """
    if str(output).strip() in ("", "."):
        raise UsageError(f"{name}: the output path is empty")
    out = Path(output)
    kind = "a directory" if is_dir else "a file"
    if out.exists() or out.is_symlink():
        if is_dir and not out.is_dir():
            raise UsageError(f"{name}: {out} exists and is not a directory; the output is {kind}")
        if not is_dir and not out.is_file():
            what = "a directory" if out.is_dir() else "not a regular file"
            raise UsageError(f"{name}: {out} exists and is {what}; the output is {kind}")
    for path in inputs:
        path = Path(path)
        if not path.exists():
            continue
        if _same_or_inside(out, path) or _same_or_inside(path, out):
            if out.resolve() == path.resolve():
                relation = "is the input"
            elif _same_or_inside(out, path):
                relation = "is inside the input"
            else:
                relation = "contains the input"
            raise UsageError(f"{name}: {out} {relation} {path}; write the output elsewhere")
    for other in outputs:
        other = Path(other)
        if _same_or_inside(out, other) or _same_or_inside(other, out):
            raise UsageError(f"{name}: {out} is the same path as (or overlaps) the command's other output {other}")
    if out.exists() and not overwrite:
        raise UsageError(f"{name}: {out} exists; add --overwrite to replace it")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{name}: cannot create {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{name}: cannot create {out}: {existing} is not writable")
    try:
        # Create the parent now, so an impossible one fails before any work.
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{name}: cannot create {out.parent}: {err.strerror or err}") from None
    return out


@contextlib.contextmanager
def atomic_path(target: PathLike, *, is_dir: bool = False, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``target`` that replaces it only on success.

    An interrupted or failed run removes the temporary path and leaves the
    previous ``target`` as it was, never a half-written one that looks
    complete. On success the new file or directory gets the mode a plain
    ``open()`` / ``mkdir()`` gives under the current umask (temporary files
    are created private, 0600 / 0700).

    target (PathLike): The final file or directory.
    is_dir (bool): Create a directory rather than a file path.
    suffix (str): Suffix of the temporary name (for writers that pick a format by it).
    YIELDS (Path): The temporary path to write to.
    """
    target = Path(target)
    if target.exists() and target.is_dir() != is_dir:
        raise UsageError(f"{target} exists and is {'not ' if is_dir else ''}a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_umask())
    except BaseException:
        _remove(tmp)
        raise
    try:
        if target.is_symlink() and is_dir:
            # Replace the link itself, never the folder it points to.
            target.unlink()
            tmp.rename(target)
        elif target.is_dir() and not target.is_symlink():
            # A directory cannot be replaced in one rename: move the old one aside
            # first, so that the target name is never absent for long nor mixed.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def scratch_file(beside: PathLike, suffix: str = "") -> Iterator[Path]:
    """A private temporary file beside ``beside``, removed when done (success or not).

    beside (PathLike): A path in the directory to use (it is created if needed).
    suffix (str): Suffix of the file's name.
    YIELDS (Path): The temporary file (empty).
    """
    parent = Path(beside).parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{Path(beside).name}.scratch-", suffix=suffix, dir=parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text(path: PathLike, text: str) -> None:
    """Write a text file atomically.

    path (PathLike): The file.
    text (str): Its content (UTF-8).
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf8")


def write_json(path: PathLike, data: Any) -> None:
    """Write JSON atomically (indented, UTF-8, final newline).

    path (PathLike): The file.
    data (Any): JSON-serializable data.
    """
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: PathLike, rows: Iterable[Dict[str, Any]]) -> None:
    """Write JSON lines atomically.

    path (PathLike): The file.
    rows (Iterable[Dict[str, Any]]): One object per line.
    """
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _raise_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C (``SystemExit(143)``).

    Python's default SIGTERM action ends the process at once, skipping the
    clean-up that removes ``atomic_path``'s temporary files; schedulers and
    ``kill`` send SIGTERM. Only the main thread can set a handler: elsewhere
    this does nothing.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_sigterm)


__all__ = [
    "SUFFIXES",
    "InputError",
    "Record",
    "UsageError",
    "atomic_path",
    "batched",
    "check_output",
    "check_records",
    "count_records",
    "exit_on_sigterm",
    "read_records",
    "record_to_dict",
    "scratch_file",
    "write_json",
    "write_jsonl",
    "write_text",
]
