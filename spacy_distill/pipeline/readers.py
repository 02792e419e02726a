"""A corpus reader for teacher-labelled DocBins."""

import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import registry
from spacy.vocab import Vocab

from .activations import PROB_EPS, logits_from_probs, softmax
from .teacher_scores import (
    get_teacher_logits,
    get_teacher_probs,
    has_teacher_scores,
    set_teacher_scores,
)

logger = logging.getLogger("spacy")


@registry.readers("spacy-distill.TeacherLabelled.v1")
def create_teacher_labelled_reader(
    path: Optional[Union[str, Path]],
    limit: int = 0,
    langs: Optional[List[str]] = None,
    require_teacher: bool = True,
) -> Callable[[Language], Iterable[Example]]:
    """Read DocBins written by ``spacy-distill label`` (a file or a directory).

    Like ``spacy.Corpus.v1``, but it can keep only some languages (from
    ``doc.user_data["lang"]``) and checks that every doc has teacher scores,
    naming the file and doc that has none.

    path (Optional[Union[str, Path]]): A ``.spacy`` file or a directory of
        them (None only while filling a config: reading then is an error).
    limit (int): Read at most this many docs (0 = all), after the language filter.
    langs (Optional[List[str]]): Keep only docs of these languages.
    require_teacher (bool): Raise on a doc without teacher scores.
    RETURNS (Callable[[Language], Iterable[Example]]): The reader.
    """
    root = Path(path) if path is not None else None

    def read(nlp: Language) -> Iterator[Example]:
        if root is None:
            raise ValueError("TeacherLabelled: no path given (set [paths] or the reader's path)")
        if not root.exists():
            raise ValueError(f"TeacherLabelled: {root} does not exist")
        files = sorted(root.rglob("*.spacy")) if root.is_dir() else [root]
        if not files:
            raise ValueError(f"TeacherLabelled: no .spacy files under {root}")
        n = 0
        for file in files:
            for i, doc in enumerate(DocBin().from_disk(file).get_docs(nlp.vocab)):
                if langs is not None and doc.user_data.get("lang") not in langs:
                    continue
                if require_teacher and not has_teacher_scores(doc):
                    raise ValueError(f"TeacherLabelled: {file}, doc {i} has no teacher scores: {doc.text[:60]!r}")
                yield Example(nlp.make_doc(doc.text), doc)
                n += 1
                if limit and n >= limit:
                    return

    return read


def _part(root: Path, file: Path) -> str:
    """The part a labelled file belongs to: its first folder under the root
    (``corpus/labelled/transfer/*.spacy`` -> "transfer"), or its stem for a file
    directly under it."""
    rel = file.relative_to(root) if root.is_dir() else Path(file.name)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def teacher_prior_shift(probs: Sequence[Sequence[float]]) -> numpy.ndarray:
    """The logit shift that moves the teacher's mean class distribution to uniform.

    Label-shift correction (Saerens et al. 2002) with the teacher's mean
    probability as the source prior: ``p'(c|x) ∝ p(c|x) · (1/K) / π(c)``, i.e.
    ``logit'(c) = logit(c) - log(K · π(c))``. A part of teacher-labelled text
    whose teacher calls 57 % of it POSITIVE no longer pulls the student's prior
    away from the balanced classes it is scored on.

    probs (Sequence[Sequence[float]]): Teacher probabilities, one row per doc,
        rows summing to 1 (exclusive classes).
    RETURNS (numpy.ndarray): The shift per class (float64), added to each logit.
    """
    P = numpy.asarray(probs, dtype="f8")
    if P.ndim != 2 or not len(P):
        raise ValueError("teacher_prior_shift: need a non-empty 2d array of probabilities")
    if not numpy.allclose(P.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "teacher_prior_shift: the teacher probabilities do not sum to 1 per doc; "
            "prior correction needs exclusive classes (softmax)"
        )
    prior = numpy.clip(P.mean(axis=0), PROB_EPS, 1.0)
    return -numpy.log(prior * P.shape[1])


def _shifted_scores(doc: Doc, labels: List[str], shift: numpy.ndarray) -> Tuple[Dict[str, float], Dict[str, float]]:
    """A doc's teacher (probs, logits) with ``shift`` added to its logits."""
    logits = get_teacher_logits(doc)
    if logits is None:
        logits = dict(zip(labels, logits_from_probs([get_teacher_probs(doc)[k] for k in labels], True)))
    z = numpy.asarray([logits[k] for k in labels], dtype="f8") + shift
    p = softmax(z)
    return dict(zip(labels, p.tolist())), dict(zip(labels, z.tolist()))


def iter_labelled_docs(
    root: Path,
    vocab: Vocab,
    *,
    langs: Optional[List[str]] = None,
    max_per_lang: Optional[Dict[str, int]] = None,
    require_teacher: bool = True,
) -> Iterator[Tuple[str, Doc]]:
    """The docs of a labelled corpus with their part, as ``TeacherLabelled.v2`` reads them.

    root (Path): A ``.spacy`` file or a directory of them (one folder per part).
    vocab (Vocab): The vocab to read the docs into.
    langs (Optional[List[str]]): Keep only docs of these languages.
    max_per_lang (Optional[Dict[str, int]]): Part -> docs kept per language
        (absent or negative = all), in file order.
    require_teacher (bool): Raise on a doc without teacher scores.
    YIELDS (Tuple[str, Doc]): (part, doc), files in sorted order.
    """
    if not root.exists():
        raise ValueError(f"TeacherLabelled: {root} does not exist")
    files = sorted(root.rglob("*.spacy")) if root.is_dir() else [root]
    if not files:
        raise ValueError(f"TeacherLabelled: no .spacy files under {root}")
    caps = {str(k): int(v) for k, v in (max_per_lang or {}).items()}
    counts: Dict[Tuple[str, str], int] = {}
    for file in files:
        part = _part(root, file)
        cap = caps.get(part, -1)
        if cap == 0:
            continue
        for i, doc in enumerate(DocBin(store_user_data=True).from_disk(file).get_docs(vocab)):
            lang = doc.user_data.get("lang")
            if langs is not None and lang not in langs:
                continue
            if require_teacher and not has_teacher_scores(doc):
                raise ValueError(f"TeacherLabelled: {file}, doc {i} has no teacher scores: {doc.text[:60]!r}")
            key = (part, str(lang))
            if cap >= 0 and counts.get(key, 0) >= cap:
                continue
            counts[key] = counts.get(key, 0) + 1
            yield part, doc


@registry.readers("spacy-distill.TeacherLabelled.v2")
def create_teacher_labelled_reader_v2(
    path: Optional[Union[str, Path]],
    limit: int = 0,
    langs: Optional[List[str]] = None,
    require_teacher: bool = True,
    max_per_lang: Optional[Dict[str, int]] = None,
    prior_correction: bool = False,
) -> Callable[[Language], Iterable[Example]]:
    """Read DocBins written by ``spacy-distill label``, per part, with the label prior corrected.

    v1's reader, plus two settings per *part* (the first folder under ``path``:
    ``gold``, ``augmented``, ``transfer``, ``ud`` in this project):

    * ``max_per_lang`` keeps at most that many docs per language of a part
      (in file order), so one labelled corpus gives every transfer size;
    * ``prior_correction`` shifts the teacher's logits of each part and language
      whose docs have no gold cats so that its mean class distribution becomes
      uniform (:func:`teacher_prior_shift`; the probabilities follow). Docs with
      gold cats are left as they are. The shifts are computed once, on the docs
      kept, and logged.

    path (Optional[Union[str, Path]]): A ``.spacy`` file or a directory of them.
    limit (int): Read at most this many docs (0 = all), after the filters.
    langs (Optional[List[str]]): Keep only docs of these languages.
    require_teacher (bool): Raise on a doc without teacher scores.
    max_per_lang (Optional[Dict[str, int]]): Part -> docs kept per language
        (absent or negative = all).
    prior_correction (bool): Correct the teacher's label prior per part and language.
    RETURNS (Callable[[Language], Iterable[Example]]): The reader.
    """
    root = Path(path) if path is not None else None
    shifts: Dict[Tuple[str, str], numpy.ndarray] = {}
    labels: List[str] = []

    def docs(nlp: Language) -> Iterator[Tuple[str, Doc]]:
        if root is None:
            raise ValueError("TeacherLabelled: no path given (set [paths] or the reader's path)")
        yield from iter_labelled_docs(root, nlp.vocab, langs=langs, max_per_lang=max_per_lang, require_teacher=require_teacher)

    def fit_shifts(nlp: Language) -> None:
        groups: Dict[Tuple[str, str], List[List[float]]] = {}
        for part, doc in docs(nlp):
            probs = get_teacher_probs(doc)
            if doc.cats or probs is None:
                continue
            if not labels:
                labels.extend(sorted(probs))
            groups.setdefault((part, str(doc.user_data.get("lang"))), []).append([probs[k] for k in labels])
        for key, rows in sorted(groups.items()):
            shifts[key] = teacher_prior_shift(rows)
            prior = numpy.asarray(rows).mean(axis=0)
            logger.info(
                "TeacherLabelled: prior correction of %s/%s (%d docs): teacher prior %s -> uniform",
                key[0], key[1], len(rows), ", ".join(f"{k} {v:.3f}" for k, v in zip(labels, prior)),
            )

    def read(nlp: Language) -> Iterator[Example]:
        if prior_correction and not shifts:
            fit_shifts(nlp)
        n = 0
        for part, doc in docs(nlp):
            shift = shifts.get((part, str(doc.user_data.get("lang")))) if prior_correction and not doc.cats else None
            if shift is not None:
                set_teacher_scores(doc, *_shifted_scores(doc, labels, shift))
            yield Example(nlp.make_doc(doc.text), doc)
            n += 1
            if limit and n >= limit:
                return

    return read
