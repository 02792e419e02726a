"""Weights set at initialization, as ``[initialize.after_init]`` callbacks of
``spacy train``: copied from one pipeline's model into another's, or fitted on the
training docs (the character n-grams' idf; the linear blocks' weights by a
convex solver).

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
from .readers import create_teacher_labelled_reader_v2, iter_labelled_docs
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


def _training_docs(
    name: str,
    path: Optional[Union[str, Path]],
    nlp: Language,
    component: str,
    *,
    require_teacher: bool,
    prior_correction: bool = False,
    allow_empty: bool = False,
) -> Tuple[str, List[Doc]]:
    """The docs an initialization callback fits on, and its error prefix.

    The docs are read as the student's reader reads them (``iter_labelled_docs``:
    a DocBin or a folder of them, files in sorted order), from ``path`` or else the
    config's ``[paths] train``; the component must be in the pipeline. With
    ``prior_correction`` they come from ``spacy-distill.TeacherLabelled.v2`` with
    its prior correction: the teacher scores of each part and language without gold
    cats shifted to a uniform label prior, exactly as the student is trained on them.

    name (str): The callback's registered name, for errors.
    path (Optional[Union[str, Path]]): The docs; None: the config's ``paths.train``.
    nlp (Language): The pipeline being initialized.
    component (str): The component the callback fits.
    require_teacher (bool): Raise on a doc without teacher scores.
    prior_correction (bool): Correct the teacher's label prior per part and language.
    allow_empty (bool): Return no docs for DocBins without docs instead of raising
        (the DocBins must still exist).
    RETURNS (Tuple[str, List[Doc]]): The error prefix and the docs (at least one
        unless ``allow_empty``).
    """
    source = path if path is not None else nlp.config.get("paths", {}).get("train")
    where = f"{name} ({source}, {component})"
    if source is None:
        raise ValueError(f"{where}: no path, and the config has no [paths] train")
    if component not in nlp.pipe_names:
        raise ValueError(f"{where}: the pipeline has no {component!r} (it has {nlp.pipe_names})")
    try:
        if prior_correction:
            read = create_teacher_labelled_reader_v2(source, require_teacher=require_teacher, prior_correction=True)
            docs = [eg.reference for eg in read(nlp)]
        else:
            docs = [doc for _, doc in iter_labelled_docs(Path(source), nlp.vocab, require_teacher=require_teacher)]
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not docs and not allow_empty:
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


def _mean_vector_blocks(model: Model) -> List[Tuple[Model, Model]]:
    """(mean-vectors layer, output Linear) of every ``MeanVectorsBOW`` block in a model."""
    return [(node.layers[0], node.get_ref("output_layer")) for node in model.walk() if node.name.startswith("mean_static_vectors>>")]


def _binary_labels(pipe: Any, where: str) -> List[str]:
    labels = list(pipe.labels)
    if sorted(labels) != [NEGATIVE, POSITIVE]:
        raise ValueError(f"{where}: needs the labels {NEGATIVE} and {POSITIVE}, the component has {labels}")
    return labels


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
        labels = _binary_labels(pipe, where)
        blocks = _char_blocks(pipe.model)
        if not blocks:
            raise ValueError(f"{where}: the model has no character n-gram block (CharNgramBOW)")
        probs = numpy.asarray([get_teacher_probs(doc)[POSITIVE] for doc in docs], dtype="f8")
        for extractor, linear in blocks:
            fit_hashed_logistic_regression(extractor, linear, docs, probs, labels, C=C, max_iter=max_iter, batch_size=batch_size)

    return fit_char_ngrams


@registry.callbacks("spacy-distill.fit_linear_blocks.v1")
def create_fit_linear_blocks(
    path: Optional[Union[str, Path]] = None,
    component: str = "textcat",
    C: float = 10.0,
    max_iter: int = 2000,
    batch_size: int = 512,
    prior_correction: bool = True,
    vectors_scale: float = 1.0,
    tol: float = 1e-6,
) -> Callable[[Language], None]:
    """An ``[initialize.after_init]`` callback: fit the model's linear blocks jointly, to convergence.

    ``fit_char_ngrams.v1`` for every linear block the student has: the character
    n-gram blocks (``spacy-distill.CharNgramBOW.v1``) and the linear models over the
    mean static vector (``spacy-distill.MeanVectorsBOW.v1``) make one logistic
    regression (scikit-learn, L-BFGS, L2 strength 1/C) over [hashed char features |
    vectors_scale x mean vector], fitted on the teacher's soft labels of the docs at
    ``path`` and written into the blocks' weights, so that the sum of the blocks'
    logit differences POSITIVE - NEGATIVE is the regression's log-odds. With
    ``prior_correction`` (the default) the labels are those the student trains on:
    ``TeacherLabelled.v2``'s teacher scores shifted per part and language to a
    uniform prior (the teacher calls 56-73 % of the transfer, augmented and UD text
    POSITIVE; dev and test are balanced). Mixed with the BiLSTM student (the shipped
    student): 78.71 dev against 78.50 for the char block alone fitted on the
    uncorrected labels, and 78.9 against 75.1 out of domain
    (metrics/student_mean_vectors.md §7). Needs scikit-learn to train, not to load
    or run the pipeline.

    path (Optional[Union[str, Path]]): Teacher-labelled DocBins (a file or a folder,
        read recursively); None: the config's ``[paths] train``.
    component (str): The component whose model holds the blocks; its labels must
        be exactly NEGATIVE and POSITIVE.
    C (float): Inverse L2 strength of the regression (chosen on dev).
    max_iter (int): L-BFGS iterations at most.
    batch_size (int): Docs per feature-extraction call.
    prior_correction (bool): Fit on the prior-corrected teacher labels.
    vectors_scale (float): Factor on the mean vector in the regression's design,
        against the char rows' norm of 1 (the mean vectors' is ~0.14): under one L2
        penalty it sets how freely the mean-vector weights move (chosen on dev).
    tol (float): L-BFGS stopping tolerance. scikit-learn's default (1e-4) stops
        these fits after ~135 iterations at a point that moves with the BLAS
        threads (78.05 to 78.53 dev for one config); 1e-6 reaches the optimum.
    RETURNS (Callable[[Language], None]): The callback.
    """
    return _make_fit_linear_blocks(
        "spacy-distill.fit_linear_blocks.v1", [path], component, C, max_iter, batch_size, prior_correction, vectors_scale, tol
    )


@registry.callbacks("spacy-distill.fit_linear_blocks.v2")
def create_fit_linear_blocks_v2(
    path: Optional[Union[str, Path]] = None,
    extra_path: Optional[Union[str, Path]] = None,
    component: str = "textcat",
    C: float = 10.0,
    max_iter: int = 2000,
    batch_size: int = 512,
    prior_correction: bool = True,
    vectors_scale: float = 1.0,
    tol: float = 1e-6,
) -> Callable[[Language], None]:
    """``fit_linear_blocks.v1`` fitted on the docs at ``path`` and, besides them, at ``extra_path``.

    The extra corpus is teacher-labelled text that only the linear blocks are fitted
    on, kept apart so that the BiLSTM student's reader (``path``) never sees it: in
    the project, the transfer reviews after the student's 2,500 per language
    (``corpus/labelled_more``, ``vars.n_transfer_more``). A converged regression gains
    from more teacher-labelled text where the BiLSTM, trained for a fixed number of
    steps, does not: with all the transfer reviews the fitted blocks scored 78.88 dev
    against 78.07, though their mix with the student only 79.25 against 79.21
    (metrics/student_fitted_blocks.md). With ``prior_correction`` each corpus's parts
    are corrected on their own docs, as the reader corrects one corpus. An extra
    corpus whose DocBins hold no docs adds none (the project's default labels no more
    reviews); one without DocBins is an error. With ``extra_path`` None it is v1.

    path (Optional[Union[str, Path]]): Teacher-labelled DocBins (a file or a folder,
        read recursively); None: the config's ``[paths] train``.
    extra_path (Optional[Union[str, Path]]): More teacher-labelled DocBins, or None.
    component (str): The component whose model holds the blocks; its labels must
        be exactly NEGATIVE and POSITIVE.
    C (float): Inverse L2 strength of the regression (chosen on dev).
    max_iter (int): L-BFGS iterations at most.
    batch_size (int): Docs per feature-extraction call.
    prior_correction (bool): Fit on the prior-corrected teacher labels.
    vectors_scale (float): Factor on the mean vector in the regression's design (v1).
    tol (float): L-BFGS stopping tolerance (v1).
    RETURNS (Callable[[Language], None]): The callback.
    """
    paths = [path] if extra_path is None else [path, extra_path]
    return _make_fit_linear_blocks(
        "spacy-distill.fit_linear_blocks.v2", paths, component, C, max_iter, batch_size, prior_correction, vectors_scale, tol
    )


def _make_fit_linear_blocks(
    name: str,
    paths: List[Optional[Union[str, Path]]],
    component: str,
    C: float,
    max_iter: int,
    batch_size: int,
    prior_correction: bool,
    vectors_scale: float,
    tol: float,
) -> Callable[[Language], None]:
    # v1 and v2: one regression over the docs of every path, in order.
    if not vectors_scale > 0:
        raise ValueError(f"{name}: vectors_scale must be > 0, got {vectors_scale!r}")

    def fit_linear_blocks(nlp: Language) -> None:
        # Each corpus read (and its prior corrected) as the student's reader reads one.
        read = [
            _training_docs(name, path, nlp, component, require_teacher=True, prior_correction=prior_correction, allow_empty=i > 0)
            for i, path in enumerate(paths)
        ]
        where = read[0][0]
        docs = [doc for _, path_docs in read for doc in path_docs]
        pipe = nlp.get_pipe(component)
        labels = _binary_labels(pipe, where)
        chars, vectors = _char_blocks(pipe.model), _mean_vector_blocks(pipe.model)
        if not chars and not vectors:
            raise ValueError(f"{where}: the model has no linear block to fit (CharNgramBOW, MeanVectorsBOW)")
        probs = numpy.asarray([get_teacher_probs(doc)[POSITIVE] for doc in docs], dtype="f8")
        fit_linear_blocks_regression(
            chars, vectors, docs, probs, labels, C=C, max_iter=max_iter, batch_size=batch_size, vectors_scale=vectors_scale, tol=tol
        )

    return fit_linear_blocks


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
    fit_linear_blocks_regression([(extractor, linear)], [], docs, p_positive, labels, C=C, max_iter=max_iter, batch_size=batch_size)


def fit_linear_blocks_regression(
    char_blocks: Sequence[Tuple[Model, Model]],
    vector_blocks: Sequence[Tuple[Model, Model]],
    docs: Sequence[Doc],
    p_positive: numpy.ndarray,
    labels: Sequence[str],
    *,
    C: float,
    max_iter: int,
    batch_size: int,
    vectors_scale: float = 1.0,
    tol: float = 1e-4,
) -> None:
    """Fit one binary logistic regression over several linear blocks' features into their weights.

    The design is the blocks' features side by side: each char block's hashed
    features (``hashed_design``) and each mean-vectors block's input times
    ``vectors_scale``. Each block gets its columns' coefficients as half the
    log-odds per class (softmax depends only on the difference); the intercept goes
    to the first block's bias, the others' biases are zero.

    char_blocks (Sequence[Tuple[Model, Model]]): (extractor, ``SparseLinear_v2``) pairs.
    vector_blocks (Sequence[Tuple[Model, Model]]): (mean-vectors layer, ``Linear``) pairs.
    docs (Sequence[Doc]): The training docs.
    p_positive (numpy.ndarray): The soft label P(POSITIVE) of each doc.
    labels (Sequence[str]): The component's labels, in output order.
    C (float): Inverse L2 strength.
    max_iter (int): L-BFGS iterations at most.
    batch_size (int): Docs per extraction call.
    vectors_scale (float): Factor on the mean vectors in the design.
    tol (float): L-BFGS stopping tolerance (scikit-learn's default 1e-4 for ``fit_char_ngrams.v1``).
    """
    from scipy.sparse import csr_matrix, hstack, vstack
    from sklearn.linear_model import LogisticRegression

    designs = [hashed_design(extractor, linear.get_dim("length"), docs, batch_size=batch_size) for extractor, linear in char_blocks]
    for mean, _ in vector_blocks:
        rows = [mean.predict(list(docs[i : i + batch_size])) for i in range(0, len(docs), batch_size)]
        designs.append(csr_matrix(vectors_scale * numpy.concatenate(rows).astype("f8")))
    X = hstack(designs).tocsr() if len(designs) > 1 else designs[0]
    y = numpy.r_[numpy.ones(len(docs)), numpy.zeros(len(docs))]
    weights = numpy.r_[p_positive, 1.0 - p_positive]
    regression = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(vstack([X, X]).tocsr(), y, sample_weight=weights)
    u = regression.coef_[0].astype("f")
    b = float(regression.intercept_[0])
    pos, neg = labels.index(POSITIVE), labels.index(NEGATIVE)
    offset = 0
    for i, (_, linear) in enumerate([*char_blocks, *vector_blocks]):
        is_char = i < len(char_blocks)
        width = linear.get_dim("length") if is_char else linear.get_dim("nI")
        coef = u[offset : offset + width] * (1.0 if is_char else vectors_scale)
        offset += width
        W = numpy.zeros((2, width), dtype="f")
        bias = numpy.zeros((2,), dtype="f")
        W[pos], W[neg] = coef / 2, -coef / 2
        if i == 0:
            bias[pos], bias[neg] = b / 2, -b / 2
        # SparseLinear_v2 keeps W flat (class-major), Linear as (nO, nI).
        linear.set_param("W", linear.ops.asarray1f(W.ravel()) if is_char else linear.ops.asarray2f(W))
        linear.set_param("b", linear.ops.asarray1f(bias))
