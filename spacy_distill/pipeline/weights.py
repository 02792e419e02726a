"""Weights set at initialization, as ``[initialize.after_init]`` callbacks of
``spacy train``: copied from one pipeline's model into another's, or fitted on the
training docs (the character n-grams' idf).

spaCy's own ``[initialize] init_tok2vec`` loads pretrained weights into a
tok2vec layer only; this loads them into any named part (a ``ref``) of a
component's model whose layer tree matches, e.g. the student's sparse n-gram
block from an n-gram model trained first (``spacy-distill.NgramTextCat.v1``).
"""

from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

import spacy
from spacy.language import Language
from spacy.tokens import DocBin
from spacy.util import registry
from thinc.api import Model

from .char_ngrams import fit_char_idf


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


def _texts_of(path: Path, nlp: Language) -> Iterator[str]:
    """The texts of every DocBin at ``path`` (a .spacy file, or a folder searched recursively)."""
    files = [path] if path.is_file() else sorted(path.rglob("*.spacy"))
    if not files:
        raise ValueError(f"spacy-distill.char_ngram_idf.v1: no .spacy files at {path}")
    for file in files:
        for doc in DocBin().from_disk(file).get_docs(nlp.vocab):
            yield doc.text


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
        source = path if path is not None else nlp.config.get("paths", {}).get("train")
        where = f"spacy-distill.char_ngram_idf.v1 ({source}, {component})"
        if source is None:
            raise ValueError(f"{where}: no path, and the config has no [paths] train")
        if component not in nlp.pipe_names:
            raise ValueError(f"{where}: the pipeline has no {component!r} (it has {nlp.pipe_names})")
        layers = [node for node in nlp.get_pipe(component).model.walk() if node.name == "extract_char_ngrams" and node.has_param("idf")]
        if not layers:
            raise ValueError(f"{where}: the model has no extract_char_ngrams.v2 layer (CharNgramBOW.v2) to fit an idf for")
        for layer in layers:
            fit_char_idf(layer, _texts_of(Path(source), nlp))

    return char_ngram_idf
