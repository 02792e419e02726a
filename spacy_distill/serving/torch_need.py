"""Whether a model's worker process may import torch, decided from its config.

A torch-free student is served with torch blocked (thinc imports torch whenever
it is installed), so without torch, scikit-learn or scipy in memory; a pipeline
whose config names torch-backed code (a transformer teacher) gets a child that
allows it (``torch_needed``). A lean child whose pipeline imports torch all the
same (third-party code the config does not reveal) reports that ``ImportError``
(``_imports_torch``) and is started again with torch.
"""

from typing import Any, Dict, List, Optional

# Packages whose registered functions and factories need torch.
TORCH_PACKAGES = ("torch", "spacy_transformers", "spacy_curated_transformers")
# This package's own torch-backed layers (the teacher's encoders; the ONNX
# encoder runs on ONNX Runtime alone). Their module also holds the ONNX one,
# so they are named one by one rather than by module.
TORCH_NAMES = ("spacy-distill.SentenceEncoder.v1", "spacy-distill.QuantizedSentenceEncoder.v1")
# Entry point groups that hold registered functions a config may name.
_REGISTRY_GROUPS = ("spacy_factories", "spacy_architectures", "thinc_layers", "spacy_misc")


def _config_names(config: Any) -> List[str]:
    """Every component factory and registered function a pipeline config names."""
    names: List[str] = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if (key == "factory" or key.startswith("@")) and isinstance(value, str):
                    names.append(value)
                stack.append(value)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return names


def _torch_entry_points() -> Dict[str, List[Any]]:
    """Per entry point group, the entry points provided by torch-backed packages."""
    from importlib.metadata import entry_points

    found: Dict[str, List[Any]] = {}
    for group in _REGISTRY_GROUPS:
        for entry_point in entry_points(group=group):
            if entry_point.value.split(".", 1)[0].split(":", 1)[0] in TORCH_PACKAGES:
                found.setdefault(group, []).append(entry_point)
    return found


def torch_needed(source: str) -> bool:
    """Whether a pipeline's config names code that needs torch.

    Decided from the config alone, before any child starts: a component
    factory or registered function of a torch-backed package (found by the
    entry point that provides it), one of this package's torch-backed layers,
    or one of thinc's PyTorch wrappers.

    source (str): Package name or path of the pipeline.
    RETURNS (bool): True if it needs torch; False if not, or if its config
        cannot be read (the load itself will say why).
    """
    from .inference import pipeline_config

    config = pipeline_config(source)
    if config is None:
        return False
    provided = {ep.name for eps in _torch_entry_points().values() for ep in eps}
    return any(
        name in provided or name in TORCH_NAMES or "PyTorch" in name
        for name in _config_names(config)
    )


def _imports_torch(err: BaseException) -> bool:
    """Whether a failed load failed on importing torch (the exception, or one it came from)."""
    seen: Optional[BaseException] = err
    for _ in range(20):
        if seen is None:
            return False
        name = getattr(seen, "name", None) if isinstance(seen, ImportError) else None
        if name is not None and name.split(".", 1)[0] == "torch":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _load_factories_without_torch() -> None:
    """Load the component factories of every torch-free package, and only those.

    spaCy imports every ``spacy_factories`` entry point when it creates a
    pipeline; with torch blocked, a torch-backed package's import fails and
    would fail every load. So this child imports the others' entry points
    itself and turns that one registry's entry point scan off: no other
    registry, and no other process, is touched.
    """
    from importlib.metadata import entry_points

    from spacy.util import registry

    skipped = {ep.name for ep in _torch_entry_points().get("spacy_factories", [])}
    for entry_point in entry_points(group="spacy_factories"):
        if entry_point.name not in skipped:
            entry_point.load()
    factories = getattr(registry, "_entry_point_factories", None)
    if factories is not None:
        factories.entry_points = False
