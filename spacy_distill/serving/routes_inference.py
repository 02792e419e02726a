"""``/classify`` and ``/encode``: texts in, the model's answers out.

Both queue a job on the model's worker (``batching.py``) with ``run_job``,
which also turns the worker's failures into HTTP errors. ``create_app``
includes the router behind the token check.
"""

import asyncio
import time
from typing import Any, List

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from .batching import (
    TASK_CLASSIFY,
    TASK_ENCODE,
    InferenceError,
    JobExpiredError,
    ModelWorker,
    QueueFullError,
    TooCostlyError,
    WorkerClosedError,
)
from .deps import check_texts, get_cascade, get_state
from .errors import ERROR_RESPONSES
from .inference import NoVectorsError
from .schemas import ClassifyRequest, ClassifyResponse, EncodeRequest, EncodeResponse
from .state import ServerState

# The routes have no docstrings: FastAPI would publish them in the OpenAPI
# schema as descriptions; their ``summary`` says what they do.
router = APIRouter()


async def run_job(
    request: Request, worker: ModelWorker, task: str, texts: List[str], pooling: str = "mean"
) -> List[Any]:
    """Check a request's texts, queue them on a worker and wait for the results.

    request (Request): The request (its app's state; its arrival bookkeeping).
    worker (ModelWorker): The model's worker.
    task (str): ``TASK_CLASSIFY`` or ``TASK_ENCODE``.
    texts (List[str]): The texts.
    pooling (str): How ``/encode`` pools token vectors.
    RETURNS (List[Any]): One result per text; failures raise ``HTTPException``.
    """
    state = get_state(request)
    settings = state.settings
    # The timeout counts from here; the worker stops the job's work at it.
    deadline = time.monotonic() + settings.request_timeout_s
    check_texts(texts, settings)
    if not texts:
        return []
    # Before submitting: the batcher must not wait for this very request.
    state.arrival_done(request.scope)
    try:
        future = worker.submit(
            task,
            texts,
            pooling,
            deadline=deadline,
            max_tokens=settings.max_tokens_per_request,
            max_tokens_per_text=settings.max_tokens_per_text,
        )
    except QueueFullError as err:
        raise HTTPException(503, f"overloaded: {err}", headers={"Retry-After": "1"}) from err
    except WorkerClosedError as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from err
    wrapped = asyncio.wrap_future(future)
    try:
        return await asyncio.wait_for(wrapped, timeout=max(0.0, deadline - time.monotonic()))
    except (asyncio.TimeoutError, JobExpiredError) as err:
        raise HTTPException(
            503,
            f"no result within request_timeout_s={settings.request_timeout_s}",
            headers={"Retry-After": "1"},
        ) from err
    except NoVectorsError as err:
        raise HTTPException(422, str(err)) from err
    except TooCostlyError as err:
        raise HTTPException(413, str(err)) from err
    except InferenceError as err:
        # A model crashing on valid input is a server-side bug: a real 500.
        raise HTTPException(500, f"model {worker.info.name!r}: {err}") from err


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    summary="Score texts with a model's text classifier",
)
async def classify(
    body: ClassifyRequest,
    request: Request,
    state: ServerState = Depends(get_state),
    cascade: Any = Depends(get_cascade),
) -> JSONResponse:
    start = time.perf_counter()
    if cascade is not None and cascade.handles(body.model):
        return JSONResponse(await cascade.classify(request, body.texts, run_job))
    worker = state.worker_for(body.model)
    if not worker.info.labels:
        # Served with vectors_only: it has no classifier to answer with.
        raise HTTPException(
            422, f"model {worker.info.name!r} has no text classifier (served for /encode only)"
        )
    results = await run_job(request, worker, TASK_CLASSIFY, body.texts)
    return JSONResponse(
        {
            "model": worker.info.name,
            "elapsed_ms": (time.perf_counter() - start) * 1000.0,
            "results": results,
        }
    )


@router.post(
    "/encode",
    response_model=EncodeResponse,
    responses=ERROR_RESPONSES,
    summary="Turn texts into fixed-length vectors",
)
async def encode(
    body: EncodeRequest, request: Request, state: ServerState = Depends(get_state)
) -> JSONResponse:
    start = time.perf_counter()
    worker = state.worker_for(body.model)
    if worker.info.vector_source is None:
        raise HTTPException(
            422,
            f"model {worker.info.name!r} exposes no vectors: no doc.tensor, "
            "no transformer output and no word vectors",
        )
    vectors = await run_job(request, worker, TASK_ENCODE, body.texts, body.pooling)
    return JSONResponse(
        {
            "model": worker.info.name,
            "elapsed_ms": (time.perf_counter() - start) * 1000.0,
            "pooling": body.pooling,
            "source": worker.info.vector_source,
            "width": worker.info.vector_width,
            "vectors": vectors,
        }
    )
