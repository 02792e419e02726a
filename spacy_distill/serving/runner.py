"""Where inference runs: in a child process per model (default) or in this process.

spaCy holds the GIL while it tokenizes and runs most of a pipeline, so a
request that takes seconds would freeze the HTTP event loop (``/health``
included) if inference ran in a thread of the server process, and no timeout
could fire. ``ChildProcessRunner`` runs each model in a child process of its
own (the "worker process" of the docs and of ``max_worker_rss_mb``): the
server process only parses HTTP, queues jobs, batches them (``ModelBatcher``)
and sends each batch over a socket pair, so its event loop stays free whatever
a request costs.

Work is stopped, not left running, once nobody waits for it:

* every job carries its deadline; the child checks it before each text it
  tokenizes and before each ``nlp.pipe`` minibatch, and drops expired jobs
  (with ``bound_tokenizer_cost`` no text takes more than ~100 ms to tokenize);
* if the child has not answered ``cancel_grace_s`` after the last deadline of
  its batch (a pipeline stuck in one long call), it is killed and restarted.

The child is started with ``python -c`` (not multiprocessing), so nothing of the
server process is re-imported in it. Whether it may import ``torch`` is decided
from the pipeline's config before it starts (``torch_needed``): a torch-free
student is served with torch blocked (thinc imports torch whenever it is
installed), so without torch, scikit-learn or scipy in memory; a pipeline whose
config names torch-backed code (a transformer teacher) gets a child that
allows it. A lean child whose pipeline imports torch all the same (third-party
code the config does not reveal) reports that ``ImportError`` and is started
again with torch.

``InProcessRunner`` keeps the pipeline in the server process (used for
pipelines passed as ``Language`` objects, with ``inference="thread"``, and by
the offline ``classify`` command): the same job code runs in the calling
thread, so deadlines still stop work between texts, but a long call holds the
GIL.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .jobs import Job, JobError, Outcome, Result, Task, vectors_error

if TYPE_CHECKING:  # pragma: no cover
    from spacy.language import Language

    from .inference import ModelInfo

logger = logging.getLogger("spacy_distill.serving")

# Characters a job may tokenize for its budget count in one batch before it
# yields to other requests (bounded tokenizer: a few ms).
COUNT_CHARS_PER_BATCH = 5_000

# Most tokens in one nlp.pipe minibatch (see _minibatches): about 50 ms of the
# default student on a 2-core machine.
MAX_MINIBATCH_TOKENS = 16_384
# Modules a torch-free student should never pull in (reported by /status).
HEAVY_MODULES = ("torch", "sklearn", "scipy", "transformers", "spacy_transformers")
# Packages whose registered functions and factories need torch.
TORCH_PACKAGES = ("torch", "spacy_transformers", "spacy_curated_transformers")
# This package's own torch-backed layers (the teacher's encoders; the ONNX
# encoder runs on ONNX Runtime alone). Their module also holds the ONNX one,
# so they are named one by one rather than by module.
TORCH_NAMES = ("spacy-distill.SentenceEncoder.v1", "spacy-distill.QuantizedSentenceEncoder.v1")
# Entry point groups that hold registered functions a config may name.
_REGISTRY_GROUPS = ("spacy_factories", "spacy_architectures", "thinc_layers", "spacy_misc")


class ModelLoadError(RuntimeError):
    """The model could not be loaded (message says why)."""


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


def _config_names(config: Any) -> List[str]:
    """Every component factory and registered function a pipeline config names."""
    names: List[str] = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if (key == "factory" or key.startswith("@")) and isinstance(value, str):
                    names.append(value)
                stack.append(value)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return names


def _torch_entry_points() -> Dict[str, List[Any]]:
    """Per entry point group, the entry points provided by torch-backed packages."""
    from importlib.metadata import entry_points

    found: Dict[str, List[Any]] = {}
    for group in _REGISTRY_GROUPS:
        for entry_point in entry_points(group=group):
            if entry_point.value.split(".", 1)[0].split(":", 1)[0] in TORCH_PACKAGES:
                found.setdefault(group, []).append(entry_point)
    return found


def torch_needed(source: str) -> bool:
    """Whether a pipeline's config names code that needs torch.

    Decided from the config alone, before any child starts: a component
    factory or registered function of a torch-backed package (found by the
    entry point that provides it), one of this package's torch-backed layers,
    or one of thinc's PyTorch wrappers.

    source (str): Package name or path of the pipeline.
    RETURNS (bool): True if it needs torch; False if not, or if its config
        cannot be read (the load itself will say why).
    """
    from .inference import pipeline_config

    config = pipeline_config(source)
    if config is None:
        return False
    provided = {ep.name for eps in _torch_entry_points().values() for ep in eps}
    return any(
        name in provided or name in TORCH_NAMES or "PyTorch" in name
        for name in _config_names(config)
    )


def _imports_torch(err: BaseException) -> bool:
    """Whether a failed load failed on importing torch (the exception, or one it came from)."""
    seen: Optional[BaseException] = err
    for _ in range(20):
        if seen is None:
            return False
        name = getattr(seen, "name", None) if isinstance(seen, ImportError) else None
        if name is not None and name.split(".", 1)[0] == "torch":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _load_factories_without_torch() -> None:
    """Load the component factories of every torch-free package, and only those.

    spaCy imports every ``spacy_factories`` entry point when it creates a
    pipeline; with torch blocked, a torch-backed package's import fails and
    would fail every load. So this child imports the others' entry points
    itself and turns that one registry's entry point scan off: no other
    registry, and no other process, is touched.
    """
    from importlib.metadata import entry_points

    from spacy.util import registry

    skipped = {ep.name for ep in _torch_entry_points().get("spacy_factories", [])}
    for entry_point in entry_points(group="spacy_factories"):
        if entry_point.name not in skipped:
            entry_point.load()
    factories = getattr(registry, "_entry_point_factories", None)
    if factories is not None:
        factories.entry_points = False


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
            _load_factories_without_torch()
        from .inference import describe, load_pipeline

        nlp = load_pipeline(source)
        info = describe(name, source, nlp)
    except BaseException as err:  # noqa: BLE001 - reported to the server process
        # Only a lean child that failed on importing torch is worth starting again with it.
        conn.send(("load_error", f"{type(err).__name__}: {err}", lean and _imports_torch(err)))
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
            outcomes = [
                Result(Outcome.FAILED, message=f"internal error: {type(err).__name__}")
            ] * len(message)
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


class ChildProcessRunner:
    """Runs the pipeline in a child process (the model's worker process); kills and restarts it when stuck.

    Used only from the model's batcher thread (and ``close`` after it stopped).

    name (str): Model name.
    source (str): Package name or path.
    batch_size (int): ``nlp.pipe`` minibatch size.
    lean (bool): Block torch in the child unless the pipeline's config needs
        it (``torch_needed``).
    """

    kind = "process"

    def __init__(self, name: str, source: str, batch_size: int, lean: bool = True) -> None:
        self.name = name
        self.source = str(source)
        self.batch_size = batch_size
        self.lean = lean
        # Every new child after the first (kills and replacements included).
        self.restarts = 0
        # Killed for running past every deadline of its batch (also in restarts).
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
        # Decided once from the config; started again with torch only if the
        # lean child reports that its pipeline imported torch all the same.
        lean = self.lean and not torch_needed(self.source)
        attempts = [True, False] if lean else [False]
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
                "model %s: its pipeline imports torch (%s); starting it again with torch",
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

    def run(self, jobs: Sequence[Job], kill_at: float) -> List[Result]:
        """Run a batch in the child process.

        jobs (Sequence[Job]): The jobs.
        kill_at (float): ``time.monotonic()`` after which the child is killed
            (and restarted) if it has not answered.
        RETURNS (List[Result]): One result per job; a lost batch (the child
            died, or was killed past every deadline) raises ``JobError``
            (FAILED, or EXPIRED) for all its jobs.
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
                raise JobError(Outcome.FAILED, f"the model's worker process is down: {self._broken}")
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
                    raise JobError(Outcome.EXPIRED, "the request timed out")
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
            raise JobError(Outcome.FAILED, f"the model's worker process died ({how})") from err

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


Runner = Union[ChildProcessRunner, InProcessRunner]
