"""The HTML pages: the browser page at ``/`` and API docs that work offline.

FastAPI's default ``/docs`` and ``/redoc`` load their scripts from a CDN. With
the assets of ``fastapi-offline`` (in the ``serve`` extra), these are the usual
Swagger UI and ReDoc pages, loading their scripts from this server
(``mount_assets`` serves them); without, a plain page listing the endpoints
(no script, nothing external).
"""

import functools
import html
import importlib.util
from pathlib import Path
from typing import Callable, Optional

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@functools.cache
def docs_assets() -> Optional[Path]:
    """The Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package.

    Looked up once: the installed packages do not change under a running server.

    RETURNS (Optional[Path]): Its static folder, or None if not installed.
    """
    try:
        spec = importlib.util.find_spec("fastapi_offline")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "static"
    needed = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
    return folder if all((folder / name).is_file() for name in needed) else None


def mount_assets(app: FastAPI) -> None:
    """Serve the browser page's files at ``/static`` and the docs' at ``/docs-assets``.

    Mounts are the app's, not a router's: ``include_router`` leaves them out.

    app (FastAPI): The app.
    """
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    assets = docs_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")


@functools.cache
def _index_html() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


@router.get("/")
async def index(request: Request) -> HTMLResponse:
    # The page asks for a token only where the server wants one.
    auth = "true" if request.app.state.serving.settings.token is not None else "false"
    return HTMLResponse(_index_html().replace("__AUTH_REQUIRED__", auth))


def _docs_page(request: Request, page: Callable[..., HTMLResponse], **assets: str) -> HTMLResponse:
    # FastAPI's page with its scripts from /docs-assets, or the plain page without them.
    if docs_assets() is None:
        return _plain(request)
    root = request.scope.get("root_path", "")
    return page(
        openapi_url=f"{root}/openapi.json",
        **{name: f"{root}/docs-assets/{file}" for name, file in assets.items()},
    )


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    return _docs_page(
        request,
        functools.partial(get_swagger_ui_html, title=f"{request.app.title} - Swagger UI"),
        swagger_js_url="swagger-ui-bundle.js",
        swagger_css_url="swagger-ui.css",
        swagger_favicon_url="favicon.png",
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _docs_page(
        request,
        functools.partial(
            get_redoc_html, title=f"{request.app.title} - ReDoc", with_google_fonts=False
        ),
        redoc_js_url="redoc.standalone.js",
        redoc_favicon_url="favicon.png",
    )


def _plain(request: Request) -> HTMLResponse:
    # Without the assets: the endpoints as a table, and why there is no more.
    title = request.app.title
    rows = []
    for path, methods in request.app.openapi().get("paths", {}).items():
        for method, op in methods.items():
            rows.append(
                f"<tr><td><code>{html.escape(method.upper())} {html.escape(path)}</code></td>"
                f"<td>{html.escape(str(op.get('summary', '')))}</td></tr>"
            )
    page = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>The interactive API docs need the "
        "<code>fastapi-offline</code> package (<code>pip install "
        "'spacy-distill[serve]'</code>); this server has no such assets and loads "
        "nothing from the internet. The schema: <a href=openapi.json>openapi.json</a>.</p>"
        f"<table>{''.join(rows)}</table>"
    )
    return HTMLResponse(page)

