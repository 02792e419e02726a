"""Fine-tune the teacher's top encoder layers, with its head, on cached states.

The frozen-encoder teacher stops near 80 mean macro-F: its head only sees the
pooled output of an encoder that never saw the task. A full fine-tune runs all
12 layers forward and backward on every step, which 2 CPU cores cannot afford.
Here the bottom ``L - k`` layers stay frozen, so their output (the hidden
states entering layer ``L - k``) is computed once per doc, in the same pass
that gives the frozen head its pooled vectors, and cached; each training step
then runs only the top ``k`` layers, pooling and the head. With a GPU
(``gpu_id >= 0``) the same code trains every layer (``top_layers_gpu = -1``):
the cached states are then the embeddings' output, which stay frozen.

The trained layers are the pipeline's own transformer modules, trained in
place, and the head's weights are copied back into the thinc head: the result
is the same ``SentenceEncoder.v1`` + ``EncoderTextCat.v1`` pipeline that
``spacy.load``, ``label`` and ``serve`` already use. Nothing is registered
here; the settings live in the teacher config's ``[finetune]`` section.

Checkpoints are chosen on the teacher dev set by its mean log-loss (every
doc's probability counts, not only which side of 0.5 it falls on), a smoother
signal than dev macro-F, which swings by a point between neighbouring epochs
on 1,500 docs; macro-F is reported beside it.

Needs torch (the teacher extra); the student never imports this module.
"""

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy
from spacy.tokens import Doc
from thinc.api import Model

from spacy_distill.evaluation.scoring import score
from spacy_distill.pipeline.activations import softmax
from spacy_distill.progress import progress_bar
from spacy_distill.teacher.encoder import length_batches, pad_batch, pool

SELECT = ("calibrated_loss", "loss", "macro_f")
# Temperatures tried for the calibrated dev loss (log-spaced; the calibrate step fits
# the teacher's scale afterwards, so over-confidence alone should not rule a checkpoint out).
TEMPERATURES = numpy.exp(numpy.linspace(numpy.log(0.25), numpy.log(4.0), 41))


def encoder_layers(transformer: Any) -> Any:
    """The stack of transformer layers of a BERT-family encoder (BERT, XLM-R, E5, MiniLM).

    transformer (transformers.PreTrainedModel): The encoder.
    RETURNS (torch.nn.ModuleList): Its layers, bottom first.
    """
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(
            f"finetune: {type(transformer).__name__} has no encoder.layer stack; top-layer "
            "fine-tuning supports BERT-family encoders (BERT, XLM-R, E5, MiniLM)"
        )
    return layers


def resolve_top_layers(settings: Dict[str, Any], n_layers: int, gpu_id: int) -> int:
    """How many top layers train: ``top_layers`` on CPU, ``top_layers_gpu`` with a GPU; -1 = all.

    settings (Dict[str, Any]): The config's ``[finetune]`` section.
    n_layers (int): Layers of the encoder.
    gpu_id (int): -1 for CPU.
    RETURNS (int): 0 (frozen encoder) to ``n_layers``.
    """
    k = int(settings["top_layers_gpu"] if gpu_id >= 0 else settings["top_layers"])
    k = n_layers if k < 0 else k
    if k > n_layers:
        raise ValueError(f"finetune: top_layers = {k}, but the encoder has {n_layers} layers")
    return k


class States:
    """Hidden states of a list of docs at one layer: one (pieces, width) array per doc.

    Stored as one concatenated array and row offsets, so they cache as two ``.npy`` files.
    """

    def __init__(self, rows: numpy.ndarray, offsets: numpy.ndarray) -> None:
        self.rows = rows
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> List[int]:
        """Pieces per doc."""
        return [int(n) for n in numpy.diff(self.offsets)]

    def get(self, i: int) -> numpy.ndarray:
        """The states of doc ``i``."""
        return self.rows[self.offsets[i] : self.offsets[i + 1]]


def encode_states(encoder: Model, docs: List[Doc], layer: int, cache: Optional[Path], desc: str) -> Tuple[States, numpy.ndarray]:
    """One pass of the frozen encoder over the docs: the hidden states entering
    layer ``layer`` (0 = the embeddings' output) and the pooled output vectors
    (exactly what ``SentenceEncoder`` returns), cached on disk keyed by the
    encoder's settings, the layer and the texts.

    encoder (Model): The initialized ``SentenceEncoder``.
    docs (List[Doc]): The docs.
    layer (int): Index into the encoder's hidden states.
    cache (Optional[Path]): Folder for the cached arrays, or None.
    desc (str): Progress bar label and cache file prefix.
    RETURNS (Tuple[States, numpy.ndarray]): The states, and one pooled row per doc.
    """
    import torch

    key = hashlib.sha256(json.dumps(encoder.attrs, sort_keys=True, default=str).encode())
    for doc in docs:
        key.update(doc.text.encode("utf8") + b"\0")
    stem = f"{desc}-states-{key.hexdigest()[:16]}"
    if cache is not None:
        cached = _read_cached(encoder, cache, stem, layer)
        if cached is not None:
            return cached
    hf = encoder.shims[0]._hfmodel
    transformer = hf.transformer
    transformer.eval()
    attrs = encoder.attrs
    ids = hf.tokenizer([attrs["prefix"] + d.text for d in docs], truncation=True, max_length=attrs["max_length"])["input_ids"]
    device = next(transformer.parameters()).device
    per_doc: List[Optional[numpy.ndarray]] = [None] * len(docs)
    pooled = numpy.zeros((len(docs), transformer.config.hidden_size), dtype="f")
    bar = progress_bar(len(docs), f"encode {desc}", unit="doc")
    for batch in length_batches([len(x) for x in ids], attrs["max_batch_tokens"]):
        input_ids, mask = pad_batch([ids[i] for i in batch], hf.tokenizer.pad_token_id or 0, device)
        with torch.no_grad():
            out = transformer(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            vectors = pool(out.last_hidden_state, mask, attrs["pooling"], attrs["normalize"])
        states = out.hidden_states[layer].float().cpu().numpy()
        pooled[batch] = vectors.float().cpu().numpy()
        for row, i in enumerate(batch):
            per_doc[i] = states[row, : len(ids[i])]
        bar.update(len(batch))
    bar.close()
    offsets = numpy.cumsum([0] + [len(x) for x in ids]).astype("int64")
    width = transformer.config.hidden_size
    rows = numpy.concatenate(per_doc) if docs else numpy.zeros((0, width), dtype="f")
    result = States(rows.astype("f"), offsets)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for name, array in (("rows", result.rows), ("offsets", offsets), ("pooled", pooled)):
            numpy.save(cache / f"{stem}-L{layer}.{name}.npy", array)
    return result, pooled



def _read_cached(encoder: Model, cache: Path, stem: str, layer: int) -> Optional[Tuple[States, numpy.ndarray]]:
    """Cached states at ``layer``, or derived from the highest cached layer below it
    by running the frozen layers in between (a fraction of a full pass, so that
    measuring several k costs one encode); None if neither is cached."""
    import torch

    found = sorted(int(p.name[len(stem) + 2 : -len(".rows.npy")]) for p in cache.glob(f"{stem}-L*.rows.npy"))
    below = [i for i in found if i <= layer]
    if not below:
        return None
    i = below[-1]
    states = States(numpy.load(cache / f"{stem}-L{i}.rows.npy"), numpy.load(cache / f"{stem}-L{i}.offsets.npy"))
    pooled = numpy.load(cache / f"{stem}-L{i}.pooled.npy")
    if i == layer:
        return states, pooled
    transformer = encoder.shims[0]._hfmodel.transformer
    transformer.eval()
    device = next(transformer.parameters()).device
    rows = numpy.zeros_like(states.rows)
    with torch.no_grad():
        for batch in length_batches(states.lengths(), encoder.attrs["max_batch_tokens"]):
            hidden, mask = pad_states(states, batch, device)
            out = run_layers(transformer, i, hidden, mask, stop=layer).float().cpu().numpy()
            for row, d in enumerate(batch):
                rows[states.offsets[d] : states.offsets[d + 1]] = out[row, : states.offsets[d + 1] - states.offsets[d]]
    derived = States(rows, states.offsets)
    for name, array in (("rows", derived.rows), ("offsets", derived.offsets), ("pooled", pooled)):
        numpy.save(cache / f"{stem}-L{layer}.{name}.npy", array)
    return derived, pooled


def pad_states(states: States, batch: List[int], device: Any) -> Tuple[Any, Any]:
    """The states of some docs, zero-padded, and their attention mask."""
    import torch

    n = max(int(states.offsets[i + 1] - states.offsets[i]) for i in batch)
    width = states.rows.shape[1]
    hidden = numpy.zeros((len(batch), n, width), dtype="f")
    mask = numpy.zeros((len(batch), n), dtype="int64")
    for row, i in enumerate(batch):
        x = states.get(i)
        hidden[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return torch.from_numpy(hidden).to(device), torch.from_numpy(mask).to(device)


def run_layers(transformer: Any, first: int, hidden: Any, mask: Any, stop: Optional[int] = None) -> Any:
    """Run layers ``first`` to ``stop`` (default: the top) on the states entering layer ``first``.

    transformer (transformers.PreTrainedModel): The encoder.
    first (int): Index of the first layer to run.
    hidden (torch.Tensor): (rows, pieces, width) states.
    mask (torch.Tensor): (rows, pieces) attention mask.
    stop (Optional[int]): Index of the first layer not to run; None = all to the top.
    RETURNS (torch.Tensor): The states entering layer ``stop`` (with None: the last
        hidden states, as the full forward pass gives them).
    """
    # The additive (rows, 1, 1, pieces) mask BERT-family layers take (eager and SDPA).
    extended = transformer.get_extended_attention_mask(mask, tuple(mask.shape))
    for layer in encoder_layers(transformer)[first:stop]:
        hidden = layer(hidden, attention_mask=extended)[0]
    return hidden


def torch_head(head: Model) -> Any:
    """A torch copy of the thinc head (Relu, Dropout, Softmax layers), giving logits.

    head (Model): The ``EncoderTextCat`` head, initialized.
    RETURNS (torch.nn.Sequential): Linear (+ ReLU + Dropout) layers with the head's weights.
    """
    import torch

    modules = []
    for layer in head.walk(order="dfs_pre"):
        if layer.name in ("relu", "softmax"):
            W, b = layer.get_param("W"), layer.get_param("b")
            linear = torch.nn.Linear(W.shape[1], W.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(head.ops.to_numpy(W).copy()))
                linear.bias.copy_(torch.from_numpy(head.ops.to_numpy(b).copy()))
            modules.append(linear)
            if layer.name == "relu":
                modules.append(torch.nn.ReLU())
        elif layer.name == "dropout":
            modules.append(torch.nn.Dropout(float(layer.attrs["dropout_rate"])))
        elif layer.param_names:
            raise ValueError(f"finetune: cannot copy head layer {layer.name!r} to torch")
    return torch.nn.Sequential(*modules)


def copy_head_back(module: Any, head: Model) -> None:
    """Write the trained torch head's weights into the thinc head, in layer order."""
    linears = [m for m in module if hasattr(m, "weight")]
    dense = [layer for layer in head.walk(order="dfs_pre") if layer.name in ("relu", "softmax")]
    for linear, layer in zip(linears, dense):
        layer.set_param("W", head.ops.asarray2f(linear.weight.detach().cpu().numpy()))
        layer.set_param("b", head.ops.asarray1f(linear.bias.detach().cpu().numpy()))


def train_batches(lengths: List[int], batch_size: int, rng: numpy.random.RandomState) -> List[List[int]]:
    """Shuffled batches of docs of similar length (less padding), in shuffled order.

    lengths (List[int]): Pieces per doc.
    batch_size (int): Docs per batch.
    rng (numpy.random.RandomState): The seeded generator.
    RETURNS (List[List[int]]): Index batches covering every doc once.
    """
    order = rng.permutation(len(lengths))
    # Sort within windows of 50 batches: similar lengths, yet a different mix every epoch.
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend([int(i) for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def nll(probs: numpy.ndarray, y: numpy.ndarray) -> float:
    """Mean negative log-likelihood of the gold class."""
    return float(-numpy.log(numpy.clip(probs[numpy.arange(len(y)), y], 1e-12, 1.0)).mean())


def calibrated_nll(probs: numpy.ndarray, y: numpy.ndarray) -> float:
    """The lowest mean NLL over :data:`TEMPERATURES` (softmax of ``log p / T``)."""
    logits = numpy.log(numpy.clip(probs, 1e-12, 1.0))
    best = float("inf")
    for t in TEMPERATURES:
        # t is a numpy float64, so float32 probabilities are scored in float64 (as they always were).
        best = min(best, nll(softmax(logits, temperature=t), y))
    return best


def predict_states(transformer: Any, first: int, head: Any, states: States, attrs: Dict[str, Any], device: Any) -> numpy.ndarray:
    """Class probabilities for cached states (eval mode, no gradients)."""
    import torch

    probs = numpy.zeros((len(states), [m for m in head if hasattr(m, "out_features")][-1].out_features), dtype="f")
    with torch.no_grad():
        for batch in length_batches(states.lengths(), attrs["max_batch_tokens"]):
            hidden, mask = pad_states(states, batch, device)
            vectors = pool(run_layers(transformer, first, hidden, mask), mask, attrs["pooling"], attrs["normalize"])
            probs[batch] = torch.softmax(head(vectors), dim=-1).float().cpu().numpy()
    return probs


def finetune(
    textcat_model: Model,
    train: States,
    Y: numpy.ndarray,
    dev: States,
    dev_gold: List[Tuple[str, str]],
    labels: List[str],
    settings: Dict[str, Any],
    top_layers: int,
    gpu_id: int = -1,
) -> Dict[str, Any]:
    """Train the top ``top_layers`` layers and the head with cross-entropy on
    gold labels; evaluate on dev every ``eval_frequency`` steps and at the end
    of each epoch; keep the checkpoint with the best dev ``select`` measure.

    textcat_model (Model): The ``EncoderTextCat`` model, head already trained frozen.
    train (States): Train states entering the first trained layer.
    Y (numpy.ndarray): One-hot train targets, in label order.
    dev (States): Dev states, same layer.
    dev_gold (List[Tuple[str, str]]): (lang, label) per dev doc.
    labels (List[str]): Labels, in column order.
    settings (Dict[str, Any]): The config's ``[finetune]`` section.
    top_layers (int): Layers to train (from :func:`resolve_top_layers`).
    gpu_id (int): -1 for CPU, else the CUDA device.
    RETURNS (Dict[str, Any]): Dev measures per evaluation, the chosen one, seconds.
    """
    import torch

    if settings["select"] not in SELECT:
        raise ValueError(f"finetune: select must be one of {SELECT}, got {settings['select']!r}")
    start_time = time.perf_counter()
    encoder = textcat_model.get_ref("encoder")
    attrs = encoder.attrs
    transformer = encoder.shims[0]._hfmodel.transformer
    layers = encoder_layers(transformer)
    first = len(layers) - top_layers
    device = torch.device(f"cuda:{gpu_id}" if gpu_id >= 0 else "cpu")
    transformer.to(device)
    seed = int(settings["seed"])
    torch.manual_seed(seed)
    rng = numpy.random.RandomState(seed)
    head = torch_head(textcat_model.get_ref("head")).to(device)
    for p in transformer.parameters():
        p.requires_grad_(False)
    trained = list(layers[first:])
    layer_params = [p for layer in trained for p in layer.parameters()]
    for p in layer_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [
            {"params": layer_params, "lr": float(settings["layer_learn_rate"])},
            {"params": list(head.parameters()), "lr": float(settings["head_learn_rate"])},
        ],
        weight_decay=float(settings["weight_decay"]),
    )
    batch_size = int(settings["batch_size"])
    epochs = int(settings["epochs"])
    per_epoch = -(-len(train) // batch_size)
    total = epochs * per_epoch
    warmup = max(1, int(float(settings["warmup"]) * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    Y_t = torch.from_numpy(numpy.asarray(Y, dtype="f")).to(device)
    dev_y = numpy.asarray([labels.index(label) for _, label in dev_gold])
    lengths = train.lengths()
    evaluations: List[Dict[str, Any]] = []
    best: Dict[str, Any] = {}
    best_weights: Tuple[Any, Any] = (None, None)
    select = settings["select"]
    train_losses: List[float] = []

    def evaluate(step: int, epoch: float) -> None:
        nonlocal best, best_weights
        for module in trained + [head]:
            module.eval()
        probs = predict_states(transformer, first, head, dev, attrs, device)
        loss = nll(probs, dev_y)
        calibrated = calibrated_nll(probs, dev_y)
        pred = [labels[i] for i in probs.argmax(axis=1)]
        macro_f = score(dev_gold, pred, sorted({lang for lang, _ in dev_gold}), labels)["mean"]["macro_f"]
        row = {"step": step, "epoch": round(epoch, 3), "train_loss": round(float(numpy.mean(train_losses)), 5) if train_losses else None,
               "dev_loss": round(loss, 5), "dev_calibrated_loss": round(calibrated, 5), "dev_macro_f": round(macro_f, 3)}
        train_losses.clear()
        evaluations.append(row)
        measure = {"calibrated_loss": -calibrated, "loss": -loss, "macro_f": macro_f}[select]
        if not best or measure > best["measure"]:
            best = {**row, "dev_loss": loss, "dev_calibrated_loss": calibrated, "dev_macro_f": macro_f, "measure": measure}
            best_weights = ([copy.deepcopy(layer.state_dict()) for layer in trained], copy.deepcopy(head.state_dict()))
        for module in trained + [head]:
            module.train()

    # Step 0 is the frozen teacher itself: fine-tuning is kept only if dev says it helps.
    evaluate(0, 0.0)
    eval_frequency = int(settings["eval_frequency"])
    step = 0
    bar = progress_bar(total, f"fine-tune top {top_layers} layers", unit="step")
    for epoch in range(epochs):
        for batch in train_batches(lengths, batch_size, rng):
            hidden, mask = pad_states(train, batch, device)
            vectors = pool(run_layers(transformer, first, hidden, mask), mask, attrs["pooling"], attrs["normalize"])
            logits = head(vectors)
            loss = -(torch.log_softmax(logits, dim=-1) * Y_t[batch]).sum(dim=-1).mean()
            if not torch.isfinite(loss):
                raise ValueError(f"finetune: loss is {loss.item()} at step {step + 1}")
            train_losses.append(float(loss.item()))
            optimizer.zero_grad()
            loss.backward()
            if float(settings["grad_clip"]) > 0:
                torch.nn.utils.clip_grad_norm_(layer_params + list(head.parameters()), float(settings["grad_clip"]))
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            # Epoch ends are evaluated below, once.
            if step % eval_frequency == 0 and step % per_epoch != 0:
                evaluate(step, step / per_epoch)
        evaluate(step, float(epoch + 1))
    bar.close()
    layer_weights, head_weights = best_weights
    for layer, weights in zip(trained, layer_weights):
        layer.load_state_dict(weights)
    head.load_state_dict(head_weights)
    copy_head_back(head, textcat_model.get_ref("head"))
    for p in transformer.parameters():
        p.requires_grad_(False)
    transformer.eval()
    transformer.to(torch.device("cpu"))
    return {
        "top_layers": top_layers,
        "first_trained_layer": first,
        "steps": step,
        "select": select,
        "evaluations": evaluations,
        "best": best,
        "seconds": round(time.perf_counter() - start_time, 1),
    }


__all__ = ["States", "encode_states", "encoder_layers", "finetune", "resolve_top_layers", "run_layers", "torch_head"]
