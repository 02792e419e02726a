"""``/classify`` and ``/encode``: texts in, the model's answers out.

Both queue a job on the model's batcher (``batching.py``) with ``run_job``,
which also turns a job that did not finish (``jobs.JobError``) into the HTTP
error ``jobs.ERROR_CODES`` names for its outcome. ``create_app`` includes the
router behind the token check.
"""

import asyncio
import time
from typing import Any, List

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from .batching import ModelBatcher
from .deps import check_texts, get_cascade, get_state
from .errors import ERROR_RESPONSES
from .jobs import JobError, Outcome, Task, vectors_error
from .schemas import ClassifyRequest, ClassifyResponse, EncodeRequest, EncodeResponse
from .state import ServerState

# The routes have no docstrings: FastAPI would publish them in the OpenAPI
# schema as descriptions; their ``summary`` says what they do.
router = APIRouter()


def http_error(err: JobError, batcher: ModelBatcher, timeout: float) -> HTTPException:
    """The HTTP error of a job that did not finish (``jobs.ERROR_CODES``).

    err (JobError): Why it did not finish.
    batcher (ModelBatcher): The model's batcher (its name goes into some messages).
    timeout (float): ``request_timeout_s`` (named in timeout messages).
    RETURNS (HTTPException): The error to raise.
    """
    code = err.code
    headers = {"Retry-After": "1"} if code.retry_after else None
    return HTTPException(code.status, err.detail(batcher.info.name, timeout), headers=headers)


async def run_job(
    request: Request, batcher: ModelBatcher, task: Task, texts: List[str], pooling: str = "mean"
) -> List[Any]:
    """Check a request's texts, queue them on a model's batcher and wait for the results.

    request (Request): The request (its app's state; its arrival bookkeeping).
    batcher (ModelBatcher): The model's batcher.
    task (Task): What to do with the texts.
    texts (List[str]): The texts.
    pooling (str): How ``/encode`` pools token vectors.
    RETURNS (List[Any]): One result per text; failures raise ``HTTPException``.
    """
    state = get_state(request)
    settings = state.settings
    # The timeout counts from here; the batcher stops the job's work at it.
    deadline = time.monotonic() + settings.request_timeout_s
    check_texts(texts, settings)
    if not texts:
        return []
    # Before submitting: the batcher must not wait for this very request.
    state.arrival_done(request.scope)
    try:
        future = batcher.submit(
            task,
            texts,
            pooling,
            deadline=deadline,
            max_tokens=settings.max_tokens_per_request,
            max_tokens_per_text=settings.max_tokens_per_text,
        )
        wrapped = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(wrapped, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError as err:
            # Our own timeout means what the runner's deadline means.
            raise JobError(Outcome.EXPIRED, "the request timed out") from err
    except JobError as err:
        raise http_error(err, batcher, settings.request_timeout_s) from err


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
    batcher = state.batcher_for(body.model)
    if not batcher.info.labels:
        # Served with vectors_only: it has no classifier to answer with.
        raise HTTPException(
            422, f"model {batcher.info.name!r} has no text classifier (served for /encode only)"
        )
    results = await run_job(request, batcher, Task.CLASSIFY, body.texts)
    return JSONResponse(
        {
            "model": batcher.info.name,
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
    batcher = state.batcher_for(body.model)
    refused = vectors_error(batcher.info)
    if refused is not None:
        # Before the texts are checked, as the model cannot answer any.
        raise http_error(refused, batcher, state.settings.request_timeout_s)
    vectors = await run_job(request, batcher, Task.ENCODE, body.texts, body.pooling)
    return JSONResponse(
        {
            "model": batcher.info.name,
            "elapsed_ms": (time.perf_counter() - start) * 1000.0,
            "pooling": body.pooling,
            "source": batcher.info.vector_source,
            "width": batcher.info.vector_width,
            "vectors": vectors,
        }
    )
