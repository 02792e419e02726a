"""One request's work, end to end: the job, how a run of it ends, and what each end means.

A ``/classify`` or ``/encode`` request becomes one :class:`Job` in the route;
the model's ``ModelBatcher`` (``batching.py``) queues it and hands what is
left of it to the model's runner (``runner.py``: in a child process or in
this one) once per batch; the runner answers each job of a batch with a
:class:`Result`, whose :class:`Outcome` says how that run ended; ``Job.advance``
applies it (the job is done, goes on in a later batch, or fails with a
:class:`JobError`), and the route turns a ``JobError`` into the HTTP error
that :data:`ERROR_CODES` names for its outcome. The offline ``classify``
command runs the same jobs on the same runner code (``runner.run_to_end``).

Nothing here imports spaCy or FastAPI: the module is loaded in the model's
child process too, where jobs and results cross the socket as pickles.
"""

import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    from .inference import ModelInfo


class Task(str, Enum):
    """What a job asks of the model (a ``str`` enum: it pickles and prints as its value)."""

    CLASSIFY = "classify"
    ENCODE = "encode"


class Outcome(str, Enum):
    """How a job's run ended (one per job per batch, or a refusal before it ran)."""

    # Finished: the values are the results of the texts of this run.
    OK = "ok"
    # Goes on in a later batch (fair scheduling): COUNTED after counting some
    # texts against the token budget, PARTIAL after running a slice of them.
    COUNTED = "counted"
    PARTIAL = "partial"
    # Errors (see ERROR_CODES).
    EXPIRED = "expired"
    NO_VECTORS = "no_vectors"
    TOO_COSTLY = "too_costly"
    FAILED = "failed"
    OVERLOADED = "overloaded"
    CLOSED = "closed"


@dataclass(frozen=True)
class ErrorCode:
    """What an error outcome means over HTTP.

    status (int): The HTTP status.
    retry_after (bool): Whether the answer says ``Retry-After: 1`` (the
        request may work if sent again).
    detail (str): The message, formatted with ``message`` (the error's own),
        ``model`` (the model's name) and ``timeout`` (``request_timeout_s``).
    """

    status: int
    retry_after: bool
    detail: str = "{message}"


# The one mapping from how a job ended to the HTTP error the request gets.
ERROR_CODES: Dict[Outcome, ErrorCode] = {
    Outcome.OVERLOADED: ErrorCode(503, True, "overloaded: {message}"),
    Outcome.CLOSED: ErrorCode(503, True),
    # The route's own timeout and the runner's deadline look the same to a client.
    Outcome.EXPIRED: ErrorCode(503, True, "no result within request_timeout_s={timeout}"),
    Outcome.NO_VECTORS: ErrorCode(422, False),
    Outcome.TOO_COSTLY: ErrorCode(413, False),
    # A model crashing on valid input is a server-side bug: a real 500.
    Outcome.FAILED: ErrorCode(500, False, "model {model!r}: {message}"),
}


class JobError(RuntimeError):
    """A job that did not finish: its outcome says why, ``ERROR_CODES`` what it means.

    outcome (Outcome): One of the error outcomes (a key of ``ERROR_CODES``).
    message (str): What went wrong, in words.
    """

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message

    @property
    def code(self) -> ErrorCode:
        """The HTTP meaning of the outcome (an unknown one counts as FAILED)."""
        return ERROR_CODES.get(self.outcome, ERROR_CODES[Outcome.FAILED])

    def detail(self, model: str, timeout: float) -> str:
        """The message the HTTP error carries.

        model (str): The model's name.
        timeout (float): ``request_timeout_s``.
        RETURNS (str): The detail line.
        """
        return self.code.detail.format(message=self.message, model=model, timeout=timeout)


def vectors_error(info: "ModelInfo") -> Optional[JobError]:
    """The one "no vectors" check: why ``info``'s model cannot encode, if it cannot.

    info (ModelInfo): The model's description.
    RETURNS (Optional[JobError]): A NO_VECTORS error, or None if it has vectors.
    """
    if info.vector_source is not None:
        return None
    return JobError(
        Outcome.NO_VECTORS,
        f"model {info.name!r} exposes no vectors: no doc.tensor, "
        "no transformer output and no word vectors",
    )


@dataclass
class Result:
    """How one run of a job ended, as the runner answers it.

    outcome (Outcome): How it ended.
    values (List[Any]): OK and PARTIAL: one result per text run.
    message (str): Error outcomes: what went wrong.
    counted (int): COUNTED: texts counted against the budget in this run.
    tokens (int): COUNTED: their tokens.
    done (int): PARTIAL: texts run (``len(values)``).
    """

    outcome: Outcome
    values: List[Any] = field(default_factory=list)
    message: str = ""
    counted: int = 0
    tokens: int = 0
    done: int = 0


@dataclass
class Job:
    """One request's texts, what to do with them, its limits, and how far it got.

    task (Task): What to do.
    texts (List[str]): The texts.
    pooling (str): Pooling for ``Task.ENCODE`` ("mean" or "max").
    deadline (float): ``time.monotonic()`` after which nobody wants the
        result; work on it stops. The clock is the machine's, shared by the
        server process and the model's child process.
    max_tokens (int): Most tokens of all its texts together (after the
        bounded tokenizer); more and it is refused before the model runs.
    max_tokens_per_text (int): Most tokens of one text.
    slice_tokens (int): Most tokens of it run through the model in one batch
        (at least one text); the rest runs in later batches.
    counted (int): How many of ``texts`` (from the start) were counted
        against the budget so far.
    tokens (int): Their tokens.
    done (int): How many of ``texts`` (from the start) have results.
    results (List[Any]): Those results.
    future (Optional[Future]): Where the batcher puts the results; never
        sent to a runner (``rest`` leaves it out).
    started (bool): Whether the batcher has started it.
    """

    task: Task
    texts: List[str]
    pooling: str = "mean"
    deadline: float = float("inf")
    max_tokens: int = sys.maxsize
    max_tokens_per_text: int = sys.maxsize
    slice_tokens: int = sys.maxsize
    counted: int = 0
    tokens: int = 0
    done: int = 0
    results: List[Any] = field(default_factory=list)
    future: Optional["Future[List[Any]]"] = field(default=None, repr=False, compare=False)
    started: bool = False

    def __post_init__(self) -> None:
        # Callers may name the task by its value ("classify").
        self.task = Task(self.task)

    @property
    def remaining(self) -> int:
        """Texts not yet run through the model."""
        return len(self.texts) - self.done

    @property
    def budgeted(self) -> bool:
        """Whether a token budget applies (else counting could refuse nothing)."""
        return self.max_tokens < sys.maxsize or self.max_tokens_per_text < sys.maxsize

    def rest(self) -> "Job":
        """What is left of the job, as sent to the runner for one batch.

        Only the texts without results travel (so a long job is not pickled
        again whole for every slice); ``counted`` is relative to them, the
        token count is the whole job's.

        RETURNS (Job): A job of the same limits over the remaining texts.
        """
        return Job(
            task=self.task,
            texts=self.texts[self.done :],
            pooling=self.pooling,
            deadline=self.deadline,
            max_tokens=self.max_tokens,
            max_tokens_per_text=self.max_tokens_per_text,
            slice_tokens=self.slice_tokens,
            counted=self.counted - self.done,
            tokens=self.tokens,
        )

    def advance(self, result: Result) -> bool:
        """Apply the result of running ``rest()`` once.

        result (Result): The runner's answer for it.
        RETURNS (bool): True when the job is finished (``results`` holds one
            result per text); False when it goes on in a later run.
        """
        if result.outcome is Outcome.OK:
            self.results.extend(result.values)
            self.done = len(self.texts)
            return True
        if result.outcome is Outcome.COUNTED:
            self.counted += result.counted
            self.tokens += result.tokens
            return False
        if result.outcome is Outcome.PARTIAL:
            self.results.extend(result.values)
            self.done += result.done
            self.counted = max(self.counted, self.done)
            return False
        raise JobError(result.outcome, result.message or result.outcome.value)


__all__ = [
    "ERROR_CODES",
    "ErrorCode",
    "Job",
    "JobError",
    "Outcome",
    "Result",
    "Task",
    "vectors_error",
]
