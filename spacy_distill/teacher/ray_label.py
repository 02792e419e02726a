"""Teacher labelling on a Ray cluster: a pool of teacher actors, output in input order.

The driver streams the input in chunks of ``chunk_size`` records and hands them
round-robin to ``num_workers`` actors, each of which loads the teacher once
(``spacy.load``) and scores with the same :func:`~spacy_distill.teacher.label.make_scorer`
as the local path. At most ``max_chunks_in_flight`` chunks are out at a time
(default: two per actor, one running and one waiting, so no actor idles), and
the driver always waits for the *oldest* chunk: memory stays bounded and the
results come back in input order. They are written by the same
:func:`~spacy_distill.teacher.label.write_labelled` as the local path (sharded
DocBins, atomic), so the output holds the same docs, texts, tokens, gold cats
and teacher scores as ``label_records`` would write.

A ``Doc`` is expensive to ship between processes, so actors return plain
``(words, spaces, probs, logits)`` and the driver rebuilds each doc.

A teacher given as a local directory is shipped to the actors through Ray's
object store (packed once by the driver), so worker hosts need no shared
storage; a teacher given as a package name must be installed on every node.
Actors that die (node lost, OOM) are restarted and their chunk retried, up to
``max_retries`` times.
"""

import io
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union

try:
    import ray
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError("Labelling on Ray needs Ray: pip install 'spacy-distill[ray]'") from err

import spacy
from spacy.tokens import Doc
from spacy.util import minibatch

from ..io import Record
from ..ray_connect import connect
from ..teacher.calibrate import Calibration
from ..teacher.label import LabelStats, Scores, make_scorer, write_labelled

logger = logging.getLogger("spacy_distill.ray")

# What an actor returns per text: words, spaces, probs, logits.
ScoredTokens = Tuple[List[str], List[bool], Dict[str, float], Dict[str, float]]


def pack_directory(path: Path) -> bytes:
    """A directory as an uncompressed tar archive in memory.

    Uncompressed: model weights barely compress, and packing is on the driver's
    critical path.

    path (Path): The directory (e.g. a saved pipeline).
    RETURNS (bytes): The archive.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(path), arcname="teacher")
    return buffer.getvalue()


def _unpack(archive: bytes, target: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        if hasattr(tarfile, "data_filter"):
            # No absolute paths, no links out of the target.
            tar.extractall(target, filter="data")
        else:  # Python < 3.9.17: the archive was packed by our own driver
            tar.extractall(target)  # noqa: S202
    return target / "teacher"


@ray.remote
class TeacherActor:
    """Loads the teacher once and scores chunks of texts.

    teacher (Union[str, bytes]): Package name or path, or a directory packed
        by :func:`pack_directory`.
    component (Optional[str]): Name of the teacher's text classifier.
    batch_size (int): ``nlp.pipe`` batch size.
    use_gpu (bool): Run the teacher on the GPU Ray assigned to this actor.
    calibration (Optional[Dict[str, Any]]): A ``Calibration.to_dict()`` to apply.
    """

    def __init__(
        self,
        teacher: Union[str, bytes],
        component: Optional[str],
        batch_size: int,
        use_gpu: bool = False,
        calibration: Optional[Dict[str, Any]] = None,
    ) -> None:
        if use_gpu:
            # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, which is then device 0.
            spacy.require_gpu(0)
        self._tmp: Optional[str] = None
        # A teacher that cannot load is kept as an error that the actor's methods raise:
        # an exception in __init__ kills the actor, and Ray retries a dead actor's tasks
        # (max_task_retries) with a new one each time, where a task's own exception fails
        # the labelling at once.
        self._load_error: Optional[Exception] = None
        try:
            if isinstance(teacher, bytes):
                self._tmp = tempfile.mkdtemp(prefix="sd-teacher-")
                source: Union[str, Path] = _unpack(teacher, Path(self._tmp))
            else:
                source = teacher
            self.nlp = spacy.load(source)
            calib = Calibration.from_dict(calibration) if calibration is not None else None
            self._score = make_scorer(self.nlp, component, batch_size, calib)
        except Exception as err:  # noqa: BLE001 - raised again by every method
            self._load_error = err
            self.close()

    def _check_loaded(self) -> None:
        if self._load_error is not None:
            raise self._load_error

    def info(self) -> Dict[str, Any]:
        """Where this actor runs.

        RETURNS (Dict[str, Any]): ``node_id``, ``pid``, ``lang``.
        """
        self._check_loaded()
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "lang": self.nlp.lang,
        }

    def score(self, texts: List[str]) -> List[ScoredTokens]:
        """Score texts with the teacher.

        texts (List[str]): The texts.
        RETURNS (List[ScoredTokens]): Per text: words, spaces, probs, logits.
        """
        self._check_loaded()
        out = []
        for doc, (probs, logits) in self._score(texts):
            out.append(
                (
                    [t.text for t in doc],
                    [bool(t.whitespace_) for t in doc],
                    probs,
                    logits,
                )
            )
        return out

    def close(self) -> None:
        """Delete the unpacked teacher, if any."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _scored_in_order(
    records: Iterable[Record],
    actors: List[Any],
    chunk_size: int,
    max_in_flight: int,
) -> Iterator[Tuple[Record, Doc, Scores]]:
    """Send chunks to the actors, yield their results in input order."""
    vocab = spacy.blank("xx").vocab
    pending: Deque[Tuple[List[Record], Any]] = deque()

    def resolve(chunk: List[Record], ref: Any) -> Iterator[Tuple[Record, Doc, Scores]]:
        results: List[ScoredTokens] = ray.get(ref)
        if len(results) != len(chunk):
            raise RuntimeError(
                f"a teacher actor returned {len(results)} results for {len(chunk)} texts"
            )
        for record, (words, spaces, probs, logits) in zip(chunk, results):
            yield record, Doc(vocab, words=words, spaces=spaces), (probs, logits)

    for i, chunk in enumerate(minibatch(records, chunk_size)):
        actor = actors[i % len(actors)]
        pending.append((chunk, actor.score.remote([r.text for r in chunk])))
        if len(pending) >= max_in_flight:
            yield from resolve(*pending.popleft())
    while pending:
        yield from resolve(*pending.popleft())


def label_on_ray(
    teacher: str,
    records: Iterable[Record],
    output: Path,
    *,
    address: Optional[str] = None,
    num_workers: int = 2,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    batch_size: int = 32,
    shard_size: int = 10000,
    chunk_size: int = 256,
    total: Optional[int] = None,
    progress: bool = True,
    component: Optional[str] = None,
    max_chunks_in_flight: Optional[int] = None,
    ship_teacher: Optional[bool] = None,
    max_retries: int = 3,
    calibration: Optional[Calibration] = None,
) -> LabelStats:
    """Label a stream of records with a teacher on a Ray cluster.

    teacher (str): Teacher package name or path (a path must exist on the
        driver; it is shipped to the workers unless ``ship_teacher=False``).
    records (Iterable[Record]): The texts, streamed.
    output (Path): A ``.spacy`` file or a directory of shards.
    address (Optional[str]): Ray cluster address (``host:port`` or
        ``"auto"``); None uses ``RAY_ADDRESS`` or starts a local Ray. If this
        process is already connected to Ray, that connection is used.
    num_workers (int): Teacher actors.
    num_cpus_per_worker (float): CPUs Ray reserves per actor.
    num_gpus_per_worker (float): GPUs Ray reserves per actor (> 0 runs the
        teacher on the GPU).
    batch_size (int): ``nlp.pipe`` batch size in each actor.
    shard_size (int): Docs per shard (directory output).
    chunk_size (int): Records sent to an actor at a time.
    total (Optional[int]): Number of records, for the progress bar.
    progress (bool): Show a progress bar.
    component (Optional[str]): Name of the teacher's text classifier.
    max_chunks_in_flight (Optional[int]): Chunks sent but not yet written;
        default ``2 * num_workers``. Bounds the driver's memory.
    ship_teacher (Optional[bool]): Send a teacher directory to the actors via
        the object store; default: yes if ``teacher`` is a local directory.
    max_retries (int): Restarts of a dead actor, and retries of its chunk.
    calibration (Optional[Calibration]): Applied to the teacher logits (as locally).
    RETURNS (LabelStats): Counts and timing (teacher loading on the actors included).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    max_in_flight = max_chunks_in_flight or 2 * num_workers
    if max_in_flight < 1:
        raise ValueError(f"max_chunks_in_flight must be at least 1, got {max_in_flight}")
    start = time.perf_counter()
    is_dir = Path(teacher).is_dir()
    if ship_teacher is None:
        ship_teacher = is_dir
    if ship_teacher and not is_dir:
        raise ValueError(f"ship_teacher needs a teacher directory; {teacher!r} is not one")
    connected = connect(address)
    actors: List[Any] = []
    try:
        source: Any = ray.put(pack_directory(Path(teacher))) if ship_teacher else str(teacher)
        options = {
            "num_cpus": num_cpus_per_worker,
            "num_gpus": num_gpus_per_worker,
            "max_restarts": max_retries,
            "max_task_retries": max_retries,
            # One actor per node where possible: that is the point of a cluster.
            "scheduling_strategy": "SPREAD",
        }
        actors = [
            TeacherActor.options(**options).remote(
                source,
                component,
                batch_size,
                num_gpus_per_worker > 0,
                calibration.to_dict() if calibration is not None else None,
            )
            for _ in range(num_workers)
        ]
        # Wait for every teacher to load: a teacher that cannot load fails here,
        # with its own traceback, before any input is read.
        infos = ray.get([actor.info.remote() for actor in actors])
        logger.info(
            "%d teacher actor(s) on %d node(s)", len(infos), len({i["node_id"] for i in infos})
        )
        scored = _scored_in_order(records, actors, chunk_size, max_in_flight)
        stats = write_labelled(
            spacy.blank("xx"),
            scored,
            Path(output),
            shard_size=shard_size,
            total=total,
            progress=progress,
        )
        # Let the actors delete their unpacked teacher before they are killed.
        ray.get([actor.close.remote() for actor in actors], timeout=60)
    finally:
        for actor in actors:
            ray.kill(actor)
        if connected:
            ray.shutdown()
    stats.seconds = time.perf_counter() - start
    return stats
