"""Where inference runs: in a worker process per model (default) or in a thread.

spaCy holds the GIL while it tokenizes and runs most of a pipeline, so a
request that takes seconds would freeze the HTTP event loop (``/health``
included) if inference ran in a thread of the server process, and no timeout
could fire. ``ProcessBackend`` runs each model in a child process of its own:
the server process only parses HTTP, queues jobs, batches them and sends each
batch over a socket pair, so its event loop stays free whatever a request costs.

Work is stopped, not left running, once nobody waits for it:

* every job carries its remaining time; the child checks it before each text
  it tokenizes and before each ``nlp.pipe`` minibatch, and drops expired jobs
  (with ``bound_tokenizer_cost`` no text takes more than ~100 ms to tokenize);
* if the child has not answered ``cancel_grace_s`` after the last deadline of
  its batch (a pipeline stuck in one long call), it is killed and restarted.

The child is started with ``python -c`` (not multiprocessing), so nothing of the
server process is re-imported in it, and by default it blocks ``torch`` before
spaCy is imported (thinc imports torch whenever it is installed): a torch-free
student is then served without torch, scikit-learn or scipy in memory. A
pipeline that fails to load that way (a transformer teacher) is loaded again
in a child that allows torch.

``ThreadBackend`` keeps the pipeline in the server process (used for pipelines
passed as ``Language`` objects, and with ``inference="thread"``): the same job
code runs in the model's batching thread, so deadlines still stop work between
texts, but a long call holds the GIL.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from spacy.language import Language

    from .inference import ModelInfo

logger = logging.getLogger("spacy_distill.serving")

TASK_CLASSIFY = "classify"
TASK_ENCODE = "encode"

# Outcome kinds a job can end with (first item of an ``Outcome``).
OK = "ok"
EXPIRED = "expired"
NO_VECTORS = "no_vectors"
FAILED = "failed"
# Over the request's token budget (payload: the message naming limit and cost).
TOO_COSTLY = "too_costly"
# Not finished in this batch, to be sent again with the rest (fair scheduling):
# COUNTED: payload (texts counted, their tokens); PARTIAL: (results, texts done).
COUNTED = "counted"
PARTIAL = "partial"
# Characters a job may tokenize for its budget count in one batch before it
# yields to other requests (bounded tokenizer: a few ms).
COUNT_CHARS_PER_BATCH = 5_000
Outcome = Tuple[str, Any]

# Most tokens in one nlp.pipe minibatch (see _minibatches): about 50 ms of the
# default student on a 2-core machine.
MAX_MINIBATCH_TOKENS = 16_384
# Modules a torch-free student should never pull in (reported by /status).
HEAVY_MODULES = ("torch", "sklearn", "scipy", "transformers", "spacy_transformers")


@dataclass
class JobSpec:
    """One request's work, as sent to where the model runs.

    task (str): "classify" or "encode".
    texts (List[str]): The texts.
    pooling (str): Pooling for "encode".
    budget_s (float): Seconds left before the request gives up.
    max_tokens (int): Most tokens of all its texts together (after the
        bounded tokenizer); more and it is refused before the model runs.
    max_tokens_per_text (int): Most tokens of one text.
    counted (int): How many of ``texts`` (from the start) were already
        counted against the budget in earlier batches.
    tokens (int): Their tokens.
    slice_tokens (int): Most tokens run through the model for this job in
        this batch (at least one text): the rest comes back as PARTIAL.
    """

    task: str
    texts: List[str]
    pooling: str
    budget_s: float
    max_tokens: int = sys.maxsize
    max_tokens_per_text: int = sys.maxsize
    counted: int = 0
    tokens: int = 0
    slice_tokens: int = sys.maxsize


class ModelLoadError(RuntimeError):
    """The model could not be loaded (message says why)."""


class BackendFailure(RuntimeError):
    """The batch was lost: the worker process died or was killed.

    expired (bool): True if it was killed because every job of the batch
        had passed its deadline.
    """

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def describe_exit(code: Optional[int]) -> str:
    """How a child process ended, in words.

    code (Optional[int]): ``Popen.returncode`` (negative: the signal that killed it).
    RETURNS (str): "exit code N", "killed by signal N (NAME)" or "still running".
    """
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


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
    nlp: "Language", info: "ModelInfo", job: JobSpec, deadline: float
) -> Tuple[Optional[Outcome], List[Any]]:
    """Count a job's tokens against its budget, then tokenize this batch's slice.

    The model costs time per token (tokenizing is bounded, the model is not),
    so every text is counted before any of the job's texts reaches the model,
    ``COUNT_CHARS_PER_BATCH`` characters per batch; then at most
    ``slice_tokens`` tokens run per batch. Between batches other requests
    are served.

    RETURNS (Tuple[Optional[Outcome], List[Any]]): An outcome if the job ends
        or yields here (None: run the docs), and the docs to run (None for a
        text without tokens).
    """
    from .textguard import bound_tokenizer_cost

    made: Dict[int, Any] = {}

    def make(k: int) -> Any:
        if k not in made:
            made[k] = nlp.make_doc(bound_tokenizer_cost(job.texts[k]))
        return made[k]

    counted, n_tokens, chars = job.counted, job.tokens, 0
    try:
        while counted < len(job.texts):
            if chars >= COUNT_CHARS_PER_BATCH:
                return (COUNTED, (counted - job.counted, n_tokens - job.tokens)), []
            if time.monotonic() > deadline:
                return (EXPIRED, None), []
            doc = make(counted)
            n_tokens += len(doc)
            if len(doc) > job.max_tokens_per_text:
                # Counting starts before any text runs, so ``counted`` is the
                # index in the request.
                message = (
                    f"texts[{counted}] has {len(doc)} tokens > max_tokens_per_text="
                    f"{job.max_tokens_per_text}"
                )
                return (TOO_COSTLY, message), []
            if n_tokens > job.max_tokens:
                # Stop counting here: the rest need not be tokenized to refuse it.
                message = (
                    f"the request has at least {n_tokens} tokens (counted up to "
                    f"texts[{counted}]) > max_tokens_per_request={job.max_tokens}"
                )
                return (TOO_COSTLY, message), []
            chars += len(job.texts[counted])
            counted += 1
        docs: List[Any] = []
        ran = 0
        for k in range(len(job.texts)):
            if time.monotonic() > deadline:
                return (EXPIRED, None), []
            doc = make(k)
            if docs and ran + len(doc) > job.slice_tokens:
                break
            ran += len(doc)
            docs.append(doc if len(doc) > 0 else None)
        return None, docs
    except Exception:  # noqa: BLE001 - reported to that request only
        logger.exception("model %s: the tokenizer failed on a text", info.name)
        return (FAILED, "the tokenizer raised an error on these texts"), []


def run_jobs(
    nlp: "Language", info: "ModelInfo", jobs: Sequence[JobSpec], batch_size: int
) -> List[Outcome]:
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
    jobs (Sequence[JobSpec]): The jobs.
    batch_size (int): Docs per ``nlp.pipe`` minibatch.
    RETURNS (List[Outcome]): Per job, ``("ok", results)``, ``("expired",
        None)``, ``("no_vectors", message)``, ``("failed", message)``,
        ``("too_costly", message)``, or, when the job continues in a later
        batch, ``("counted", (texts, tokens))`` or ``("partial", (results,
        texts))``.
    """
    import copy

    from .inference import classify_result, encode_doc

    start = time.monotonic()
    deadlines = [start + job.budget_s for job in jobs]
    outcomes: List[Optional[Outcome]] = [None] * len(jobs)
    docs: List[List[Any]] = [[] for _ in jobs]
    for i, job in enumerate(jobs):
        if job.task == TASK_ENCODE and info.vector_source is None:
            outcomes[i] = (
                NO_VECTORS,
                f"model {info.name!r} exposes no vectors: no doc.tensor, "
                "no transformer output and no word vectors",
            )
            continue
        outcomes[i], docs[i] = _tokenize_job(nlp, info, job, deadlines[i])
    todo = [(i, k) for i in range(len(jobs)) if outcomes[i] is None for k, d in enumerate(docs[i])]
    todo = [(i, k) for i, k in todo if docs[i][k] is not None]
    for planned in _minibatches(todo, docs, batch_size):
        now = time.monotonic()
        for i in range(len(jobs)):
            if outcomes[i] is None and now > deadlines[i]:
                outcomes[i] = (EXPIRED, None)
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
                    outcomes[job_index] = (FAILED, "the model raised an error on these texts")
                    continue
                for (i, k), doc in zip(part, alone):
                    docs[i][k] = doc
            continue
        for (i, k), doc in zip(chunk, done):
            docs[i][k] = doc
    results: List[Outcome] = []
    for i, job in enumerate(jobs):
        outcome = outcomes[i]
        if outcome is not None:
            results.append(outcome)
            continue
        try:
            if job.task == TASK_CLASSIFY:
                values: List[Any] = [
                    classify_result(doc) if doc is not None else copy.deepcopy(info.empty_result)
                    for doc in docs[i]
                ]
            elif job.task == TASK_ENCODE:
                zeros = [0.0] * info.vector_width
                values = [
                    encode_doc(doc, str(info.vector_source), info.vector_width, job.pooling)
                    if doc is not None
                    else list(zeros)
                    for doc in docs[i]
                ]
            else:
                raise ValueError(f"unknown task {job.task!r}")
        except Exception as err:  # noqa: BLE001 - reported to that request only
            logger.exception("model %s: could not build the results", info.name)
            results.append((FAILED, f"{type(err).__name__}: {err}"))
            continue
        # Texts beyond this batch's slice come back in a later batch.
        results.append((OK, values) if len(docs[i]) == len(job.texts) else (PARTIAL, (values, len(docs[i]))))
    return results


def process_report(lean: bool) -> Dict[str, Any]:
    """What /status shows about the process a model runs in.

    lean (bool): Whether torch was blocked in it.
    RETURNS (Dict[str, Any]): pid, resident memory (MB), whether torch was
        blocked, and which heavy modules are loaded.
    """
    return {
        "pid": os.getpid(),
        "rss_mb": rss_mb(os.getpid()),
        "torch_blocked": lean,
        "heavy_modules": [name for name in HEAVY_MODULES if sys.modules.get(name) is not None],
    }


def _allow_missing_entry_points() -> None:
    """Skip entry points whose import fails, instead of failing every load.

    spaCy imports every ``spacy_factories`` entry point when a pipeline is
    created, spacy-transformers' among them; with torch blocked that import
    fails, and a pipeline that does not use those factories must still load.
    """
    import catalogue

    def get_entry_points(self: Any) -> Dict[str, Any]:
        result = {}
        for entry_point in self._get_entry_points():
            try:
                result[entry_point.name] = entry_point.load()
            except ImportError:
                continue
        return result

    catalogue.Registry.get_entry_points = get_entry_points  # type: ignore[method-assign]


def _may_need_torch(err: BaseException) -> bool:
    """Whether a load that failed with torch blocked could work with it.

    True for import errors and for what spaCy and thinc say when a
    registered function or factory is missing (its entry point was skipped).
    """
    if isinstance(err, ImportError):
        return True
    text = str(err)
    return type(err).__name__ == "RegistryError" or any(
        marker in text for marker in ("[E002]", "Could not find function", "torch", "PyTorch")
    )


def child_main(fd: int, name: str, source: str, batch_size: int, lean: bool) -> None:
    """The worker process: load one model, then answer batches until told to stop.

    fd (int): This end of the socket pair to the server process.
    name (str): Model name.
    source (str): Package name or path.
    batch_size (int): ``nlp.pipe`` minibatch size.
    lean (bool): torch is blocked (set up by the bootstrap before any import).
    """
    import signal

    # Ctrl-C reaches the whole process group; the server process decides when
    # this one stops (after draining), so ignore it here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        if lean:
            _allow_missing_entry_points()
        from .inference import describe, load_pipeline

        nlp = load_pipeline(source)
        info = describe(name, source, nlp)
    except BaseException as err:  # noqa: BLE001 - reported to the server process
        conn.send(("load_error", f"{type(err).__name__}: {err}", lean and _may_need_torch(err)))
        return
    conn.send(("ready", info, process_report(lean)))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server process is gone
        if message is None:
            return
        try:
            outcomes = run_jobs(nlp, info, message, batch_size)
        except BaseException as err:  # noqa: BLE001 - the worker must answer
            logger.exception("model %s: internal error", name)
            outcomes = [(FAILED, f"internal error: {type(err).__name__}")] * len(message)
        try:
            conn.send(outcomes)
        except (EOFError, OSError):
            return


# Run by ``python -c``: set up sys.path and the torch block before anything
# imports spaCy, then hand over to child_main.
_BOOTSTRAP = """
import json, sys
args = json.loads(sys.argv[1])
sys.path[:] = args["path"]
if args["lean"]:
    sys.modules["torch"] = None
from spacy_distill.serving.runner import child_main
child_main(args["fd"], args["name"], args["source"], args["batch_size"], args["lean"])
"""


class ThreadBackend:
    """Runs the pipeline in the calling (batching) thread of the server process.

    name (str): Model name.
    source (Any): Package name, path or loaded ``Language``.
    batch_size (int): ``nlp.pipe`` minibatch size.
    """

    kind = "thread"

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
        self.restarts = 0
        self.process: Dict[str, Any] = {"pid": os.getpid(), "in_server_process": True}

    def run(self, jobs: Sequence[JobSpec], kill_at: float) -> List[Outcome]:
        """Run a batch (``kill_at`` is ignored: a thread cannot be killed).

        jobs (Sequence[JobSpec]): The jobs.
        kill_at (float): Unused.
        RETURNS (List[Outcome]): One outcome per job.
        """
        return run_jobs(self.nlp, self.info, jobs, self.batch_size)

    rss_replacements = 0

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


class ProcessBackend:
    """Runs the pipeline in a child process; kills and restarts it when stuck.

    Used only from the model's batching thread (and ``close`` after it stopped).

    name (str): Model name.
    source (str): Package name or path.
    batch_size (int): ``nlp.pipe`` minibatch size.
    lean (bool): Try loading with torch blocked first.
    """

    kind = "process"

    def __init__(self, name: str, source: str, batch_size: int, lean: bool = True) -> None:
        self.name = name
        self.source = str(source)
        self.batch_size = batch_size
        self.lean = lean
        self.restarts = 0
        self.kills = 0
        # Replaced because their memory passed max_worker_rss_mb (also in restarts).
        self.rss_replacements = 0
        self.process: Dict[str, Any] = {}
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._conn: Optional[Connection] = None
        self._broken: Optional[str] = None
        self.info = self._start()

    def _spawn(self, lean: bool) -> Tuple["subprocess.Popen[bytes]", Connection]:
        ours, theirs = socket.socketpair()
        args = {
            "fd": theirs.fileno(),
            "name": self.name,
            "source": self.source,
            "batch_size": self.batch_size,
            "lean": lean,
            "path": [p for p in sys.path if isinstance(p, str)],
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, json.dumps(args)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            theirs.close()
        # Connection takes over the descriptor (and closes it).
        conn = Connection(ours.detach())
        return proc, conn

    def _start(self) -> "ModelInfo":
        attempts = [True, False] if self.lean else [False]
        error = "no attempt"
        for lean in attempts:
            proc, conn = self._spawn(lean)
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("load_error", f"the worker process ended: {describe_exit(proc.wait())}", lean)
            if message[0] == "ready":
                self._proc, self._conn = proc, conn
                self.process = dict(message[2])
                return message[1]
            _, error, retry = message
            self._stop(proc, conn, timeout=5.0)
            if not retry:
                break
            logger.info(
                "model %s: loading without torch failed (%s); retrying with torch",
                self.name,
                " ".join(error.split())[:300],
            )
        raise ModelLoadError(error)

    @staticmethod
    def _stop(proc: "subprocess.Popen[bytes]", conn: Optional[Connection], timeout: float) -> None:
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if conn is not None:
            conn.close()

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        # /status shows no process until the new one is up.
        self.process = {"pid": None}

    def _restart(self) -> None:
        self._kill()
        self.restarts += 1
        try:
            self.info = self._start()
            self._broken = None
        except ModelLoadError as err:
            self._broken = str(err)
            logger.error("model %s: the worker process could not be restarted: %s", self.name, err)

    def run(self, jobs: Sequence[JobSpec], kill_at: float) -> List[Outcome]:
        """Run a batch in the child process.

        jobs (Sequence[JobSpec]): The jobs.
        kill_at (float): ``time.monotonic()`` after which the child is killed
            (and restarted) if it has not answered.
        RETURNS (List[Outcome]): One outcome per job.
        """
        if self._proc is not None and self._proc.poll() is not None:
            # Died while idle (OOM killer, a signal): start a new one before sending.
            logger.error(
                "model %s: the worker process ended (%s); restarting it",
                self.name,
                describe_exit(self._proc.returncode),
            )
            self._restart()
        if self._conn is None or self._broken is not None:
            self._restart()
            if self._conn is None:
                raise BackendFailure(f"the model's worker process is down: {self._broken}")
        conn = self._conn
        try:
            conn.send(list(jobs))
            while True:
                left = kill_at - time.monotonic()
                if left <= 0:
                    self.kills += 1
                    logger.warning(
                        "model %s: the worker process ran past every deadline of its batch; "
                        "killing and restarting it",
                        self.name,
                    )
                    self._restart()
                    raise BackendFailure("the request timed out", expired=True)
                if conn.poll(min(left, 1.0)):
                    return conn.recv()
                if self._proc is not None and self._proc.poll() is not None:
                    raise EOFError
        except (EOFError, OSError) as err:
            code: Optional[int] = None
            if self._proc is not None:
                # The socket closes a moment before the process is reaped:
                # wait for it, or its exit status is not known yet ("None").
                try:
                    code = self._proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    code = None
            how = describe_exit(code)
            logger.error("model %s: the worker process died (%s)", self.name, how)
            self._restart()
            raise BackendFailure(f"the model's worker process died ({how})") from err

    def current(self) -> Dict[str, Any]:
        """``process`` with the worker's current resident memory.

        RETURNS (Dict[str, Any]): Process facts for /status.
        """
        report = dict(self.process)
        report["rss_mb"] = rss_mb(report.get("pid"))
        return report

    def maintain(self, max_rss_mb: float) -> bool:
        """Replace the worker if its memory passed the limit (between batches).

        max_rss_mb (float): The limit in MB; 0 for none.
        RETURNS (bool): Whether the worker was replaced.
        """
        if max_rss_mb <= 0 or self._proc is None:
            return False
        current = rss_mb(self._proc.pid)
        if current is None or current <= max_rss_mb:
            return False
        logger.warning(
            "model %s: the worker process uses %.1f MB > max_worker_rss_mb=%s; replacing it",
            self.name,
            current,
            max_rss_mb,
        )
        self.rss_replacements += 1
        self._restart()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (it finishes the batch it is on first).

        timeout (float): Longest to wait before killing it.
        """
        if self._proc is not None:
            self._stop(self._proc, self._conn, timeout)
        self._proc = self._conn = None
