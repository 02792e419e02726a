"""The worker process of a model: ``ChildProcessRunner`` and the child's main loop.

``ChildProcessRunner`` runs each model in a child process of its own (the
"worker process" of the docs and of ``max_worker_rss_mb``): the server process
only parses HTTP, queues jobs, batches them (``ModelBatcher``) and sends each
batch over a socket pair, so its event loop stays free whatever a request
costs. The child runs the same job loop as the in-process runner
(``runner.run_jobs``), which drops jobs past their deadline; if the child has
not answered ``cancel_grace_s`` after the last deadline of its batch (a
pipeline stuck in one long call), it is killed and restarted.

The child is started with ``python -c`` (not multiprocessing), so nothing of the
server process is re-imported in it. Whether it may import ``torch`` is decided
from the pipeline's config before it starts (``torch_need.torch_needed``).
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .jobs import Job, JobError, Outcome, Result
from .runner import ModelLoadError, rss_mb, run_jobs
from .torch_need import _imports_torch, _load_factories_without_torch, torch_needed

if TYPE_CHECKING:  # pragma: no cover
    from .inference import ModelInfo

logger = logging.getLogger("spacy_distill.serving")

# Modules a torch-free student should never pull in (reported by /status).
HEAVY_MODULES = ("torch", "sklearn", "scipy", "transformers", "spacy_transformers")


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
from spacy_distill.serving.child_process import child_main
child_main(args["fd"], args["name"], args["source"], args["batch_size"], args["lean"])
"""


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
