"""The FastAPI app: ``create_app(models, settings)``.

The app is built by a factory so tests can run it in-process, ``spacy-distill
serve`` can hand it to uvicorn, and Ray Serve can wrap the same app with
``serve.ingress``. This module only wires the parts together:

* ``state.py``: ``ServerState`` (models, counters, ``/status``);
* ``routes_inference.py``, ``routes_ops.py``, ``routes_docs.py``: the routes,
  one ``APIRouter`` each (flat modules, not a ``routes/`` package: the layout
  rule of tests/test_layout.py forbids a folder whose modules import the
  folder above it while that folder imports them);
* ``deps.py``: what the routes depend on (the state, the token, the limits);
* ``middleware.py``: the request guards in front of every route;
* ``errors.py``: how errors look; ``metrics.py``: the Prometheus metrics.
"""

import asyncio
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping, Optional

from fastapi import Depends, FastAPI

from . import routes_docs, routes_inference, routes_ops
from .deps import token_dependency
from .errors import add_error_handlers
from .middleware import GuardMiddleware
from .settings import ServeSettings
from .state import ModelSource, ServerState

__all__ = ["create_app", "create_app_from_env"]


def _version() -> str:
    # The installed distribution's, so the API docs never lag behind a release;
    # a source tree run without installing has none.
    try:
        return version("spacy-distill")
    except PackageNotFoundError:
        return "unknown"


def create_app(
    models: Mapping[str, ModelSource], settings: Optional[ServeSettings] = None
) -> FastAPI:
    """Build the API for one or more spaCy pipelines with text classifiers.

    models (Mapping[str, ModelSource]): Model name to package name, path or
        loaded ``Language``. The first is the default model.
    settings (Optional[ServeSettings]): Limits, batching, auth and CORS.
    RETURNS (FastAPI): The app; models load when its lifespan starts.
    """
    settings = settings or ServeSettings()
    state = ServerState(models, settings)
    # The student→teacher cascade (serving/cascade.py), served as one more model.
    cascade = None
    if settings.cascade:
        from .cascade import ServerCascade

        cascade = ServerCascade(settings.cascade, state)

    async def lifespan(app: FastAPI) -> Any:
        if settings.load_in_background:
            threading.Thread(
                target=state.load_models, name="spacy-distill-loader", daemon=True
            ).start()
        else:
            # Off the event loop even here: loading a teacher takes seconds.
            await asyncio.get_running_loop().run_in_executor(None, state.load_models)
            if state.load_error:
                raise RuntimeError(state.not_ready_message())
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; this drains
            # whatever is still queued and stops the threads.
            await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = FastAPI(
        title="spacy-distill server",
        description=(
            "Text classification and encoding with spaCy pipelines (distilled students, "
            "transformer teachers, baselines). Limits: "
            f"max_texts={settings.max_texts}, max_chars={settings.max_chars}, "
            f"max_body_bytes={settings.max_body_bytes}."
        ),
        version=_version(),
        lifespan=lifespan,
        # Served by routes_docs.py from an installed package: the defaults load a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.serving = state
    app.state.cascade = cascade
    add_error_handlers(app)

    # The token check is added here, per app: see deps.token_dependency.
    auth = [Depends(token_dependency(settings.token))]
    routers = (
        (routes_inference.router, auth),
        (routes_ops.router, []),
        (routes_ops.protected, auth),
        (routes_docs.router, []),
    )
    for router, dependencies in routers:
        app.include_router(router, dependencies=dependencies)
    routes_docs.mount_assets(app)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def known_paths() -> "set[str]":
        # The routers' paths too: recent FastAPI keeps an included router as one
        # entry of app.routes (no path of its own) instead of copying its routes.
        paths = {getattr(route, "path", "") for route in app.routes}
        paths.update(getattr(route, "path", "") for router, _ in routers for route in router.routes)
        return paths - {""}

    # Added last, so it wraps everything (CORS included) and sees raw bodies first.
    app.add_middleware(GuardMiddleware, state=state, known_paths=known_paths)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes (``--workers`` > 1).

    RETURNS (FastAPI): The app built from the config that ``spacy-distill
        serve`` put in the environment.
    """
    from .settings import load_config_from_env

    models, settings = load_config_from_env()
    return create_app(models, settings)
