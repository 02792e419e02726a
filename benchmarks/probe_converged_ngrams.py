"""Probe: how close does a *converged* linear model over character n-grams get, on the
student's own teacher labels?

Logistic regression (scikit-learn, L-BFGS to convergence) over tf-idf character 1-4-grams
within words (``char_wb``, sublinear tf), trained on the teacher's soft labels of the chosen
parts of ``corpus/labelled`` (each doc twice, weighted by the teacher's P(POSITIVE) and
1 - P(POSITIVE)), scored on the gold dev set (mean macro-F over languages). A yardstick for
the student's training, not a student (metrics/student_mean_vectors.md, section 3).

    python benchmarks/probe_converged_ngrams.py corpus/labelled corpus/dev.spacy \
        --parts gold,transfer --c 3,10,30 [--no-idf] [--min-df 1]

scikit-learn is needed here only (it comes with the dev extra's sentence-transformers).
"""

from pathlib import Path
from typing import List, Tuple

import numpy
import spacy
import typer
from spacy.tokens import DocBin

from spacy_distill.evaluation.data import read_test
from spacy_distill.evaluation.scoring import score
from spacy_distill.pipeline.teacher_scores import get_teacher_probs

LABELS = ["NEGATIVE", "POSITIVE"]


def teacher_labelled(folder: Path) -> Tuple[List[str], List[float]]:
    """Texts and the teacher's P(POSITIVE) of every DocBin under ``folder``."""
    vocab = spacy.blank("xx").vocab
    texts, probs = [], []
    for path in sorted(folder.rglob("*.spacy")):
        for doc in DocBin(store_user_data=True).from_disk(path).get_docs(vocab):
            p = get_teacher_probs(doc)
            if p is None:
                raise typer.BadParameter(f"{path}: a doc without teacher scores")
            texts.append(doc.text)
            probs.append(float(p["POSITIVE"]))
    return texts, probs


def main(
    labelled: Path = typer.Argument(..., exists=True, file_okay=False, help="corpus/labelled"),
    dev: Path = typer.Argument(..., exists=True, dir_okay=False, help="Gold dev DocBin"),
    parts: str = typer.Option("gold,transfer", "--parts", help="Labelled parts (sub-folders), comma-separated"),
    cs: str = typer.Option("10", "--c", help="Inverse L2 strengths, comma-separated"),
    idf: bool = typer.Option(True, "--idf/--no-idf"),
    min_df: int = typer.Option(2, "--min-df"),
) -> None:
    """Print the dev macro-F (mean and per language) for each C."""
    from scipy.sparse import vstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts: List[str] = []
    probs: List[float] = []
    for part in parts.split(","):
        part_texts, part_probs = teacher_labelled(labelled / part)
        texts += part_texts
        probs += part_probs
    langs = ["de", "en", "es", "fr", "ja", "zh"]
    dev_texts, dev_gold = read_test(dev, langs)
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=min_df, use_idf=idf)
    X = vectorizer.fit_transform(texts)
    X_dev = vectorizer.transform(dev_texts)
    p = numpy.asarray(probs)
    X2 = vstack([X, X]).tocsr()
    y2 = numpy.r_[numpy.ones(len(p)), numpy.zeros(len(p))]
    w2 = numpy.r_[p, 1 - p]
    typer.echo(f"{len(texts)} docs ({parts}), {X.shape[1]} features, idf={idf}, min_df={min_df}")
    for C in [float(c) for c in cs.split(",")]:
        model = LogisticRegression(C=C, max_iter=2000).fit(X2, y2, sample_weight=w2)
        pred = [LABELS[int(y)] for y in model.predict(X_dev)]
        result = score(dev_gold, pred, langs, LABELS)
        per_lang = " ".join(f"{lang} {result['per_lang'][lang]['macro_f']:.1f}" for lang in langs)
        typer.echo(f"C={C}: dev {result['mean']['macro_f']:.2f} ({per_lang})")


if __name__ == "__main__":
    typer.run(main)
