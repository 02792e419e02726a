"""A frozen sentence-encoder teacher: a Hugging Face encoder, used the way it was
trained (E5: a ``"query: "`` prefix, mean pooling over the attention mask, L2
normalisation), with a small trained head on top.

Measured on the project's splits, multilingual-e5-small used this way with a
logistic-regression head beat the same model fine-tuned through
spacy-transformers on 2 CPU cores (80.3 vs 78.9 mean test macro-F): the
fine-tuned textcat pools over spaCy tokens without the prefix E5 expects, and
the few steps that 2 cores afford barely move it. The encoder here never
changes, so its features can be computed once and the head trained on them in
seconds (``scripts/train_teacher.py``).

Needs torch and transformers (the teacher extra); the student never imports
this module. Weights, config and tokenizer are serialized with the pipeline
through spacy-transformers' ``HFShim``, so ``spacy.load`` needs neither the
original folder nor the hub.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, Relu, Softmax, chain
from thinc.types import Floats2d

POOLINGS = ("mean", "cls")


@registry.layers("spacy-distill.SentenceEncoder.v1")
def SentenceEncoder(
    name: str,
    prefix: str = "query: ",
    pooling: str = "mean",
    normalize: bool = True,
    max_length: int = 256,
    max_batch_tokens: int = 8192,
    tokenizer_config: Optional[Dict] = None,
    transformer_config: Optional[Dict] = None,
) -> Model[List[Doc], Floats2d]:
    """A frozen transformer that maps each doc to one vector.

    The texts of a batch are sorted by length and cut into sub-batches of at
    most ``max_batch_tokens`` padded pieces, so short reviews are not padded
    to the longest one (on CPU, padding is paid in full).

    name (str): A Hugging Face model name or local folder, loaded at
        initialization (not when a saved pipeline is loaded).
    prefix (str): Prepended to every text ("query: " for E5 models; "" for
        models trained without one).
    pooling (str): "mean" (over the attention mask) or "cls" (first piece).
    normalize (bool): L2-normalise the vectors.
    max_length (int): Pieces per text, including the prefix and special
        pieces; longer texts are truncated.
    max_batch_tokens (int): Padded pieces per forward pass.
    tokenizer_config (Dict): Keyword arguments for ``AutoTokenizer.from_pretrained``.
    transformer_config (Dict): Keyword arguments for ``AutoConfig.from_pretrained``.
    RETURNS (Model[List[Doc], Floats2d]): One row per doc, width = the
        transformer's hidden size.
    """
    from spacy_transformers.data_classes import HFObjects
    from spacy_transformers.layers.hf_shim import HFShim

    attrs = encoder_attrs("SentenceEncoder", name, prefix, pooling, normalize, max_length, max_batch_tokens)
    shim = HFShim(HFObjects(None, None, None, dict(tokenizer_config or {}), dict(transformer_config or {})))
    return Model("sentence_encoder", encoder_forward, init=encoder_init, shims=[shim], dims={"nO": None}, attrs=attrs)


def encoder_attrs(
    layer: str, name: str, prefix: str, pooling: str, normalize: bool, max_length: int, max_batch_tokens: int
) -> Dict[str, Any]:
    """The settings every sentence-encoder layer shares, checked, as the layer's attrs.

    The compressed encoders (``teacher/encoders/``) take the same settings and
    read the same attrs in :func:`encode_in_batches`.

    layer (str): The layer's name, for the error messages.
    name (str): A Hugging Face model name or local folder.
    prefix (str): Prepended to every text.
    pooling (str): One of ``POOLINGS``.
    normalize (bool): L2-normalise the vectors.
    max_length (int): Pieces per text (at least 8).
    max_batch_tokens (int): Padded pieces per forward pass (at least ``max_length``).
    RETURNS (Dict[str, Any]): name, prefix, pooling, normalize, max_length, max_batch_tokens.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"{layer}: pooling must be one of {POOLINGS}, got {pooling!r}")
    if max_length < 8 or max_batch_tokens < max_length:
        raise ValueError(
            f"{layer}: need max_length >= 8 and max_batch_tokens >= max_length, "
            f"got {max_length} and {max_batch_tokens}"
        )
    return {
        "name": name,
        "prefix": prefix,
        "pooling": pooling,
        "normalize": normalize,
        "max_length": max_length,
        "max_batch_tokens": max_batch_tokens,
    }


def _hf(model: Model):
    return model.shims[0]._hfmodel


def encoder_init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    # A pipeline loaded from disk already has its transformer (HFShim.from_bytes).
    if _hf(model).transformer is None:
        from spacy_transformers.layers.transformer_model import huggingface_from_pretrained

        hf = _hf(model)
        loaded = huggingface_from_pretrained(
            model.attrs["name"], dict(hf._init_tokenizer_config), dict(hf._init_transformer_config)
        )
        shim = model.shims[0]
        shim._hfmodel = loaded
        shim._model = loaded.transformer
    transformer = _hf(model).transformer
    transformer.eval()
    model.set_dim("nO", transformer.config.hidden_size)


def length_batches(lengths: List[int], max_batch_tokens: int) -> List[List[int]]:
    """Indices grouped into batches of similar length, each at most
    ``max_batch_tokens`` when padded to its longest member.

    lengths (List[int]): Length of each item.
    max_batch_tokens (int): Budget of padded tokens per batch.
    RETURNS (List[List[int]]): Index batches, shortest items first.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: List[List[int]] = []
    batch: List[int] = []
    for i in order:
        # Sorted ascending, so the newest item is the longest of its batch.
        if batch and (len(batch) + 1) * lengths[i] > max_batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def pad_ids(ids: List[List[int]], pad_id: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Piece ids padded to the longest row, and the attention mask, as numpy arrays
    (what ONNX Runtime takes; :func:`pad_batch` makes torch tensors of them).

    ids (List[List[int]]): Piece ids per text.
    pad_id (int): The tokenizer's padding id.
    RETURNS (Tuple[numpy.ndarray, numpy.ndarray]): int64 ``input_ids`` and ``attention_mask``, both (rows, longest).
    """
    n = max(len(x) for x in ids)
    input_ids = numpy.full((len(ids), n), pad_id, dtype=numpy.int64)
    mask = numpy.zeros((len(ids), n), dtype=numpy.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids, mask


def pad_batch(ids: List[List[int]], pad_id: int, device: Any) -> Tuple[Any, Any]:
    """Piece ids padded to the longest row, and the attention mask.

    ids (List[List[int]]): Piece ids per text.
    pad_id (int): The tokenizer's padding id.
    device (torch.device): Where the tensors go.
    RETURNS (Tuple[torch.Tensor, torch.Tensor]): ``input_ids`` and ``attention_mask``, both (rows, longest).
    """
    import torch

    input_ids, mask = pad_ids(ids, pad_id)
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)


def pool(hidden: Any, mask: Any, pooling: str, normalize: bool) -> Any:
    """One vector per text from the last hidden states, as the encoder was trained.

    Torch tensors (the encoder, and fine-tuning, where gradients flow through) or
    numpy arrays (ONNX Runtime's output, with no torch at run time): the same
    formula, with each library's own cast, floor and normalisation.

    hidden (Union[torch.Tensor, numpy.ndarray]): (rows, pieces, width) hidden states.
    mask (Union[torch.Tensor, numpy.ndarray]): (rows, pieces) attention mask, of
        the same library as ``hidden``.
    pooling (str): "mean" (over the mask) or "cls" (first piece).
    normalize (bool): L2-normalise the vectors.
    RETURNS (Union[torch.Tensor, numpy.ndarray]): (rows, width), of ``hidden``'s library and dtype.
    """
    on_numpy = isinstance(hidden, numpy.ndarray)
    if pooling == "cls":
        vectors = hidden[:, 0]
    else:
        m = mask[..., None].astype(hidden.dtype) if on_numpy else mask[..., None].to(hidden.dtype)
        counts = m.sum(1)
        vectors = (hidden * m).sum(1) / (numpy.maximum(counts, 1.0) if on_numpy else counts.clamp(min=1.0))
    if normalize:
        if on_numpy:
            # As torch.nn.functional.normalize: the norm is floored at 1e-12.
            vectors = vectors / numpy.maximum(numpy.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        else:
            import torch

            vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors


def encode_in_batches(
    model: Model,
    docs: List[Doc],
    tokenize: Callable[[List[str]], List[List[int]]],
    embed: Callable[[List[List[int]]], Any],
) -> Tuple[Floats2d, Callable]:
    """The forward pass every frozen sentence encoder shares: prefix the texts,
    tokenize them, run them in length-sorted batches (:func:`length_batches`) and
    put each batch's vectors back in the docs' order.

    model (Model): The layer (attrs ``prefix`` and ``max_batch_tokens``, dim ``nO``).
    docs (List[Doc]): The docs.
    tokenize (Callable[[List[str]], List[List[int]]]): Piece ids per prefixed text
        (truncated to the layer's ``max_length``).
    embed (Callable[[List[List[int]]], Any]): One batch's piece ids → its pooled
        vectors, (rows, nO), as a numpy array.
    RETURNS (Tuple[Floats2d, Callable]): One row per doc, and a backprop that
        returns the docs (the encoder is frozen).
    """
    output = model.ops.alloc2f(len(docs), model.get_dim("nO"))
    if docs:
        ids = tokenize([model.attrs["prefix"] + doc.text for doc in docs])
        for batch in length_batches([len(x) for x in ids], model.attrs["max_batch_tokens"]):
            output[batch] = model.ops.asarray2f(embed([ids[i] for i in batch]))

    def backprop(dY: Floats2d) -> List[Doc]:
        return docs

    return output, backprop


def encoder_forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[Floats2d, Callable]:
    import torch

    hf = _hf(model)
    if hf.transformer is None:
        raise ValueError("SentenceEncoder: the model is not initialized (no transformer loaded)")
    if hf.transformer.training:
        # HFShim.from_bytes (spacy.load) builds the transformer in training mode:
        # dropout would make the frozen teacher's outputs random.
        hf.transformer.eval()

    def tokenize(texts: List[str]) -> List[List[int]]:
        return hf.tokenizer(texts, truncation=True, max_length=model.attrs["max_length"])["input_ids"]

    def embed(ids: List[List[int]]) -> numpy.ndarray:
        device = next(hf.transformer.parameters()).device
        input_ids, mask = pad_batch(ids, hf.tokenizer.pad_token_id or 0, device)
        # Frozen: no graph, no gradients (the head is what trains).
        with torch.no_grad():
            hidden = hf.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state
            vectors = pool(hidden, mask, model.attrs["pooling"], model.attrs["normalize"])
        return vectors.float().cpu().numpy()

    return encode_in_batches(model, docs, tokenize, embed)


@registry.architectures("spacy-distill.EncoderTextCat.v1")
def build_encoder_textcat(
    encoder: Model[List[Doc], Floats2d],
    hidden_width: int = 0,
    dropout: float = 0.0,
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """A text classifier on a sentence encoder: encoder → (Relu) → Softmax.

    For the stock ``textcat`` component (exclusive classes): the output is
    probabilities. With a frozen encoder (``SentenceEncoder.v1``) only the
    head learns; ``scripts/train_teacher.py`` trains it on cached encoder
    outputs.

    encoder (Model[List[Doc], Floats2d]): Maps docs to vectors.
    hidden_width (int): Width of one hidden Relu layer; 0 = a linear
        (logistic-regression) head.
    dropout (float): Dropout before the output layer (hidden head only).
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Class probabilities, one row per doc.
    """
    output = Softmax(nO=nO)
    head = chain(Relu(nO=hidden_width, dropout=dropout), output) if hidden_width > 0 else output
    model = chain(encoder, head)
    model.set_ref("encoder", encoder)
    model.set_ref("head", head)
    model.set_ref("output_layer", output)
    model.attrs["multi_label"] = False
    if nO is not None:
        model.set_dim("nO", nO)
    return model


__all__ = [
    "POOLINGS",
    "SentenceEncoder",
    "build_encoder_textcat",
    "encode_in_batches",
    "encoder_attrs",
    "length_batches",
    "pad_batch",
    "pad_ids",
    "pool",
]
