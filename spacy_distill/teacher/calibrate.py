"""Calibrating a classifier: fit a temperature (and bias) on gold docs, apply it, package it.

* :class:`Calibration` (``scale · z + bias`` on the logits) and
  :func:`read_calibration`: the JSON that ``spacy-distill calibrate`` writes
  and ``spacy-distill label --calibration`` and the cascade read;
* :func:`fit_calibration`: one scale (1 / temperature) and, optionally, a bias
  per label, fitted to gold labels at minimum NLL (Guo et al. 2017), pure numpy;
* :func:`calibrate_teacher`: run a teacher on gold docs, then fit (``spacy-distill calibrate``);
* :func:`calibrate_pipeline`: a copy of a pipeline with a ``distill_calibration``
  component after its text classifier (``spacy-distill calibrate-pipeline``).

The component itself, which is all a packaged pipeline needs at inference, is
``spacy_distill.pipeline.calibration``'s; measuring calibration (ECE) is
``spacy_distill.evaluation.calibration``'s.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy
import spacy
from spacy.language import Language
from spacy.tokens import Doc

from ..io import InputError, UsageError, atomic_path, check_output
from ..pipeline.activations import sigmoid, softmax
from ..progress import progress_bar
from .label import find_textcat, make_scorer

#: The factory of the component that ``calibrate_pipeline`` adds.
FACTORY = "distill_calibration"


# --- the calibration and its file ------------------------------------------------------------


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

    def apply(self, logits: Dict[str, float]) -> Tuple[Dict[str, float], Dict[str, float]]:
        """Calibrated (probs, logits) from raw logits.

        logits (Dict[str, float]): Raw logits by label.
        RETURNS (Scores): Calibrated probabilities and logits.
        """
        labels = list(logits)
        z = numpy.asarray([logits[k] * self.scale + self.bias.get(k, 0.0) for k in labels])
        p = softmax(z) if self.exclusive_classes else sigmoid(z)
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


def read_calibration(path: Path) -> Calibration:
    """Read a calibration JSON written by ``spacy-distill calibrate``.

    path (Path): The file.
    RETURNS (Calibration): The calibration.
    """
    import srsly

    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "no such calibration file")
    try:
        data = srsly.read_json(path)
    except ValueError as err:
        raise InputError(path, None, f"invalid JSON ({err})") from None
    try:
        return Calibration.from_dict(data)
    except ValueError as err:
        raise InputError(path, None, str(err)) from None


# --- fitting ---------------------------------------------------------------------------------


def _nll_and_grads(
    Z: numpy.ndarray, Y: numpy.ndarray, log_a: float, b: numpy.ndarray, exclusive: bool
) -> Tuple[float, float, numpy.ndarray, numpy.ndarray]:
    """Mean NLL of gold ``Y`` under ``softmax``/``sigmoid(e^log_a · Z + b)``, its gradients
    in ``log_a`` and ``b``, and the probabilities."""
    a = numpy.exp(log_a)
    S = a * Z + b
    if exclusive:
        # Through the log-softmax, not activations.softmax: the NLL needs log p,
        # which log(softmax) would lose to underflow for a confident wrong class.
        S = S - S.max(axis=1, keepdims=True)
        logp = S - numpy.log(numpy.exp(S).sum(axis=1, keepdims=True))
        P = numpy.exp(logp)
        nll = -(Y * logp).sum(axis=1).mean()
    else:
        P = sigmoid(S)
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


# --- calibrating a teacher, a pipeline ------------------------------------------------------


def calibrate_teacher(
    nlp: Language,
    docs: Iterable[Doc],
    *,
    component: Optional[str] = None,
    batch_size: int = 32,
    fit_bias: bool = False,
    progress: bool = False,
) -> Calibration:
    """Run the teacher on gold-labelled docs and fit its calibration.

    docs (Iterable[Doc]): Docs with gold ``doc.cats`` (e.g. the dev set).
    nlp (Language): The teacher.
    component (Optional[str]): Name of its text classifier.
    batch_size (int): Batch size for ``nlp.pipe``.
    fit_bias (bool): Also fit per-label biases (see :func:`fit_calibration`).
    progress (bool): Show progress.
    RETURNS (Calibration): The fitted calibration.
    """
    name, exclusive = find_textcat(nlp, component)
    score = make_scorer(nlp, component, batch_size)
    docs = [d for d in docs if d.cats]
    if not docs:
        raise ValueError("calibration needs docs with gold cats; none had any")
    # Gold labels the pipeline does not predict would fit a meaningless scale
    # (every gold probability is 0): refuse them, naming the first such doc.
    predicted = set(getattr(nlp.get_pipe(name), "labels", ()) or ())
    if predicted:
        for i, doc in enumerate(docs):
            if set(doc.cats) != predicted:
                raise ValueError(
                    f"gold doc {i} has the labels {sorted(doc.cats)}, but the pipeline's {name!r} predicts "
                    f"{sorted(predicted)}: calibrate on gold cats with exactly the pipeline's labels"
                )
    # Scored in slices only to show progress: the teacher takes a minute here.
    bar = progress_bar(len(docs), "calibrate", unit="doc", enabled=progress)
    scored = []
    for start in range(0, len(docs), max(batch_size, 256)):
        chunk = docs[start : start + max(batch_size, 256)]
        scored.extend(score([d.text for d in chunk]))
        bar.update(len(chunk))
    bar.close()
    return fit_calibration([s[1][1] for s in scored], [d.cats for d in docs], exclusive, fit_bias=fit_bias)


def calibrate_pipeline(
    pipeline: str,
    calibration_path: Path,
    output_dir: Path,
    *,
    component: Optional[str] = None,
    name: str = "calibration",
    overwrite: bool = False,
) -> str:
    """Write a copy of ``pipeline`` with a ``distill_calibration`` component after its textcat.

    pipeline (str): Pipeline folder or installed package, with a text classifier.
    calibration_path (Path): JSON written by ``spacy-distill calibrate``.
    output_dir (Path): Folder for the calibrated copy.
    component (Optional[str]): Name of the text classifier, if it has several.
    name (str): Name of the added component.
    overwrite (bool): Replace an existing ``output_dir``.
    RETURNS (str): One line saying what was written.
    """
    from ..pipeline import calibration as _registers_factory  # noqa: F401 - also without the entry point installed

    is_path = Path(pipeline).exists()
    if not is_path and not spacy.util.is_package(pipeline):
        raise UsageError(f"PIPELINE: {pipeline}: no such pipeline directory or installed package")
    check_output(output_dir, inputs=[pipeline] if is_path else [], overwrite=overwrite, is_dir=True, name="OUTPUT_DIR")
    calibration = read_calibration(calibration_path)
    nlp = spacy.load(pipeline)
    already = [n for n in nlp.pipe_names if nlp.get_pipe_meta(n).factory == FACTORY]
    if already:
        # The calibration was fitted on the raw outputs: stacking it on calibrated ones would be wrong.
        raise UsageError(f"{pipeline} is already calibrated (component {already[0]!r}); start from the uncalibrated pipeline")
    if name in nlp.component_names:
        raise UsageError(f"{pipeline} already has a component named {name!r}; choose another with --name")
    textcat, exclusive = find_textcat(nlp, component)
    if exclusive != calibration.exclusive_classes:
        kinds = {True: "exclusive classes (softmax)", False: "multi-label classes (sigmoids)"}
        raise UsageError(
            f"{calibration_path} was fitted for {kinds[calibration.exclusive_classes]}, "
            f"but {textcat!r} of {pipeline} has {kinds[exclusive]}"
        )
    labels = [str(label) for label in nlp.get_pipe(textcat).labels]
    unknown = sorted(set(calibration.bias) - set(labels))
    if unknown:
        raise UsageError(f"{calibration_path} has a bias for {unknown}, which {textcat!r} does not predict (its labels: {labels})")
    nlp.add_pipe(
        FACTORY,
        name=name,
        after=textcat,
        config={
            "scale": calibration.scale,
            "bias": {label: calibration.bias.get(label, 0.0) for label in labels},
            "exclusive_classes": exclusive,
            "labels": labels,
        },
    )
    with atomic_path(output_dir, is_dir=True) as tmp:
        nlp.to_disk(tmp)
    return (
        f"calibrate-pipeline: {output_dir} = {pipeline} + {name!r} ({FACTORY}) after {textcat!r}: "
        f"scale {calibration.scale:.4g} (temperature {1 / calibration.scale:.4g}), bias {calibration.bias}"
    )
