"""Weights set at initialization, as ``[initialize.after_init]`` callbacks of
``spacy train``: copied from one pipeline's model into another's, or fitted on the
training docs (the character n-grams' idf).

spaCy's own ``[initialize] init_tok2vec`` loads pretrained weights into a
tok2vec layer only; this loads them into any named part (a ``ref``) of a
component's model whose layer tree matches, e.g. the student's sparse n-gram
block from an n-gram model trained first (``spacy-distill.NgramTextCat.v1``).
"""

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy
import spacy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model

from .char_ngrams import fit_char_idf
from .readers import iter_labelled_docs
from .teacher_scores import get_teacher_probs

NEGATIVE, POSITIVE = "NEGATIVE", "POSITIVE"


def _param_nodes(model: Model) -> List[Model]:
    return [node for node in model.walk() if node.param_names]


def copy_weights(source: Model, target: Model) -> int:
    """Copy every parameter of ``source`` into ``target``, node by node.

    The two layer trees must hold the same parameters in the same order: the
    nodes with parameters (in ``walk()`` order) must match in name, parameter
    names and shapes, as for an n-gram block saved alone and the same block
    inside a larger model (wrappers without parameters, such as
    ``spacy-distill.frozen.v1``, may differ).

    source (Model): The trained model (or part) to copy from.
    target (Model): The model (or part) to copy into.
    RETURNS (int): The number of parameter values copied.
    """
    src_nodes = _param_nodes(source)
    dst_nodes = _param_nodes(target)
    if len(src_nodes) != len(dst_nodes):
        raise ValueError(
            f"copy_weights: {source.name!r} has {len(src_nodes)} layers with weights, "
            f"{target.name!r} has {len(dst_nodes)}"
        )
    pairs = []
    for i, (src, dst) in enumerate(zip(src_nodes, dst_nodes)):
        if src.name != dst.name or list(src.param_names) != list(dst.param_names):
            raise ValueError(
                f"copy_weights: layer {i} with weights is {src.name!r} {list(src.param_names)} "
                f"in the source but {dst.name!r} {list(dst.param_names)} in the target"
            )
        for name in src.param_names:
            if not dst.has_param(name):
                raise ValueError(
                    f"copy_weights: layer {i} ({dst.name!r}) of the target has no {name!r} yet: "
                    "initialize the target model first"
                )
            value = src.get_param(name)
            if value.shape != dst.get_param(name).shape:
                raise ValueError(
                    f"copy_weights: layer {i} ({src.name!r}) parameter {name!r} has shape "
                    f"{value.shape} in the source but {dst.get_param(name).shape} in the target"
                )
            pairs.append((dst, name, value))
    copied = 0
    for dst, name, value in pairs:
        dst.set_param(name, dst.ops.asarray(value).copy())
        copied += int(value.size)
    return copied


def _ref_of(model: Model, ref: str, where: str) -> Model:
    if not model.has_ref(ref):
        raise ValueError(f"{where}: the model has no ref {ref!r} (its refs: {list(model.ref_names)})")
    found = model.get_ref(ref)
    if found is None:
        raise ValueError(f"{where}: the model's ref {ref!r} is not set")
    return found


@registry.callbacks("spacy-distill.init_layer_from.v1")
def create_init_layer_from(
    path: Union[str, Path], component: str = "textcat", ref: str = "bow"
) -> Callable[[Language], None]:
    """An ``[initialize.after_init]`` callback: load a model part's weights from a trained pipeline.

    After ``nlp.initialize``, the part ``ref`` of component ``component``'s
    model gets the weights of the same part of the same component in the
    pipeline at ``path`` (see ``copy_weights``). Only training reads ``path``:
    the trained pipeline keeps the weights in its own files.

    path (Union[str, Path]): The trained pipeline's directory (e.g. ``model-best``).
    component (str): The component in both pipelines.
    ref (str): The model part in both, e.g. ``"bow"``.
    RETURNS (Callable[[Language], None]): The callback.
    """
    path = Path(path)

    def init_layer_from(nlp: Language) -> None:
        where = f"spacy-distill.init_layer_from.v1 ({path}, {component}, {ref})"
        if not (path / "config.cfg").exists():
            raise ValueError(f"{where}: no trained pipeline at {path} (no config.cfg)")
        source_nlp = spacy.load(path)
        for name, pipeline in (("source", source_nlp), ("target", nlp)):
            if component not in pipeline.pipe_names:
                raise ValueError(f"{where}: the {name} pipeline has no {component!r} (it has {pipeline.pipe_names})")
        source = _ref_of(source_nlp.get_pipe(component).model, ref, f"{where}, source")
        target = _ref_of(nlp.get_pipe(component).model, ref, f"{where}, target")
        copy_weights(source, target)

    return init_layer_from


def _training_docs(name: str, path: Optional[Union[str, Path]], nlp: Language, component: str, *, require_teacher: bool) -> Tuple[str, List[Doc]]:
    """The docs an initialization callback fits on, and its error prefix.

    The docs are read as the student's reader reads them (``iter_labelled_docs``:
    a DocBin or a folder of them, files in sorted order), from ``path`` or else the
    config's ``[paths] train``; the component must be in the pipeline.

    name (str): The callback's registered name, for errors.
    path (Optional[Union[str, Path]]): The docs; None: the config's ``paths.train``.
    nlp (Language): The pipeline being initialized.
    component (str): The component the callback fits.
    require_teacher (bool): Raise on a doc without teacher scores.
    RETURNS (Tuple[str, List[Doc]]): The error prefix and the docs (at least one).
    """
    source = path if path is not None else nlp.config.get("paths", {}).get("train")
    where = f"{name} ({source}, {component})"
    if source is None:
        raise ValueError(f"{where}: no path, and the config has no [paths] train")
    if component not in nlp.pipe_names:
        raise ValueError(f"{where}: the pipeline has no {component!r} (it has {nlp.pipe_names})")
    try:
        docs = [doc for _, doc in iter_labelled_docs(Path(source), nlp.vocab, require_teacher=require_teacher)]
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not docs:
        raise ValueError(f"{where}: no docs at {source}")
    return where, docs


@registry.callbacks("spacy-distill.char_ngram_idf.v1")
def create_char_ngram_idf(path: Optional[Union[str, Path]] = None, component: str = "textcat") -> Callable[[Language], None]:
    """An ``[initialize.after_init]`` callback: fit the idf of the character n-grams on the training docs.

    Every ``extract_char_ngrams.v2`` layer (``spacy-distill.CharNgramBOW.v2``) in
    component ``component``'s model gets the idf of the document frequencies of its
    n-gram buckets over the docs at ``path``: by default the pipeline config's
    ``[paths] train``, which ``spacy train --paths.train`` sets. Only training reads
    it: the trained pipeline keeps the idf table with its weights.

    path (Optional[Union[str, Path]]): A DocBin or a folder of them (read
        recursively); None: the config's ``paths.train``.
    component (str): The component whose model holds the extractor.
    RETURNS (Callable[[Language], None]): The callback.
    """

    def char_ngram_idf(nlp: Language) -> None:
        where, docs = _training_docs("spacy-distill.char_ngram_idf.v1", path, nlp, component, require_teacher=False)
        layers = [node for node in nlp.get_pipe(component).model.walk() if node.name == "extract_char_ngrams" and node.has_param("idf")]
        if not layers:
            raise ValueError(f"{where}: the model has no extract_char_ngrams.v2 layer (CharNgramBOW.v2) to fit an idf for")
        texts = [doc.text for doc in docs]
        for layer in layers:
            fit_char_idf(layer, texts)

    return char_ngram_idf


def _char_blocks(model: Model) -> List[Tuple[Model, Model]]:
    """(extractor, sparse linear layer) of every character n-gram block in a model."""
    blocks = []
    for node in model.walk():
        if node.name.startswith("extract_char_ngrams>>"):
            extractor = node.layers[0]
            linear = next(n for n in node.walk() if n.name == "sparse_linear")
            blocks.append((extractor, linear))
    return blocks


@registry.callbacks("spacy-distill.fit_char_ngrams.v1")
def create_fit_char_ngrams(
    path: Optional[Union[str, Path]] = None,
    component: str = "textcat",
    C: float = 10.0,
    max_iter: int = 2000,
    batch_size: int = 512,
) -> Callable[[Language], None]:
    """An ``[initialize.after_init]`` callback: fit the character n-gram block to convergence.

    The student's sparse weights get a gradient only in the batches holding their
    n-gram, and Adam with early stopping leaves them far from converged: on the
    same teacher labels, a logistic regression over exactly the block's features
    (its keys, values and two hashed rows per key) scores 0.9 dev points above the
    whole jointly trained student (metrics/student_mean_vectors.md). This fits
    that logistic regression (scikit-learn, L-BFGS, L2 strength 1/C) on the
    teacher's soft labels of the docs at ``path`` (each doc twice, weighted by
    P(POSITIVE) and 1 - P(POSITIVE)) and writes it into the block's weights, so
    that the block's logit difference POSITIVE - NEGATIVE is the regression's
    log-odds. Wrap the block in ``spacy-distill.frozen.v1`` to keep it while the
    rest of the student trains on top. Needs scikit-learn to train (not to load
    or run the trained pipeline).

    path (Optional[Union[str, Path]]): Teacher-labelled DocBins (a file or a folder,
        read recursively); None: the config's ``[paths] train``.
    component (str): The component whose model holds the block; its labels must
        be exactly NEGATIVE and POSITIVE.
    C (float): Inverse L2 strength of the regression (chosen on dev).
    max_iter (int): L-BFGS iterations at most.
    batch_size (int): Docs per feature-extraction call.
    RETURNS (Callable[[Language], None]): The callback.
    """

    def fit_char_ngrams(nlp: Language) -> None:
        where, docs = _training_docs("spacy-distill.fit_char_ngrams.v1", path, nlp, component, require_teacher=True)
        pipe = nlp.get_pipe(component)
        labels = list(pipe.labels)
        if sorted(labels) != [NEGATIVE, POSITIVE]:
            raise ValueError(f"{where}: needs the labels {NEGATIVE} and {POSITIVE}, the component has {labels}")
        blocks = _char_blocks(pipe.model)
        if not blocks:
            raise ValueError(f"{where}: the model has no character n-gram block (CharNgramBOW)")
        probs = numpy.asarray([get_teacher_probs(doc)[POSITIVE] for doc in docs], dtype="f8")
        for extractor, linear in blocks:
            fit_hashed_logistic_regression(extractor, linear, docs, probs, labels, C=C, max_iter=max_iter, batch_size=batch_size)

    return fit_char_ngrams


def hashed_rows(keys: numpy.ndarray, length: int) -> numpy.ndarray:
    """The two rows of thinc's ``SparseLinear_v2`` weight table for each key.

    thinc hashes each uint64 key with MurmurHash3_x86_32 under seeds 0 and 1 and
    takes the hash modulo the table length (per class, in that class's slice).

    keys (numpy.ndarray): uint64 keys.
    length (int): The layer's ``length`` dim.
    RETURNS (numpy.ndarray): Shape (2, len(keys)): the rows under seed 0 and seed 1.
    """
    from murmurhash.mrmr import hash_bytes

    rows = numpy.empty((2, len(keys)), dtype=numpy.int64)
    for i, key in enumerate(numpy.asarray(keys, dtype=numpy.uint64)):
        data = key.tobytes()
        rows[0, i] = (hash_bytes(data, 0) & 0xFFFFFFFF) % length
        rows[1, i] = (hash_bytes(data, 1) & 0xFFFFFFFF) % length
    return rows


def hashed_design(extractor: Model, length: int, docs: Sequence[Doc], *, batch_size: int = 512) -> Any:
    """The docs' rows of a sparse block's design matrix, as its ``SparseLinear_v2`` sees them.

    Each key's value goes to both of its hashed rows (``hashed_rows``); entries that
    meet in one (doc, row) are summed, as the layer sums them.

    extractor (Model): Docs to (keys, values, lengths).
    length (int): The sparse layer's ``length`` dim.
    docs (Sequence[Doc]): The docs (the extractor reads their text).
    batch_size (int): Docs per extraction call.
    RETURNS (scipy.sparse.csr_matrix): Shape (len(docs), length).
    """
    from scipy.sparse import csr_matrix

    cache: Dict[int, Tuple[int, int]] = {}
    row_ids, cols, vals = [], [], []
    for start in range(0, len(docs), batch_size):
        batch = list(docs[start : start + batch_size])
        (keys, values, lengths), _ = extractor(batch, is_train=False)
        keys = numpy.asarray(keys, dtype=numpy.uint64)
        new = [k for k in numpy.unique(keys).tolist() if k not in cache]
        if new:
            both = hashed_rows(numpy.asarray(new, dtype=numpy.uint64), length)
            cache.update(zip(new, zip(both[0].tolist(), both[1].tolist())))
        owner = numpy.repeat(numpy.arange(start, start + len(batch)), numpy.asarray(lengths))
        pairs = numpy.asarray([cache[k] for k in keys.tolist()], dtype=numpy.int64).reshape(-1, 2)
        values = numpy.asarray(values, dtype="f8")
        row_ids += [owner, owner]
        cols += [pairs[:, 0], pairs[:, 1]]
        vals += [values, values]
    if not vals:
        return csr_matrix((len(docs), length))
    return csr_matrix((numpy.concatenate(vals), (numpy.concatenate(row_ids), numpy.concatenate(cols))), shape=(len(docs), length))


def fit_hashed_logistic_regression(
    extractor: Model,
    linear: Model,
    docs: Sequence[Doc],
    p_positive: numpy.ndarray,
    labels: Sequence[str],
    *,
    C: float,
    max_iter: int,
    batch_size: int,
) -> None:
    """Fit a binary logistic regression over a sparse block's features into its weights.

    extractor (Model): Docs to (keys, values, lengths).
    linear (Model): The ``SparseLinear_v2`` layer over them (initialized, 2 outputs).
    docs (Sequence[Doc]): The training docs (the extractor reads their text).
    p_positive (numpy.ndarray): The soft label P(POSITIVE) of each doc.
    labels (Sequence[str]): The component's labels, in output order.
    C (float): Inverse L2 strength.
    max_iter (int): L-BFGS iterations at most.
    batch_size (int): Docs per extraction call.
    """
    from scipy.sparse import vstack
    from sklearn.linear_model import LogisticRegression

    length = linear.get_dim("length")
    X = hashed_design(extractor, length, docs, batch_size=batch_size)
    y = numpy.r_[numpy.ones(len(docs)), numpy.zeros(len(docs))]
    weights = numpy.r_[p_positive, 1.0 - p_positive]
    regression = LogisticRegression(C=C, max_iter=max_iter).fit(vstack([X, X]).tocsr(), y, sample_weight=weights)
    u = regression.coef_[0].astype("f")
    b = float(regression.intercept_[0])
    # Half the log-odds to each class: softmax depends only on the difference.
    W = numpy.zeros((2, length), dtype="f")
    bias = numpy.zeros((2,), dtype="f")
    pos, neg = labels.index(POSITIVE), labels.index(NEGATIVE)
    W[pos], W[neg] = u / 2, -u / 2
    bias[pos], bias[neg] = b / 2, -b / 2
    linear.set_param("W", linear.ops.asarray1f(W.ravel()))
    linear.set_param("b", linear.ops.asarray1f(bias))
