"""Probe: what does the mean of a doc's static teacher vectors carry, in and out of domain?

Logistic regressions (scikit-learn, gold labels of the train reviews only, no teacher
labels) over (a) the mean of each doc's static vectors (``MeanStaticVectors``, the
block of ``spacy-distill.MeanVectorsBOW.v1``), (b) character 1-4-grams inside words
(tf-idf, ``char_wb``, as the student's ``CharNgramBOW``), (c) both. Scored on the gold
dev set (mean macro-F over languages, what a choice may use) and the out-of-domain
sets (reported only). A probe of features, not a student: it made the case for the
mean-vectors block (metrics/student_mean_vectors.md).

    python benchmarks/probe_mean_vectors.py training/teacher_vectors corpus/train.spacy \
        corpus/dev.spacy ../shared/data/ood [--dims 64]

scikit-learn is needed here only (it comes with the dev extra's sentence-transformers).
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy
import spacy
import typer
from spacy.tokens import DocBin

from spacy_distill.evaluation.data import read_ood, read_test
from spacy_distill.evaluation.scoring import score
from spacy_distill.pipeline.mean_vectors import MeanStaticVectors

LABELS = ["NEGATIVE", "POSITIVE"]


def mean_vectors(nlp: spacy.language.Language, texts: List[str]) -> numpy.ndarray:
    """The mean static vector of each text, by the student's layer itself."""
    layer = MeanStaticVectors()
    docs = list(nlp.tokenizer.pipe(texts))
    layer.initialize(X=docs[:1])
    return numpy.concatenate([layer.predict(docs[i : i + 1000]) for i in range(0, len(docs), 1000)])


def main(
    vectors: Path = typer.Argument(..., exists=True, help="Pipeline folder with the static vectors (the `vectors` step)"),
    train: Path = typer.Argument(..., exists=True, help="Gold train DocBin"),
    dev: Path = typer.Argument(..., exists=True, help="Gold dev DocBin"),
    ood_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Out-of-domain .tsv sets"),
    dims: Optional[int] = typer.Option(None, "--dims", help="Keep the first DIMS vector columns (PCA order)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Print dev and out-of-domain macro-F of the three feature sets."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    nlp = spacy.load(vectors)
    if dims is not None:
        nlp.vocab.vectors.data = numpy.ascontiguousarray(nlp.vocab.vectors.data[:, :dims])
    langs = sorted({doc.user_data.get("lang") for doc in DocBin().from_disk(dev).get_docs(nlp.vocab)})
    sets: Dict[str, Tuple[List[str], List[Tuple[str, str]]]] = {"train": read_test(train, langs), "dev": read_test(dev, langs)}
    for path in sorted(ood_dir.glob("*.tsv")):
        sets[path.stem] = read_ood(path)
    dense = {name: mean_vectors(nlp, texts) for name, (texts, _) in sets.items()}
    mu, sd = dense["train"].mean(axis=0), dense["train"].std(axis=0) + 1e-6
    # Standardized, and scaled so the block's total norm is comparable to one tf-idf row's.
    dense = {name: (X - mu) / sd / numpy.sqrt(X.shape[1]) for name, X in dense.items()}
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=2)
    chars.fit(sets["train"][0])
    sparse = {name: chars.transform(texts) for name, (texts, _) in sets.items()}
    features = {
        "mean vectors": lambda name: dense[name],
        "char 1-4-grams": lambda name: sparse[name],
        "char 1-4-grams + mean vectors": lambda name: hstack([sparse[name], csr_matrix(dense[name])]).tocsr(),
    }
    y = [label for _, label in sets["train"][1]]
    typer.echo(f"vectors {nlp.vocab.vectors.shape}; train {len(y)} gold docs")
    for feature, get in features.items():
        model = LogisticRegression(C=10.0, max_iter=3000, random_state=seed).fit(get("train"), y)
        parts = []
        for name, (_, gold) in sets.items():
            if name == "train":
                continue
            set_langs = sorted({lang for lang, _ in gold})
            result = score(gold, list(model.predict(get(name))), set_langs, LABELS)
            per_lang = " ".join(f"{lang} {result['per_lang'][lang]['macro_f']:.1f}" for lang in set_langs) if name == "dev" else ""
            parts.append(f"{name} {result['mean']['macro_f']:.1f}" + (f" ({per_lang})" if per_lang else ""))
        typer.echo(f"{feature:32s} " + "; ".join(parts))


if __name__ == "__main__":
    typer.run(main)
