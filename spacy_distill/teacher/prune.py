"""Pruning the frozen encoder's Hugging Face folder, for the compressed teachers:

* :func:`prune_vocab`: keep only the pieces a corpus uses (plus special pieces and
  the single characters that occur) and slice the embedding matrix to match;
* :func:`prune_layers`: keep the bottom ``k`` transformer layers.

Both read a Hugging Face folder and write a new one (atomically) that
``SentenceEncoder.v1`` and the compressed encoders (``teacher/encoders/``) load by
``name``. Needs torch, transformers and tokenizers (the teacher extra). The
student never imports this module.
"""

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import numpy

from .e5 import E5Tokenizer, build_sentencepiece_model
from .e5.tokenizer import META
from .surgery import chmod_shared, copy_tokenizer_files


# ------------------------------------------------------------------ layer pruning
def prune_layers(src: Path, output_dir: Path, keep: int) -> Dict[str, Any]:
    """Keep the bottom ``keep`` layers of a BERT-style encoder (structured pruning).

    The embeddings and the kept layers are unchanged, so the pruned model's output
    is the full model's hidden state after layer ``keep``; a head trained on the
    full model's output needs re-training (``scripts/compress_teacher.py``).

    src (Path): A Hugging Face folder.
    output_dir (Path): The pruned folder (written atomically).
    keep (int): Layers to keep, 1 .. the model's layer count.
    RETURNS (Dict[str, Any]): layers_before, layers_after, params_before, params_after.
    """
    import torch
    from transformers import AutoModel

    from ..io import atomic_path

    src = Path(src)
    model = AutoModel.from_pretrained(str(src))
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{src}: prune_layers needs a BERT-style model with encoder.layer ({type(model).__name__} has none)")
    n = len(layers)
    if not 1 <= keep <= n:
        raise ValueError(f"{src}: cannot keep {keep} of {n} layers (keep must be 1..{n})")
    before = sum(p.numel() for p in model.parameters())
    encoder.layer = torch.nn.ModuleList(list(layers)[:keep])
    model.config.num_hidden_layers = keep
    with atomic_path(Path(output_dir), is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        copy_tokenizer_files(src, tmp)
        chmod_shared(tmp)
    return {"layers_before": n, "layers_after": keep, "params_before": before, "params_after": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------ vocabulary pruning
def prune_vocab(src: Path, output_dir: Path, texts: Iterable[str], prefix: str = "", batch_size: int = 1000) -> Dict[str, Any]:
    """Keep only the pieces that ``texts`` use, and slice the embedding matrix to match.

    Kept: every piece the tokenizer produces for ``prefix + text`` (no truncation),
    the special pieces, every single-character piece whose character occurs in the
    normalized texts (for WordPiece also its ``##`` form), and, for Unigram, the
    lowest-scoring piece (the unknown-piece penalty is the minimum score minus 10,
    so keeping it keeps that penalty). Kept pieces keep their order; ids are
    renumbered.

    Outputs: for a text whose segmentation uses only kept pieces (every text
    of ``texts``), the pruned tokenizer yields the same pieces (checked here for
    all of ``texts``) and the model the same vectors: a Unigram's best
    segmentation over a subset of pieces that contains the full vocabulary's best
    is that one, and WordPiece's greedy longest match finds the same pieces. Other
    texts fall back: Unigram re-segments a word into the kept pieces with the best
    score, down to single characters; a character with no kept piece becomes
    ``<unk>`` (a run of them one ``<unk>``). WordPiece splits a word into the
    longest kept pieces, down to characters; a word it cannot split becomes
    ``[UNK]`` as a whole.

    src (Path): A Hugging Face folder with a fast tokenizer (``tokenizer.json``,
        Unigram or WordPiece).
    output_dir (Path): The pruned folder (written atomically).
    texts (Iterable[str]): The corpus whose pieces are kept (never test texts).
    prefix (str): The encoder's prefix (its pieces are kept too).
    batch_size (int): Texts per tokenizer call.
    RETURNS (Dict[str, Any]): Counts (texts, pieces before/after, kept by reason).
    """
    from ..io import atomic_path

    src = Path(src)
    tok_path = src / "tokenizer.json"
    if not tok_path.is_file():
        raise ValueError(f"{tok_path}: no such file (vocabulary pruning needs a fast tokenizer)")
    spec = json.loads(tok_path.read_text(encoding="utf8"))
    kind = spec.get("model", {}).get("type")
    if kind not in ("Unigram", "WordPiece"):
        raise ValueError(f"{tok_path}: model.type {kind!r} is not supported (Unigram or WordPiece)")
    tokenizer = _untruncated_tokenizer(tok_path)
    pieces, scores = _vocab(spec)
    batches = _batches((prefix + text for text in texts), batch_size)
    n_texts = sum(len(batch) for batch in batches)
    if not n_texts:
        raise ValueError(f"{src}: prune_vocab got no texts")
    used: Set[int] = set()
    chars: Set[str] = set()
    originals: List[List[int]] = []
    for batch in batches:
        for encoding in tokenizer.encode_batch(batch):
            used.update(encoding.ids)
            originals.append(encoding.ids)
        for text in batch:
            chars.update(tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer else text)
    special, char_pieces = _special_and_char_pieces(spec, pieces, scores, chars)
    kept = sorted(used | special | char_pieces)
    remap = {old: new for new, old in enumerate(kept)}
    new_spec = _remap_tokenizer_spec(spec, kept, remap, tok_path)
    model, rows_before = _sliced_model(src, len(pieces), kept, remap)

    with atomic_path(Path(output_dir), is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        copy_tokenizer_files(src, tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(new_spec, ensure_ascii=False), encoding="utf8")
        _rewrite_tokenizer_config(tmp / "tokenizer_config.json", remap)
        new_pieces = [pieces[i] for i in kept]
        if (tmp / "sentencepiece.bpe.model").exists():
            (tmp / "sentencepiece.bpe.model").write_bytes(_sentencepiece_model(new_pieces, [scores[i] for i in kept], tok_path))
        if (tmp / "vocab.txt").exists():
            (tmp / "vocab.txt").write_text("".join(p + "\n" for p in new_pieces), encoding="utf8")
        # Every corpus text must be segmented as before (else the pruned teacher
        # would not be the teacher on its own training data).
        _check_same_segmentation(tmp / "tokenizer.json", batches, [[remap[i] for i in ids] for ids in originals])
        chmod_shared(tmp)
    return {
        "tokenizer": kind,
        "texts": n_texts,
        "pieces_before": len(pieces),
        "embedding_rows_before": rows_before,
        "pieces_after": len(kept),
        "pieces_used": len(used),
        "single_char_pieces": len(char_pieces - used),
        "special_pieces": len(special - used - char_pieces),
    }


def _untruncated_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    # Every piece of every text counts: no padding pieces, no truncation.
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _vocab(spec: Dict[str, Any]) -> Tuple[List[str], List[float]]:
    # Pieces by id, and (Unigram only; WordPiece has none) their scores.
    model = spec["model"]
    if model["type"] == "Unigram":
        return [p for p, _ in model["vocab"]], [float(s) for _, s in model["vocab"]]
    pieces = [""] * len(model["vocab"])
    for piece, i in model["vocab"].items():
        pieces[i] = piece
    return pieces, []


def _batches(texts: Iterable[str], batch_size: int) -> List[List[str]]:
    batches: List[List[str]] = []
    batch: List[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


def _special_and_char_pieces(spec: Dict[str, Any], pieces: List[str], scores: List[float], chars: Set[str]) -> Tuple[Set[int], Set[int]]:
    # The ids kept whether or not the corpus uses them: special pieces (and, for
    # Unigram, the lowest-scoring one), and the single characters that occur.
    index = {p: i for i, p in enumerate(pieces)}
    special = {t["id"] for t in spec.get("added_tokens", [])}
    model = spec["model"]
    if model["type"] == "Unigram":
        special.add(int(model["unk_id"]))
        special.add(min(range(len(scores)), key=scores.__getitem__))
        char_pieces = {index[c] for c in chars | {META} if c in index}
    else:
        special.add(index[model["unk_token"]])
        cont = model.get("continuing_subword_prefix", "##")
        char_pieces = {index[p] for c in chars for p in (c, cont + c) if p in index}
    return special, char_pieces


def _sliced_model(src: Path, n_pieces: int, kept: List[int], remap: Dict[int, int]) -> Tuple[Any, int]:
    # The model of ``src`` with only the kept embedding rows (and special ids renumbered),
    # and the row count before.
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(src))
    old_emb = model.get_input_embeddings()
    rows = int(old_emb.weight.shape[0])
    if rows < n_pieces:
        raise ValueError(f"{src}: the embedding matrix has {rows} rows for {n_pieces} pieces")
    pad = model.config.pad_token_id
    new_emb = torch.nn.Embedding(len(kept), old_emb.weight.shape[1], padding_idx=remap.get(pad) if pad is not None else None)
    with torch.no_grad():
        new_emb.weight.copy_(old_emb.weight[torch.tensor(kept, dtype=torch.long)])
    model.set_input_embeddings(new_emb)
    model.config.vocab_size = len(kept)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int):
            if value not in remap:
                raise ValueError(f"{src}/config.json: {attr} {value} is not a kept piece")
            setattr(model.config, attr, remap[value])
    return model, rows


def _check_same_segmentation(path: Path, batches: List[List[str]], expected: List[List[int]]) -> None:
    pruned = _untruncated_tokenizer(path)
    start = 0
    for batch in batches:
        for j, encoding in enumerate(pruned.encode_batch(batch)):
            if encoding.ids != expected[start + j]:
                raise RuntimeError(f"prune_vocab: {batch[j][:60]!r} is segmented differently after pruning")
        start += len(batch)


def _remap_tokenizer_spec(spec: Dict[str, Any], kept: List[int], remap: Dict[int, int], path: Path) -> Dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept]
        model["unk_id"] = remap[int(model["unk_id"])]
    else:
        by_id = {i: p for p, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for new, old in enumerate(kept)}
    for token in spec.get("added_tokens", []):
        token["id"] = remap[token["id"]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = remap[spec["padding"]["pad_id"]]
    _remap_processor(spec.get("post_processor"), remap, path)
    return spec


def _remap_processor(proc: Optional[Dict[str, Any]], remap: Dict[int, int], path: Path) -> None:
    if not proc:
        return
    kind = proc.get("type")
    if kind == "Sequence":
        for inner in proc.get("processors", []):
            _remap_processor(inner, remap, path)
    elif kind == "TemplateProcessing":
        for token in proc.get("special_tokens", {}).values():
            token["ids"] = [remap[i] for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], remap[proc[key][1]]]
    elif kind != "ByteLevel":
        raise ValueError(f"{path}: post_processor type {kind!r} is not supported by vocabulary pruning")


def _rewrite_tokenizer_config(path: Path, remap: Dict[int, int]) -> None:
    if not path.exists():
        return
    config = json.loads(path.read_text(encoding="utf8"))
    decoder = config.get("added_tokens_decoder")
    if decoder:
        config["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in decoder.items()}
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf8")


def _sentencepiece_model(pieces: List[str], scores: List[float], path: Path) -> bytes:
    # build_sentencepiece_model writes XLM-R's fairseq layout: <s> <pad> </s> <unk>
    # first, <mask> last.
    if pieces[:4] != ["<s>", "<pad>", "</s>", "<unk>"] or pieces[-1] != "<mask>":
        raise ValueError(f"{path}: a sentencepiece.bpe.model is only rewritten for XLM-R's layout (<s> <pad> </s> <unk> ... <mask>)")
    tok = E5Tokenizer(pieces, numpy.asarray(scores, dtype="float32"), bos=0, eos=2, pad=1, unk=3, norm_map={})
    return build_sentencepiece_model(tok)


__all__ = ["prune_layers", "prune_vocab"]
