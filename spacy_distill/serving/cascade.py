"""The student→teacher cascade in the server and in ``classify --cascade``.

The decision and the merge are :func:`spacy_distill.cascade.plan` and
:func:`spacy_distill.cascade.merge`, the same code the offline command and the
Python API run. In the server, the student's batcher scores every text of a
request; the deferred ones go to the teacher's batcher as one job, where they are
batched with other requests' deferred texts. A teacher that fails (its worker
process crashed, it is overloaded, closed, or timed out) degrades to the student's answer
with ``"teacher_failed": true``: never a 5xx.

A cascade is a setting (``ServeSettings.cascade``)::

    {"student": "student", "teacher": "teacher", "threshold": 0.9, "temperature": 1.0, "name": "cascade"}

Requests pick it with ``"model": "cascade"`` (its ``name``); with a cascade
configured it is also the default model, as serving one is why it was set up.
"""

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ..cascade import DEFAULT_THRESHOLD, CascadeOptions, count_models, merge, plan

logger = logging.getLogger("spacy_distill.serving")

CASCADE_NAME = "cascade"
_KEYS = {"student", "teacher", "threshold", "temperature", "name"}


def check_cascade(cascade: Mapping[str, Any], model_names: List[str]) -> Dict[str, Any]:
    """Validate a cascade setting against the served models.

    cascade (Mapping[str, Any]): The setting (see the module docstring).
    model_names (List[str]): The names of the served models.
    RETURNS (Dict[str, Any]): The setting with defaults filled in.
    """
    unknown = set(cascade) - _KEYS
    if unknown:
        raise ValueError(f"cascade: unknown settings {sorted(unknown)} (known: {sorted(_KEYS)})")
    out = {"student": model_names[0] if model_names else None, "threshold": None, "temperature": 1.0,
           "name": CASCADE_NAME, **dict(cascade)}
    for key in ("student", "teacher"):
        if out.get(key) not in model_names:
            raise ValueError(f"cascade: {key} {out.get(key)!r} is not a served model (served: {', '.join(model_names)})")
    if out["student"] == out["teacher"]:
        raise ValueError("cascade: the student and the teacher must be two different models")
    if out["name"] in model_names:
        raise ValueError(f"cascade: its name {out['name']!r} is taken by a served model")
    try:
        out["threshold"] = float(out["threshold"])
        out["temperature"] = float(out["temperature"])
    except (TypeError, ValueError):
        raise ValueError(f"cascade: threshold and temperature must be numbers, got {out['threshold']!r}, {out['temperature']!r}") from None
    if not out["temperature"] > 0:
        raise ValueError(f"cascade: temperature must be > 0, got {out['temperature']}")
    return out


def cli_cascade(model_map: Mapping[str, str], teacher: str, options: CascadeOptions = CascadeOptions()) -> Dict[str, Any]:
    """The cascade setting of ``spacy-distill serve --cascade TEACHER`` (the first model is the student).

    model_map (Mapping[str, str]): Model name to package or path.
    teacher (str): The teacher's model name.
    options (CascadeOptions): The threshold and temperature options given.
    RETURNS (Dict[str, Any]): The setting.
    """
    names = list(model_map)
    student = names[0]
    thr, temp = options.resolve(_pipe_names(model_map[student]))
    return check_cascade({"student": student, "teacher": teacher, "threshold": thr, "temperature": temp}, names)


def _pipe_names(source: str) -> List[str]:
    # The server process never loads the models (their worker processes do);
    # the pipeline's config says whether it calibrates its own probabilities.
    from .inference import pipeline_config

    config = pipeline_config(source)
    try:
        return list(config["nlp"]["pipeline"]) if config is not None else []
    except (KeyError, TypeError):
        return []


class Cascade:
    """Two loaded spaCy pipelines as one classifier: the student first, the teacher for the rest.

    Results are the server's ``/classify`` results (``cats``, ``label``,
    ``score``) plus ``model``, ``confidence`` and, when the teacher raised,
    ``teacher_failed``.

    student (Language): A pipeline whose ``doc.cats`` are class probabilities.
    teacher (Language): A pipeline with the same labels.
    threshold (float): Defer texts whose confidence is below this.
    temperature (float): Temperature applied to the student's probabilities
        before the decision (see :func:`resolve_temperature`).
    batch_size (int): ``nlp.pipe`` batch size of both pipelines.
    """

    def __init__(self, student: Any, teacher: Any, *, threshold: float = DEFAULT_THRESHOLD,
                 temperature: float = 1.0, batch_size: int = 64) -> None:
        if not temperature > 0:
            raise ValueError(f"cascade: temperature must be > 0, got {temperature}")
        self.student = student
        self.teacher = teacher
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self._runners: Dict[int, Any] = {}

    def _run(self, nlp: Any, texts: Sequence[str]) -> List[Dict[str, Any]]:
        # The server's runner code, in this process: the same text guard, and each
        # model's own answer for a text without tokens, as the server gives them.
        # Made at first use, so a teacher that cannot even be described fails
        # where __call__ degrades its failures.
        from .jobs import Job, Task
        from .runner import InProcessRunner, run_to_end

        if id(nlp) not in self._runners:
            name = "student" if nlp is self.student else "teacher"
            self._runners[id(nlp)] = InProcessRunner(name, nlp, self.batch_size)
        return run_to_end(self._runners[id(nlp)], Job(Task.CLASSIFY, list(texts)))

    def __call__(self, texts: Iterable[str]) -> List[Dict[str, Any]]:
        """Classify texts: the student on all, the teacher on the deferred ones in one pass.

        texts (Iterable[str]): The texts.
        RETURNS (List[Dict[str, Any]]): One result per text, in order.
        """
        texts = list(texts)
        student_results = self._run(self.student, texts)
        conf, deferred = plan(student_results, self.threshold, self.temperature)
        teacher_results: Optional[List[Dict[str, Any]]] = []
        if deferred:
            try:
                teacher_results = self._run(self.teacher, [texts[i] for i in deferred])
            except Exception:  # noqa: BLE001 - any teacher failure degrades to the student's answer
                logger.warning("cascade: the teacher failed on %d texts; the student answers them", len(deferred), exc_info=True)
                teacher_results = None
        return merge(student_results, conf, deferred, teacher_results)


def offline_cascade(student: Any, teacher: str, batch_size: int, options: CascadeOptions = CascadeOptions()) -> Any:
    """The :class:`spacy_distill.cascade.Cascade` of ``classify --cascade TEACHER`` (errors are one line).

    student (Language): The loaded student.
    teacher (str): Package name or path of the teacher.
    batch_size (int): ``nlp.pipe`` batch size.
    options (CascadeOptions): The threshold and temperature options given.
    RETURNS (Cascade): Callable on a list of texts.
    """
    import spacy

    from ..cli_errors import fail
    from ..io import InputError

    try:
        thr, temp = options.resolve(student.pipe_names)
    except (ValueError, InputError) as err:
        fail(str(err))
    try:
        nlp = spacy.load(teacher)
    except (OSError, ValueError, ImportError) as err:
        fail(f"cannot load cascade teacher {teacher!r}: {str(err).strip().splitlines()[0]}")
    return Cascade(student, nlp, threshold=thr, temperature=temp, batch_size=batch_size)


class ServerCascade:
    """The cascade endpoint behind ``/classify`` with ``"model": "cascade"``.

    cascade (Dict[str, Any]): The setting, as :func:`check_cascade` returns it.
    state (Any): The app's ``ServerState`` (its batchers, settings and metrics registry).
    """

    def __init__(self, cascade: Dict[str, Any], state: Any) -> None:
        from prometheus_client import Counter

        self.cfg = check_cascade(cascade, list(state.sources))
        self.name: str = self.cfg["name"]
        self.state = state
        self.answered = Counter(
            "spacy_distill_cascade_texts", "Texts the cascade answered, by the model that answered",
            ["model"], registry=state.metrics.registry,
        )
        self.teacher_failures = Counter(
            "spacy_distill_cascade_teacher_failures", "Teacher jobs that failed (their texts got the student's answer)",
            registry=state.metrics.registry,
        )
        for model in ("student", "teacher"):
            self.answered.labels(model)

    def handles(self, model: Optional[str]) -> bool:
        """Whether a request for ``model`` (None: the default) is the cascade's."""
        return model is None or model == self.name

    async def classify(
        self, request: Any, texts: List[str], run_job: Callable[..., Awaitable[List[Any]]]
    ) -> Dict[str, Any]:
        """Answer one ``/classify`` request with the cascade.

        request (Request): The request (for the batcher's arrival bookkeeping).
        texts (List[str]): Its texts.
        run_job (Callable[..., Awaitable[List[Any]]]): The app's job runner
            (validation, queueing, timeout, errors as HTTP errors).
        RETURNS (Dict[str, Any]): The response body.
        """
        from .jobs import Task

        start = time.perf_counter()
        deadline = time.monotonic() + self.state.settings.request_timeout_s
        student = self.state.batcher_for(self.cfg["student"])
        # The student's errors are the request's (as for any model): it answers everything.
        student_results = await run_job(request, student, Task.CLASSIFY, texts)
        conf, deferred = plan(student_results, self.cfg["threshold"], self.cfg["temperature"])
        teacher_results: Optional[List[Any]] = []
        if deferred:
            teacher_results = await self._teacher([texts[i] for i in deferred], deadline)
        results = merge(student_results, conf, deferred, teacher_results)
        counts = count_models(results)
        for model in ("student", "teacher"):
            if counts[model]:
                self.answered.labels(model).inc(counts[model])
        return {"model": self.name, "elapsed_ms": (time.perf_counter() - start) * 1000.0, "results": results}

    async def _teacher(self, texts: List[str], deadline: float) -> Optional[List[Any]]:
        from .jobs import Task

        try:
            teacher = self.state.batchers[self.cfg["teacher"]]
            # Within the request's own deadline: the cascade never waits longer than a plain request.
            settings = self.state.settings
            # The same per-request token limits as a plain request to the teacher (where the settings have them).
            limits = {key: getattr(settings, name) for key, name in
                      (("max_tokens", "max_tokens_per_request"), ("max_tokens_per_text", "max_tokens_per_text"))
                      if hasattr(settings, name)}
            future = teacher.submit(Task.CLASSIFY, texts, deadline=deadline, **limits)
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(0.0, deadline - time.monotonic()))
        except Exception as err:  # noqa: BLE001 - any teacher failure degrades to the student's answer
            self.teacher_failures.inc()
            logger.warning("cascade: teacher %s failed on %d texts (%s: %s); the student answers them",
                           self.cfg["teacher"], len(texts), type(err).__name__, err)
            return None

    def status(self) -> Dict[str, Any]:
        """The cascade's setting for ``/status``."""
        return dict(self.cfg)


__all__ = ["CASCADE_NAME", "ServerCascade", "check_cascade", "cli_cascade", "offline_cascade"]
