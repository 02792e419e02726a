"""Dynamic batching: one inference thread per model.

Requests put jobs on the model's queue and await a future. The model's thread
takes the first waiting job, then keeps collecting jobs until the batch holds
``max_batch_size`` texts or ``batch_wait_ms`` has passed, runs all their texts
through one ``nlp.pipe`` call and hands each job its own slice of the results.
Inference thus never runs on the event loop, a model is only ever used from
one thread (spaCy pipelines are not thread-safe), and concurrent small requests
share the per-batch overhead.
"""

import copy
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from spacy.language import Language
from spacy.tokens import Doc

from .inference import ModelInfo, NoVectorsError, classify_result, encode_doc, process_texts

logger = logging.getLogger("spacy_distill.serving")

TASK_CLASSIFY = "classify"
TASK_ENCODE = "encode"


class QueueFullError(RuntimeError):
    """The model's queue is full: the server is overloaded."""


class WorkerClosedError(RuntimeError):
    """The worker is shutting down and takes no new jobs."""


class InferenceError(RuntimeError):
    """The pipeline raised while processing a job's texts."""


@dataclass
class Job:
    """One request's texts and what to do with them.

    task (str): "classify" or "encode".
    texts (List[str]): The texts.
    pooling (str): Pooling for "encode".
    future (Future): Receives the list of per-text results.
    """

    task: str
    texts: List[str]
    pooling: str = "mean"
    future: "Future[List[Any]]" = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[str, int, int, float], None]


class ModelWorker:
    """Runs one model's inference in its own thread, batching queued jobs.

    info (ModelInfo): The model's description (name, vector source, width).
    nlp (Language): The pipeline; used only from the worker thread.
    max_batch_size (int): Most texts per ``nlp.pipe`` batch.
    batch_wait_s (float): Longest a batch waits for more jobs.
    max_queue (int): Most jobs waiting; more raise QueueFullError.
    observer (Optional[BatchObserver]): Called after each batch with
        ``(model, n_jobs, n_texts, seconds)`` for metrics.
    """

    def __init__(
        self,
        info: ModelInfo,
        nlp: Language,
        *,
        max_batch_size: int,
        batch_wait_s: float,
        max_queue: int,
        observer: Optional[BatchObserver] = None,
    ) -> None:
        self.info = info
        self.nlp = nlp
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.observer = observer
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
        self._thread = threading.Thread(
            target=self._run, name=f"spacy-distill-{info.name}", daemon=True
        )
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting (approximate)."""
        return self._queue.qsize()

    def submit(self, task: str, texts: List[str], pooling: str = "mean") -> "Future[List[Any]]":
        """Queue a job.

        task (str): "classify" or "encode".
        texts (List[str]): The texts.
        pooling (str): Pooling for "encode".
        RETURNS (Future[List[Any]]): Resolves to one result per text, in order.
        """
        job = Job(task=task, texts=texts, pooling=pooling)
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
        """Stop taking jobs, finish the queued ones, and stop the thread.

        timeout (Optional[float]): Longest to wait for the queue to drain.
        RETURNS (bool): Whether the thread finished within the timeout.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                # The sentinel queues behind every accepted job, so they all run.
                self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _next_batch(self) -> "tuple[List[Job], bool]":
        """Collect one batch. Returns the jobs and whether to stop afterwards."""
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = self._queue.get()
            if first is None:
                return [], True
        batch = [first]
        n_texts = len(first.texts)
        deadline = time.perf_counter() + self.batch_wait_s
        while n_texts < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if job is None:
                return batch, True
            if n_texts + len(job.texts) > self.max_batch_size:
                # Would overflow the batch: it leads the next one instead.
                self._carry = job
                break
            batch.append(job)
            n_texts += len(job.texts)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: List[Job] = []
            try:
                batch, stop = self._next_batch()
                # Requests that gave up (timeout, client gone) are skipped.
                batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
                if batch:
                    self._process(batch)
            except BaseException:  # noqa: BLE001 - the worker must never die
                logger.exception("unexpected error in the %s worker", self.info.name)
                # Nobody may wait forever on a job the error left unanswered.
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(
                            InferenceError("internal error in the model worker")
                        )

    def _run_pipeline(self, texts: List[str]) -> List[Optional[Doc]]:
        return process_texts(self.nlp, texts, self.max_batch_size)

    def _process(self, batch: List[Job]) -> None:
        start = time.perf_counter()
        texts = [text for job in batch for text in job.texts]
        try:
            docs = self._run_pipeline(texts)
        except Exception:  # noqa: BLE001 - isolate the job that broke the batch
            if len(batch) == 1:
                logger.exception("model %s failed on a batch", self.info.name)
                batch[0].future.set_exception(
                    InferenceError("the model raised an error on these texts")
                )
            else:
                # Re-run each job alone so one bad request does not fail the others.
                for job in batch:
                    self._process_alone(job)
            self._observe(batch, len(texts), start)
            return
        offset = 0
        for job in batch:
            job_docs = docs[offset : offset + len(job.texts)]
            offset += len(job.texts)
            self._resolve(job, job_docs)
        self._observe(batch, len(texts), start)

    def _process_alone(self, job: Job) -> None:
        try:
            docs = self._run_pipeline(job.texts)
        except Exception:  # noqa: BLE001
            logger.exception("model %s failed on a request", self.info.name)
            job.future.set_exception(InferenceError("the model raised an error on these texts"))
            return
        self._resolve(job, docs)

    def _resolve(self, job: Job, docs: List[Optional[Doc]]) -> None:
        info = self.info
        try:
            if job.task == TASK_CLASSIFY:
                results: List[Any] = [
                    classify_result(doc) if doc is not None else copy.deepcopy(info.empty_result)
                    for doc in docs
                ]
            elif job.task == TASK_ENCODE:
                if info.vector_source is None:
                    raise NoVectorsError(
                        f"model {info.name!r} exposes no vectors: no doc.tensor, "
                        "no transformer output and no word vectors"
                    )
                zeros = [0.0] * info.vector_width
                results = [
                    encode_doc(doc, info.vector_source, info.vector_width, job.pooling)
                    if doc is not None
                    else list(zeros)
                    for doc in docs
                ]
            else:
                raise ValueError(f"unknown task {job.task!r}")
        except Exception as err:  # noqa: BLE001 - reported to that request only
            job.future.set_exception(err)
            return
        job.future.set_result(results)

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
        }
