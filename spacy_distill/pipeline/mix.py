"""Two trained text classifiers as one: their logits mixed with a weight.

``spacy-distill.LogitMix.v1`` is ``(1 - weight) * first + weight * second`` on the
logits (for two exclusive classes, the same mix of the log-odds), exposing
``first``'s token vectors (``doc.tensor``, the server's ``/encode``). The
``[initialize.after_init]`` callback ``spacy-distill.init_logit_mix.v1`` assembles
it from two trained pipelines (``spacy assemble``) and chooses the weight on dev.

The shipped student is such a mix: the BiLSTM student and the linear blocks
(character n-grams, mean static vector) fitted to convergence on their own
(``spacy-distill.fit_linear_blocks.v1``). Trained apart the two make
different errors (metrics/student_mean_vectors.md §6-7), where the char block
frozen inside the student lost 2.7 dev points. As the fitted blocks have exactly
the features of the student's own blocks, ``spacy-distill.fold_linear_mix.v1``
(``fold_char_mix.v1`` for the char block alone) folds the mix into the student's
architecture (the mix is linear in those blocks' weights), so it costs nothing at
inference. Numpy/thinc only: the pipelines run without torch.
"""

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import spacy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Corpus, Example
from spacy.util import registry
from thinc.api import Model
from thinc.layers.add import init as add_init
from thinc.types import Floats2d

from .models import FORWARD_WITH_TOKEN_VECTORS, TokenVectorsOutput, logits_forward
from .weights import _char_blocks, _mean_vector_blocks, copy_weights

# The model attribute holding the weight of ``second``. A float in ``attrs`` is
# serialized with the weights, so the weight chosen at initialization
# (init_logit_mix.v1) is the one a loaded pipeline uses, whatever the config's start value.
MIX_WEIGHT = "mix_weight"


@registry.architectures("spacy-distill.LogitMix.v1")
def build_logit_mix(
    first: Model[List[Doc], Floats2d],
    second: Model[List[Doc], Floats2d],
    weight: float = 0.5,
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """Mix two text classifiers' logits: ``(1 - weight) * first + weight * second``.

    Both models output logits (``spacy-distill.BiLSTMTextCat.v2``,
    ``spacy-distill.NgramTextCat.v1``) over the same labels. The token vectors are
    ``first``'s, if it exposes any. The refs ``first`` and ``second`` name the two
    (``spacy-distill.init_logit_mix.v1`` loads trained weights into them). The
    weight is a fixed mixing coefficient, not trained: backprop scales each
    model's gradient by its share.

    first (Model[List[Doc], Floats2d]): The first model (docs to logits).
    second (Model[List[Doc], Floats2d]): The second model (docs to logits).
    weight (float): The weight of ``second``, in [0, 1]; the weight chosen by
        ``spacy-distill.init_logit_mix.v1`` replaces it and is saved with the model.
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits, one row per doc.
    """
    check_weight(weight, "spacy-distill.LogitMix.v1")
    attrs: Dict[str, Any] = {MIX_WEIGHT: float(weight), "outputs": "logits"}
    if FORWARD_WITH_TOKEN_VECTORS in first.attrs:
        attrs[FORWARD_WITH_TOKEN_VECTORS] = logit_mix_forward
        forward = logits_forward
    else:
        forward = logit_mix_logits
    model = Model(
        "logit_mix",
        forward,
        # add's shape inference: each layer initialized on the same sample, nO shared.
        init=add_init,
        dims={"nO": nO},
        layers=[first, second],
        attrs=attrs,
        refs={"first": first, "second": second},
    )
    return model


def check_weight(weight: float, where: str) -> None:
    """Raise unless ``weight`` is a number in [0, 1].

    weight (float): The mixing weight.
    where (str): The caller, for the error.
    """
    if not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"{where}: weight must be a number in [0, 1], got {weight!r}")


def logit_mix_forward(
    model: Model[List[Doc], Floats2d], docs: List[Doc], is_train: bool
) -> Tuple[TokenVectorsOutput, Callable[[Floats2d], List[Doc]]]:
    """Mix the two models' logits; return them with ``first``'s token vectors."""
    first, second = model.layers
    (logits_a, vectors), backprop_a = first.attrs[FORWARD_WITH_TOKEN_VECTORS](first, docs, is_train)
    logits, backprop = _mix(model, logits_a, backprop_a, docs, is_train)
    return (logits, vectors), backprop


def logit_mix_logits(
    model: Model[List[Doc], Floats2d], docs: List[Doc], is_train: bool
) -> Tuple[Floats2d, Callable[[Floats2d], List[Doc]]]:
    """Mix the two models' logits (a ``first`` without token vectors)."""
    logits_a, backprop_a = model.layers[0](docs, is_train)
    return _mix(model, logits_a, backprop_a, docs, is_train)


def _mix(
    model: Model[List[Doc], Floats2d],
    logits_a: Floats2d,
    backprop_a: Callable[[Floats2d], Any],
    docs: List[Doc],
    is_train: bool,
) -> Tuple[Floats2d, Callable[[Floats2d], List[Doc]]]:
    w = float(model.attrs[MIX_WEIGHT])
    logits_b, backprop_b = model.layers[1](docs, is_train)
    # A fresh array: the layers may hand back arrays they keep (no in-place sum).
    logits = model.ops.xp.multiply(logits_a, 1.0 - w) + model.ops.xp.multiply(logits_b, w)

    def backprop(d_logits: Floats2d) -> List[Doc]:
        backprop_a(d_logits * (1.0 - w))
        backprop_b(d_logits * w)
        return docs

    return logits, backprop


def _check_weights(name: str, weights: Sequence[float], *more: float) -> None:
    if not weights:
        raise ValueError(f"{name}: no weights to choose from")
    for w in (*weights, *more):
        check_weight(w, name)


def _pipe_model(nlp: Language, component: str, where: str) -> Model:
    if component not in nlp.pipe_names:
        raise ValueError(f"{where}: the pipeline has no {component!r} (it has {nlp.pipe_names})")
    return nlp.get_pipe(component).model


def _dev_examples(nlp: Language, dev: Union[str, Path], where: str) -> List[Example]:
    examples = list(Corpus(Path(dev))(nlp))
    if not examples:
        raise ValueError(f"{where}: no docs at {dev}")
    return examples


def _mix_model(nlp: Language, component: str, where: str) -> Model:
    model = _pipe_model(nlp, component, where)
    if MIX_WEIGHT not in model.attrs:
        raise ValueError(f"{where}: the model of {component!r} is {model.name!r}, not a spacy-distill.LogitMix.v1")
    return model


def _source_models(nlp: Language, paths: Sequence[Union[str, Path]], component: str, where: str) -> List[Model]:
    """The models of ``component`` in trained pipelines, their labels checked against ``nlp``'s."""
    labels = list(nlp.get_pipe(component).labels)
    models = []
    for path in map(Path, paths):
        if not (path / "config.cfg").exists():
            raise ValueError(f"{where}: no trained pipeline at {path} (no config.cfg)")
        source = spacy.load(path)
        if component not in source.pipe_names:
            raise ValueError(f"{where}: {path} has no {component!r} (it has {source.pipe_names})")
        source_labels = list(source.get_pipe(component).labels)
        if source_labels != labels:
            raise ValueError(f"{where}: {path} has the labels {source_labels}, this pipeline {labels}")
        models.append(source.get_pipe(component).model)
    return models


@registry.callbacks("spacy-distill.init_logit_mix.v1")
def create_init_logit_mix(
    first: Union[str, Path],
    second: Union[str, Path],
    dev: Optional[Union[str, Path]] = None,
    weights: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    component: str = "textcat",
    score: str = "cats_score",
) -> Callable[[Language], None]:
    """An ``[initialize.after_init]`` callback: a LogitMix from two trained pipelines, its weight chosen on dev.

    The model of component ``component`` in the pipeline at ``first`` goes into the
    mix's ``first``, the one at ``second`` into its ``second`` (``copy_weights``:
    the layer trees must match, i.e. the same architecture blocks as in the
    pipelines' configs); both need the mix's labels in the same order. Then, with
    ``dev``, :func:`choose_mix_weight` keeps the weight that scores best on those
    gold docs. Only assembling reads the paths: the mixed pipeline keeps the weights.

    first (Union[str, Path]): The trained pipeline of ``first`` (e.g. ``model-best``).
    second (Union[str, Path]): The trained pipeline of ``second``.
    dev (Optional[Union[str, Path]]): Gold dev docs (a DocBin or a folder of them);
        None keeps the config's weight.
    weights (Sequence[float]): The weights of ``second`` to try on dev, each in [0, 1].
    component (str): The component, in the three pipelines.
    score (str): The score to maximize (a key of ``nlp.evaluate``'s result).
    RETURNS (Callable[[Language], None]): The callback.
    """
    name = "spacy-distill.init_logit_mix.v1"
    _check_weights(name, weights)

    def init_logit_mix(nlp: Language) -> None:
        where = f"{name} ({first}, {second}, {component})"
        model = _mix_model(nlp, component, where)
        sources = _source_models(nlp, (first, second), component, where)
        for ref, path, source in zip(("first", "second"), (first, second), sources):
            try:
                copy_weights(source, model.get_ref(ref))
            except ValueError as e:
                raise ValueError(f"{where}: {ref} from {path}: {e}") from None
        if dev is not None:
            choose_mix_weight(nlp, _dev_examples(nlp, dev, where), weights, component=component, score=score)

    return init_logit_mix


def choose_mix_weight(
    nlp: Language,
    examples: List[Example],
    weights: Sequence[float],
    *,
    component: str = "textcat",
    score: str = "cats_score",
) -> Dict[str, float]:
    """Keep the LogitMix weight that scores best on gold examples (the first of equals).

    Scores the pipeline with each weight as ``spacy train`` scores dev
    (``nlp.evaluate``) and records every score in ``nlp.meta["mix_weight"]``.

    nlp (Language): The pipeline; ``component``'s model is a LogitMix.
    examples (List[Example]): Gold dev examples.
    weights (Sequence[float]): The weights of ``second`` to try, each in [0, 1].
    component (str): The component whose model is the LogitMix.
    score (str): The score to maximize (a key of ``nlp.evaluate``'s result).
    RETURNS (Dict[str, float]): The score of each weight.
    """
    model = _mix_model(nlp, component, f"choose_mix_weight ({component})")

    def apply(w: float) -> None:
        model.attrs[MIX_WEIGHT] = float(w)

    return choose_weight(nlp, examples, weights, apply, score=score)


def choose_weight(
    nlp: Language,
    examples: List[Example],
    weights: Sequence[float],
    apply: Callable[[float], None],
    *,
    score: str = "cats_score",
) -> Dict[str, float]:
    """Apply each weight, score the pipeline on gold examples, keep the best (the first of equals).

    Records every score in ``nlp.meta["mix_weight"]`` (the model card reads it).

    nlp (Language): The pipeline.
    examples (List[Example]): Gold dev examples.
    weights (Sequence[float]): The weights to try, each in [0, 1].
    apply (Callable[[float], None]): Puts one weight into the pipeline.
    score (str): The score to maximize (a key of ``nlp.evaluate``'s result).
    RETURNS (Dict[str, float]): The score of each weight.
    """
    where = "choose_weight"
    scores: Dict[str, float] = {}
    for w in weights:
        check_weight(w, where)
        apply(float(w))
        result = nlp.evaluate(examples)
        if result.get(score) is None:
            raise ValueError(f"{where}: the evaluation gave no {score!r} (it gave {sorted(result)})")
        scores[str(float(w))] = float(result[score])
    best = max(weights, key=lambda w: scores[str(float(w))])
    apply(float(best))
    nlp.meta["mix_weight"] = {"weight": float(best), "score": score, "scores": scores}
    return scores


def output_terms(model: Model) -> List[Model]:
    """The affine layers whose outputs sum to a model's logits.

    Follows chains and wrappers to their last layer and ``add`` (and
    ``add_logits``) into every summand, down to layers with weights ``W`` and
    ``b``: scaling those scales the logits (checked numerically where it matters,
    see ``create_fold_char_mix``).

    model (Model): A model from docs to logits (e.g. ``spacy-distill.BiLSTMTextCat.v2``).
    RETURNS (List[Model]): The output layers, one per summand.
    """
    if model.name in ("add", "add_logits"):
        return [term for layer in model.layers for term in output_terms(layer)]
    if not model.layers:
        if not (model.has_param("W") and model.has_param("b")):
            raise ValueError(f"output_terms: {model.name!r} ends a summand but is not an affine layer (W, b)")
        return [model]
    return output_terms(model.layers[-1])


@registry.callbacks("spacy-distill.fold_char_mix.v1")
def create_fold_char_mix(
    first: Union[str, Path],
    second: Union[str, Path],
    dev: Optional[Union[str, Path]] = None,
    weights: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    weight: float = 0.5,
    component: str = "textcat",
    score: str = "cats_score",
    tolerance: float = 1e-4,
) -> Callable[[Language], None]:
    """An ``[initialize.after_init]`` callback: a LogitMix folded into the first model's own architecture.

    When ``second`` is a character n-gram block alone (``spacy-distill.NgramTextCat.v1``
    over ``spacy-distill.CharNgramBOW.v1``) with the same n-grams and table length as
    the character block inside ``first``, the mix ``(1 - w) * first + w * second`` is
    linear in that block's weights: it *is* ``first``'s architecture with the char
    block's weights ``(1 - w) * W_first + w * W_second`` and every other summand's
    output layer scaled by ``1 - w``. The pipeline (configured exactly as ``first``)
    gets those weights: the mix's predictions at the cost of ``first`` alone (one
    feature extraction, one table). With ``dev``, the weight of ``weights`` that
    scores best there is kept (else ``weight``); every score goes to
    ``nlp.meta["mix_weight"]``. The folded logits are checked against the two
    models' on the dev docs (or a probe text) and any difference above
    ``tolerance`` is an error. ``fold_linear_mix.v1`` also folds a mean-vectors block.

    first (Union[str, Path]): The trained pipeline whose architecture this one has.
    second (Union[str, Path]): The trained (fitted) character block alone.
    dev (Optional[Union[str, Path]]): Gold dev docs; None keeps ``weight``.
    weights (Sequence[float]): The weights of ``second`` to try on dev, each in [0, 1].
    weight (float): The weight without ``dev``.
    component (str): The component, in the three pipelines.
    score (str): The score to maximize (a key of ``nlp.evaluate``'s result).
    tolerance (float): Largest allowed difference between the folded and mixed logits.
    RETURNS (Callable[[Language], None]): The callback.
    """
    name = "spacy-distill.fold_char_mix.v1"
    return _fold_mix(name, first, second, dev, weights, weight, component, score, tolerance, vectors=False)


@registry.callbacks("spacy-distill.fold_linear_mix.v1")
def create_fold_linear_mix(
    first: Union[str, Path],
    second: Union[str, Path],
    dev: Optional[Union[str, Path]] = None,
    weights: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    weight: float = 0.5,
    component: str = "textcat",
    score: str = "cats_score",
    tolerance: float = 1e-4,
) -> Callable[[Language], None]:
    """An ``[initialize.after_init]`` callback: ``fold_char_mix.v1`` for every linear block of ``second``.

    ``second`` is the student's linear blocks alone (``spacy-distill.NgramTextCat.v1``
    over a character n-gram block and, optionally, a mean-vectors block
    ``spacy-distill.MeanVectorsBOW.v1``; fitted jointly by
    ``spacy-distill.fit_linear_blocks.v1``). Each of its blocks must have its twin in
    ``first`` (same n-grams and table length; same vectors width): the mix is linear
    in each twin's weights, so each gets ``(1 - w) * W_first + w * W_second`` and
    every other summand of ``first`` (the BiLSTM, the word n-grams) is scaled by
    ``1 - w``. ``first`` may also be the BiLSTM alone (no ``bow`` block; the shipped
    student since its LSTM trains, ``BiLSTMTextCat.v3``): its weights go into this
    pipeline's BiLSTM and the blocks it lacks start from zero, so they hold
    ``w * W_second``. The weight is chosen on ``dev`` and the folded logits checked as
    in ``fold_char_mix.v1``.

    first (Union[str, Path]): The trained pipeline whose architecture this one has.
    second (Union[str, Path]): The trained (fitted) linear blocks alone.
    dev (Optional[Union[str, Path]]): Gold dev docs; None keeps ``weight``.
    weights (Sequence[float]): The weights of ``second`` to try on dev, each in [0, 1].
    weight (float): The weight without ``dev``.
    component (str): The component, in the three pipelines.
    score (str): The score to maximize (a key of ``nlp.evaluate``'s result).
    tolerance (float): Largest allowed difference between the folded and mixed logits.
    RETURNS (Callable[[Language], None]): The callback.
    """
    name = "spacy-distill.fold_linear_mix.v1"
    return _fold_mix(name, first, second, dev, weights, weight, component, score, tolerance, vectors=True)


def _twin_terms(
    model: Model, terms: List[Model], model_b: Model, second: Union[str, Path], where: str, *, vectors: bool
) -> List[Tuple[Model, Model]]:
    """(output layer in ``model``, its fitted twin in ``model_b``) for every summand of ``model_b``.

    ``terms`` are ``output_terms(model)``: every twin in ``model`` must be one of them.
    """
    blocks, blocks_b = _char_blocks(model), _char_blocks(model_b)
    if len(blocks) != 1 or len(blocks_b) != 1:
        raise ValueError(f"{where}: needs exactly one character n-gram block in each model (this one has {len(blocks)}, {second} has {len(blocks_b)})")
    (extractor, linear), (extractor_b, linear_b) = blocks[0], blocks_b[0]
    for key in ("min_n", "max_n", "lowercase"):
        if extractor.attrs.get(key) != extractor_b.attrs.get(key):
            raise ValueError(f"{where}: the char blocks differ in {key} ({extractor.attrs.get(key)} vs {extractor_b.attrs.get(key)} in {second})")
    if linear.get_dim("length") != linear_b.get_dim("length"):
        raise ValueError(f"{where}: the char blocks' tables differ in length ({linear.get_dim('length')} vs {linear_b.get_dim('length')} in {second})")
    twins = [(linear, linear_b)]
    means, means_b = _mean_vector_blocks(model), _mean_vector_blocks(model_b)
    if vectors and means_b:
        if len(means) != 1 or len(means_b) != 1:
            raise ValueError(f"{where}: needs exactly one mean-vectors block in each model (this one has {len(means)}, {second} has {len(means_b)})")
        (_, out), (_, out_b) = means[0], means_b[0]
        if out.get_dim("nI") != out_b.get_dim("nI"):
            raise ValueError(f"{where}: the mean-vectors blocks differ in width ({out.get_dim('nI')} vs {out_b.get_dim('nI')} in {second})")
        twins.append((out, out_b))
    folded = {id(b) for _, b in twins}
    unmatched = [term.name for term in output_terms(model_b) if id(term) not in folded]
    if unmatched:
        raise ValueError(f"{where}: {second} has summands this fold cannot match in the first model ({unmatched})")
    for term, _ in twins:
        if not any(t is term for t in terms):
            raise ValueError(f"{where}: the {term.name} block is not a summand of the logits")
    return twins


def _fold_mix(
    name: str,
    first: Union[str, Path],
    second: Union[str, Path],
    dev: Optional[Union[str, Path]],
    weights: Sequence[float],
    weight: float,
    component: str,
    score: str,
    tolerance: float,
    *,
    vectors: bool,
) -> Callable[[Language], None]:
    _check_weights(name, weights, weight)

    def fold_mix(nlp: Language) -> None:
        where = f"{name} ({first}, {second}, {component})"
        model = _pipe_model(nlp, component, where)
        model_a, model_b = _source_models(nlp, (first, second), component, where)
        # ``first`` may be the BiLSTM alone (no ``bow``: the linear blocks trained
        # apart from it are all ``second``'s): its weights go into this model's
        # BiLSTM summand, and the blocks it lacks mix from zero.
        alone = model.has_ref("bow") and not model_a.has_ref("bow")
        target = model.layers[0] if alone else model
        try:
            copy_weights(model_a, target)
        except ValueError as e:
            raise ValueError(f"{where}: first from {first}: {e}") from None
        terms = output_terms(model)
        twins = _twin_terms(model, terms, model_b, second, where, vectors=vectors)
        fitted = {id(term): (term_b.get_param("W"), term_b.get_param("b")) for term, term_b in twins}
        copied = {id(term) for term in output_terms(target)}
        trained = {
            id(term): (term.get_param("W").copy(), term.get_param("b").copy())
            if id(term) in copied
            else (term.ops.xp.zeros_like(term.get_param("W")), term.ops.xp.zeros_like(term.get_param("b")))
            for term in terms
        }

        def apply(w: float) -> None:
            # A summand without a fitted twin mixes with zero weights: it is scaled by 1 - w.
            for term in terms:
                W, b = trained[id(term)]
                W_b, b_b = fitted.get(id(term), (0.0, 0.0))
                term.set_param("W", (1.0 - w) * W + w * W_b)
                term.set_param("b", (1.0 - w) * b + w * b_b)

        examples = _dev_examples(nlp, dev, where) if dev is not None else []
        if examples:
            choose_weight(nlp, examples, weights, apply, score=score)
        else:
            apply(float(weight))
            nlp.meta["mix_weight"] = {"weight": float(weight), "score": None, "scores": {}}
        # Whether the fitted blocks were mixed with trained twins (False: the BiLSTM alone).
        nlp.meta["mix_weight"]["first_has_blocks"] = not alone
        w = float(nlp.meta["mix_weight"]["weight"])
        docs = [eg.predicted for eg in examples[:500]] or [nlp.make_doc("a probe text, ein Test, テスト")]
        expected = (1.0 - w) * model_a.predict(docs) + w * model_b.predict(docs)
        diff = float(abs(model.predict(docs) - expected).max())
        if diff > tolerance:
            raise ValueError(f"{where}: the folded logits differ from the mix by {diff:.2e} (more than {tolerance}): the model's summands are not what the fold assumes")

    return fold_mix
