"""Streaming readers for the text files the CLI scores.

Formats, by suffix: ``.txt`` (one text per line; blank lines skipped),
``.jsonl``/``.ndjson`` (one JSON object per line with a text field; blank
lines skipped) and ``.csv`` (a header row with a text column). Every problem
is an ``InputError`` naming the file and line.
"""

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

SUFFIXES = (".txt", ".jsonl", ".ndjson", ".csv")


class InputError(ValueError):
    """A problem in an input file, with where it is.

    path (Union[str, Path]): The file.
    line (Optional[int]): 1-based line number, if known.
    message (str): What is wrong.
    """

    def __init__(self, path: Union[str, Path], line: Optional[int], message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass
class Record:
    """One text read from a file.

    line (int): 1-based line where it starts.
    text (str): The text.
    id (Any): The record's "id" field (JSONL/CSV), if it has one.
    """

    line: int
    text: str
    id: Any = None


def iter_records(path: Union[str, Path], text_field: str = "text") -> Iterator[Record]:
    """Stream the texts of a .txt, .jsonl or .csv file.

    path (Union[str, Path]): The file.
    text_field (str): Field (JSONL) or column (CSV) holding the text.
    YIELDS (Record): One record per text, in file order.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(
            path, None, f"unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise InputError(path, None, "no such file")
    if suffix == ".csv":
        yield from _iter_csv(path, text_field)
    else:
        yield from _iter_lines(path, text_field, jsonl=suffix != ".txt")


def _decoded_lines(path: Path) -> Iterator["tuple[int, str]"]:
    # Decode line by line (not the whole stream) so a bad byte is reported
    # on the line where it is.
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise InputError(
                    path, number, f"not valid UTF-8 ({err.reason} at byte {err.start})"
                ) from err
            yield number, line.rstrip("\r\n")


def _iter_lines(path: Path, text_field: str, jsonl: bool) -> Iterator[Record]:
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        if not jsonl:
            yield Record(number, line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(path, number, f"invalid JSON: {err.msg} (column {err.colno})") from err
        if not isinstance(obj, dict):
            raise InputError(
                path,
                number,
                f"expected a JSON object with a {text_field!r} field, got {type(obj).__name__}",
            )
        if text_field not in obj:
            raise InputError(path, number, f"missing field {text_field!r}")
        text = obj[text_field]
        if not isinstance(text, str):
            raise InputError(
                path, number, f"field {text_field!r} must be a string, got {type(text).__name__}"
            )
        record_id = obj.get("id")
        # JSON escapes can encode lone surrogates ("\\ud800"): no UTF-8 writer or
        # spaCy hash can take them, so refuse them here, naming the line.
        for name, value in ((text_field, text), ("id", record_id)):
            if isinstance(value, str):
                _check_unicode(path, number, name, value)
        yield Record(number, text, record_id)


def _check_unicode(path: Path, number: int, name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            path,
            number,
            f"field {name!r} is not valid Unicode ({err.reason} {value[err.start]!r} "
            f"at position {err.start})",
        ) from None


def _iter_csv(path: Path, text_field: str) -> Iterator[Record]:
    # Reviews can be long; the csv module's default field limit is 128 KiB.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(path, 1, f"cannot read the header: {err}") from err
        if header is None:
            return
        if text_field not in header:
            raise InputError(
                path, 1, f"no {text_field!r} column (columns: {', '.join(header) or 'none'})"
            )
        index = header.index(text_field)
        id_index = header.index("id") if "id" in header else None
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise InputError(path, reader.line_num, f"malformed CSV: {err}") from err
            except UnicodeDecodeError as err:
                raise InputError(
                    path, reader.line_num + 1, f"not valid UTF-8 ({err.reason})"
                ) from err
            line, start = start, reader.line_num + 1
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise InputError(path, line, f"expected {len(header)} fields, got {len(row)}")
            yield Record(line, row[index], row[id_index] if id_index is not None else None)


def record_to_dict(record: Record, result: Dict[str, Any]) -> Dict[str, Any]:
    """The JSONL output line for one scored record.

    record (Record): The input record.
    result (Dict[str, Any]): ``{"cats", "label", "score"}``.
    RETURNS (Dict[str, Any]): Output object.
    """
    out: Dict[str, Any] = {"line": record.line}
    if record.id is not None:
        out["id"] = record.id
    out["text"] = record.text
    out.update(result)
    return out
