"""``distill_textcat``: a text classifier that learns from a teacher's soft outputs.

It follows spaCy's ``TextCategorizer`` lifecycle (and subclasses it, so it keeps
labels, ``set_annotations``, serialization and the ``cats`` scorer), with three
differences:

* the model outputs logits, and ``predict`` applies softmax (exclusive classes)
  or sigmoid (multi-label) to set ``doc.cats``;
* ``get_loss`` takes those logits and returns ``(loss, d_logits)`` from a
  configurable distillation loss (``spacy_distill.pipeline.losses``);
* targets come from teacher scores stored on the reference docs
  (``spacy_distill.pipeline.teacher_scores``) and from gold ``doc.cats`` where present,
  so soft labels never go through ``doc.cats`` (spaCy's E851).
"""

from itertools import islice
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy
from spacy.language import Language
from spacy.pipeline.textcat import TextCategorizer
from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.util import minibatch, registry
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, set_dropout_rate
from thinc.loss import Loss
from thinc.types import Floats2d

from .activations import logits_from_probs, sigmoid, softmax
from .losses import DistillLoss, DistillTargets
from .models import predict_with_token_vectors
from .teacher_scores import get_teacher_logits, get_teacher_probs

# The workflow's student (configs/student.cfg): a width-16 BiLSTM alone (bow = null),
# its LSTM trained by spacy-distill.LSTM.v1 (metrics/student_lstm.md); the shipped
# student adds linear blocks fitted apart (configs/student_mix.cfg). The default has no
# `bow` block on purpose: spaCy fills a config from these defaults, and a default
# add.v1 block would add its summands to every config's own `bow` sum (a student
# configured with char and mean-vector blocks would silently get a word block too).
DEFAULT_DISTILL_MODEL_CONFIG = """
[model]
@architectures = "spacy-distill.BiLSTMTextCat.v3"
depth = 1
dropout = 0.0
pooling = "meanmax"
nO = null
bow = null

[model.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 16
attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
rows = [5000, 2500, 2500, 2500]
include_static_vectors = false
"""
DEFAULT_DISTILL_MODEL = Config().from_str(DEFAULT_DISTILL_MODEL_CONFIG)["model"]

DEFAULT_DISTILL_LOSS = {"@losses": "spacy-distill.SoftCrossEntropy.v1", "temperature": 1.0}


def distill_textcat_score(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """Score ``doc.cats`` like the stock textcat scorers.

    Exclusive classes are scored as ``spacy.textcat_scorer.v2`` does, multi-label
    as ``spacy.textcat_multilabel_scorer.v2``; which one comes from the
    component's ``exclusive_classes`` setting (passed in from its cfg).

    examples (Iterable[Example]): The examples to score.
    RETURNS (Dict[str, Any]): ``cats_score``, ``cats_macro_f`` etc.
    """
    exclusive = kwargs.pop("exclusive_classes", True)
    kwargs.pop("store_tensor", None)
    if exclusive:
        # For exclusive classes the top label is the prediction, whatever its score.
        kwargs["threshold"] = 0.0
    return Scorer.score_cats(examples, "cats", multi_label=not exclusive, **kwargs)


@registry.scorers("spacy-distill.textcat_scorer.v1")
def make_distill_textcat_scorer() -> Callable[..., Dict[str, Any]]:
    """The scorer of ``distill_textcat`` (stock ``cats_*`` scores).

    RETURNS (Callable): The scoring function.
    """
    return distill_textcat_score


@Language.factory(
    "distill_textcat",
    assigns=["doc.cats"],
    default_config={
        "threshold": 0.5,
        "exclusive_classes": True,
        "store_tensor": True,
        "model": DEFAULT_DISTILL_MODEL,
        "loss": DEFAULT_DISTILL_LOSS,
        "scorer": {"@scorers": "spacy-distill.textcat_scorer.v1"},
    },
    default_score_weights={
        "cats_score": 1.0,
        "cats_score_desc": None,
        "cats_micro_p": None,
        "cats_micro_r": None,
        "cats_micro_f": None,
        "cats_macro_p": None,
        "cats_macro_r": None,
        "cats_macro_f": None,
        "cats_macro_auc": None,
        "cats_f_per_type": None,
    },
)
def make_distill_textcat(
    nlp: Language,
    name: str,
    model: Model[List[Doc], Floats2d],
    loss: Loss,
    exclusive_classes: bool,
    threshold: float,
    scorer: Optional[Callable],
    store_tensor: bool = True,
) -> "DistillTextCategorizer":
    """Create a ``distill_textcat`` component.

    nlp (Language): The pipeline.
    name (str): The component's name.
    model (Model[List[Doc], Floats2d]): A model that outputs logits, e.g.
        ``spacy-distill.BiLSTMTextCat.v3`` (the default), ``.v2`` or ``.v1``.
    loss (Loss): A distillation loss from ``spacy_distill.pipeline.losses``.
    exclusive_classes (bool): One label per doc (softmax) or multi-label (sigmoid).
    threshold (float): Cut-off for a positive label in multi-label scoring.
    scorer (Optional[Callable]): The scoring method.
    store_tensor (bool): Keep the model's token vectors as ``doc.tensor``
        (for models that expose them, as BiLSTMTextCat does).
    RETURNS (DistillTextCategorizer): The component.
    """
    return DistillTextCategorizer(
        nlp.vocab,
        model,
        name,
        loss=loss,
        exclusive_classes=exclusive_classes,
        threshold=threshold,
        scorer=scorer,
        store_tensor=store_tensor,
    )


class DistillTextCategorizer(TextCategorizer):
    """Text classifier trained from teacher logits/probabilities and gold cats."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], Floats2d],
        name: str = "distill_textcat",
        *,
        loss: Loss,
        exclusive_classes: bool = True,
        threshold: float = 0.5,
        scorer: Optional[Callable] = distill_textcat_score,
        store_tensor: bool = True,
    ) -> None:
        """Initialize the component.

        vocab (Vocab): The shared vocabulary.
        model (Model[List[Doc], Floats2d]): The model, outputting logits.
        name (str): The component instance name.
        loss (Loss): The distillation loss. A plain soft loss is wrapped in a
            ``DistillLoss`` with alpha 0, so docs with only gold cats still
            learn from them (hard cross-entropy).
        exclusive_classes (bool): Softmax (True) or sigmoid (False) outputs.
        threshold (float): Multi-label decision threshold for scoring.
        scorer (Optional[Callable]): The scoring method.
        store_tensor (bool): Keep the model's token vectors as ``doc.tensor``,
            for models that expose them (``spacy_distill.pipeline.models.predict_with_token_vectors``;
            BiLSTMTextCat does); other models leave ``doc.tensor`` unset.
        """
        super().__init__(vocab, model, name, threshold=threshold, scorer=scorer)
        self.cfg["exclusive_classes"] = bool(exclusive_classes)
        self.cfg["store_tensor"] = bool(store_tensor)
        if not isinstance(loss, DistillLoss):
            loss = DistillLoss(soft_loss=loss, alpha=0.0)
        self.loss = loss

    @property
    def exclusive_classes(self) -> bool:
        """RETURNS (bool): Whether the labels are mutually exclusive."""
        return bool(self.cfg.get("exclusive_classes", True))

    @property
    def support_missing_values(self) -> bool:
        # Multi-label gold cats may leave labels out; exclusive ones may not.
        return not self.exclusive_classes

    def _activate(self, logits: Floats2d) -> Floats2d:
        xp = self.model.ops.xp
        logits = xp.asarray(logits, dtype="f")
        if self.exclusive_classes:
            return softmax(logits)
        return sigmoid(logits)

    def predict_logits(self, docs: Iterable[Doc]) -> Floats2d:
        """The model's logits for a batch of docs.

        docs (Iterable[Doc]): The documents.
        RETURNS (Floats2d): One row of logits per doc.
        """
        docs = list(docs)
        if not docs:
            return self.model.ops.alloc2f(0, len(self.labels))
        # The model handles empty docs (they pool to zeros), so an empty doc
        # scores the same alone or in a batch.
        return self.model.predict(docs)

    def predict(self, docs: Iterable[Doc]) -> Floats2d:
        """Probabilities for a batch of docs, without modifying them.

        docs (Iterable[Doc]): The documents to predict.
        RETURNS (Floats2d): Softmax or sigmoid scores, one row per doc.
        """
        return self._activate(self.predict_logits(docs))

    def _predict_with_tensors(self, docs: List[Doc]) -> Tuple[Floats2d, Optional[List[Floats2d]]]:
        if not self.cfg.get("store_tensor"):
            return self.predict(docs), None
        if not docs:
            return self.model.ops.alloc2f(0, len(self.labels)), []
        # The model gives its token vectors itself, from the forward pass that
        # gives the logits (None if it exposes none): the component needs to
        # know nothing of how the model is built.
        logits, vectors = predict_with_token_vectors(self.model, docs)
        return self._activate(logits), vectors

    def _annotate(self, docs: List[Doc]) -> None:
        scores, hidden = self._predict_with_tensors(docs)
        self.set_annotations(docs, scores)
        if hidden is not None:
            # The model's token vectors, as a tok2vec component would leave
            # them: servers pool doc.tensor into a doc vector (/encode).
            for doc, rows in zip(docs, hidden):
                doc.tensor = self.model.ops.to_numpy(rows)

    def __call__(self, doc: Doc) -> Doc:
        """Classify one doc (and store its token vectors if ``store_tensor``).

        doc (Doc): The document.
        RETURNS (Doc): The document, with ``doc.cats`` set.
        """
        self._annotate([doc])
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Classify a stream of docs in batches.

        stream (Iterable[Doc]): The documents.
        batch_size (int): Docs per batch.
        YIELDS (Doc): The documents, with ``doc.cats`` set.
        """
        for docs in minibatch(stream, size=batch_size):
            self._annotate(docs)
            yield from docs

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Learn from a batch of examples with teacher scores and/or gold cats.

        examples (Iterable[Example]): A batch of Example objects.
        drop (float): The dropout rate.
        sgd (Optional[Optimizer]): The optimizer.
        losses (Optional[Dict[str, float]]): Record of the loss, by component name.
        RETURNS (Dict[str, float]): The updated losses dictionary.
        """
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "DistillTextCategorizer.update")
        if not any(len(eg.predicted) for eg in examples):
            # Nothing to backpropagate through: the stock embeddings cannot
            # take a gradient for a batch without tokens (as in spaCy's textcat).
            return losses
        set_dropout_rate(self.model, drop)
        logits, bp_logits = self.model.begin_update([eg.predicted for eg in examples])
        loss, d_logits = self.get_loss(examples, logits)
        bp_logits(d_logits)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def get_loss(self, examples: Iterable[Example], scores: Floats2d) -> Tuple[float, Floats2d]:
        """The distillation loss and its gradient with respect to the logits.

        examples (Iterable[Example]): The batch; reference docs carry teacher
            scores and/or gold cats.
        scores (Floats2d): The model's logits for the batch.
        RETURNS (Tuple[float, Floats2d]): The loss and d_logits.
        """
        examples = list(examples)
        validate_examples(examples, "DistillTextCategorizer.get_loss")
        targets = self._examples_to_targets(examples)
        xp = self.model.ops.xp
        d_scores, loss = self.loss(xp.asarray(scores, dtype="f"), targets)
        if not numpy.isfinite(loss):
            raise ValueError(
                f"[{self.name}] The distillation loss is {loss} on a batch of {len(examples)} docs. "
                "Check the teacher scores (NaN/inf logits) and the learning rate."
            )
        return float(loss), self.model.ops.asarray2f(d_scores)

    def _examples_to_targets(self, examples: List[Example]) -> DistillTargets:
        labels = self.labels
        n, n_labels = len(examples), len(labels)
        teacher = numpy.zeros((n, n_labels), dtype="f")
        teacher_mask = numpy.zeros((n,), dtype="f")
        gold = numpy.zeros((n, n_labels), dtype="f")
        gold_mask = numpy.zeros((n,), dtype="f")
        for i, eg in enumerate(examples):
            ref = eg.reference
            logits = self._teacher_logits(ref, i)
            if logits is not None:
                teacher[i] = logits
                teacher_mask[i] = 1.0
            if ref.cats:
                self._check_gold(ref.cats, i, ref)
                gold[i] = [ref.cats.get(label, 0.0) for label in labels]
                gold_mask[i] = 1.0
            if not teacher_mask[i] and not gold_mask[i]:
                raise ValueError(
                    f"[{self.name}] Doc {i} of the batch has neither teacher scores nor gold "
                    f"cats, so there is nothing to learn from: {_snippet(ref)}. Label it with "
                    "`spacy-distill label` or give it doc.cats."
                )
        return DistillTargets(
            teacher_logits=teacher,
            teacher_mask=teacher_mask,
            gold=gold,
            gold_mask=gold_mask,
            exclusive_classes=self.exclusive_classes,
        )

    def _teacher_logits(self, doc: Doc, i: int) -> Optional[List[float]]:
        logits = get_teacher_logits(doc)
        probs = get_teacher_probs(doc)
        source = logits if logits is not None else probs
        if source is None:
            return None
        missing = [label for label in self.labels if label not in source]
        if missing:
            raise ValueError(
                f"[{self.name}] Doc {i} of the batch has teacher scores without the labels "
                f"{missing} (it has {sorted(source)}): {_snippet(doc)}"
            )
        if logits is not None:
            values = [logits[label] for label in self.labels]
        else:
            assert probs is not None
            # Only probabilities: log-probabilities are the logits up to a
            # per-doc constant (softmax), log-odds are exact (sigmoid).
            values = list(logits_from_probs([probs[label] for label in self.labels], self.exclusive_classes))
        if not numpy.all(numpy.isfinite(values)):
            raise ValueError(f"[{self.name}] Doc {i} has non-finite teacher scores {values}: {_snippet(doc)}")
        return values

    def _check_gold(self, cats: Dict[str, float], i: int, doc: Doc) -> None:
        for label, value in cats.items():
            if value not in (0.0, 1.0):
                raise ValueError(
                    f"[{self.name}] Doc {i} has gold cats[{label!r}] = {value}: gold cats must be "
                    f"0 or 1; put soft labels in the teacher scores instead: {_snippet(doc)}"
                )
        if self.exclusive_classes and list(cats.values()).count(1.0) > 1:
            raise ValueError(
                f"[{self.name}] Doc {i} has more than one positive gold label {cats} but "
                f"exclusive_classes is true: {_snippet(doc)}"
            )

    def _validate_categories(self, examples: Iterable[Example]) -> None:
        for i, eg in enumerate(examples):
            if eg.reference.cats:
                self._check_gold(eg.reference.cats, i, eg.reference)

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Iterable[str]] = None,
        positive_label: Optional[str] = None,
    ) -> None:
        """Initialize for training; labels come from gold cats and teacher scores.

        get_examples (Callable[[], Iterable[Example]]): Returns sample examples.
        nlp (Optional[Language]): The pipeline.
        labels (Optional[Iterable[str]]): Labels to add (e.g. from ``init labels``).
        positive_label (Optional[str]): Positive label of a binary exclusive task.
        """
        validate_get_examples(get_examples, "DistillTextCategorizer.initialize")
        if labels is None:
            for eg in get_examples():
                ref = eg.reference
                scores = get_teacher_logits(ref) or get_teacher_probs(ref) or {}
                for label in list(ref.cats) + sorted(scores):
                    self.add_label(label)
        else:
            for label in labels:
                self.add_label(label)
        if len(self.labels) < 2:
            raise ValueError(
                f"[{self.name}] needs at least two labels, found {list(self.labels)} in the "
                "training examples' cats and teacher scores."
            )
        if positive_label is not None:
            if positive_label not in self.labels:
                raise ValueError(f"[{self.name}] positive_label {positive_label!r} is not one of {self.labels}")
            if len(self.labels) != 2:
                raise ValueError(f"[{self.name}] positive_label needs exactly two labels, got {self.labels}")
        self.cfg["positive_label"] = positive_label
        sample = list(islice(get_examples(), 10))
        if not sample:
            raise ValueError(f"[{self.name}] initialize() got no examples")
        self._validate_categories(sample)
        docs = [eg.reference for eg in sample]
        self._require_labels()
        self.model.initialize(X=docs, Y=self.model.ops.alloc2f(len(docs), len(self.labels)))


def _snippet(doc: Doc, n: int = 60) -> str:
    text = doc.text
    return repr(text[:n] + ("…" if len(text) > n else ""))
