"""FastAPI dependencies of the routes: the state, the token check, the limits.

The routes are module-level (``routes_*.py``), so they reach the app's state
through the request (``get_state``) rather than through a closure.
"""

import hmac
from typing import Any, Awaitable, Callable, List, Optional

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .settings import ServeSettings
from .state import ServerState


def get_state(request: Request) -> ServerState:
    """The app's ``ServerState`` (set by ``create_app``).

    request (Request): The request.
    RETURNS (ServerState): The state of the app that serves it.
    """
    return request.app.state.serving


def get_cascade(request: Request) -> Any:
    """The app's ``ServerCascade`` (``serving/cascade.py``), or None.

    request (Request): The request.
    RETURNS (Optional[ServerCascade]): The cascade served as one more model, if any.
    """
    return request.app.state.cascade


def token_ok(credentials: Optional[HTTPAuthorizationCredentials], token: Optional[str]) -> bool:
    """Whether a request's bearer credentials match the server's token.

    credentials (Optional[HTTPAuthorizationCredentials]): What the request sent.
    token (Optional[str]): The server's token; None lets everyone in.
    RETURNS (bool): Whether the request may pass.
    """
    if token is None:
        return True
    given = credentials.credentials if credentials is not None else ""
    # Compare bytes: compare_digest refuses non-ASCII str. Starlette decodes
    # header bytes as Latin-1, so encoding back gives the bytes as sent,
    # which a UTF-8 client made from the token's UTF-8.
    try:
        raw = given.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return credentials is not None and hmac.compare_digest(raw, token.encode("utf-8"))


def token_dependency(token: Optional[str]) -> Callable[..., Awaitable[None]]:
    """The dependency that guards the API routes: 401 without the token.

    Made per app, not once for all: only a server with a token declares the
    Bearer scheme in its OpenAPI schema (a scheme that is not enforced misleads
    clients and fuzzers), and the schema comes from the dependency's signature.

    token (Optional[str]): The server's token; None for an open server.
    RETURNS (Callable[..., Awaitable[None]]): The dependency, for ``Depends``.
    """
    if token is None:

        async def no_token() -> None:
            return None

        return no_token

    bearer = HTTPBearer(auto_error=False, description="The server's token.")

    async def require_token(
        credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer),
    ) -> None:
        if not token_ok(credentials, token):
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return require_token


def check_texts(texts: List[str], settings: ServeSettings) -> None:
    """The per-request limits on texts: their number, length and encoding.

    Called by ``run_job`` once the model is known, not resolved as a route
    dependency: a dependency runs before the route's body, so a request with
    an unknown model and a too-long text would get 413 instead of its 404.

    texts (List[str]): The request's texts.
    settings (ServeSettings): The limits.
    """
    if len(texts) > settings.max_texts:
        raise HTTPException(413, f"too many texts: {len(texts)} > max_texts={settings.max_texts}")
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            raise HTTPException(
                413, f"texts[{i}] has {len(text)} characters > max_chars={settings.max_chars}"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            # JSON can smuggle in lone surrogates ("\ud800"), which spaCy cannot hash.
            raise HTTPException(
                422, f"texts[{i}] is not valid Unicode: {err.reason} at position {err.start}"
            ) from err
