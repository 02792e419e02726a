"""A hashed bag of character n-grams within word boundaries, as a sparse linear model.

The stock ``spacy.TextCatBOW.v3`` sees whole tokens (and token n-grams), so a
misspelling, an inflection or a compound ("Lieferung", "Lieferzeit") is a new,
unseen feature. Character n-grams inside each word, padded with a space at
either end (scikit-learn's ``analyzer="char_wb"``), share features between such
words, and on Chinese and Japanese text (no spaces) they are the character
n-grams of the whole run. It is the classic strong linear baseline for short
review classification, and it costs almost nothing next to the BiLSTM: the
n-grams of a word are computed once and cached.

Everything here is numpy/thinc: a pipeline using it loads and predicts without
torch installed.
"""

from functools import lru_cache, partial
from typing import Callable, Iterable, List, Optional, Tuple, cast

import numpy
from spacy.ml.models.textcat import resize_and_set_ref
from spacy.strings import hash_string
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import (
    Logistic,
    Model,
    SparseLinear_v2,
    chain,
    resizable,
    softmax_activation,
    with_cpu,
)
from thinc.layers.resizable import resize_linear_weighted
from thinc.types import Floats1d, Floats2d, Ints1d

# Words whose n-gram keys are kept (Zipf: a few thousand words make up most of
# the text). Full, 2**18 words of 3-10 letters (1- to 4-grams) take ~106 MiB
# (measured with tracemalloc); longer words take more.
WORD_CACHE_SIZE = 2**18
# Only words of at most this many characters are cached: the cache is counted
# in entries, and one unique 10,000-character word would hold ~320 KB in it
# (a request of such words grew a server worker by hundreds of MB). With the
# cap, an entry holds at most (MAX_CACHED_WORD_CHARS + 2) * max_n keys of 8
# bytes, ~0.9 KB with max_n=4 (key, bytes and cache node included), so the
# full cache stays under ~240 MB whatever the input; longer words are rarer
# and their keys are computed each time (the same keys).
MAX_CACHED_WORD_CHARS = 20

# As the stock TextCatBOW: a resized output layer's new class starts very
# unlikely when an activation follows the sparse layer.
NEG_VALUE = -5000


def char_wb_ngrams(word: str, min_n: int, max_n: int) -> List[str]:
    """The character n-grams of one word, padded with a space at either end.

    The same n-grams, in the same order, as scikit-learn's
    ``CountVectorizer(analyzer="char_wb")`` gives for one word: for each n from
    min_n to max_n, every n-character slice of " word ". A padded word of at most
    n characters gives one n-gram, the whole padded word (so it can be shorter
    than min_n: " a " with min_n = 4), and no longer n-grams after it.

    word (str): One word, without whitespace.
    min_n (int): The smallest n-gram length.
    max_n (int): The largest n-gram length.
    RETURNS (List[str]): The n-grams, repeats included.
    """
    padded = f" {word} "
    size = len(padded)
    ngrams: List[str] = []
    for n in range(min_n, max_n + 1):
        if n >= size:
            ngrams.append(padded)
            break
        ngrams.extend(padded[i : i + n] for i in range(size - n + 1))
    return ngrams


def _compute_word_keys(word: str, min_n: int, max_n: int) -> bytes:
    # The keys as the raw bytes of a uint64 array: a doc's keys are then one
    # b"".join and one numpy.frombuffer, and a bytes object is smaller than an
    # array in the cache.
    keys = [hash_string(ngram) for ngram in char_wb_ngrams(word, min_n, max_n)]
    return numpy.asarray(keys, dtype=numpy.uint64).tobytes()


# Module-level rather than in model.attrs, which are serialized with the model.
_word_keys = lru_cache(maxsize=WORD_CACHE_SIZE)(_compute_word_keys)


def _keys_of(word: str, min_n: int, max_n: int) -> bytes:
    # Long words bypass the cache (see MAX_CACHED_WORD_CHARS): same keys, bounded memory.
    if len(word) > MAX_CACHED_WORD_CHARS:
        return _compute_word_keys(word, min_n, max_n)
    return _word_keys(word, min_n, max_n)


def doc_char_ngram_keys(text: str, min_n: int, max_n: int, lowercase: bool = True) -> numpy.ndarray:
    """The hashed character n-grams of a text, repeats included.

    The text is split on whitespace (``str.split()``: any run of spaces, tabs,
    newlines or other Unicode whitespace), and each word gives the n-grams of
    ``char_wb_ngrams``. Each n-gram is hashed with ``spacy.strings.hash_string``
    (64-bit MurmurHash2 of its UTF-8 bytes, the hash of spaCy's StringStore).

    text (str): The text.
    min_n (int): The smallest n-gram length.
    max_n (int): The largest n-gram length.
    lowercase (bool): Lowercase the text first.
    RETURNS (numpy.ndarray): The uint64 keys, in text order.
    """
    if lowercase:
        text = text.lower()
    joined = b"".join([_keys_of(word, min_n, max_n) for word in text.split()])
    return numpy.frombuffer(joined, dtype=numpy.uint64)


@registry.layers("spacy-distill.extract_char_ngrams.v1")
def extract_char_ngrams(
    min_n: int = 1, max_n: int = 4, lowercase: bool = True
) -> Model[List[Doc], Tuple[Ints1d, Floats1d, Ints1d]]:
    """Extract each doc's hashed character n-grams within word boundaries.

    The output is the (keys, values, lengths) triple of spaCy's
    ``extract_ngrams``, for a sparse linear layer: each doc's distinct n-gram
    keys (uint64), their values, and the number of keys per doc (int32), over
    the batch. The n-grams are those of scikit-learn's ``analyzer="char_wb"``
    over ``doc.text`` (see ``char_wb_ngrams``), and a doc's values are the
    sublinear counts 1 + log(count), L2-normalized per doc: a long review
    does not get larger logits than a short one, and a repeated word counts
    less than a new one. A doc with no characters but whitespace gets no keys
    (length 0).

    min_n (int): The smallest n-gram length, at least 1.
    max_n (int): The largest n-gram length, at least min_n.
    lowercase (bool): Lowercase the text first.
    RETURNS (Model[List[Doc], Tuple[Ints1d, Floats1d, Ints1d]]): The layer.
    """
    if not 1 <= min_n <= max_n:
        raise ValueError(f"extract_char_ngrams needs 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
    return Model(
        "extract_char_ngrams",
        forward,
        attrs={"min_n": min_n, "max_n": max_n, "lowercase": lowercase},
    )


def forward(
    model: Model[List[Doc], Tuple[Ints1d, Floats1d, Ints1d]], docs: List[Doc], is_train: bool
) -> Tuple[Tuple[Ints1d, Floats1d, Ints1d], Callable[[Floats2d], List[Doc]]]:
    """Hashed char n-grams and their normalized sublinear counts, for a batch.

    With an ``idf`` param (``extract_char_ngrams.v2``), each count is weighted by
    the idf of its key's bucket before the normalization.
    """
    min_n = model.attrs["min_n"]
    max_n = model.attrs["max_n"]
    lowercase = model.attrs["lowercase"]
    idf = numpy.asarray(model.get_param("idf")) if model.has_param("idf") else None
    keys, counts, n_keys = unique_per_doc([doc_char_ngram_keys(doc.text, min_n, max_n, lowercase) for doc in docs])
    vals = 1.0 + numpy.log(counts, dtype=numpy.float32)
    if idf is not None:
        vals *= idf[idf_buckets(keys, len(idf))]
    start = 0
    # One dot per doc (not one reduction over the batch): a doc's values, to the bit,
    # do not depend on the rest of its batch.
    for n in n_keys.tolist():
        if n:
            doc_vals = vals[start : start + n]
            doc_vals /= numpy.sqrt(numpy.dot(doc_vals, doc_vals))
            start += n
    lengths = model.ops.asarray1i(n_keys)
    # The hashing runs on numpy (the architecture wraps it in with_cpu); one
    # transfer per batch if the ops are not numpy's.
    keys = model.ops.asarray(keys)
    vals = model.ops.asarray1f(vals)

    def backprop(dY: Floats2d) -> List[Doc]:
        return []

    return (cast(Ints1d, keys), cast(Floats1d, vals), cast(Ints1d, lengths)), backprop


def unique_per_doc(doc_keys: List[numpy.ndarray]) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """Each doc's distinct keys (sorted) and their counts, concatenated over the docs.

    ``numpy.unique(keys, return_counts=True)`` per doc, with one sort per doc and the
    rest over the whole batch (a batch of 64 reviews: ~2x faster than a unique per doc).

    doc_keys (List[numpy.ndarray]): Each doc's uint64 keys, repeats included.
    RETURNS (Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]): The keys (uint64),
        their counts (int64) and the number of distinct keys of each doc (int32).
    """
    if len(doc_keys) == 1:
        # One doc (a request, ``nlp(text)``): numpy's unique has fewer calls.
        keys, counts = numpy.unique(doc_keys[0], return_counts=True)
        return keys, counts, numpy.asarray([len(keys)], dtype="i")
    sizes = numpy.fromiter((len(keys) for keys in doc_keys), dtype=numpy.int64, count=len(doc_keys))
    if not sizes.sum():
        return numpy.zeros((0,), dtype=numpy.uint64), numpy.zeros((0,), dtype=numpy.int64), numpy.zeros(len(doc_keys), dtype="i")
    flat = numpy.concatenate([numpy.sort(keys) for keys in doc_keys])
    starts = numpy.concatenate(([0], numpy.cumsum(sizes)[:-1]))
    # A new distinct key: the first of its doc, or another key than the one before.
    first = numpy.empty(len(flat), dtype=bool)
    first[0] = True
    numpy.not_equal(flat[1:], flat[:-1], out=first[1:])
    first[starts[sizes > 0]] = True
    where = numpy.flatnonzero(first)
    counts = numpy.diff(numpy.append(where, len(flat)))
    # The distinct keys of doc i are where[u_starts[i]:u_starts[i+1]].
    u_starts = numpy.searchsorted(where, starts)
    n_keys = numpy.diff(numpy.append(u_starts, len(where))).astype("i")
    return flat[where], counts, n_keys


def idf_buckets(keys: numpy.ndarray, rows: int) -> numpy.ndarray:
    """The idf table's row of each n-gram key: its low bits (``rows`` is a power of two).

    keys (numpy.ndarray): uint64 n-gram keys.
    rows (int): Rows of the idf table.
    RETURNS (numpy.ndarray): One row index per key.
    """
    return (keys & numpy.uint64(rows - 1)).astype(numpy.int64)


@registry.layers("spacy-distill.extract_char_ngrams.v2")
def extract_char_ngrams_v2(
    min_n: int = 1, max_n: int = 4, lowercase: bool = True, idf_rows: int = 262144
) -> Model[List[Doc], Tuple[Ints1d, Floats1d, Ints1d]]:
    """``extract_char_ngrams.v1`` with each n-gram's count weighted by its idf.

    The values are 1 + log(count) times the n-gram's inverse document frequency,
    L2-normalized per doc (scikit-learn's ``TfidfVectorizer(sublinear_tf=True)``):
    an n-gram in every review ("e ", " d") weighs less than one that tells reviews
    apart. The idf is kept per hashed bucket (the key's low bits) in a table of
    ``idf_rows`` rows, a param that is saved with the model and never trained: it
    starts at 1 (v1's values) and is set from the training docs' document
    frequencies by ``spacy-distill.char_ngram_idf.v1`` (``[initialize.after_init]``).

    min_n (int): The smallest n-gram length, at least 1.
    max_n (int): The largest n-gram length, at least min_n.
    lowercase (bool): Lowercase the text first.
    idf_rows (int): Rows of the idf table, rounded up to a power of two.
    RETURNS (Model[List[Doc], Tuple[Ints1d, Floats1d, Ints1d]]): The layer.
    """
    if not 1 <= min_n <= max_n:
        raise ValueError(f"extract_char_ngrams needs 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
    if idf_rows < 1:
        raise ValueError(f"extract_char_ngrams: idf_rows must be >= 1, got {idf_rows}")
    rows = 2 ** (idf_rows - 1).bit_length()
    model: Model[List[Doc], Tuple[Ints1d, Floats1d, Ints1d]] = Model(
        "extract_char_ngrams",
        forward,
        params={"idf": None},
        attrs={"min_n": min_n, "max_n": max_n, "lowercase": lowercase},
    )
    model.set_param("idf", numpy.ones((rows,), dtype="f"))
    return model


def fit_char_idf(layer: Model, texts: Iterable[str]) -> int:
    """Set an ``extract_char_ngrams.v2`` layer's idf from the document frequencies in ``texts``.

    idf = ln((1 + n_docs) / (1 + df)) + 1 per bucket (scikit-learn's smoothed idf),
    where df counts the docs holding any n-gram of the bucket.

    layer (Model): The extractor (its attrs give the n-grams; its param the table).
    texts (Iterable[str]): The training texts.
    RETURNS (int): The number of texts counted.
    """
    rows = len(layer.get_param("idf"))
    df = numpy.zeros((rows,), dtype=numpy.int64)
    n_docs = 0
    for text in texts:
        keys = doc_char_ngram_keys(text, layer.attrs["min_n"], layer.attrs["max_n"], layer.attrs["lowercase"])
        df[numpy.unique(idf_buckets(keys, rows))] += 1
        n_docs += 1
    if n_docs == 0:
        raise ValueError("char n-gram idf: no training texts")
    idf = numpy.log((1.0 + n_docs) / (1.0 + df)) + 1.0
    layer.set_param("idf", idf.astype("f"))
    return n_docs


@registry.architectures("spacy-distill.CharNgramBOW.v1")
def build_char_ngram_bow(
    exclusive_classes: bool,
    min_n: int = 1,
    max_n: int = 4,
    length: int = 1048576,
    no_output_layer: bool = True,
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """Build a sparse linear text classifier over hashed character n-grams.

    Spacy's ``spacy.TextCatBOW.v3`` with ``extract_char_ngrams`` in place of
    ``extract_ngrams``: the same hashed sparse linear layer, resizable output
    and refs, so it can stand alone as a ``textcat`` model or (with
    ``no_output_layer = true``, giving logits) be added to the BiLSTM's logits
    in ``spacy-distill.BiLSTMTextCat.v2``.

    exclusive_classes (bool): One label per doc (softmax) or multi-label
        (sigmoid); used only with an output layer.
    min_n (int): The smallest n-gram length.
    max_n (int): The largest n-gram length.
    length (int): Number of rows of the hashed weight table, rounded up to a
        power of two. Character n-grams are many more than words: the default
        is 4 times TextCatBOW's.
    no_output_layer (bool): Output the logits, without softmax/sigmoid.
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits (or probabilities), one row per doc.
    """
    return char_ngram_linear(
        extract_char_ngrams(min_n=min_n, max_n=max_n),
        exclusive_classes=exclusive_classes,
        length=length,
        no_output_layer=no_output_layer,
        nO=nO,
    )


@registry.architectures("spacy-distill.CharNgramBOW.v2")
def build_char_ngram_bow_v2(
    exclusive_classes: bool,
    min_n: int = 1,
    max_n: int = 4,
    length: int = 1048576,
    idf_rows: int = 262144,
    no_output_layer: bool = True,
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """``spacy-distill.CharNgramBOW.v1`` over tf-idf values (``extract_char_ngrams.v2``).

    The idf table starts at 1 (v1's model) and is fitted on the training docs by
    ``spacy-distill.char_ngram_idf.v1`` in ``[initialize.after_init]``. A
    converged logistic regression on the student's teacher labels scored 0.5 dev
    points higher with idf than without (metrics/student_mean_vectors.md).

    exclusive_classes (bool): One label per doc (softmax) or multi-label (sigmoid).
    min_n (int): The smallest n-gram length.
    max_n (int): The largest n-gram length.
    length (int): Rows of the hashed weight table, rounded up to a power of two.
    idf_rows (int): Rows of the idf table, rounded up to a power of two.
    no_output_layer (bool): Output the logits, without softmax/sigmoid.
    nO (Optional[int]): Number of labels; inferred at initialization.
    RETURNS (Model[List[Doc], Floats2d]): Logits (or probabilities), one row per doc.
    """
    return char_ngram_linear(
        extract_char_ngrams_v2(min_n=min_n, max_n=max_n, idf_rows=idf_rows),
        exclusive_classes=exclusive_classes,
        length=length,
        no_output_layer=no_output_layer,
        nO=nO,
    )


def char_ngram_linear(
    extractor: Model[List[Doc], Tuple[Ints1d, Floats1d, Ints1d]],
    *,
    exclusive_classes: bool,
    length: int,
    no_output_layer: bool,
    nO: Optional[int],
) -> Model[List[Doc], Floats2d]:
    """The sparse linear model of ``CharNgramBOW`` over the given n-gram extractor.

    extractor (Model): Docs to (keys, values, lengths).
    exclusive_classes (bool): Softmax or sigmoid, with an output layer.
    length (int): Rows of the hashed weight table, rounded up to a power of two.
    no_output_layer (bool): Output the logits.
    nO (Optional[int]): Number of labels.
    RETURNS (Model[List[Doc], Floats2d]): Logits (or probabilities), one row per doc.
    """
    if length < 1:
        raise ValueError(f"CharNgramBOW expects a length of at least 1, was {length}.")
    # Find k such that 2**(k-1) < length <= 2**k, as TextCatBOW.v3.
    length = 2 ** (length - 1).bit_length()
    sparse_linear = SparseLinear_v2(nO=nO, length=length)
    fill_defaults = {"b": 0, "W": 0}
    output_layer = None
    if not no_output_layer:
        fill_defaults["b"] = NEG_VALUE
        output_layer = softmax_activation() if exclusive_classes else Logistic()
    resizable_layer: Model[Floats2d, Floats2d] = resizable(
        sparse_linear,
        resize_layer=partial(resize_linear_weighted, fill_defaults=fill_defaults),
    )
    model: Model[List[Doc], Floats2d] = chain(extractor, resizable_layer)
    # The sparse layer's kernels are CPU-only (as in TextCatBOW).
    model = with_cpu(model, model.ops)
    if output_layer is not None:
        model = chain(model, with_cpu(output_layer, output_layer.ops))
    if nO is not None:
        model.set_dim("nO", cast(int, nO))
    model.set_ref("output_layer", sparse_linear)
    model.attrs["multi_label"] = not exclusive_classes
    model.attrs["resize_output"] = partial(resize_and_set_ref, resizable_layer=resizable_layer)
    return model
