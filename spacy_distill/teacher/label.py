"""Teacher labelling: run a teacher pipeline over a stream of texts and write
DocBins whose docs carry the teacher's probabilities and logits.

How logits are obtained: a stock spaCy/spacy-transformers ``textcat`` ends in a
softmax (``textcat_multilabel``: sigmoids), and only the probabilities reach
``doc.cats``. So the labeller stores those probabilities and, as logits,
``log p`` for exclusive classes (equal to the true logits up to a per-doc
constant, which every loss in ``spacy_distill.pipeline.losses`` ignores) and the log-odds
``log p − log(1 − p)`` for multi-label classes (the true logits, exactly).
Probabilities are clipped to ``[PROB_EPS, 1 − PROB_EPS]`` (``1e-7``) first
(``spacy_distill.pipeline.activations``). A ``distill_textcat``
teacher exposes its real logits, which are stored as they are.

Memory stays bounded: texts are streamed in batches, and docs are written in
shards of ``shard_size`` docs. The output appears only when complete (a temp
file/directory renamed at the end).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Optional, Tuple

from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.util import minibatch

from ..io import Record, atomic_path
from ..pipeline.activations import logits_from_probs
from ..pipeline.teacher_scores import set_teacher_scores
from ..progress import progress_bar

if TYPE_CHECKING:
    # For the annotations only: ``calibrate`` imports this module (its scorer).
    from .calibrate import Calibration

# Scores of one text: (probs, logits) by label.
Scores = Tuple[dict, dict]


@dataclass
class LabelStats:
    """What a labelling run did.

    n_docs (int): Docs written.
    n_shards (int): DocBin files written.
    n_tokens (int): Teacher tokens processed.
    seconds (float): Wall time.
    """

    n_docs: int = 0
    n_shards: int = 0
    n_tokens: int = 0
    seconds: float = 0.0


def find_textcat(nlp: Language, name: Optional[str] = None) -> Tuple[str, bool]:
    """The teacher's text classifier and whether its classes are exclusive.

    nlp (Language): The teacher pipeline.
    name (Optional[str]): The component's name, if the pipeline has several.
    RETURNS (Tuple[str, bool]): Component name, exclusive classes.
    """
    candidates = []
    for pipe_name, pipe in nlp.pipeline:
        factory = nlp.get_pipe_meta(pipe_name).factory
        if factory in ("textcat", "textcat_multilabel", "distill_textcat"):
            candidates.append((pipe_name, factory, pipe))
    if name is not None:
        candidates = [c for c in candidates if c[0] == name]
    if not candidates:
        which = f"named {name!r} " if name else ""
        raise ValueError(
            f"The teacher pipeline has no text classifier {which}(textcat, textcat_multilabel "
            f"or distill_textcat); its components are {nlp.pipe_names}"
        )
    pipe_name, factory, pipe = candidates[0]
    if factory == "distill_textcat":
        return pipe_name, bool(pipe.cfg.get("exclusive_classes", True))
    return pipe_name, factory == "textcat"


def probs_to_logits(probs: dict, exclusive_classes: bool) -> dict:
    """Logits from probabilities (see the module docstring).

    probs (dict): Probability by label.
    exclusive_classes (bool): Softmax (log p) or sigmoid (log-odds).
    RETURNS (dict): Logit by label.
    """
    labels = list(probs)
    z = logits_from_probs([probs[k] for k in labels], exclusive_classes)
    return {k: float(v) for k, v in zip(labels, z)}


def make_scorer(
    nlp: Language,
    component: Optional[str] = None,
    batch_size: int = 32,
    calibration: Optional["Calibration"] = None,
) -> Callable[[List[str]], List[Tuple[Doc, Scores]]]:
    """A function that scores a batch of texts with the teacher.

    Split out from :func:`label_records` so a distributed runner can call it
    per worker and get exactly the same scores as the local path.

    nlp (Language): The teacher pipeline.
    component (Optional[str]): Name of its text classifier.
    batch_size (int): Batch size for ``nlp.pipe``.
    calibration (Optional[Calibration]): Applied to the logits before storing.
    RETURNS (Callable): texts → [(doc, (probs, logits))].
    """
    name, exclusive = find_textcat(nlp, component)
    pipe = nlp.get_pipe(name)
    has_logits = hasattr(pipe, "predict_logits")

    def score(texts: List[str]) -> List[Tuple[Doc, Scores]]:
        out = []
        for doc in nlp.pipe(texts, batch_size=batch_size):
            probs = {k: float(v) for k, v in doc.cats.items() if k in pipe.labels}
            if has_logits:
                z = pipe.predict_logits([doc])[0]
                logits = {label: float(z[j]) for j, label in enumerate(pipe.labels)}
            else:
                logits = probs_to_logits(probs, exclusive)
            if calibration is not None:
                probs, logits = calibration.apply(logits)
            out.append((doc, (probs, logits)))
        return out

    return score


def labelled_doc(nlp: Language, doc: Doc, record: Record, scores: Scores) -> Doc:
    """A fresh doc for the output: the teacher's tokens, gold cats, scores, lang.

    A new Doc rather than the teacher's own, whose user_data may hold
    transformer outputs that must not be serialized.

    nlp (Language): The teacher (for its vocab).
    doc (Doc): The teacher's processed doc.
    record (Record): The input record.
    scores (Scores): (probs, logits).
    RETURNS (Doc): The doc to store.
    """
    out = Doc(nlp.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])
    out.cats = dict(record.cats)
    set_teacher_scores(out, scores[0], scores[1])
    if record.lang is not None:
        out.user_data["lang"] = record.lang
    return out


def write_labelled(
    nlp: Language,
    scored: Iterable[Tuple[Record, Doc, Scores]],
    output: Path,
    *,
    shard_size: int = 10000,
    total: Optional[int] = None,
    progress: bool = True,
) -> LabelStats:
    """Write scored records as DocBin(s), atomically.

    nlp (Language): The teacher (for its vocab).
    scored (Iterable[Tuple[Record, Doc, Scores]]): Scored records, in order.
    output (Path): A ``.spacy`` file (one DocBin) or a directory of shards.
    shard_size (int): Docs per shard (directory output).
    total (Optional[int]): Number of records, for the progress bar.
    progress (bool): Show a progress bar.
    RETURNS (LabelStats): Counts and timing.
    """
    output = Path(output)
    stats = LabelStats()
    start = time.perf_counter()
    single = output.suffix == ".spacy"
    bar = progress_bar(total, "label", unit="doc", enabled=progress)
    with atomic_path(output, is_dir=not single) as tmp:
        docbin = DocBin(attrs=[], store_user_data=True)
        for record, doc, scores in scored:
            docbin.add(labelled_doc(nlp, doc, record, scores))
            stats.n_docs += 1
            stats.n_tokens += len(doc)
            bar.update(1)
            if not single and len(docbin) >= shard_size:
                docbin.to_disk(tmp / f"shard-{stats.n_shards:05d}.spacy")
                stats.n_shards += 1
                docbin = DocBin(attrs=[], store_user_data=True)
        if single:
            docbin.to_disk(tmp)
            stats.n_shards = 1
        elif len(docbin) or stats.n_shards == 0:
            docbin.to_disk(tmp / f"shard-{stats.n_shards:05d}.spacy")
            stats.n_shards += 1
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def label_records(
    nlp: Language,
    records: Iterable[Record],
    output: Path,
    *,
    batch_size: int = 32,
    shard_size: int = 10000,
    component: Optional[str] = None,
    total: Optional[int] = None,
    progress: bool = True,
    calibration: Optional["Calibration"] = None,
) -> LabelStats:
    """Label a stream of records with a teacher and write them out.

    nlp (Language): The teacher pipeline (with a text classifier).
    records (Iterable[Record]): The texts, streamed.
    output (Path): A ``.spacy`` file or a directory of shards.
    batch_size (int): Texts per teacher batch.
    shard_size (int): Docs per shard (directory output).
    component (Optional[str]): Name of the teacher's text classifier.
    total (Optional[int]): Number of records, for the progress bar.
    progress (bool): Show a progress bar.
    calibration (Optional[Calibration]): Calibrate the teacher's logits first.
    RETURNS (LabelStats): Counts and timing.
    """
    score = make_scorer(nlp, component, batch_size, calibration)

    def scored() -> Iterator[Tuple[Record, Doc, Scores]]:
        for batch in minibatch(records, batch_size):
            for record, (doc, scores) in zip(batch, score([r.text for r in batch])):
                yield record, doc, scores

    return write_labelled(nlp, scored(), output, shard_size=shard_size, total=total, progress=progress)
