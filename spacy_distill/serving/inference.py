"""What the server needs from a loaded spaCy pipeline, and nothing more.

This module deliberately depends only on ``spacy.load`` and on what any loaded
pipeline exposes (``doc.cats``, ``doc.tensor``, the transformer output in
``doc._.trf_data``, token vectors), so it serves the distilled student, a
spacy-transformers teacher or a stock baseline alike, and never imports the
training code.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy
import spacy
from spacy.language import Language
from spacy.tokens import Doc

POOLINGS = ("mean", "max")
# Vector sources, in the order they are tried.
SOURCE_TENSOR = "tensor"
SOURCE_TRANSFORMER = "transformer"
SOURCE_VECTORS = "vectors"
_PROBE_TEXT = "This is a short probe sentence, used to find the vector width."


@dataclass
class ModelInfo:
    """What the server reports about one loaded model.

    name (str): The name requests use to pick the model.
    source (str): The package name or path it was loaded from ("<object>" if
        it was passed in already loaded).
    meta (Dict[str, Any]): ``nlp.meta``.
    pipeline (List[str]): ``nlp.pipe_names``.
    labels (List[str]): Labels of the components that set ``doc.cats``.
    vector_source (Optional[str]): Where ``/encode`` takes vectors from, or None.
    vector_width (int): Width of the vectors ``/encode`` returns (0 if none).
    empty_result (Dict[str, Any]): The ``/classify`` result for texts without tokens.
    """

    name: str
    source: str
    meta: Dict[str, Any]
    pipeline: List[str]
    labels: List[str]
    vector_source: Optional[str] = None
    vector_width: int = 0
    empty_result: Dict[str, Any] = field(
        default_factory=lambda: {"cats": {}, "label": None, "score": None}
    )

    def to_dict(self) -> Dict[str, Any]:
        """The public description used by ``/status``.

        RETURNS (Dict[str, Any]): JSON-serialisable description.
        """
        return {
            "name": self.name,
            "source": self.source,
            "package": f"{self.meta.get('lang', '')}_{self.meta.get('name', '')}",
            "version": self.meta.get("version"),
            "spacy_version": self.meta.get("spacy_version"),
            "description": self.meta.get("description"),
            "lang": self.meta.get("lang"),
            "pipeline": self.pipeline,
            "labels": self.labels,
            "vector_source": self.vector_source,
            "vector_width": self.vector_width,
        }


def load_pipeline(source: Union[str, Path, Language]) -> Language:
    """Load a pipeline from a package name or path, or pass one through.

    source (Union[str, Path, Language]): Package name, path, or loaded pipeline.
    RETURNS (Language): The pipeline.
    """
    if isinstance(source, Language):
        return source
    return spacy.load(source)


def default_model_name(source: str) -> str:
    """Name for a model given without ``name=``.

    source (str): Package name or path.
    RETURNS (str): The package name, or for a path the name spaCy would give
        its package (``{lang}_{name}`` from its meta.json) if there is one,
        else the directory name.
    """
    path = Path(source)
    if path.exists():
        meta_path = path / "meta.json"
        if meta_path.exists():
            import srsly

            try:
                meta = srsly.read_json(meta_path)
                if meta.get("lang") and meta.get("name"):
                    return f"{meta['lang']}_{meta['name']}"
            except ValueError:
                pass
        return path.resolve().name
    return source


def pipeline_config(source: Union[str, Path]) -> Optional[Any]:
    """A pipeline's config, read without loading the pipeline (nor interpolating it).

    The server process never loads the models (their worker processes do):
    this is how it learns what a pipeline is made of (its components, whether
    it needs torch).

    source (Union[str, Path]): Package name or path.
    RETURNS (Optional[Config]): The config, or None if there is none to read.
    """
    from spacy.util import get_package_path, is_package, load_config

    path = Path(source)
    if not path.is_dir() and is_package(str(source)):
        package = get_package_path(str(source))
        path = next((p.parent for p in package.glob("*/config.cfg")), package)
    try:
        return load_config(path / "config.cfg", interpolate=False)
    except (OSError, ValueError):
        return None


def parse_model_spec(spec: str) -> "tuple[str, str]":
    """Split ``name=path`` (or a bare path/package) into name and source.

    spec (str): The command line spec.
    RETURNS (tuple[str, str]): Name and source.
    """
    if "=" in spec:
        name, source = spec.split("=", 1)
        name = name.strip()
        if not name or not source:
            raise ValueError(f"bad model spec {spec!r}: expected NAME=PATH or PATH")
        return name, source
    return default_model_name(spec), spec


def cat_labels(nlp: Language) -> List[str]:
    """Labels of the components that set ``doc.cats``.

    nlp (Language): The pipeline.
    RETURNS (List[str]): Labels, in component order, without duplicates.
    """
    labels: List[str] = []
    for name, pipe in nlp.pipeline:
        try:
            pipe_meta = nlp.get_pipe_meta(name)
            assigns, factory = list(pipe_meta.assigns), pipe_meta.factory
        except (KeyError, ValueError):
            assigns, factory = [], ""
        # Components that forgot to declare ``assigns`` still count if they look
        # like a text classifier.
        if "doc.cats" in assigns or "textcat" in factory or "textcat" in name:
            for label in getattr(pipe, "labels", ()) or ():
                if label not in labels:
                    labels.append(str(label))
    return labels


def _finite(value: float) -> float:
    value = float(value)
    # NaN/inf cannot go into JSON; a broken model must not turn into a 500.
    return value if math.isfinite(value) else 0.0


def classify_result(doc: Doc) -> Dict[str, Any]:
    """The ``/classify`` answer for one doc.

    doc (Doc): A processed doc.
    RETURNS (Dict[str, Any]): ``{"cats", "label", "score"}``; label and score
        are None if the pipeline set no categories.
    """
    cats = {str(label): _finite(score) for label, score in doc.cats.items()}
    if not cats:
        return {"cats": {}, "label": None, "score": None}
    label = max(cats, key=lambda k: cats[k])
    return {"cats": cats, "label": label, "score": cats[label]}


def _pool(rows: numpy.ndarray, pooling: str, width: int) -> numpy.ndarray:
    if rows.shape[0] == 0:
        return numpy.zeros((width,), dtype="float32")
    if pooling == "max":
        return rows.max(axis=0)
    return rows.mean(axis=0)


def _trf_token_rows(trf_data: Any) -> Optional[numpy.ndarray]:
    """One row per doc token from transformer output, or None if unusable.

    Handles both spacy-transformers' ``TransformerData`` (``model_output``
    with a padded ``last_hidden_state`` and an ``align`` Ragged mapping tokens
    to flattened wordpiece rows) and spacy-curated-transformers'
    ``DocTransformerOutput`` (``last_hidden_layer_state``, a Ragged with one
    group of piece rows per token). Each token gets the mean of its pieces;
    tokens without pieces (e.g. whitespace) are left out.
    """
    if trf_data is None:
        return None
    if hasattr(trf_data, "last_hidden_layer_state"):
        ragged = trf_data.last_hidden_layer_state
        data = numpy.asarray(_to_numpy(ragged.dataXd), dtype="float32")
        lengths = numpy.asarray(_to_numpy(ragged.lengths), dtype="int64")
    elif hasattr(trf_data, "model_output") and hasattr(trf_data, "align"):
        output = trf_data.model_output
        if "last_hidden_state" not in output:
            return None
        hidden = numpy.asarray(_to_numpy(output.last_hidden_state), dtype="float32")
        flat = hidden.reshape(-1, hidden.shape[-1])
        index = numpy.asarray(_to_numpy(trf_data.align.dataXd), dtype="int64").reshape(-1)
        lengths = numpy.asarray(_to_numpy(trf_data.align.lengths), dtype="int64")
        data = flat[index] if index.size else numpy.zeros((0, flat.shape[1]), dtype="float32")
    else:
        return None
    if data.ndim != 2:
        return None
    width = data.shape[1]
    rows = []
    start = 0
    for n in lengths.tolist():
        if n > 0:
            rows.append(data[start : start + n].mean(axis=0))
        start += n
    if not rows:
        return numpy.zeros((0, width), dtype="float32")
    return numpy.vstack(rows)


def _to_numpy(array: Any) -> Any:
    # cupy arrays (teacher on GPU) have .get(); numpy arrays pass through.
    return array.get() if hasattr(array, "get") and not isinstance(array, numpy.ndarray) else array


def _tensor_rows(doc: Doc) -> Optional[numpy.ndarray]:
    tensor = getattr(doc, "tensor", None)
    if tensor is None:
        return None
    tensor = numpy.asarray(_to_numpy(tensor))
    if tensor.ndim != 2 or tensor.shape[1] == 0 or tensor.shape[0] != len(doc):
        return None
    return tensor.astype("float32", copy=False)


def _vector_rows(doc: Doc) -> Optional[numpy.ndarray]:
    vectors = doc.vocab.vectors
    if vectors.shape[1] == 0 or (
        vectors.shape[0] == 0 and getattr(vectors, "mode", "") != "floret"
    ):
        return None
    if len(doc) == 0:
        return numpy.zeros((0, vectors.shape[1]), dtype="float32")
    return numpy.vstack([numpy.asarray(_to_numpy(t.vector), dtype="float32") for t in doc])


def _trf_rows(doc: Doc) -> Optional[numpy.ndarray]:
    if not Doc.has_extension("trf_data"):
        return None
    return _trf_token_rows(doc._.trf_data)


_ROW_GETTERS = {
    SOURCE_TENSOR: _tensor_rows,
    SOURCE_TRANSFORMER: _trf_rows,
    SOURCE_VECTORS: _vector_rows,
}


def find_vector_source(doc: Doc) -> "tuple[Optional[str], int]":
    """Pick where vectors come from, probing a non-empty processed doc.

    doc (Doc): A doc with at least one token, processed by the pipeline.
    RETURNS (tuple[Optional[str], int]): Source name (None if the model
        exposes no vectors) and vector width.
    """
    for source, getter in _ROW_GETTERS.items():
        rows = getter(doc)
        if rows is not None and rows.ndim == 2 and rows.shape[1] > 0:
            return source, int(rows.shape[1])
    return None, 0


def encode_doc(doc: Doc, source: str, width: int, pooling: str) -> List[float]:
    """Pool one doc into a fixed-length vector.

    doc (Doc): A processed doc.
    source (str): Vector source from ``find_vector_source``.
    width (int): Vector width from ``find_vector_source``.
    pooling (str): "mean" or "max".
    RETURNS (List[float]): The vector; zeros for a doc without rows.
    """
    rows = _ROW_GETTERS[source](doc)
    if rows is None or rows.ndim != 2 or rows.shape[1] != width:
        # E.g. an empty doc for which a component left doc.tensor unset.
        rows = numpy.zeros((0, width), dtype="float32")
    vector = numpy.nan_to_num(_pool(rows, pooling, width), nan=0.0, posinf=0.0, neginf=0.0)
    return vector.astype("float64").tolist()


def describe(name: str, source: str, nlp: Language) -> ModelInfo:
    """Describe a loaded pipeline, running it once on a probe text.

    The probe run also warms the model up, so the first real request does not
    pay for lazy initialisation.

    name (str): Model name.
    source (str): Where it was loaded from.
    nlp (Language): The pipeline.
    RETURNS (ModelInfo): The description.
    """
    probe = nlp(_PROBE_TEXT)
    vector_source, width = find_vector_source(probe)
    return ModelInfo(
        name=name,
        source=source,
        meta=dict(nlp.meta),
        pipeline=list(nlp.pipe_names),
        labels=cat_labels(nlp),
        vector_source=vector_source,
        vector_width=width,
        empty_result=empty_classify_result(nlp),
    )


def empty_classify_result(nlp: Language) -> Dict[str, Any]:
    """What ``/classify`` answers for a text without tokens.

    Many models cannot process a doc without tokens (pooling layers raise on
    zero-length sequences), so such texts never enter a batch: they get the
    model's own answer for an empty doc, computed once here, or no categories
    if the model raises on it.

    nlp (Language): The pipeline.
    RETURNS (Dict[str, Any]): The result for every empty text.
    """
    try:
        return classify_result(nlp(""))
    except Exception:  # noqa: BLE001 - any failure means "no answer for empty texts"
        return {"cats": {}, "label": None, "score": None}
