"""Calibrated probabilities at inference: the ``distill_calibration`` component.

Placed after a text classifier, it rescales ``doc.cats`` with the scale
(1 / temperature) and per-label bias of a ``spacy-distill calibrate`` JSON,
exactly as ``spacy-distill label --calibration`` rescales the teacher's outputs
(``spacy_distill.teacher.label``): exclusive classes (softmax) through their
log-probabilities, which equal the logits up to a per-doc constant that the
softmax ignores; multi-label classes (sigmoids) through their log-odds, which
are the logits. A server can thus return calibrated probabilities.

Only what a packaged pipeline needs to run lives here (no torch, no teacher
code). Fitting a calibration (``Calibration``, ``fit_calibration``) and
``spacy-distill calibrate-pipeline``, which writes a calibrated copy of a
pipeline, are ``spacy_distill.teacher.calibrate``'s; measuring calibration
(the expected calibration error, reliability diagrams) is
``spacy_distill.evaluation.calibration``'s.
"""

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from .activations import logits_from_probs, sigmoid, softmax


def calibrate_probs(
    probs: Union[numpy.ndarray, Sequence[Sequence[float]]],
    scale: float,
    bias: Optional[Sequence[float]] = None,
    exclusive_classes: bool = True,
) -> numpy.ndarray:
    """Rescale probabilities: ``softmax(scale · log p + bias)`` or ``sigmoid(scale · logit p + bias)``.

    The same arithmetic as ``Calibration.apply(probs_to_logits(...))`` of
    ``spacy_distill.teacher`` (probabilities clipped to ``[PROB_EPS, 1 − PROB_EPS]``
    first, :func:`~spacy_distill.pipeline.activations.logits_from_probs`), for a
    whole batch at once.

    probs (Union[numpy.ndarray, Sequence[Sequence[float]]]): Probabilities per doc and class.
    scale (float): Multiplier of the logits (1 / temperature).
    bias (Optional[Sequence[float]]): Added per class (column); None for none.
    exclusive_classes (bool): Softmax (True) or independent sigmoids (False).
    RETURNS (numpy.ndarray): Calibrated probabilities, same shape.
    """
    Z = logits_from_probs(probs, exclusive_classes)
    b = numpy.zeros(Z.shape[-1]) if bias is None else numpy.asarray(bias, dtype="f8")
    S = scale * Z + b
    return softmax(S) if exclusive_classes else sigmoid(S)


def _same_params(a: Tuple[float, Dict[str, float], bool, List[str]], b: Tuple[float, Dict[str, float], bool, List[str]]) -> bool:
    """Whether two (scale, bias, exclusive_classes, labels) are the same calibration.

    Floats compare to 1e-9 relative: pipelines written before the cfg kept full
    precision hold the scale with 10 significant digits.
    """
    def close(x: float, y: float) -> bool:
        return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)

    return (
        close(a[0], b[0])
        and set(a[1]) == set(b[1])
        and all(close(a[1][k], b[1][k]) for k in a[1])
        and bool(a[2]) == bool(b[2])
        and list(a[3]) == list(b[3])
    )


def _check_params(scale: float, bias: Dict[str, float], labels: Sequence[str]) -> None:
    if not (math.isfinite(scale) and scale > 0):
        # A scale <= 0 would flatten or flip the classifier's ranking, not calibrate it.
        raise ValueError(f"distill_calibration: scale must be a finite number > 0, got {scale}")
    if not all(math.isfinite(b) for b in bias.values()):
        raise ValueError(f"distill_calibration: every bias must be finite, got {bias}")
    unknown = sorted(set(bias) - set(labels)) if labels else []
    if unknown:
        raise ValueError(f"distill_calibration: bias for labels {unknown} that are not among its labels {list(labels)}")


class CalibratedCats:
    """Rescales the probabilities in ``doc.cats`` that a text classifier before it set.

    Docs without tokens or without any of its labels in ``doc.cats`` pass
    unchanged: the classifier made no prediction there to calibrate.

    nlp (Language): The pipeline.
    name (str): The component's name.
    scale (float): Multiplier of the logits (1 / temperature), > 0.
    bias (Dict[str, float]): Added to the logits per label (absent: 0).
    exclusive_classes (bool): The classes are exclusive (softmax) or not (sigmoids).
    labels (List[str]): The labels it rescales, those of one text classifier; an
        empty list: every label in ``doc.cats``.
    """

    def __init__(
        self,
        nlp: Language,
        name: str = "calibration",
        *,
        scale: float = 1.0,
        bias: Optional[Dict[str, float]] = None,
        exclusive_classes: bool = True,
        labels: Sequence[str] = (),
    ) -> None:
        self.name = name
        self._set_params(float(scale), dict(bias or {}), bool(exclusive_classes), list(labels))

    def _set_params(self, scale: float, bias: Dict[str, float], exclusive_classes: bool, labels: List[str]) -> None:
        bias = {str(k): float(v) for k, v in bias.items()}
        labels = [str(label) for label in labels]
        _check_params(scale, bias, labels)
        self.scale = scale
        self.bias = bias
        self.exclusive_classes = exclusive_classes
        self._labels = labels

    @property
    def labels(self) -> Tuple[str, ...]:
        """The labels it rescales (empty: every label in ``doc.cats``)."""
        return tuple(self._labels)

    @property
    def cfg(self) -> Dict[str, Any]:
        """Its parameters, as stored by :meth:`to_disk`."""
        return {"scale": self.scale, "bias": dict(self.bias), "exclusive_classes": self.exclusive_classes, "labels": list(self._labels)}

    def _labels_of(self, doc: Doc) -> Optional[List[str]]:
        if len(doc) == 0 or not doc.cats:
            return None
        if not self._labels:
            return list(doc.cats)
        present = [label for label in self._labels if label in doc.cats]
        if not present:
            return None
        if len(present) != len(self._labels):
            # A softmax over a subset of the classes would not sum to the right total.
            missing = [label for label in self._labels if label not in doc.cats]
            raise ValueError(f"{self.name}: doc.cats lacks labels {missing} of the calibrated classifier")
        return present

    def _rescale(self, docs: List[Doc]) -> List[Doc]:
        # Docs are grouped by their label set (one group in practice) so each group
        # is rescaled in one array operation.
        groups: Dict[Tuple[str, ...], List[Doc]] = {}
        for doc in docs:
            labels = self._labels_of(doc)
            if labels is not None:
                groups.setdefault(tuple(labels), []).append(doc)
        for labels, group in groups.items():
            P = [[doc.cats[label] for label in labels] for doc in group]
            bias = [self.bias.get(label, 0.0) for label in labels]
            Q = calibrate_probs(P, self.scale, bias, self.exclusive_classes)
            for doc, row in zip(group, Q):
                cats = dict(doc.cats)
                cats.update({label: float(q) for label, q in zip(labels, row)})
                doc.cats = cats
        return docs

    def __call__(self, doc: Doc) -> Doc:
        """Rescale one doc's cats.

        doc (Doc): A doc the text classifier has processed.
        RETURNS (Doc): The same doc.
        """
        return self._rescale([doc])[0]

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Rescale a stream of docs, a batch at a time (same values as ``__call__``).

        stream (Iterable[Doc]): Processed docs.
        batch_size (int): Docs per array operation.
        YIELDS (Doc): The docs, in order.
        """
        for batch in minibatch(stream, size=batch_size):
            yield from self._rescale(list(batch))

    def _load_cfg(self, data: Dict[str, Any]) -> None:
        stored = (float(data["scale"]), dict(data["bias"]), bool(data["exclusive_classes"]), list(data["labels"]))
        current = (self.scale, self.bias, self.exclusive_classes, self._labels)
        default = (1.0, {}, True, [])
        if not (_same_params(current, stored) or _same_params(current, default)):
            # The stored values are the fitted ones (like a model's weights); a config
            # that says otherwise was edited by hand or overridden at load time.
            warnings.warn(
                f"{self.name}: the stored calibration {self._describe(stored)} replaces the one in "
                f"the config {self._describe(current)}; run `spacy-distill calibrate-pipeline` to change it",
                stacklevel=2,
            )
        self._set_params(*stored)

    @staticmethod
    def _describe(params: Tuple[float, Dict[str, float], bool, List[str]]) -> str:
        return f"(scale {params[0]}, bias {params[1]}, exclusive_classes {params[2]}, labels {params[3]})"

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """Serialize its parameters.

        exclude (Iterable[str]): Ignored (nothing to exclude).
        RETURNS (bytes): The parameters as JSON.
        """
        # The stdlib's json: srsly's ujson writes floats with 10 significant digits,
        # and a truncated scale differs from the config's (a warning at every load).
        return json.dumps(self.cfg).encode("utf8")

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "CalibratedCats":
        """Load parameters written by :meth:`to_bytes`.

        bytes_data (bytes): The data.
        exclude (Iterable[str]): Ignored.
        RETURNS (CalibratedCats): Itself.
        """
        self._load_cfg(json.loads(bytes_data))
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Write its parameters to ``path/cfg``.

        path (Union[str, Path]): The component's folder (created).
        exclude (Iterable[str]): Ignored.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # Full float precision (see to_bytes).
        (path / "cfg").write_text(json.dumps(self.cfg, indent=2) + "\n", encoding="utf8")

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "CalibratedCats":
        """Load parameters written by :meth:`to_disk`.

        path (Union[str, Path]): The component's folder.
        exclude (Iterable[str]): Ignored.
        RETURNS (CalibratedCats): Itself.
        """
        self._load_cfg(json.loads((Path(path) / "cfg").read_text(encoding="utf8")))
        return self


@Language.factory(
    "distill_calibration",
    requires=["doc.cats"],
    assigns=["doc.cats"],
    default_config={"scale": 1.0, "bias": {}, "exclusive_classes": True, "labels": []},
)
def make_distill_calibration(
    nlp: Language, name: str, scale: float, bias: Dict[str, float], exclusive_classes: bool, labels: List[str]
) -> CalibratedCats:
    """The ``distill_calibration`` component (see :class:`CalibratedCats`).

    nlp (Language): The pipeline.
    name (str): The component's name.
    scale (float): Multiplier of the logits (1 / temperature).
    bias (Dict[str, float]): Added to the logits per label.
    exclusive_classes (bool): Softmax (True) or sigmoid (False) classes.
    labels (List[str]): The labels it rescales (empty: all in ``doc.cats``).
    RETURNS (CalibratedCats): The component.
    """
    return CalibratedCats(nlp, name, scale=scale, bias=bias, exclusive_classes=exclusive_classes, labels=labels)
