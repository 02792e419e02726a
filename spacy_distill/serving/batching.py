"""Dynamic batching: one ``ModelBatcher`` (a thread of the server process) per model.

Requests put jobs (``jobs.Job``) on the model's queue and await a future. The
batcher takes the first waiting job, then collects more while others are
queued, or (for at most ``batch_wait_ms``) while requests are still arriving,
until the batch holds ``max_batch_size`` texts; it hands the batch to the
model's runner (its worker process by default, see ``runner.py``) and gives
each job its own slice of the results. With nothing else queued or arriving,
a request runs at once: a lone client never pays the batch wait. Inference
never runs on the event loop, a model is only ever used from one thread or
process (spaCy pipelines are not thread-safe), and concurrent small requests
share the per-batch overhead. A job that does not finish fails its future
with a ``jobs.JobError``, whose outcome the route maps to an HTTP error.
"""

import logging
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, List, Optional

from .inference import ModelInfo
from .jobs import Job, JobError, Outcome, Task
from .runner import Runner

logger = logging.getLogger("spacy_distill.serving")

__all__ = ["ModelBatcher"]


BatchObserver = Callable[[str, int, int, float], None]


class ModelBatcher:
    """Batches one model's jobs in a thread and runs them on its runner.

    runner (Runner): Where the model runs (``ChildProcessRunner`` or ``InProcessRunner``).
    max_batch_size (int): Most texts per batch.
    batch_wait_s (float): Longest a batch waits for requests still arriving.
    max_queue (int): Most jobs waiting; more are refused (``Outcome.OVERLOADED``).
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
        runner: Runner,
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
        self.runner = runner
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
        # Batch statistics for /status; written by the batcher thread only.
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
        """The model's description (from the runner, which may reload it)."""
        return self.runner.info

    @property
    def queue_depth(self) -> int:
        """Jobs waiting (approximate)."""
        return self._queue.qsize()

    def submit(
        self,
        task: Task,
        texts: List[str],
        pooling: str = "mean",
        deadline: Optional[float] = None,
        max_tokens: int = sys.maxsize,
        max_tokens_per_text: int = sys.maxsize,
    ) -> "Future[List[Any]]":
        """Queue a job.

        task (Task): What to do with the texts.
        texts (List[str]): The texts.
        pooling (str): Pooling for ``Task.ENCODE``.
        deadline (Optional[float]): ``time.monotonic()`` after which the
            result is no longer wanted (work on it stops); None for none.
        max_tokens (int): Token budget of the job (TOO_COSTLY above it).
        max_tokens_per_text (int): Token budget of one text.
        RETURNS (Future[List[Any]]): Resolves to one result per text, in
            order, or fails with ``JobError``. A full queue (OVERLOADED) or a
            closed batcher (CLOSED) raise ``JobError`` here.
        """
        job = Job(
            task=task,
            texts=texts,
            pooling=pooling,
            deadline=float("inf") if deadline is None else deadline,
            max_tokens=max_tokens,
            max_tokens_per_text=max_tokens_per_text,
            slice_tokens=self.slice_tokens,
            future=Future(),
        )
        with self._lock:
            if self._closed:
                raise JobError(Outcome.CLOSED, "the server is shutting down")
            if self._queue.qsize() >= self.max_queue:
                raise JobError(
                    Outcome.OVERLOADED,
                    f"model {self.info.name!r} has {self.max_queue} requests waiting (max_queue)",
                )
            self._queue.put(job)
        assert job.future is not None
        return job.future

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop taking jobs, finish the queued ones, and stop the thread and runner.

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
        # The thread stops the runner itself; if it did not finish, do it here
        # so no worker process outlives the server.
        if not finished:
            self.runner.close(timeout=1.0)
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
                        # Between batches: nothing is in flight in the worker process now.
                        self.runner.maintain(self.max_rss_mb)
                except BaseException:  # noqa: BLE001 - the batcher must never die
                    logger.exception("unexpected error in the %s batcher", self.info.name)
                    # Nobody may wait forever on a job the error left unanswered.
                    for job in batch:
                        self._fail(job, JobError(Outcome.FAILED, "internal error in the model worker"))
        finally:
            self.runner.close()

    @staticmethod
    def _start(job: Job) -> bool:
        # A job that continues from an earlier batch is already running.
        if job.started:
            return True
        assert job.future is not None
        job.started = job.future.set_running_or_notify_cancel()
        return job.started

    def _fail(self, job: Job, err: JobError) -> None:
        assert job.future is not None
        if job.future.done():
            return
        if err.outcome is Outcome.EXPIRED:
            self.expired_jobs += 1
        job.future.set_exception(err)

    def _process(self, batch: List[Job]) -> None:
        start = time.perf_counter()
        now = time.monotonic()
        live: List[Job] = []
        for job in batch:
            if job.deadline <= now:
                self._fail(job, JobError(Outcome.EXPIRED, "the request timed out in the queue"))
            else:
                live.append(job)
        if not live:
            return
        kill_at = max(job.deadline for job in live) + self.cancel_grace_s
        n_texts = sum(job.remaining for job in live)
        try:
            results = self.runner.run([job.rest() for job in live], kill_at)
        except JobError as err:
            # The batch was lost (the worker process died or was killed): all its jobs fail.
            self._observe(live, n_texts, start)
            for job in live:
                self._fail(job, err)
            return
        finished: List[Job] = []
        for job, result in zip(live, results):
            try:
                done = job.advance(result)
            except JobError as err:
                self._fail(job, err)
                continue
            if done:
                finished.append(job)
            else:
                # Goes on in a later batch, after the new requests (fairness).
                self._resume.append(job)
        # Counted before the answers go out: a client that reads /metrics right
        # after its response must see its own texts (the counters are not racy).
        self._observe(live, n_texts, start)
        for job in finished:
            assert job.future is not None
            job.future.set_result(job.results)

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

        RETURNS (Dict[str, Any]): Runner kind (as ``backend``), restarts,
            kills, replacements, process facts.
        """
        return {
            "backend": self.runner.kind,
            "restarts": self.runner.restarts,
            "kills": self.runner.kills,
            "rss_replacements": self.runner.rss_replacements,
            "max_rss_mb": self.max_rss_mb,
            # Read now, not at load time: memory grows with what was served.
            **self.runner.current(),
        }
