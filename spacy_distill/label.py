"""Teacher labelling: run a teacher pipeline over a stream of texts and write
DocBins whose docs carry the teacher's probabilities and logits.

How logits are obtained: a stock spaCy/spacy-transformers ``textcat`` ends in a
softmax (``textcat_multilabel``: sigmoids), and only the probabilities reach
``doc.cats``. So the labeller stores those probabilities and, as logits,
``log p`` for exclusive classes (equal to the true logits up to a per-doc
constant, which every loss in ``spacy_distill.losses`` ignores) and the log-odds
``log p − log(1 − p)`` for multi-label classes (the true logits, exactly).
Probabilities are clipped to ``[1e-7, 1 − 1e-7]`` first. A ``distill_textcat``
teacher exposes its real logits, which are stored as they are.

Memory stays bounded: texts are streamed in batches, and docs are written in
shards of ``shard_size`` docs. The output appears only when complete (a temp
file/directory renamed at the end).
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from tqdm import tqdm

from .io import Record, atomic_path
from .teacher_scores import set_teacher_scores

PROB_EPS = 1e-7

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
    p = numpy.clip(numpy.asarray([probs[k] for k in labels], dtype="f8"), PROB_EPS, 1 - PROB_EPS)
    z = numpy.log(p) if exclusive_classes else numpy.log(p) - numpy.log1p(-p)
    return {k: float(v) for k, v in zip(labels, z)}


@dataclass
class Calibration:
    """Platt / temperature scaling of the teacher's logits: ``scale · z + bias``.

    A teacher fine-tuned for few steps ranks well but is under-confident (its
    probabilities stay near uniform), which gives a student almost flat soft
    targets. Fitting one scale and a bias per label on gold dev docs
    (minimizing the negative log-likelihood, Guo et al. 2017) restores the
    teacher's confidence without touching its ranking; the bias also moves its
    decision threshold to where the dev gold says it belongs.

    scale (float): Multiplier of the logits (1 / temperature).
    bias (Dict[str, float]): Added per label.
    exclusive_classes (bool): Softmax (True) or sigmoid (False) outputs.
    report (Dict[str, float]): Fit statistics (NLL and accuracy before/after, n_docs).
    """

    scale: float = 1.0
    bias: Dict[str, float] = field(default_factory=dict)
    exclusive_classes: bool = True
    report: Dict[str, float] = field(default_factory=dict)

    def apply(self, logits: Dict[str, float]) -> Scores:
        """Calibrated (probs, logits) from raw logits.

        logits (Dict[str, float]): Raw logits by label.
        RETURNS (Scores): Calibrated probabilities and logits.
        """
        labels = list(logits)
        z = numpy.asarray([logits[k] * self.scale + self.bias.get(k, 0.0) for k in labels])
        if self.exclusive_classes:
            e = numpy.exp(z - z.max())
            p = e / e.sum()
        else:
            p = 1.0 / (1.0 + numpy.exp(-z))
        return (
            {k: float(v) for k, v in zip(labels, p)},
            {k: float(v) for k, v in zip(labels, z)},
        )

    def to_dict(self) -> Dict:
        """JSON-serializable form."""
        return {"scale": self.scale, "bias": self.bias, "exclusive_classes": self.exclusive_classes, "report": self.report}

    @classmethod
    def from_dict(cls, data: Dict) -> "Calibration":
        """Load from :meth:`to_dict` output.

        data (Dict): The saved calibration.
        RETURNS (Calibration): The calibration.
        """
        try:
            return cls(
                scale=float(data["scale"]),
                bias={str(k): float(v) for k, v in data["bias"].items()},
                exclusive_classes=bool(data["exclusive_classes"]),
                report=dict(data.get("report", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a calibration file: {type(e).__name__}: {e}") from None


def _nll_and_grads(Z: numpy.ndarray, Y: numpy.ndarray, log_a: float, b: numpy.ndarray, exclusive: bool):
    a = numpy.exp(log_a)
    S = a * Z + b
    if exclusive:
        S = S - S.max(axis=1, keepdims=True)
        logp = S - numpy.log(numpy.exp(S).sum(axis=1, keepdims=True))
        P = numpy.exp(logp)
        nll = -(Y * logp).sum(axis=1).mean()
    else:
        P = 1.0 / (1.0 + numpy.exp(-S))
        eps = 1e-12
        nll = -(Y * numpy.log(P + eps) + (1 - Y) * numpy.log(1 - P + eps)).sum(axis=1).mean()
    D = (P - Y) / len(Z)
    return nll, float((D * Z).sum() * a), D.sum(axis=0), P


def fit_calibration(
    logits: List[Dict[str, float]],
    gold: List[Dict[str, float]],
    exclusive_classes: bool,
    *,
    fit_bias: bool = False,
    n_iter: int = 3000,
    learn_rate: float = 0.05,
) -> Calibration:
    """Fit one scale and a bias per label to gold labels (minimum NLL).

    logits (List[Dict[str, float]]): Raw teacher logits per doc.
    gold (List[Dict[str, float]]): Gold 0/1 cats per doc.
    exclusive_classes (bool): Softmax (True) or sigmoid (False).
    fit_bias (bool): Also fit a bias per label (Platt scaling), which can move
        the teacher's decisions; by default only the scale (temperature
        scaling), which keeps every decision of the teacher.
    n_iter (int): Gradient steps (Adam).
    learn_rate (float): Adam step size.
    RETURNS (Calibration): The fitted calibration, with a report.
    """
    if not logits or len(logits) != len(gold):
        raise ValueError(f"calibration needs gold docs with teacher logits, got {len(logits)} and {len(gold)}")
    labels = sorted(logits[0])
    Z = numpy.asarray([[z[k] for k in labels] for z in logits], dtype="f8")
    if exclusive_classes:
        # Softmax ignores a per-doc constant: centre it away for a well-posed fit.
        Z = Z - Z.mean(axis=1, keepdims=True)
    Y = numpy.asarray([[g.get(k, 0.0) for k in labels] for g in gold], dtype="f8")
    params = numpy.zeros(1 + len(labels))
    m = numpy.zeros_like(params)
    v = numpy.zeros_like(params)
    nll0, _, _, P0 = _nll_and_grads(Z, Y, 0.0, params[1:], exclusive_classes)
    for t in range(1, n_iter + 1):
        _, ga, gb, _ = _nll_and_grads(Z, Y, params[0], params[1:], exclusive_classes)
        g = numpy.concatenate([[ga], gb if fit_bias else numpy.zeros_like(gb)])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        params -= learn_rate * (m / (1 - 0.9**t)) / (numpy.sqrt(v / (1 - 0.999**t)) + 1e-12)
    nll1, _, _, P1 = _nll_and_grads(Z, Y, params[0], params[1:], exclusive_classes)

    def accuracy(P: numpy.ndarray) -> float:
        if exclusive_classes:
            return float((P.argmax(axis=1) == Y.argmax(axis=1)).mean())
        return float(((P > 0.5) == (Y > 0.5)).mean())

    bias = params[1:]
    if exclusive_classes:
        bias = bias - bias.mean()
    return Calibration(
        scale=float(numpy.exp(params[0])),
        bias={k: float(b) for k, b in zip(labels, bias)},
        exclusive_classes=exclusive_classes,
        report={
            "n_docs": len(Z),
            "nll_before": float(nll0),
            "nll_after": float(nll1),
            "accuracy_before": accuracy(P0),
            "accuracy_after": accuracy(P1),
        },
    )


def calibrate_teacher(
    nlp: Language,
    docs: Iterable[Doc],
    *,
    component: Optional[str] = None,
    batch_size: int = 32,
    fit_bias: bool = False,
) -> Calibration:
    """Run the teacher on gold-labelled docs and fit its calibration.

    docs (Iterable[Doc]): Docs with gold ``doc.cats`` (e.g. the dev set).
    nlp (Language): The teacher.
    component (Optional[str]): Name of its text classifier.
    batch_size (int): Batch size for ``nlp.pipe``.
    fit_bias (bool): Also fit per-label biases (see :func:`fit_calibration`).
    RETURNS (Calibration): The fitted calibration.
    """
    _, exclusive = find_textcat(nlp, component)
    score = make_scorer(nlp, component, batch_size)
    docs = [d for d in docs if d.cats]
    if not docs:
        raise ValueError("calibration needs docs with gold cats; none had any")
    scored = score([d.text for d in docs])
    return fit_calibration([s[1][1] for s in scored], [d.cats for d in docs], exclusive, fit_bias=fit_bias)


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


def _batches(records: Iterable[Record], size: int) -> Iterator[List[Record]]:
    batch: List[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    bar = tqdm(total=total, unit="doc", desc="label", disable=not progress)
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
    calibration: Optional[Calibration] = None,
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
        for batch in _batches(records, batch_size):
            for record, (doc, scores) in zip(batch, score([r.text for r in batch])):
                yield record, doc, scores

    return write_labelled(nlp, scored(), output, shard_size=shard_size, total=total, progress=progress)
