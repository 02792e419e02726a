"""Starting the HTTP server: the ``MODEL`` arguments of ``serve``, and uvicorn.

Heavy imports (spaCy, uvicorn, the app) happen inside the functions, so the
``spacy-distill`` CLI that imports this module starts fast.
"""

from pathlib import Path
from typing import Any, Dict, List

from ..cli_errors import fail


def parse_models(specs: List[str]) -> Dict[str, str]:
    """Parse ``MODEL`` arguments (``name=path``, a path, or a package name).

    specs (List[str]): The arguments.
    RETURNS (Dict[str, str]): Model name to source, in argument order.
    """
    import spacy

    from .inference import parse_model_spec

    models: Dict[str, str] = {}
    for spec in specs:
        name, source = parse_model_spec(spec)
        if name in models:
            raise ValueError(f"two models are called {name!r}; name them with NAME=PATH")
        path = Path(source)
        if not path.exists() and not spacy.util.is_package(source):
            raise ValueError(
                f"model {name!r}: {source!r} is neither a path nor an installed package"
            )
        if path.exists() and not (path / "config.cfg").is_file():
            raise ValueError(
                f"model {name!r}: {source} is not a spaCy pipeline (no config.cfg in it); "
                "give the folder that `spacy train` or `nlp.to_disk` wrote"
            )
        models[name] = source
    return models


def _preload(app: Any) -> None:
    """Load the models before uvicorn starts, so a model that fails to load
    is one error line and exit code 1, not a lifespan traceback."""
    state = app.state.serving
    state.load_models()
    if state.load_error:
        state.close()
        # One line, even for spaCy's multi-line config errors.
        fail(f"cannot load the models: {' '.join(state.load_error.split())}")


def run_uvicorn(
    models: Dict[str, str], settings: "Any", log_level: str = "info", access_log: bool = False
) -> None:
    """Run the app on uvicorn until SIGINT/SIGTERM.

    On SIGTERM uvicorn stops accepting connections and waits for in-flight
    requests; then the app's shutdown drains the batch queues.

    models (Dict[str, str]): Model name to package or path.
    settings (ServeSettings): The settings.
    log_level (str): uvicorn log level.
    access_log (bool): Log every request.
    """
    import uvicorn

    from .app import create_app
    from .connections import protocol_class, uvicorn_config
    from .settings import dump_config_to_env

    common: Dict[str, Any] = {
        "log_level": log_level,
        "access_log": access_log,
        "lifespan": "on",
        # Bounded: in-flight requests get this long to finish on shutdown.
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
    }
    if settings.workers > 1:
        # Worker processes rebuild the app, and the protocol its limits, from the environment.
        dump_config_to_env(models, settings)
        uvicorn.run(
            "spacy_distill.serving.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            http=protocol_class(),
            timeout_keep_alive=settings.keep_alive_s,
            h11_max_incomplete_event_size=settings.max_header_bytes,
            **common,
        )
        return
    app = create_app(models, settings)
    _preload(app)
    server = uvicorn.Server(uvicorn_config(app, settings, **common))
    server.run()
    if not server.started:
        # Startup failed (port taken, a model that does not load): uvicorn logged why.
        raise SystemExit(1)
