"""Where inference runs, and the job loop both places share.

spaCy holds the GIL while it tokenizes and runs most of a pipeline, so a
request that takes seconds would freeze the HTTP event loop (``/health``
included) if inference ran in a thread of the server process, and no timeout
could fire. By default each model therefore runs in a child process of its own
(``ChildProcessRunner``, in ``child_process.py``; whether that child may import
torch is decided by ``torch_need.py``); the server process only parses HTTP,
queues jobs, batches them (``ModelBatcher``) and sends each batch to it.

Work is stopped, not left running, once nobody waits for it: every job carries
its deadline, and ``run_jobs`` checks it before each text it tokenizes and
before each ``nlp.pipe`` minibatch, and drops expired jobs (with
``bound_tokenizer_cost`` no text takes more than ~100 ms to tokenize).

``InProcessRunner`` keeps the pipeline in the server process (used for
pipelines passed as ``Language`` objects, with ``inference="thread"``, and by
the offline ``classify`` command): the same job code runs in the calling
thread, so deadlines still stop work between texts, but a long call holds the
GIL.
"""

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .jobs import Job, Outcome, Result, Task, vectors_error

if TYPE_CHECKING:  # pragma: no cover
    from spacy.language import Language

    from .child_process import ChildProcessRunner
    from .inference import ModelInfo

logger = logging.getLogger("spacy_distill.serving")

# Characters a job may tokenize for its budget count in one batch before it
# yields to other requests (bounded tokenizer: a few ms).
COUNT_CHARS_PER_BATCH = 5_000

# Most tokens in one nlp.pipe minibatch (see _minibatches): about 50 ms of the
# default student on a 2-core machine.
MAX_MINIBATCH_TOKENS = 16_384


class ModelLoadError(RuntimeError):
    """The model could not be loaded (message says why)."""


def rss_mb(pid: Optional[int]) -> Optional[float]:
    """Current resident memory of a process, in MB (None where unknown).

    pid (Optional[int]): The process.
    RETURNS (Optional[float]): VmRSS from ``/proc``, rounded to 0.1 MB.
    """
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _minibatches(
    todo: List[Tuple[int, int]], docs: List[List[Any]], batch_size: int
) -> List[List[Tuple[int, int]]]:
    """Split ``(job, text)`` pairs into ``nlp.pipe`` minibatches.

    At most ``batch_size`` docs and (unless one doc alone has more) at most
    ``MAX_MINIBATCH_TOKENS`` tokens each: deadlines are checked between
    minibatches, so this bounds how long expired work can go on. Batches of
    reviews (a few hundred tokens each) are not split by the token bound.
    """
    batches: List[List[Tuple[int, int]]] = []
    current: List[Tuple[int, int]] = []
    tokens = 0
    for i, k in todo:
        n = len(docs[i][k])
        if current and (len(current) >= batch_size or tokens + n > MAX_MINIBATCH_TOKENS):
            batches.append(current)
            current, tokens = [], 0
        current.append((i, k))
        tokens += n
    if current:
        batches.append(current)
    return batches


def _tokenize_job(
    nlp: "Language", info: "ModelInfo", job: Job
) -> Tuple[Optional[Result], List[Any]]:
    """Count a job's tokens against its budget, then tokenize this batch's slice.

    The model costs time per token (tokenizing is bounded, the model is not),
    so every text is counted before any of the job's texts reaches the model,
    ``COUNT_CHARS_PER_BATCH`` characters per batch; then at most
    ``slice_tokens`` tokens run per batch. Between batches other requests
    are served. A job without a budget (the offline command's) is not counted:
    counting could refuse nothing.

    RETURNS (Tuple[Optional[Result], List[Any]]): A result if the job ends
        or yields here (None: run the docs), and the docs to run (None for a
        text without tokens).
    """
    from .textguard import bound_tokenizer_cost

    made: Dict[int, Any] = {}

    def make(k: int) -> Any:
        if k not in made:
            made[k] = nlp.make_doc(bound_tokenizer_cost(job.texts[k]))
        return made[k]

    counted = job.counted if job.budgeted else len(job.texts)
    n_tokens, chars = job.tokens, 0
    try:
        while counted < len(job.texts):
            if chars >= COUNT_CHARS_PER_BATCH:
                return Result(
                    Outcome.COUNTED, counted=counted - job.counted, tokens=n_tokens - job.tokens
                ), []
            if time.monotonic() > job.deadline:
                return Result(Outcome.EXPIRED, message="the request timed out"), []
            doc = make(counted)
            n_tokens += len(doc)
            if len(doc) > job.max_tokens_per_text:
                # Counting starts before any text runs, so ``counted`` is the
                # index in the request.
                message = (
                    f"texts[{counted}] has {len(doc)} tokens > max_tokens_per_text="
                    f"{job.max_tokens_per_text}"
                )
                return Result(Outcome.TOO_COSTLY, message=message), []
            if n_tokens > job.max_tokens:
                # Stop counting here: the rest need not be tokenized to refuse it.
                message = (
                    f"the request has at least {n_tokens} tokens (counted up to "
                    f"texts[{counted}]) > max_tokens_per_request={job.max_tokens}"
                )
                return Result(Outcome.TOO_COSTLY, message=message), []
            chars += len(job.texts[counted])
            counted += 1
        docs: List[Any] = []
        ran = 0
        for k in range(len(job.texts)):
            if time.monotonic() > job.deadline:
                return Result(Outcome.EXPIRED, message="the request timed out"), []
            doc = make(k)
            if docs and ran + len(doc) > job.slice_tokens:
                break
            ran += len(doc)
            docs.append(doc if len(doc) > 0 else None)
        return None, docs
    except Exception:  # noqa: BLE001 - reported to that request only
        logger.exception("model %s: the tokenizer failed on a text", info.name)
        return Result(Outcome.FAILED, message="the tokenizer raised an error on these texts"), []


def _values(info: "ModelInfo", job: Job, docs: List[Any]) -> List[Any]:
    """The per-text answers of a job's processed docs (None: a text without tokens)."""
    import copy

    from .inference import classify_result, encode_doc

    if job.task is Task.CLASSIFY:
        return [
            classify_result(doc) if doc is not None else copy.deepcopy(info.empty_result)
            for doc in docs
        ]
    zeros = [0.0] * info.vector_width
    return [
        encode_doc(doc, str(info.vector_source), info.vector_width, job.pooling)
        if doc is not None
        else list(zeros)
        for doc in docs
    ]


def run_jobs(
    nlp: "Language", info: "ModelInfo", jobs: Sequence[Job], batch_size: int
) -> List[Result]:
    """Run a batch of jobs through a pipeline, dropping jobs that expire.

    Texts are tokenized one at a time (after ``bound_tokenizer_cost``) and the
    docs of all live jobs go through ``nlp.pipe`` in minibatches of at most
    ``batch_size`` docs and ``MAX_MINIBATCH_TOKENS`` tokens; deadlines are
    checked before each text and each minibatch.
    Texts without tokens are not run (many models cannot pool zero tokens):
    they get the model's answer for an empty doc. If a minibatch raises, each
    job in it is rerun alone, so one bad request does not fail the others.

    nlp (Language): The pipeline.
    info (ModelInfo): Its description (vector source, empty result).
    jobs (Sequence[Job]): The jobs (``Job.rest()`` of each).
    batch_size (int): Docs per ``nlp.pipe`` minibatch.
    RETURNS (List[Result]): One per job: OK, an error outcome, or, when the
        job goes on in a later batch, COUNTED or PARTIAL.
    """
    outcomes: List[Optional[Result]] = [None] * len(jobs)
    docs: List[List[Any]] = [[] for _ in jobs]
    for i, job in enumerate(jobs):
        refused = vectors_error(info) if job.task is Task.ENCODE else None
        if refused is not None:
            outcomes[i] = Result(refused.outcome, message=refused.message)
            continue
        outcomes[i], docs[i] = _tokenize_job(nlp, info, job)
    todo = [(i, k) for i in range(len(jobs)) if outcomes[i] is None for k, d in enumerate(docs[i])]
    todo = [(i, k) for i, k in todo if docs[i][k] is not None]
    for planned in _minibatches(todo, docs, batch_size):
        now = time.monotonic()
        for i, job in enumerate(jobs):
            if outcomes[i] is None and now > job.deadline:
                outcomes[i] = Result(Outcome.EXPIRED, message="the request timed out")
        chunk = [(i, k) for i, k in planned if outcomes[i] is None]
        if not chunk:
            continue
        try:
            done = list(nlp.pipe([docs[i][k] for i, k in chunk], batch_size=len(chunk)))
        except Exception:  # noqa: BLE001 - isolate the job that broke the minibatch
            for job_index in sorted({i for i, _ in chunk}):
                part = [(i, k) for i, k in chunk if i == job_index]
                try:
                    alone = list(nlp.pipe([docs[i][k] for i, k in part], batch_size=len(part)))
                except Exception:  # noqa: BLE001
                    logger.exception("model %s failed on a request", info.name)
                    outcomes[job_index] = Result(
                        Outcome.FAILED, message="the model raised an error on these texts"
                    )
                    continue
                for (i, k), doc in zip(part, alone):
                    docs[i][k] = doc
            continue
        for (i, k), doc in zip(chunk, done):
            docs[i][k] = doc
    results: List[Result] = []
    for i, job in enumerate(jobs):
        outcome = outcomes[i]
        if outcome is not None:
            results.append(outcome)
            continue
        try:
            values = _values(info, job, docs[i])
        except Exception as err:  # noqa: BLE001 - reported to that request only
            logger.exception("model %s: could not build the results", info.name)
            results.append(Result(Outcome.FAILED, message=f"{type(err).__name__}: {err}"))
            continue
        # Texts beyond this batch's slice come back in a later batch.
        if len(docs[i]) == len(job.texts):
            results.append(Result(Outcome.OK, values))
        else:
            results.append(Result(Outcome.PARTIAL, values, done=len(docs[i])))
    return results


def run_to_end(runner: "Runner", job: Job) -> List[Any]:
    """Run one job on a runner until it is finished, as ``ModelBatcher`` does over batches.

    The offline ``classify`` command and the offline cascade score files this
    way: the server's code path, with one job per chunk of the file.

    runner (Runner): Where the model runs.
    job (Job): The job.
    RETURNS (List[Any]): One result per text; an error outcome raises ``JobError``.
    """
    while not job.advance(runner.run([job.rest()], kill_at=float("inf"))[0]):
        pass
    return job.results

class InProcessRunner:
    """Runs the pipeline in the calling thread (the model's batcher, or the offline command).

    name (str): Model name.
    source (Any): Package name, path or loaded ``Language``.
    batch_size (int): ``nlp.pipe`` minibatch size.
    """

    kind = "thread"
    # Nothing to restart, kill or replace: shown as zeros beside the child's counts.
    restarts = 0
    kills = 0
    rss_replacements = 0

    def __init__(self, name: str, source: Any, batch_size: int) -> None:
        from spacy.language import Language

        from .inference import describe, load_pipeline

        label = source if not isinstance(source, Language) else "<object>"
        try:
            self.nlp = load_pipeline(source)
            self.info = describe(name, str(label), self.nlp)
        except Exception as err:  # noqa: BLE001 - reported by /ready
            raise ModelLoadError(f"{type(err).__name__}: {err}") from err
        self.batch_size = batch_size
        self.process: Dict[str, Any] = {"pid": os.getpid(), "in_server_process": True}

    def run(self, jobs: Sequence[Job], kill_at: float) -> List[Result]:
        """Run a batch (``kill_at`` is ignored: a thread cannot be killed).

        jobs (Sequence[Job]): The jobs.
        kill_at (float): Unused.
        RETURNS (List[Result]): One result per job.
        """
        return run_jobs(self.nlp, self.info, jobs, self.batch_size)

    def current(self) -> Dict[str, Any]:
        """``process`` with the current resident memory.

        RETURNS (Dict[str, Any]): Process facts for /status.
        """
        return {**self.process, "rss_mb": rss_mb(os.getpid())}

    def maintain(self, max_rss_mb: float) -> bool:
        """Nothing to replace: the pipeline lives in the server process.

        max_rss_mb (float): Unused.
        RETURNS (bool): False.
        """
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Nothing to stop."""


# ChildProcessRunner imports this module (the job loop, rss_mb, ModelLoadError),
# so it is named here by a forward reference rather than imported.
Runner = Union["ChildProcessRunner", InProcessRunner]
