"""Operations: ``/health`` and ``/ready`` for probes, ``/status`` and ``/metrics``.

Two routers: ``router`` is always open (probes carry no token), and
``protected`` is what ``create_app`` includes behind the token check.
"""

from typing import Any, Dict

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .deps import get_state
from .errors import ERROR_RESPONSES
from .schemas import HealthResponse, ReadyResponse
from .state import ServerState

# The routes have no docstrings: FastAPI would publish them in the OpenAPI
# schema as descriptions; their ``summary`` says what they do.
router = APIRouter()
protected = APIRouter()


@router.get("/health", response_model=HealthResponse, summary="Liveness (never needs a token)")
async def health() -> Dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Models not loaded (yet)"}},
    summary="Readiness: 200 once every model is loaded (never needs a token)",
)
async def ready(state: ServerState = Depends(get_state)) -> JSONResponse:
    if state.ready.is_set():
        return JSONResponse({"ready": True, "models": list(state.batchers)})
    return JSONResponse(
        {"ready": False, "models": list(state.batchers), "detail": state.not_ready_message()},
        status_code=503,
    )


@protected.get("/status", responses=ERROR_RESPONSES, summary="Models, counts, latency")
async def status(state: ServerState = Depends(get_state)) -> Dict[str, Any]:
    # Open without a token: then paths stay hidden (only a token authorises them).
    return state.status(show_paths=state.settings.token is not None)


@protected.get(
    "/metrics",
    responses=ERROR_RESPONSES,
    response_class=Response,
    summary="Prometheus metrics",
)
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
