"""A bounded check of ``/classify`` and ``/encode`` bodies before pydantic sees them.

``json.loads`` holds the GIL for the whole body and pydantic builds one error
per bad item, so a hostile body (2 MB of zeros) could keep the event loop busy
for a long time. ``precheck_body`` reads the body item by item and stops at the
first reason to refuse it; ``GuardMiddleware`` runs it in a thread.
"""

import json
import re
from typing import Any, Dict, List, Optional, Union

from .schemas import ClassifyRequest, EncodeRequest

# Most per-field errors that pydantic may be left to build for one request.
_MAX_ERRORS = 5


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _expect(text: str, pos: int, char: str, what: str) -> int:
    if text[pos : pos + 1] != char:
        raise json.JSONDecodeError(what, text, pos)
    return pos + 1


def _scalar(text: str, pos: int) -> "tuple[Any, int]":
    # A string, number, true/false/null: one short C call (never a container).
    if text[pos : pos + 1] in ("[", "{"):
        raise TypeError("container")
    try:
        return _DECODER.scan_once(text, pos)
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None


def _key(text: str, pos: int) -> "tuple[str, int]":
    # An object's key and its colon: the key, and where its value starts.
    if text[pos : pos + 1] != '"':
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
    key, pos = _DECODER.scan_once(text, pos)
    return key, _skip_ws(text, _expect(text, _skip_ws(text, pos), ":", "Expecting ':' delimiter"))


def _open(text: str, pos: int, closer: str) -> "tuple[int, bool]":
    # Past a container's opener: where its first item starts, or past the closer (True: empty).
    pos = _skip_ws(text, pos + 1)
    if text[pos : pos + 1] == closer:
        return pos + 1, True
    return pos, False


def _after_item(text: str, pos: int, closer: str) -> "tuple[int, bool]":
    # After a container's item: where the next starts, or past the closer (True: closed).
    pos = _skip_ws(text, pos)
    if text[pos : pos + 1] == ",":
        return _skip_ws(text, pos + 1), False
    return _expect(text, pos, closer, "Expecting ',' delimiter"), True


def _skip_value(text: str, pos: int, budget: List[int], depth: int = 0) -> int:
    # Syntax only, item by item; ``budget[0]`` items at most, then ``OverflowError``.
    budget[0] -= 1
    if budget[0] < 0 or depth > 100:
        raise OverflowError
    opener = text[pos : pos + 1]
    if opener not in ("[", "{"):
        return _scalar(text, pos)[1]
    closer = "]" if opener == "[" else "}"
    pos, closed = _open(text, pos, closer)
    while not closed:
        if opener == "{":
            pos = _key(text, pos)[1]
        pos, closed = _after_item(text, _skip_value(text, pos, budget, depth + 1), closer)
    return pos


def _scan_request(
    text: str, fields: "set[str]", max_texts: int
) -> "Union[Dict[str, Any], tuple[int, str]]":
    """Parse a /classify or /encode body up to the first reason to refuse it.

    ``json.loads`` is one C call that holds the GIL for the whole body (0.2 s
    and more for 2 MB of zeros: the event loop, ``/health`` included, waits
    for it), and pydantic then builds one error per bad item. A valid body is
    an object of a few scalar fields and ``texts``, a list of at most
    ``max_texts`` strings; this reads it item by item and stops at the first
    item that cannot be part of one (a non-string text, text ``max_texts +
    1``, a container where a scalar belongs, the sixth unknown field), so the
    work is bounded whatever the body holds. A body refused here may have
    syntax errors further on that are not reported.

    text (str): The body.
    fields (set[str]): The request's field names.
    max_texts (int): Most texts per request.
    RETURNS (Union[Dict[str, Any], tuple[int, str]]): The fields, or a
        status and message.
    """
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "{":
        # Not an object (or no JSON): only the syntax matters.
        json.loads(text)
        return 422, "invalid request: body: Input should be a valid dictionary or object"
    data: Dict[str, Any] = {}
    problems: List[str] = []
    pos, closed = _open(text, pos, "}")
    while not closed:
        key, pos = _key(text, pos)
        if key not in fields:
            problems.append(f"{key[:50]}: Extra inputs are not permitted")
            if len(problems) > _MAX_ERRORS:
                break
            try:
                pos = _skip_value(text, pos, [1000])
            except OverflowError:
                break  # refused anyway; the rest need not be read
        elif key == "texts" and text[pos : pos + 1] == "[":
            texts: List[str] = []
            pos, done = _open(text, pos, "]")
            while not done:
                if len(texts) >= max_texts:
                    return 413, f"too many texts: more than {max_texts} > max_texts={max_texts}"
                try:
                    item, pos = _scalar(text, pos)
                except TypeError:
                    item = []
                if not isinstance(item, str):
                    kind = "null" if item is None else type(item).__name__
                    problems.append(f"texts.{len(texts)}: must be a string, got {kind}")
                    return 422, "invalid request: " + "; ".join(problems)
                texts.append(item)
                pos, done = _after_item(text, pos, "]")
            data[key] = texts
        else:
            try:
                data[key], pos = _scalar(text, pos)
            except TypeError:
                # No field takes a list or object but texts: stop here.
                problems.append(f"{key[:50]}: Input should be a valid string or null")
                break
        pos, closed = _after_item(text, pos, "}")
    if closed and _skip_ws(text, pos) != len(text):
        raise json.JSONDecodeError("Extra data", text, _skip_ws(text, pos))
    if closed and "texts" not in data:
        problems.insert(0, "texts: Field required")
    if "texts" in data and not isinstance(data["texts"], list):
        problems.append("texts: Input should be a valid list of strings")
    for key in ("model", "pooling"):
        if key in data and not (data[key] is None or isinstance(data[key], str)):
            problems.append(f"{key}: Input should be a valid string")
    if problems:
        more = "; ... and more" if len(problems) > _MAX_ERRORS else ""
        return 422, "invalid request: " + "; ".join(problems[:_MAX_ERRORS]) + more
    return data


def _request_fields(path: str) -> "set[str]":
    model = ClassifyRequest if path == "/classify" else EncodeRequest
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        if info.alias:
            names.add(info.alias)
    return names


def precheck_body(
    messages: List[Dict[str, Any]], content_type: Optional[bytes], path: str, max_texts: int
) -> "Union[List[Dict[str, Any]], tuple[int, str]]":
    """A cheap, bounded check of a /classify or /encode body before pydantic.

    It rejects what would make pydantic build many errors: ``texts`` that is
    not a list, holds more than ``max_texts`` items or a non-string, and
    unknown fields; each with one message. A body it passes has at most a
    few fields and ``max_texts`` strings, so pydantic's own checks stay cheap
    (and at most a few errors). Bodies FastAPI does not parse as JSON (another
    content type, no body) are left to it.

    messages (List[Dict[str, Any]]): The body as read (``http.request`` messages).
    content_type (Optional[bytes]): The Content-Type header.
    path (str): "/classify" or "/encode".
    max_texts (int): Most texts per request.
    RETURNS (Union[List[Dict[str, Any]], tuple[int, str]]): The messages to
        pass on (the body re-encoded, so that duplicate keys cannot smuggle a
        large value past the check), or a status and message.
    """
    if not messages or messages[0].get("type") != "http.request":
        return messages
    raw = messages[0].get("body", b"")
    if not raw:
        return messages
    if content_type is not None:
        subtype = content_type.split(b";", 1)[0].strip().lower()
        # As FastAPI: only these are parsed as JSON (anything else fails as one error).
        if subtype != b"application/json" and not subtype.endswith(b"+json"):
            return messages
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        data = _scan_request(text, _request_fields(path), max_texts)
    except json.JSONDecodeError as err:
        return 400, f"malformed JSON at position {err.pos}: {err.msg}"
    except (UnicodeDecodeError, ValueError) as err:
        return 400, f"malformed JSON: {err}"
    except RecursionError:
        return 400, "malformed JSON: nested too deeply"
    if isinstance(data, tuple):
        return data
    body = json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return [{"type": "http.request", "body": body, "more_body": False}] + messages[1:]
