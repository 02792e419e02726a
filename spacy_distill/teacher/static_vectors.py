"""Static word vectors distilled from the teacher's encoder (Model2Vec-style).

Each vocabulary item is run through the teacher's sentence encoder on its own
(with the encoder's prefix, pooling and normalisation, as the teacher sees any
text), and the vectors are reduced by PCA. The student reads them as stock spaCy
static vectors (``include_static_vectors = true`` in ``spacy.MultiHashEmbed.v2``),
so it gets the teacher's view of words it never saw labelled: synonyms and
sentiment words of other domains land near the ones of the training reviews. At
inference the student only looks the vectors up: no torch.

The vocabulary is the most frequent normalised (lower-case) forms per language of
the student's own tokens over unlabelled text (the project uses the train,
transfer and UD texts). spaCy's static vectors are keyed by the exact form
(ORTH; a vectors table's ``attr`` is not serialized), so each row is also
reachable from the title-case and upper-case spellings and every spelling seen in
the text.

Needs the teacher (torch) to *build*; the vectors themselves are plain numpy.
"""

import logging
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.vectors import Vectors

from ..progress import progress_bar

logger = logging.getLogger("spacy")


def count_forms(
    tokenizer_nlp: Language, texts: Iterable[Tuple[str, str]]
) -> Tuple[Dict[str, Counter], Dict[str, Counter]]:
    """Count the normalised forms (token.norm_) per language, and the spellings of each.

    tokenizer_nlp (Language): A pipeline whose tokenizer is the student's.
    texts (Iterable[Tuple[str, str]]): (lang, text) pairs.
    RETURNS (Tuple[Dict[str, Counter], Dict[str, Counter]]): Per language,
        norm -> count; and per norm, spelling (token.orth_) -> count.
    """
    norms: Dict[str, Counter] = {}
    spellings: Dict[str, Counter] = {}
    for lang, text in texts:
        counter = norms.setdefault(lang, Counter())
        for token in tokenizer_nlp.make_doc(text):
            if token.is_space:
                continue
            counter[token.norm_] += 1
            spellings.setdefault(token.norm_, Counter())[token.orth_] += 1
    return norms, spellings


def select_vocab(norms: Dict[str, Counter], n_per_lang: int, min_count: int) -> List[str]:
    """The union of each language's most frequent norms, in a deterministic order.

    Ties in frequency are broken by the form itself, so the same counts give the
    same vocabulary on any machine.

    norms (Dict[str, Counter]): Per language, norm -> count.
    n_per_lang (int): Norms kept per language.
    min_count (int): Drop norms seen fewer times in their language.
    RETURNS (List[str]): The vocabulary (languages in sorted order, each by
        falling frequency; a norm shared by languages appears once).
    """
    vocab: Dict[str, None] = {}
    for lang in sorted(norms):
        ranked = sorted((item for item in norms[lang].items() if item[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
        for norm, _ in ranked[:n_per_lang]:
            vocab.setdefault(norm, None)
    return list(vocab)


def encode_items(teacher: Language, items: Sequence[str], batch_size: int, progress: bool = True) -> numpy.ndarray:
    """Each item through the teacher's sentence encoder, on its own.

    teacher (Language): A teacher pipeline whose text classifier's model has an
        ``encoder`` ref mapping docs to one vector each
        (``spacy-distill.EncoderTextCat.v1``).
    items (Sequence[str]): The vocabulary items.
    batch_size (int): Items per encoder call.
    progress (bool): Show progress (a line every 30 s in a log).
    RETURNS (numpy.ndarray): One row per item (float32).
    """
    encoder = None
    for _, pipe in teacher.pipeline:
        model = getattr(pipe, "model", None)
        if model is not None and model.has_ref("encoder"):
            encoder = model.get_ref("encoder")
            break
    if encoder is None:
        raise ValueError(
            "static vectors: the teacher has no component whose model has an 'encoder' "
            "ref (a spacy-distill.EncoderTextCat.v1 text classifier)"
        )
    rows: List[numpy.ndarray] = []
    bar = progress_bar(len(items), "vectors: encode vocabulary", unit="item", enabled=progress)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        docs = [Doc(teacher.vocab, words=[item]) for item in batch]
        rows.append(numpy.asarray(encoder.predict(docs), dtype="f4"))
        bar.update(len(batch))
    bar.close()
    return numpy.concatenate(rows) if rows else numpy.zeros((0, 0), dtype="f4")


def pca_reduce(X: numpy.ndarray, dims: int) -> numpy.ndarray:
    """Project centred rows on their top principal components.

    The sign of each component is fixed (largest-magnitude loading positive), so
    the output does not depend on the SVD routine's sign choice.

    X (numpy.ndarray): One row per item.
    dims (int): Output width (at most the input width and the row count).
    RETURNS (numpy.ndarray): The reduced rows (float32).
    """
    if dims < 1:
        raise ValueError(f"static vectors: dims must be >= 1, got {dims}")
    dims = min(dims, X.shape[1], X.shape[0])
    centred = X.astype("f8") - X.astype("f8").mean(axis=0)
    _, _, vt = numpy.linalg.svd(centred, full_matrices=False)
    components = vt[:dims]
    signs = numpy.sign(components[numpy.arange(dims), numpy.abs(components).argmax(axis=1)])
    components *= signs[:, None]
    return (centred @ components.T).astype("f4")


def spellings_of(norm: str, seen: Optional[Counter] = None) -> List[str]:
    """The keys under which a norm's row is found: the norm, its title-case and
    upper-case forms, and the spellings seen in the text.

    norm (str): The normalised form.
    seen (Optional[Counter]): Spelling -> count in the text.
    RETURNS (List[str]): Distinct keys, the norm first.
    """
    keys = dict.fromkeys([norm, norm[:1].upper() + norm[1:], norm.upper()])
    for spelling in sorted(seen or ()):
        keys.setdefault(spelling, None)
    return list(keys)


def build_vectors(
    nlp: Language, vocab: Sequence[str], vectors: numpy.ndarray, spellings: Dict[str, Counter]
) -> Vectors:
    """A spaCy vectors table: one row per vocabulary item, found under all its spellings.

    nlp (Language): The pipeline whose vocab gets the table (its strings gain the keys).
    vocab (Sequence[str]): The items, one per row.
    vectors (numpy.ndarray): The rows.
    spellings (Dict[str, Counter]): Per norm, the spellings seen.
    RETURNS (Vectors): The table (also set as ``nlp.vocab.vectors``).
    """
    if len(vocab) != len(vectors):
        raise ValueError(f"static vectors: {len(vocab)} items but {len(vectors)} rows")
    table = Vectors(strings=nlp.vocab.strings, data=numpy.ascontiguousarray(vectors, dtype="f4"))
    for row, norm in enumerate(vocab):
        for key in spellings_of(norm, spellings.get(norm)):
            table.add(nlp.vocab.strings.add(key), row=row)
    nlp.vocab.vectors = table
    return table


def distill_vectors(
    teacher: Language,
    tokenizer_nlp: Language,
    texts: Iterable[Tuple[str, str]],
    output: Path,
    *,
    n_per_lang: int,
    min_count: int,
    dims: int,
    batch_size: int,
    progress: bool = True,
) -> Dict[str, object]:
    """Count, select, encode, reduce and save static vectors as a blank pipeline folder.

    The folder is what ``[initialize] vectors`` of a student config takes.

    teacher (Language): The teacher pipeline.
    tokenizer_nlp (Language): A blank pipeline with the student's tokenizer
        (its language code is the saved pipeline's).
    texts (Iterable[Tuple[str, str]]): (lang, text) pairs to take the vocabulary from.
    output (Path): The pipeline folder to write.
    n_per_lang (int): Vocabulary items per language.
    min_count (int): Minimum count of an item in its language.
    dims (int): Vector width after PCA.
    batch_size (int): Items per encoder call.
    progress (bool): Show progress.
    RETURNS (Dict[str, object]): A summary (rows, keys, dims, per-language counts).
    """
    from ..io import atomic_path

    norms, spellings = count_forms(tokenizer_nlp, texts)
    vocab = select_vocab(norms, n_per_lang, min_count)
    if not vocab:
        raise ValueError("static vectors: the texts gave an empty vocabulary")
    encoded = encode_items(teacher, vocab, batch_size, progress=progress)
    reduced = pca_reduce(encoded, dims)
    table = build_vectors(tokenizer_nlp, vocab, reduced, spellings)
    with atomic_path(output, is_dir=True) as tmp:
        tokenizer_nlp.to_disk(tmp)
    summary = {
        "rows": int(table.shape[0]),
        "dims": int(table.shape[1]),
        "keys": int(table.n_keys),
        "mb": round(table.data.nbytes / 1e6, 2),
        "vocab_per_lang": {lang: min(n_per_lang, sum(1 for c in counter.values() if c >= min_count)) for lang, counter in sorted(norms.items())},
        "teacher_width": int(encoded.shape[1]),
        "explained_variance": float(reduced.var(axis=0).sum() / max(encoded.astype("f8").var(axis=0).sum(), 1e-12)),
    }
    logger.info("static vectors: %s", summary)
    return summary
