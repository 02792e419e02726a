"""Text augmentation for distillation (Tang et al. 2019, "Distilling Task-Specific
Knowledge from BERT into Simple Neural Networks", section 3.3).

For each text, ``n_iter`` variants are made:

1. with probability ``p_sent``, a text of several sentences is cut down to one
   of them, chosen uniformly (needs sentence boundaries on the doc);
2. token by token, with probability ``p_mask`` the token becomes ``mask_token``,
   else with probability ``p_pos`` it becomes another word of the same universal
   POS, drawn from that POS's unigram distribution in the corpus the augmenter
   was fitted on (same language);
3. with probability ``p_ng``, only a random n-gram is kept, n uniform in
   ``1..max_ngram``.

A rule is switched off by setting its probability to 0. Variants equal to the
original text or to an earlier variant of it are dropped (they would only cost
teacher time). Each text gets its own random generator seeded from ``seed`` and
the text's index, so the same seed and input give byte-identical output,
whatever the batching.
"""

import bisect
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import srsly
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import registry

# A token as the augmenter needs it: text, trailing whitespace, UPOS, sentence start.
TokenTuple = Tuple[str, str, str, bool]

# POS tags whose tokens are never replaced by sampling: replacing punctuation,
# symbols, numbers or whitespace with random others changes no meaning worth
# learning and makes garbled text.
SKIP_POS = frozenset({"PUNCT", "SYM", "NUM", "X", "SPACE", ""})


def doc_to_tokens(doc: Doc) -> List[TokenTuple]:
    """The compact token list the augmenter works on.

    doc (Doc): A doc with ``token.pos_`` set (sentence starts optional).
    RETURNS (List[TokenTuple]): (text, whitespace, pos, is_sent_start) per token.
    """
    has_sents = doc.has_annotation("SENT_START")
    return [
        (t.text, t.whitespace_, t.pos_, bool(has_sents and t.is_sent_start and t.i > 0))
        for t in doc
    ]


class PosAugmenter:
    """Mask / same-POS replacement / n-gram / sentence sampling augmenter."""

    def __init__(
        self,
        *,
        n_iter: int = 20,
        p_mask: float = 0.1,
        p_pos: float = 0.1,
        p_ng: float = 0.25,
        max_ngram: int = 5,
        p_sent: float = 0.25,
        mask_token: str = "<mask>",
        seed: int = 0,
        pos_table: Optional[Dict[str, Dict[str, Dict[str, int]]]] = None,
    ) -> None:
        """Create the augmenter.

        n_iter (int): Variants made per text (before de-duplication).
        p_mask (float): Probability of masking a token.
        p_pos (float): Probability of replacing a token by a same-POS word.
        p_ng (float): Probability of keeping only a random n-gram.
        max_ngram (int): Largest n for n-gram sampling.
        p_sent (float): Probability of keeping one sentence of a multi-sentence text.
        mask_token (str): The mask string (``<mask>`` for XLM-R vocabularies,
            ``[MASK]`` for BERT ones).
        seed (int): Random seed.
        pos_table (Optional[Dict]): ``{lang: {pos: {word: count}}}`` from
            :meth:`fit` (or :meth:`to_json`), needed when ``p_pos > 0``.
        """
        for name, p in (("p_mask", p_mask), ("p_pos", p_pos), ("p_ng", p_ng), ("p_sent", p_sent)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"PosAugmenter: {name} must be in [0, 1], got {p}")
        if p_mask + p_pos > 1.0:
            raise ValueError(f"PosAugmenter: p_mask + p_pos must be <= 1, got {p_mask + p_pos}")
        if n_iter < 0 or max_ngram < 1:
            raise ValueError(f"PosAugmenter: need n_iter >= 0 and max_ngram >= 1, got {n_iter}, {max_ngram}")
        self.n_iter = n_iter
        self.p_mask = p_mask
        self.p_pos = p_pos
        self.p_ng = p_ng
        self.max_ngram = max_ngram
        self.p_sent = p_sent
        self.mask_token = mask_token
        self.seed = seed
        self._counts: Dict[str, Dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self._tables: Dict[Tuple[str, str], Tuple[List[str], List[int]]] = {}
        if pos_table:
            for lang, by_pos in pos_table.items():
                for pos, words in by_pos.items():
                    self._counts[lang][pos].update(words)

    # -- the unigram tables -------------------------------------------------

    def fit(self, docs: Iterable[Doc], lang: str) -> "PosAugmenter":
        """Add the words of POS-tagged docs to the language's unigram tables.

        docs (Iterable[Doc]): Docs with ``token.pos_`` set.
        lang (str): Their language.
        RETURNS (PosAugmenter): self.
        """
        for doc in docs:
            self.fit_tokens(doc_to_tokens(doc), lang)
        return self

    def fit_tokens(self, tokens: Sequence[TokenTuple], lang: str) -> None:
        """Count one text's tokens (see :func:`doc_to_tokens`).

        tokens (Sequence[TokenTuple]): The tokens.
        lang (str): Their language.
        """
        by_pos = self._counts[lang]
        for text, _ws, pos, _ss in tokens:
            if pos not in SKIP_POS and text.strip():
                by_pos[pos][text] += 1
        self._tables.clear()

    def to_json(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        """The unigram tables, ``{lang: {pos: {word: count}}}``."""
        return {
            lang: {pos: dict(sorted(c.items())) for pos, c in sorted(by_pos.items())}
            for lang, by_pos in sorted(self._counts.items())
        }

    def _table(self, lang: str, pos: str) -> Optional[Tuple[List[str], List[int]]]:
        key = (lang, pos)
        if key not in self._tables:
            counts = self._counts.get(lang, {}).get(pos)
            if not counts:
                return None
            # Sorted for a fixed order: same counts, same draws.
            words = sorted(counts)
            cum: List[int] = []
            total = 0
            for w in words:
                total += counts[w]
                cum.append(total)
            self._tables[key] = (words, cum)
        return self._tables[key]

    def _sample_word(self, rng: random.Random, lang: str, pos: str) -> Optional[str]:
        table = self._table(lang, pos)
        if table is None:
            return None
        words, cum = table
        return words[bisect.bisect_right(cum, rng.randrange(cum[-1]))]

    # -- making variants ----------------------------------------------------

    def rng_for(self, index: int) -> random.Random:
        """The random generator of the text at ``index`` (string seeds hash stably)."""
        return random.Random(f"spacy-distill:{self.seed}:{index}")

    def augment_tokens(
        self, tokens: Sequence[TokenTuple], lang: str, rng: random.Random
    ) -> List[str]:
        """Variants of one text.

        tokens (Sequence[TokenTuple]): The text's tokens.
        lang (str): Its language (selects the unigram tables).
        rng (random.Random): The text's random generator.
        RETURNS (List[str]): Up to ``n_iter`` distinct variants, original excluded.
        """
        if self.p_pos > 0 and lang not in self._counts:
            raise ValueError(
                f"PosAugmenter: no POS unigram table for language {lang!r} "
                f"(have {sorted(self._counts)}); fit it on POS-tagged {lang!r} text first."
            )
        original = _detok(tokens)
        seen = {original}
        variants: List[str] = []
        sents = _sentence_spans(tokens)
        for _ in range(self.n_iter):
            toks: Sequence[TokenTuple] = tokens
            if len(sents) > 1 and rng.random() < self.p_sent:
                start, end = sents[rng.randrange(len(sents))]
                toks = tokens[start:end]
            words: List[Tuple[str, str]] = []
            for text, ws, pos, _ss in toks:
                x = rng.random()
                if not text.strip():
                    words.append((text, ws))
                elif x < self.p_mask:
                    words.append((self.mask_token, ws))
                elif x < self.p_mask + self.p_pos and pos not in SKIP_POS:
                    words.append((self._sample_word(rng, lang, pos) or text, ws))
                else:
                    words.append((text, ws))
            if words and rng.random() < self.p_ng:
                n = rng.randint(1, self.max_ngram)
                start = rng.randrange(max(len(words) - n, 0) + 1)
                words = words[start : start + n]
            text = "".join(w + ws for w, ws in words).strip()
            if text and text not in seen:
                seen.add(text)
                variants.append(text)
        return variants

    def augment_doc(self, doc: Doc, lang: str, index: int) -> List[str]:
        """Variants of a POS-tagged doc.

        doc (Doc): The doc, with ``token.pos_`` set.
        lang (str): Its language.
        index (int): Its position in the corpus (seeds its generator).
        RETURNS (List[str]): The variants.
        """
        if self.p_pos > 0 and len(doc) and not doc.has_annotation("POS"):
            raise ValueError(f"PosAugmenter: doc {index} has no POS tags: {doc.text[:60]!r}")
        return self.augment_tokens(doc_to_tokens(doc), lang, self.rng_for(index))

    def __call__(self, nlp: Language, example: Example) -> Iterator[Example]:
        """spaCy's augmenter protocol (``[corpora.train.augmenter]``).

        Yields the example, then its variants as new examples carrying the
        original's gold cats. The reference doc needs POS tags (or ``p_pos = 0``)
        and the generator is seeded from the text, so a text gets the same
        variants in every epoch.

        nlp (Language): The pipeline being trained.
        example (Example): A training example.
        YIELDS (Example): The example and its variants.
        """
        yield example
        ref = example.reference
        lang = ref.user_data.get("lang", nlp.lang)
        rng = random.Random(f"spacy-distill:{self.seed}:{ref.text}")
        for text in self.augment_tokens(doc_to_tokens(ref), lang, rng):
            doc = nlp.make_doc(text)
            doc.cats = dict(ref.cats)
            yield Example(nlp.make_doc(text), doc)


def _detok(tokens: Sequence[TokenTuple]) -> str:
    return "".join(t[0] + t[1] for t in tokens).strip()


def _sentence_spans(tokens: Sequence[TokenTuple]) -> List[Tuple[int, int]]:
    starts = [0] + [i for i, t in enumerate(tokens) if t[3]]
    ends = starts[1:] + [len(tokens)]
    return [(s, e) for s, e in zip(starts, ends) if e > s]


@registry.augmenters("spacy-distill.PosAugmenter.v1")
def create_pos_augmenter(
    n_iter: int = 20,
    p_mask: float = 0.1,
    p_pos: float = 0.1,
    p_ng: float = 0.25,
    max_ngram: int = 5,
    p_sent: float = 0.25,
    mask_token: str = "<mask>",
    seed: int = 0,
    pos_table: Optional[str] = None,
) -> PosAugmenter:
    """Registered augmenter (Tang et al. 2019 rules plus sentence sampling).

    n_iter (int): Variants per text.
    p_mask (float): Token masking probability.
    p_pos (float): Same-POS replacement probability.
    p_ng (float): N-gram sampling probability.
    max_ngram (int): Largest n-gram.
    p_sent (float): Sentence sampling probability.
    mask_token (str): The mask string.
    seed (int): Random seed.
    pos_table (Optional[str]): Path of a JSON unigram table written by
        ``spacy-distill augment --save-table`` (for use inside ``spacy train``).
    RETURNS (PosAugmenter): The augmenter.
    """
    table = srsly.read_json(pos_table) if pos_table else None
    return PosAugmenter(
        n_iter=n_iter,
        p_mask=p_mask,
        p_pos=p_pos,
        p_ng=p_ng,
        max_ngram=max_ngram,
        p_sent=p_sent,
        mask_token=mask_token,
        seed=seed,
        pos_table=table,
    )


@dataclass
class AugmentStats:
    """What an augmentation run did.

    n_texts (int): Texts read.
    n_variants (int): Variants written (originals not counted).
    """

    n_texts: int = 0
    n_variants: int = 0


def augment_file(
    augmenter: PosAugmenter,
    input_path: Path,
    output_path: Path,
    pipeline_for: Callable[[str, str], Language],
    *,
    default_lang: Optional[str] = None,
    include_original: bool = False,
    batch_size: int = 256,
    progress: bool = True,
    require_pos: Optional[Dict[str, str]] = None,
) -> AugmentStats:
    """Augment every text of a file into a JSONL of variants, atomically.

    Pass 1 tags each text with its language's pipeline, counts words per POS
    and keeps the compact tokens in a temporary file beside the output (not in
    memory); pass 2 writes ``{"text", "lang", "source", "variant"}`` lines. The
    output appears only when complete; a failure or signal removes the
    temporary files.

    augmenter (PosAugmenter): The augmenter (its tables are fitted here).
    input_path (Path): Texts (any format of ``spacy_distill.io.read_records``).
    output_path (Path): The JSONL to write.
    pipeline_for (Callable[[str, str], Language]): ``(lang, where) → pipeline``
        setting ``token.pos_`` (and sentence starts); ``where`` is ``file:line``
        for its error messages.
    default_lang (Optional[str]): Language of records without one.
    include_original (bool): Also write each original text, as variant 0.
    batch_size (int): Texts per tagging batch.
    progress (bool): Show progress (see ``spacy_distill.progress``).
    require_pos (Optional[Dict[str, str]]): Languages whose pipeline must set
        ``token.pos_`` (those given with ``--pos``), each with the name shown in
        the error: one that tags none of its texts is refused after pass 1,
        before the output is written.
    RETURNS (AugmentStats): Counts.
    """
    from spacy.util import minibatch

    from ..io import InputError, UsageError, atomic_path, count_records, read_records, scratch_file
    from ..progress import progress_bar

    stats = AugmentStats()
    total = count_records(input_path)
    # Per language: texts with tokens, and texts with POS tags. A pipeline that
    # sets no POS would silently turn every swap into a no-op.
    n_tokenized: Dict[str, int] = defaultdict(int)
    n_tagged: Dict[str, int] = defaultdict(int)
    with scratch_file(output_path, ".tokens.jsonl") as tmp_tokens:
        # Pass 1: tag and count.
        with tmp_tokens.open("w", encoding="utf8") as out:
            bar = progress_bar(total, "tag", unit="text", enabled=progress)
            for batch in minibatch(read_records(input_path), batch_size):
                by_lang: Dict[str, List[int]] = defaultdict(list)
                for j, rec in enumerate(batch):
                    code = rec.lang or default_lang
                    if not code:
                        raise InputError(rec.path or input_path, rec.line, "record has no 'lang' field and no --lang was given", doc=rec.doc)
                    pipeline_for(code, rec.where)
                    by_lang[code].append(j)
                tokens: List[Optional[List[TokenTuple]]] = [None] * len(batch)
                for code, idx in by_lang.items():
                    for j, doc in zip(idx, pipeline_for(code, "").pipe([batch[j].text for j in idx])):
                        toks = doc_to_tokens(doc)
                        if len(doc):
                            n_tokenized[code] += 1
                            n_tagged[code] += doc.has_annotation("POS")
                        augmenter.fit_tokens(toks, code)
                        tokens[j] = toks
                for j, rec in enumerate(batch):
                    out.write(json.dumps([rec.lang or default_lang, tokens[j]], ensure_ascii=False) + "\n")
                stats.n_texts += len(batch)
                bar.update(len(batch))
            bar.close()
        for code, name in (require_pos or {}).items():
            if n_tokenized[code] and not n_tagged[code]:
                raise UsageError(
                    f"--pos {code}={name}: the pipeline sets no POS (token.pos_) on any of its "
                    f"{n_tokenized[code]} text(s); use one with a morphologizer, or a tagger and an attribute_ruler"
                )
        # Pass 2: make the variants.
        with atomic_path(output_path) as tmp_out, tmp_out.open("w", encoding="utf8") as out:
            bar = progress_bar(stats.n_texts, "augment", unit="text", enabled=progress)
            with tmp_tokens.open(encoding="utf8") as f:
                for i, line in enumerate(f):
                    code, toks = json.loads(line)
                    toks = [tuple(t) for t in toks]
                    if include_original:
                        out.write(json.dumps({"text": _detok(toks), "lang": code, "source": i, "variant": 0}, ensure_ascii=False) + "\n")
                    for k, text in enumerate(augmenter.augment_tokens(toks, code, augmenter.rng_for(i)), start=1):
                        out.write(json.dumps({"text": text, "lang": code, "source": i, "variant": k}, ensure_ascii=False) + "\n")
                        stats.n_variants += 1
                    bar.update(1)
            bar.close()
    return stats
