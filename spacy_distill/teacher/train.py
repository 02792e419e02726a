"""Train the frozen-encoder teacher: encode the train and dev docs once with the
pipeline's ``SentenceEncoder``, train its head on those vectors and keep the
epoch with the best dev macro-F (``scripts/train_teacher.py`` is the command).

Why not ``spacy train``: the encoder is frozen, so every epoch would run the
transformer over the same docs again (~3 min per epoch on 2 CPU cores); here it
runs once and the head's epochs take milliseconds.
"""

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy
import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import fix_random_seed, load_model_from_config, registry
from thinc.api import Config, Model

from spacy_distill.evaluation.scoring import score
from spacy_distill.pipeline.activations import PROB_EPS
from spacy_distill.progress import progress_bar


def read_gold(nlp: spacy.Language, path: Path) -> List[Doc]:
    """Docs with gold cats from a DocBin.

    nlp (spacy.Language): For the vocab.
    path (Path): A ``.spacy`` file.
    RETURNS (List[Doc]): The docs that have cats.
    """
    docs = [d for d in DocBin().from_disk(path).get_docs(nlp.vocab) if d.cats]
    if not docs:
        raise ValueError(f"{path}: no docs with gold cats")
    return docs


def encode(encoder: Model, docs: List[Doc], batch_size: int, cache: Optional[Path], desc: str) -> numpy.ndarray:
    """Encoder outputs for the docs, in order; optionally cached on disk, keyed by
    the encoder's settings and the texts (an ablation re-run skips the transformer).

    encoder (Model): The initialized ``SentenceEncoder``.
    docs (List[Doc]): The docs.
    batch_size (int): Docs per encoder call (sorted by length inside).
    cache (Optional[Path]): Folder for cached arrays, or None.
    desc (str): Progress bar label.
    RETURNS (numpy.ndarray): One row per doc.
    """
    key = hashlib.sha256(json.dumps(encoder.attrs, sort_keys=True, default=str).encode())
    for doc in docs:
        key.update(doc.text.encode("utf8") + b"\0")
    path = cache / f"{desc}-{key.hexdigest()[:16]}.npy" if cache else None
    if path is not None and path.exists():
        return numpy.load(path)
    rows = []
    bar = progress_bar(len(docs), f"encode {desc}", unit="doc")
    for start in range(0, len(docs), batch_size):
        batch = docs[start : start + batch_size]
        rows.append(encoder.ops.to_numpy(encoder.predict(batch)))
        bar.update(len(batch))
    bar.close()
    X = numpy.concatenate(rows) if rows else numpy.zeros((0, encoder.get_dim("nO")), dtype="f")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        numpy.save(path, X)
    return X


def targets(docs: List[Doc], labels: List[str]) -> numpy.ndarray:
    """One-hot gold rows in the order of ``labels``."""
    return numpy.asarray([[d.cats.get(k, 0.0) for k in labels] for d in docs], dtype="f")


def dev_macro_f(head: Model, X: numpy.ndarray, gold: List[Tuple[str, str]], labels: List[str]) -> float:
    """Mean over languages of the dev macro-F (the measure `evaluate` reports)."""
    return dev_scores(head, X, gold, labels)["macro_f"]


def dev_scores(head: Model, X: numpy.ndarray, gold: List[Tuple[str, str]], labels: List[str]) -> Dict[str, float]:
    """The head's dev macro-F (mean over languages) and mean log-loss of the gold labels.

    head (Model): The classifier head (vectors → probabilities).
    X (numpy.ndarray): Dev vectors.
    gold (List[Tuple[str, str]]): (lang, label) per dev doc.
    labels (List[str]): Labels, in column order.
    RETURNS (Dict[str, float]): ``macro_f`` (0-100) and ``loss`` (nats per doc).
    """
    P = head.ops.to_numpy(head.predict(X))
    pred = [labels[i] for i in P.argmax(axis=1)]
    macro_f = score(gold, pred, sorted({lang for lang, _ in gold}), labels)["mean"]["macro_f"]
    p_gold = P[numpy.arange(len(gold)), [labels.index(label) for _, label in gold]]
    loss = float(-numpy.log(numpy.clip(p_gold, PROB_EPS, 1.0)).mean()) if len(gold) else 0.0
    return {"macro_f": macro_f, "loss": loss}


# How each `[head_training] select` measure ranks epochs: the larger key is better.
SELECT_KEYS = {"macro_f": lambda s: s["macro_f"], "loss": lambda s: -s["loss"]}


def train_head(head: Model, X: numpy.ndarray, Y: numpy.ndarray, X_dev: numpy.ndarray, dev_gold: List[Tuple[str, str]], labels: List[str], settings: Dict[str, Any]) -> Dict[str, Any]:
    """Train the head with softmax cross-entropy; keep the best epoch on dev.

    The epoch is chosen by ``settings["select"]``: ``"macro_f"`` (the dev
    macro-F, the default) or ``"loss"`` (the dev log-loss). Macro-F over 250
    docs per language moves by a point between neighbouring epochs, so its
    maximum over hundreds of epochs is partly noise; the log-loss is a smooth
    function of every probability, not only of the decisions near 0.5.

    head (Model): The classifier head (vectors → probabilities), initialized.
    X (numpy.ndarray): Train vectors.
    Y (numpy.ndarray): One-hot train targets.
    X_dev (numpy.ndarray): Dev vectors.
    dev_gold (List[Tuple[str, str]]): (lang, label) per dev doc.
    labels (List[str]): Labels, in column order.
    settings (Dict[str, Any]): The config's ``[head_training]`` section.
    RETURNS (Dict[str, Any]): Dev macro-F and loss per epoch, best epoch and its scores.
    """
    select = str(settings.get("select", "macro_f"))
    if select not in SELECT_KEYS:
        raise ValueError(f"[head_training] select must be one of {sorted(SELECT_KEYS)}, got {select!r}")
    rank = SELECT_KEYS[select]
    optimizer = registry.resolve({"o": settings["optimizer"]})["o"]
    rng = numpy.random.RandomState(int(settings["seed"]))
    batch_size = int(settings["batch_size"])
    best: Tuple[Optional[Dict[str, float]], int, bytes] = (None, 0, head.to_bytes())
    history: List[Dict[str, float]] = []
    for epoch in range(1, int(settings["max_epochs"]) + 1):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            idx = order[start : start + batch_size]
            P, backprop = head.begin_update(head.ops.asarray2f(X[idx]))
            # Softmax's backprop takes the gradient w.r.t. its logits: P - Y for cross-entropy.
            backprop((P - head.ops.asarray2f(Y[idx])) / len(idx))
            head.finish_update(optimizer)
        with head.use_params(optimizer.averages) if optimizer.averages else contextlib.nullcontext():
            scores = dev_scores(head, X_dev, dev_gold, labels)
            if best[0] is None or rank(scores) > rank(best[0]):
                best = (scores, epoch, head.to_bytes())
        history.append(scores)
        if epoch - best[1] >= int(settings["patience"]):
            break
    head.from_bytes(best[2])
    chosen = best[0] or {"macro_f": -1.0, "loss": float("nan")}
    return {
        "select": select,
        "dev_macro_f_by_epoch": [round(s["macro_f"], 3) for s in history],
        "dev_loss_by_epoch": [round(s["loss"], 5) for s in history],
        "best_epoch": best[1],
        "best_dev_macro_f": chosen["macro_f"],
        "best_dev_loss": chosen["loss"],
    }


def fit_teacher(config: Config, cache: Optional[Path], gpu_id: int = -1) -> Tuple[Language, Dict[str, Any]]:
    """Build the teacher from its config, encode its train and dev docs (cached),
    train the head, keeping the best dev epoch, and, when the config's
    ``[finetune]`` section asks for it, fine-tune the top encoder layers with the
    head on cached states (``spacy_distill.teacher.finetune``).

    config (Config): The teacher config, overrides applied, not interpolated.
    cache (Optional[Path]): Encoder-output cache folder.
    gpu_id (int): -1 for CPU; with a GPU, ``[finetune] top_layers_gpu`` layers train.
    RETURNS (Tuple[Language, Dict[str, Any]]): The trained pipeline and the training report.
    """
    resolved = config.interpolate()
    settings = resolved["head_training"]
    fix_random_seed(int(settings["seed"]))
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    start = time.perf_counter()
    paths = resolved["paths"]
    train_docs = read_gold(nlp, Path(paths["train"]))
    dev_docs = read_gold(nlp, Path(paths["dev"]))
    textcat = nlp.get_pipe("textcat")
    examples = [Example(nlp.make_doc(d.text), d) for d in train_docs[:8]]
    nlp.initialize(lambda: examples)
    labels = list(textcat.labels)
    encoder = textcat.model.get_ref("encoder")
    Y = targets(train_docs, labels)
    dev_gold = [(d.user_data.get("lang", "xx"), max(d.cats, key=d.cats.get)) for d in dev_docs]
    ft_settings = resolved.get("finetune")
    top_layers = 0
    if ft_settings:
        from spacy_distill.teacher.finetune import encode_states, encoder_layers, resolve_top_layers

        transformer = encoder.shims[0]._hfmodel.transformer
        top_layers = resolve_top_layers(ft_settings, len(encoder_layers(transformer)), gpu_id)
    if top_layers:
        import torch

        transformer.to(torch.device(f"cuda:{gpu_id}" if gpu_id >= 0 else "cpu"))
        # One pass gives both the states entering the first trained layer and the
        # pooled output the frozen head trains on first.
        first = len(encoder_layers(transformer)) - top_layers
        train_states, X = encode_states(encoder, train_docs, first, cache, "train")
        dev_states, X_dev = encode_states(encoder, dev_docs, first, cache, "dev")
    else:
        batch_size = int(settings["encode_batch_size"])
        X = encode(encoder, train_docs, batch_size, cache, "train")
        X_dev = encode(encoder, dev_docs, batch_size, cache, "dev")
    encode_seconds = time.perf_counter() - start
    report = train_head(textcat.model.get_ref("head"), X, Y, X_dev, dev_gold, labels, settings)
    if top_layers:
        from spacy_distill.teacher.finetune import finetune

        report["finetune"] = finetune(textcat.model, train_states, Y, dev_states, dev_gold, labels, ft_settings, top_layers, gpu_id)
    report.update(n_train=len(train_docs), n_dev=len(dev_docs), encode_seconds=round(encode_seconds, 1), seconds=round(time.perf_counter() - start, 1))
    return nlp, report


__all__ = ["dev_scores", "encode", "fit_teacher", "read_gold", "train_head"]
