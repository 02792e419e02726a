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

    if pooling not in POOLINGS:
        raise ValueError(f"SentenceEncoder: pooling must be one of {POOLINGS}, got {pooling!r}")
    if max_length < 8 or max_batch_tokens < max_length:
        raise ValueError(
            f"SentenceEncoder: need max_length >= 8 and max_batch_tokens >= max_length, "
            f"got {max_length} and {max_batch_tokens}"
        )
    shim = HFShim(HFObjects(None, None, None, dict(tokenizer_config or {}), dict(transformer_config or {})))
    return Model(
        "sentence_encoder",
        encoder_forward,
        init=encoder_init,
        shims=[shim],
        dims={"nO": None},
        attrs={
            "name": name,
            "prefix": prefix,
            "pooling": pooling,
            "normalize": normalize,
            "max_length": max_length,
            "max_batch_tokens": max_batch_tokens,
        },
    )


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



def pad_batch(ids: List[List[int]], pad_id: int, device: Any) -> Tuple[Any, Any]:
    """Piece ids padded to the longest row, and the attention mask.

    ids (List[List[int]]): Piece ids per text.
    pad_id (int): The tokenizer's padding id.
    device (torch.device): Where the tensors go.
    RETURNS (Tuple[torch.Tensor, torch.Tensor]): ``input_ids`` and ``attention_mask``, both (rows, longest).
    """
    import torch

    n = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return input_ids.to(device), mask.to(device)


def pool(hidden: Any, mask: Any, pooling: str, normalize: bool) -> Any:
    """One vector per text from the last hidden states, as the encoder was trained.

    hidden (torch.Tensor): (rows, pieces, width) hidden states.
    mask (torch.Tensor): (rows, pieces) attention mask.
    pooling (str): "mean" (over the mask) or "cls" (first piece).
    normalize (bool): L2-normalise the vectors.
    RETURNS (torch.Tensor): (rows, width).
    """
    import torch

    if pooling == "cls":
        vectors = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors


def encoder_forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[Floats2d, Callable]:
    import torch

    hf = _hf(model)
    if hf.transformer is None:
        raise ValueError("SentenceEncoder: the model is not initialized (no transformer loaded)")
    if hf.transformer.training:
        # HFShim.from_bytes (spacy.load) builds the transformer in training mode:
        # dropout would make the frozen teacher's outputs random.
        hf.transformer.eval()
    width = model.get_dim("nO")
    output = model.ops.alloc2f(len(docs), width)
    if docs:
        prefix = model.attrs["prefix"]
        texts = [prefix + doc.text for doc in docs]
        encoded = hf.tokenizer(texts, truncation=True, max_length=model.attrs["max_length"])
        ids = encoded["input_ids"]
        device = next(hf.transformer.parameters()).device
        pad_id = hf.tokenizer.pad_token_id or 0
        for batch in length_batches([len(x) for x in ids], model.attrs["max_batch_tokens"]):
            input_ids, mask = pad_batch([ids[i] for i in batch], pad_id, device)
            # Frozen: no graph, no gradients (the head is what trains).
            with torch.no_grad():
                hidden = hf.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state
                vectors = pool(hidden, mask, model.attrs["pooling"], model.attrs["normalize"])
            output[batch] = model.ops.asarray2f(vectors.float().cpu().numpy())

    def backprop(dY: Floats2d) -> List[Doc]:
        return docs

    return output, backprop


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


__all__ = ["SentenceEncoder", "build_encoder_textcat", "length_batches", "pad_batch", "pool"]
