"""Probe: the fitted character block (step `student-chars`) with the mean of the doc's static
vectors as more features of the same logistic regression: [hashed char features | s * mean vector].

Fits on every teacher-labelled doc (soft labels, as ``spacy-distill.fit_char_ngrams.v1``,
C = 10) for each scale s of the mean vector (0: the chars alone; the char rows have norm 1,
the mean vectors ~0.14) and prints the mean macro-F on dev (where s would be chosen), test and
the out-of-domain sets (reported only). Results: metrics/student_mean_vectors.md §6.

    python benchmarks/probe_chars_and_mean_vectors.py training/student_chars \
        training/teacher_vectors corpus/labelled corpus/dev.spacy corpus/test.spacy \
        ../shared/data/ood --scales 0,1,3,10 [--mix-with training/student/model-best]

With ``--mix-with``, each regression's log-odds are also mixed with that pipeline's,
(1 - w) * student + w * regression, for each of ``--mix-weights``. ``--labels`` fits each
scale once per label variant: ``teacher`` (the teacher's probabilities, as the fit callback),
``prior`` (the teacher's logits shifted per part and language without gold cats so that their
mean class distribution is uniform, as ``TeacherLabelled.v2``'s ``prior_correction``),
``gold`` (gold docs: 0.7 teacher + 0.3 gold, the student's loss's alpha), ``prior+gold``;
``--parts`` keeps only those parts of the labelled corpus.
"""

import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy
import spacy
import typer
from scipy.sparse import csr_matrix, hstack, vstack
from sklearn.linear_model import LogisticRegression
from spacy.tokens import Doc

from spacy_distill.evaluation.data import read_ood, read_test
from spacy_distill.evaluation.scoring import score
from spacy_distill.pipeline.readers import _shifted_scores, iter_labelled_docs, teacher_prior_shift
from spacy_distill.pipeline.teacher_scores import get_teacher_probs
from spacy_distill.pipeline.weights import _char_blocks, hashed_design

LANGS = ["de", "en", "es", "fr", "ja", "zh"]
LABELS = ["NEGATIVE", "POSITIVE"]


def mean_vectors(docs: List[Doc]) -> numpy.ndarray:
    """The mean static vector of each doc's tokens that have one (zeros if none)."""
    vectors = docs[0].vocab.vectors
    table = numpy.asarray(vectors.data)
    out = numpy.zeros((len(docs), table.shape[1]))
    for i, doc in enumerate(docs):
        rows = [r for r in (vectors.find(key=t.orth) for t in doc) if r >= 0]
        if rows:
            out[i] = table[rows].mean(0)
    return out


def label_variant(name: str, parts: List[str], docs: List[Doc], p: numpy.ndarray) -> numpy.ndarray:
    """P(POSITIVE) of each doc under a label variant (see the module docstring)."""
    out = p.copy()
    if "prior" in name:
        groups: Dict[Tuple[str, str], List[int]] = {}
        for i, (part, doc) in enumerate(zip(parts, docs)):
            if not doc.cats:
                groups.setdefault((part, str(doc.user_data.get("lang"))), []).append(i)
        for idx in groups.values():
            rows = [[1 - p[i], p[i]] for i in idx]
            shift = teacher_prior_shift(rows)
            for i in idx:
                out[i] = _shifted_scores(docs[i], LABELS, shift)[0]["POSITIVE"]
    if "gold" in name:
        for i, doc in enumerate(docs):
            if doc.cats:
                out[i] = 0.7 * out[i] + 0.3 * doc.cats["POSITIVE"]
    return out


def main(
    chars_path: Path = typer.Argument(..., exists=True, help="The fitted char block's pipeline"),
    vectors_path: Path = typer.Argument(..., exists=True, help="A pipeline with the static vectors"),
    labelled: Path = typer.Argument(..., exists=True, help="Teacher-labelled DocBins"),
    dev: Path = typer.Argument(..., exists=True, help="Gold dev DocBin"),
    test: Path = typer.Argument(..., exists=True, help="Gold test DocBin"),
    ood_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Out-of-domain .tsv sets"),
    scales: str = typer.Option("0,1,3,10", "--scales", help="Scales of the mean vector, comma-separated"),
    C: float = typer.Option(10.0, "--c", help="Inverse L2 strength"),
    mix_with: Optional[Path] = typer.Option(None, "--mix-with", exists=True, help="A pipeline (the student) to mix each regression's log-odds with"),
    mix_weights: str = typer.Option("0.6,0.7,0.8,0.9,1.0", "--mix-weights", help="Weights of the regression in the mix"),
    label_variants: str = typer.Option("teacher", "--labels", help="Label variants: teacher, prior, gold, prior+gold"),
    keep_parts: str = typer.Option("", "--parts", help="Parts of the labelled corpus to fit on (default: all)"),
) -> None:
    """Print the mean macro-F of each joint regression on each set."""
    chars, vec = spacy.load(chars_path), spacy.load(vectors_path)
    (extractor, linear), = _char_blocks(chars.get_pipe("textcat").model)
    length = linear.get_dim("length")
    start = time.time()
    kept = set(keep_parts.split(",")) if keep_parts else None
    pairs = [(part, doc) for part, doc in iter_labelled_docs(labelled, vec.vocab, require_teacher=True) if kept is None or part in kept]
    parts, docs = [part for part, _ in pairs], [doc for _, doc in pairs]
    p = numpy.asarray([get_teacher_probs(doc)["POSITIVE"] for doc in docs])
    train_x, train_v = hashed_design(extractor, length, docs), mean_vectors(docs)
    typer.echo(f"{len(docs)} docs, features in {time.time() - start:.0f}s; mean vector norm {numpy.linalg.norm(train_v, axis=1).mean():.3f}")
    sets: Dict[str, Tuple[List[str], List[Tuple[str, str]]]] = {"dev": read_test(dev, LANGS), "test": read_test(test, LANGS)}
    for path in sorted(ood_dir.glob("*.tsv")):
        sets[path.stem] = read_ood(path)
    features = {}
    for name, (texts, gold) in sets.items():
        set_docs = [vec.make_doc(text) for text in texts]
        features[name] = (hashed_design(extractor, length, set_docs), mean_vectors(set_docs), gold)
    student_odds = {}
    if mix_with is not None:
        student = spacy.load(mix_with)
        for name, (texts, _) in sets.items():
            p_pos = numpy.asarray([doc.cats["POSITIVE"] for doc in student.pipe(texts, batch_size=256)])
            p_pos = numpy.clip(p_pos, 1e-7, 1 - 1e-7)
            student_odds[name] = numpy.log(p_pos / (1 - p_pos))
    y = numpy.r_[numpy.ones(len(docs)), numpy.zeros(len(docs))]
    for variant, s in [(v, float(x)) for v in label_variants.split(",") for x in scales.split(",")]:
        q = label_variant(variant, parts, docs, p)
        weights = numpy.r_[q, 1 - q]
        start = time.time()
        X = hstack([train_x, csr_matrix(train_v * s)]).tocsr() if s else train_x
        regression = LogisticRegression(C=C, max_iter=2000).fit(vstack([X, X]).tocsr(), y, sample_weight=weights)
        scores = []
        mixes: Dict[float, List[str]] = {}
        for name, (x, v, gold) in features.items():
            odds = regression.decision_function(hstack([x, csr_matrix(v * s)]).tocsr() if s else x)
            langs = sorted({lang for lang, _ in gold})
            pred = [LABELS[int(z > 0)] for z in odds]
            scores.append(f"{name} {score(gold, pred, langs, LABELS)['mean']['macro_f']:.2f}")
            for w in ([float(x) for x in mix_weights.split(",")] if student_odds else []):
                mixed = [LABELS[int(z > 0)] for z in (1 - w) * student_odds[name] + w * odds]
                mixes.setdefault(w, []).append(f"{name} {score(gold, mixed, langs, LABELS)['mean']['macro_f']:.2f}")
        typer.echo(f"labels={variant} s={s} (P(POSITIVE) {q.mean():.3f}; {time.time() - start:.0f}s): " + "  ".join(scores))
        for w, mix_parts in mixes.items():
            typer.echo(f"  mixed with the student, w={w}: " + "  ".join(mix_parts))


if __name__ == "__main__":
    typer.run(main)
