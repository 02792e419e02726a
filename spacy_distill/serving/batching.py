"""Dynamic batching: one batching thread per model.

Requests put jobs on the model's queue and await a future. The model's thread
takes the first waiting job, then collects more while others are queued, or
(for at most ``batch_wait_ms``) while requests are still arriving, until the
batch holds ``max_batch_size`` texts; it hands the batch to the model's
backend (a worker process by default, see ``runner.py``) and gives each job
its own slice of the results. With nothing else queued or arriving, a request
runs at once: a lone client never pays the batch wait. Inference never runs on
the event loop, a model is only ever used from one thread or process (spaCy
pipelines are not thread-safe), and concurrent small requests share the
per-batch overhead.
"""

import logging
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Union

from .inference import ModelInfo, NoVectorsError
from .runner import (
    COUNTED,
    EXPIRED,
    NO_VECTORS,
    OK,
    PARTIAL,
    TASK_CLASSIFY,
    TASK_ENCODE,
    TOO_COSTLY,
    BackendFailure,
    JobSpec,
    ProcessBackend,
    ThreadBackend,
)

logger = logging.getLogger("spacy_distill.serving")

__all__ = [
    "TASK_CLASSIFY",
    "TASK_ENCODE",
    "QueueFullError",
    "WorkerClosedError",
    "InferenceError",
    "JobExpiredError",
    "TooCostlyError",
    "Job",
    "ModelWorker",
]

Backend = Union[ProcessBackend, ThreadBackend]


class QueueFullError(RuntimeError):
    """The model's queue is full: the server is overloaded."""


class WorkerClosedError(RuntimeError):
    """The worker is shutting down and takes no new jobs."""


class InferenceError(RuntimeError):
    """The pipeline raised while processing a job's texts."""


class JobExpiredError(TimeoutError):
    """The job passed its deadline before its results were ready."""


class TooCostlyError(ValueError):
    """The job's texts have more tokens than its budget (message says how many)."""


@dataclass
class Job:
    """One request's texts and what to do with them.

    task (str): "classify" or "encode".
    texts (List[str]): The texts.
    pooling (str): Pooling for "encode".
    deadline (float): ``time.monotonic()`` after which nobody wants the result.
    future (Future): Receives the list of per-text results.
    max_tokens (int): Token budget of the whole job.
    max_tokens_per_text (int): Token budget of one text.
    """

    task: str
    texts: List[str]
    pooling: str = "mean"
    deadline: float = float("inf")
    max_tokens: int = sys.maxsize
    max_tokens_per_text: int = sys.maxsize
    future: "Future[List[Any]]" = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    # Progress of a job that runs over several batches (see ModelWorker).
    counted: int = 0
    tokens: int = 0
    done: int = 0
    results: List[Any] = field(default_factory=list)
    started: bool = False

    @property
    def remaining(self) -> int:
        """Texts not yet run through the model."""
        return len(self.texts) - self.done


BatchObserver = Callable[[str, int, int, float], None]


class ModelWorker:
    """Batches one model's jobs in a thread and runs them on its backend.

    backend (Backend): Where the model runs (``ProcessBackend`` or ``ThreadBackend``).
    max_batch_size (int): Most texts per batch.
    batch_wait_s (float): Longest a batch waits for requests still arriving.
    max_queue (int): Most jobs waiting; more raise QueueFullError.
    observer (Optional[BatchObserver]): Called after each batch with
        ``(model, n_jobs, n_texts, seconds)`` for metrics.
    arriving (Optional[Callable[[], int]]): How many requests are being read
        or validated right now (they may join the batch); None: always wait
        ``batch_wait_s`` for more, as before.
    cancel_grace_s (float): A worker process that has not answered this long
        after the last deadline of its batch is killed and restarted.
    max_rss_mb (float): A worker process above this resident memory after a
        batch is replaced before the next one (0: never).
    slice_tokens (int): Most tokens of one job run in one batch. A larger
        job is counted, then run, over several batches, and other requests'
        batches run in between: one large request cannot hold the model.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch_size: int,
        batch_wait_s: float,
        max_queue: int,
        observer: Optional[BatchObserver] = None,
        arriving: Optional[Callable[[], int]] = None,
        cancel_grace_s: float = 2.0,
        max_rss_mb: float = 0.0,
        slice_tokens: int = sys.maxsize,
    ) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.observer = observer
        self.arriving = arriving
        self.cancel_grace_s = cancel_grace_s
        self.max_rss_mb = max_rss_mb
        self.slice_tokens = slice_tokens
        # Jobs that go on in a later batch; new requests go first (fairness).
        self._resume: Deque[Job] = deque()
        self._stopping = False
        self._queue: queue.Queue[Optional[Job]] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._carry: Optional[Job] = None
        # Batch statistics for /status; written by the worker thread only.
        self.batches = 0
        self.batched_texts = 0
        self.batched_jobs = 0
        self.max_jobs_per_batch = 0
        self.max_texts_per_batch = 0
        self.expired_jobs = 0
        self._last_jobs = 0
        self._thread = threading.Thread(
            target=self._run, name=f"spacy-distill-{self.info.name}", daemon=True
        )
        self._thread.start()

    @property
    def info(self) -> ModelInfo:
        """The model's description (from the backend, which may reload it)."""
        return self.backend.info

    @property
    def queue_depth(self) -> int:
        """Jobs waiting (approximate)."""
        return self._queue.qsize()

    def submit(
        self,
        task: str,
        texts: List[str],
        pooling: str = "mean",
        deadline: Optional[float] = None,
        max_tokens: int = sys.maxsize,
        max_tokens_per_text: int = sys.maxsize,
    ) -> "Future[List[Any]]":
        """Queue a job.

        task (str): "classify" or "encode".
        texts (List[str]): The texts.
        pooling (str): Pooling for "encode".
        deadline (Optional[float]): ``time.monotonic()`` after which the
            result is no longer wanted (work on it stops); None for none.
        max_tokens (int): Token budget of the job (TooCostlyError above it).
        max_tokens_per_text (int): Token budget of one text.
        RETURNS (Future[List[Any]]): Resolves to one result per text, in order.
        """
        job = Job(
            task=task,
            texts=texts,
            pooling=pooling,
            deadline=float("inf") if deadline is None else deadline,
            max_tokens=max_tokens,
            max_tokens_per_text=max_tokens_per_text,
        )
        with self._lock:
            if self._closed:
                raise WorkerClosedError("the server is shutting down")
            if self._queue.qsize() >= self.max_queue:
                raise QueueFullError(
                    f"model {self.info.name!r} has {self.max_queue} requests waiting (max_queue)"
                )
            self._queue.put(job)
        return job.future

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop taking jobs, finish the queued ones, and stop the thread and backend.

        timeout (Optional[float]): Longest to wait for the queue to drain.
        RETURNS (bool): Whether the thread finished within the timeout.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                # The sentinel queues behind every accepted job, so they all run.
                self._queue.put(None)
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        # The thread stops the backend itself; if it did not finish, do it here
        # so no worker process outlives the server.
        if not finished:
            self.backend.close(timeout=1.0)
        return finished

    def _more_may_come(self) -> bool:
        # Requests being read or validated right now will join; and after a
        # batch that several requests shared, clients are likely to send again
        # at once (closed loops), so wait for them too. A lone client (its
        # batches hold one request) and nothing arriving: run at once.
        if self.arriving is None or self.arriving() > 0:
            return True
        return self._last_jobs > 1

    def _first_job(self) -> Optional[Job]:
        # A new request before a job that continues, so a small request waits
        # for at most one slice of a large one.
        if self._carry is not None:
            first, self._carry = self._carry, None
            return first
        if not self._stopping:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                job = self._resume.popleft() if self._resume else self._queue.get()
            if job is not None:
                return job
            # The close sentinel: finish the jobs that continue, then stop.
            self._stopping = True
        return self._resume.popleft() if self._resume else None

    def _next_batch(self) -> "tuple[List[Job], bool]":
        """Collect one batch. Returns the jobs and whether to stop afterwards."""
        first = self._first_job()
        if first is None:
            return [], True
        batch = [first]
        n_texts = first.remaining
        if self._stopping:
            return batch, False
        deadline = time.perf_counter() + self.batch_wait_s
        while n_texts < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                # Nothing queued: wait only while requests are on their way.
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or not self._more_may_come():
                    break
                # A put wakes this at once; a request that fails validation
                # instead costs at most the rest of batch_wait (as before).
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                self._stopping = True
                break
            if n_texts + job.remaining > self.max_batch_size:
                # Would overflow the batch: it leads the next one instead.
                self._carry = job
                break
            batch.append(job)
            n_texts += job.remaining
        return batch, False

    def _run(self) -> None:
        stop = False
        try:
            while not stop:
                batch: List[Job] = []
                try:
                    batch, stop = self._next_batch()
                    self._last_jobs = len(batch)
                    # Requests that gave up (timeout, client gone) are skipped.
                    batch = [job for job in batch if self._start(job)]
                    if batch:
                        self._process(batch)
                        # Between batches: nothing is in flight in the worker now.
                        self.backend.maintain(self.max_rss_mb)
                except BaseException:  # noqa: BLE001 - the worker must never die
                    logger.exception("unexpected error in the %s worker", self.info.name)
                    # Nobody may wait forever on a job the error left unanswered.
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(
                                InferenceError("internal error in the model worker")
                            )
        finally:
            self.backend.close()

    @staticmethod
    def _start(job: Job) -> bool:
        # A job that continues from an earlier batch is already running.
        if job.started:
            return True
        job.started = job.future.set_running_or_notify_cancel()
        return job.started

    def _process(self, batch: List[Job]) -> None:
        start = time.perf_counter()
        now = time.monotonic()
        live: List[Job] = []
        for job in batch:
            if job.deadline <= now:
                self.expired_jobs += 1
                job.future.set_exception(JobExpiredError("the request timed out in the queue"))
            else:
                live.append(job)
        if not live:
            return
        specs = [
            JobSpec(
                job.task,
                job.texts[job.done :],
                job.pooling,
                job.deadline - now,
                job.max_tokens,
                job.max_tokens_per_text,
                counted=job.counted - job.done,
                tokens=job.tokens,
                slice_tokens=self.slice_tokens,
            )
            for job in live
        ]
        kill_at = max(job.deadline for job in live) + self.cancel_grace_s
        n_texts = sum(job.remaining for job in live)
        try:
            outcomes = self.backend.run(specs, kill_at)
        except BackendFailure as err:
            for job in live:
                if err.expired:
                    self.expired_jobs += 1
                    job.future.set_exception(JobExpiredError(str(err)))
                else:
                    job.future.set_exception(InferenceError(str(err)))
            self._observe(live, n_texts, start)
            return
        for job, (kind, payload) in zip(live, outcomes):
            if kind == OK:
                job.future.set_result(job.results + list(payload) if job.results else payload)
            elif kind == COUNTED:
                n_counted, n_tokens = payload
                job.counted += n_counted
                job.tokens += n_tokens
                self._resume.append(job)
            elif kind == PARTIAL:
                values, n_done = payload
                job.results.extend(values)
                job.done += n_done
                job.counted = max(job.counted, job.done)
                self._resume.append(job)
            elif kind == EXPIRED:
                self.expired_jobs += 1
                job.future.set_exception(JobExpiredError("the request timed out"))
            elif kind == NO_VECTORS:
                job.future.set_exception(NoVectorsError(payload))
            elif kind == TOO_COSTLY:
                job.future.set_exception(TooCostlyError(str(payload)))
            else:
                job.future.set_exception(InferenceError(str(payload)))
        self._observe(live, n_texts, start)

    def _observe(self, batch: List[Job], n_texts: int, start: float) -> None:
        self.batches += 1
        self.batched_texts += n_texts
        self.batched_jobs += len(batch)
        self.max_jobs_per_batch = max(self.max_jobs_per_batch, len(batch))
        self.max_texts_per_batch = max(self.max_texts_per_batch, n_texts)
        if self.observer is not None:
            try:
                self.observer(self.info.name, len(batch), n_texts, time.perf_counter() - start)
            except Exception:  # noqa: BLE001 - metrics must not break inference
                logger.exception("batch observer failed")

    def stats(self) -> Dict[str, Any]:
        """Batch statistics for ``/status``.

        RETURNS (Dict[str, Any]): Counts and sizes.
        """
        return {
            "batches": self.batches,
            "texts": self.batched_texts,
            "requests": self.batched_jobs,
            "mean_batch_size": (self.batched_texts / self.batches) if self.batches else 0.0,
            "max_texts_per_batch": self.max_texts_per_batch,
            "max_requests_per_batch": self.max_jobs_per_batch,
            "queue_depth": self.queue_depth,
            "expired_requests": self.expired_jobs,
        }

    def runtime(self) -> Dict[str, Any]:
        """Where the model runs, for ``/status``.

        RETURNS (Dict[str, Any]): Backend kind, restarts, process facts.
        """
        return {
            "backend": self.backend.kind,
            "restarts": self.backend.restarts,
            "rss_replacements": self.backend.rss_replacements,
            "max_rss_mb": self.max_rss_mb,
            # Read now, not at load time: memory grows with what was served.
            **self.backend.current(),
        }
