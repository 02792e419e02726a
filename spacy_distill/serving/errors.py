"""How errors look: ``{"detail": "one readable line"}``, whatever failed.

FastAPI's own 422 body is a list of pydantic errors (one per bad item, and
unbounded); the handlers here turn it and every HTTP error into one line,
escaped so that it is always valid UTF-8.
"""

from typing import Any, Dict, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorResponse

# The error statuses of the API routes, for their OpenAPI ``responses``.
ERROR_RESPONSES: Dict[Union[int, str], Dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON",
        401: "Missing or wrong bearer token (only when a token is configured)",
        404: "Unknown model",
        408: "The request body did not arrive within body_timeout_s",
        413: "A size limit was exceeded (body, number of texts, characters or tokens)",
        422: "Wrong types or missing fields, or the model cannot do this (e.g. no vectors)",
        431: "Too many or too large request headers",
        503: "Models still loading, overloaded, shutting down, or no result within the timeout",
    }.items()
}


def printable(text: str) -> str:
    """Escape what UTF-8 cannot encode (lone surrogates from the request can
    end up in messages, e.g. as an unknown field name).

    text (str): A message.
    RETURNS (str): It, encodable as UTF-8.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_message(err: RequestValidationError) -> "tuple[int, str]":
    """Turn pydantic's error list into a status and one readable line.

    err (RequestValidationError): FastAPI's validation error.
    RETURNS (tuple[int, str]): 400 for malformed JSON, else 422; and the line.
    """
    # Called once, and bounded: precheck_body leaves at most a few errors.
    errors = list(err.errors()[:50])
    for item in errors:
        if item.get("type") == "json_invalid":
            detail = (item.get("ctx") or {}).get("error", "invalid JSON")
            loc = item.get("loc") or ()
            pos = f" at position {loc[-1]}" if len(loc) > 1 else ""
            return 400, f"malformed JSON{pos}: {detail}"
    if any(item.get("type") == "missing" and tuple(item.get("loc", ())) == ("body",) for item in errors):
        return 422, 'missing JSON body: expected an object like {"texts": ["..."]}'
    parts = []
    for item in errors[:5]:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {item.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return 422, "invalid request: " + "; ".join(parts)


def add_error_handlers(app: FastAPI) -> None:
    """Answer validation and HTTP errors as ``{"detail": ...}`` with one line.

    app (FastAPI): The app to add the handlers to.
    """

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        status, message = validation_message(err)
        return JSONResponse({"detail": printable(message)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": printable(str(err.detail))},
            status_code=err.status_code,
            headers=err.headers,
        )
