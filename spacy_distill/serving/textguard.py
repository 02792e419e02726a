"""A per-text cost bound for spaCy's tokenizer, applied before tokenization.

spaCy's rule-based tokenizer handles each whitespace-free chunk of a text by
stripping prefixes and suffixes one at a time; every step re-examines the rest
of the chunk (special cases, URL and token matches), so a chunk from which many
affixes are stripped costs time quadratic in its length. That happens on long
runs of punctuation, symbols or emoji (``"$" * 10_000``: about 20 s, holding
the GIL) and on runs of short affixes that contain letters (``"A$" * 5_000``,
``"'s" * 5_000``: several seconds each): the affixes that contain letters are
all short (``US$``, ``'s``), and every affix holds at least one character that
is neither a letter nor a digit.

So the bound is: inside a *dense segment* (symbols, that is characters that are
neither letters, digits nor whitespace, at most ``DENSE_GAP`` letters or digits
apart), a space is inserted after every ``MAX_DENSE_SYMBOLS``-th symbol. The
tokenizer then never strips more than ``MAX_DENSE_SYMBOLS`` affixes from one
chunk, and the cost of a text is at most linear in its length times
``MAX_DENSE_SYMBOLS``. Measured (2-core machine, busy): the worst of ~600
adversarial 10,000-character texts took 56 ms to tokenize with the bound
(``"$" * 10_000`` took 20 s without it). Texts without such a segment are
returned unchanged (the same object): 14 of 104,790 MARC reviews (all six
languages) are changed, all by rows like ``"!!!!…"`` or ``"。。。。…"`` of
more than 32 marks.
"""

import re

__all__ = ["MAX_DENSE_SYMBOLS", "DENSE_GAP", "bound_tokenizer_cost"]

# Symbols per dense segment before a space is inserted. Cost per text grows
# linearly with it (see the module docstring for the measurement).
MAX_DENSE_SYMBOLS = 32
# Letters/digits allowed between two symbols of one dense segment: the longest
# affixes with letters in spaCy's rules have two ("US$"); one more for margin.
DENSE_GAP = 3

# A symbol: not a letter, digit or whitespace (``_`` counts as a symbol: ``\w`` has it).
_SYMBOL = r"(?:[^\w\s]|_)"
_ALNUM = r"[^\W_]"
# More than MAX_DENSE_SYMBOLS symbols, each at most DENSE_GAP letters/digits from
# the next. The two classes are disjoint, so matching is linear.
_DENSE = re.compile(rf"{_SYMBOL}(?:{_ALNUM}{{0,{DENSE_GAP}}}{_SYMBOL}){{{MAX_DENSE_SYMBOLS},}}")
# One piece of a dense segment: up to MAX_DENSE_SYMBOLS symbols with the letters before them.
_PIECE = re.compile(rf"(?:{_ALNUM}*{_SYMBOL}){{1,{MAX_DENSE_SYMBOLS}}}")


def _split_segment(match: "re.Match[str]") -> str:
    # A dense segment starts and ends with a symbol, so its pieces cover it exactly.
    return " ".join(_PIECE.findall(match.group()))


def bound_tokenizer_cost(text: str) -> str:
    """Insert spaces into long dense runs of symbols, so tokenizing is cheap.

    text (str): The text.
    RETURNS (str): The text itself if it has no dense segment of more than
        ``MAX_DENSE_SYMBOLS`` symbols (the common case), else a copy with a
        space after every ``MAX_DENSE_SYMBOLS``-th symbol of each such segment.
    """
    if _DENSE.search(text) is None:
        return text
    return _DENSE.sub(_split_segment, text)
