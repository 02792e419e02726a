"""Where a trained student's time goes: wall time per layer of its textcat model,
batched (one ``predict`` over the docs) and one doc at a time, on the test docs
``evaluate`` times (the same seeded sample per language).

    python benchmarks/profile_student.py training/student_mix corpus/test.spacy \
        -o metrics/student_profile.md [--n 50] [--seed 0] [--repeats 5]

Tokenization is timed apart (``nlp.make_doc``). Each layer's time includes its
children's; "self" is its own code. Run with nothing else on the machine.
"""

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import spacy
import typer

from spacy_distill.evaluation.data import read_test, sample_per_lang
from spacy_distill.evaluation.timing import time_layers
from spacy_distill.io import write_json, write_text

LANGS = "de,en,es,fr,ja,zh"


def _table(rows: List[Dict[str, Any]], n_docs: int, n_tokens: int, max_depth: int) -> List[str]:
    total = rows[0]["seconds"]
    lines = ["| layer | calls | ms | self ms | share |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        if row["depth"] > max_depth:
            continue
        name = row["name"] if len(row["name"]) <= 70 else row["name"][:67] + "..."
        indent = "&nbsp;&nbsp;" * row["depth"]
        lines.append(
            f"| {indent}`{name}` | {row['calls']} | {1000 * row['seconds']:.1f} | {1000 * row['self_seconds']:.1f} "
            f"| {100 * row['seconds'] / total:.0f} % |"
        )
    lines.append("")
    lines.append(f"{n_docs} docs, {n_tokens} tokens: {n_tokens / total:,.0f} tokens/s in the model.")
    return lines


def _seconds(run: Callable[[], Any], repeats: int) -> float:
    """Mean wall time of ``run`` over ``repeats`` calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def main(
    pipeline: Path = typer.Argument(..., help="Trained pipeline with a textcat component"),
    test: Path = typer.Argument(..., help="Test DocBin (corpus/test.spacy)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Markdown report (and a .json beside it)"),
    n: int = typer.Option(50, help="Docs per language (evaluate's n_speed)"),
    seed: int = typer.Option(0, help="Seed of the sample (evaluate's seed)"),
    langs: str = typer.Option(LANGS, help="Comma-separated languages"),
    repeats: int = typer.Option(5, help="Timed passes per mode"),
    max_depth: int = typer.Option(6, help="Deepest layer shown in the table"),
) -> None:
    """Time each layer of a student's textcat model, batched and one doc at a time.

    pipeline (Path): The trained pipeline.
    test (Path): The test DocBin.
    output (Optional[Path]): Markdown report; its .json has every layer.
    n (int): Docs per language.
    seed (int): Seed of the sample.
    langs (str): Languages.
    repeats (int): Timed passes per mode.
    max_depth (int): Deepest layer in the table.
    """
    lang_list = [lang for lang in langs.split(",") if lang]
    texts, gold = read_test(test, lang_list)
    texts = [texts[i] for i in sample_per_lang(gold, lang_list, n, f"{seed}:speed")]
    nlp = spacy.load(pipeline)
    textcat = nlp.get_pipe("textcat")
    docs = [nlp.make_doc(text) for text in texts]
    n_tokens = sum(len(doc) for doc in docs)
    textcat.predict(docs)  # warm-up: caches, lazy allocations
    tokenize_s = _seconds(lambda: [nlp.make_doc(text) for text in texts], repeats)
    batched = time_layers(textcat.model, lambda: textcat.predict(docs), repeats)
    single = time_layers(textcat.model, lambda: [textcat.predict([doc]) for doc in docs], repeats)
    # The same passes without the layer timers, and a one-token doc one at a time: what a
    # call costs whatever the text (the per-layer and per-op overhead of the model).
    word = next((doc[0].text for doc in docs if len(doc)), "")
    one_token = [nlp.make_doc(word)] * len(docs)
    untimed = {
        "batched": _seconds(lambda: textcat.predict(docs), repeats),
        "single": _seconds(lambda: [textcat.predict([doc]) for doc in docs], repeats),
        "one_token": _seconds(lambda: [textcat.predict([doc]) for doc in one_token], repeats),
    }
    lines = [
        f"# Where the student's time goes: `{pipeline}`",
        "",
        f"`python benchmarks/profile_student.py {pipeline} {test} --n {n} --seed {seed} --repeats {repeats}`; "
        f"tokenization (`nlp.make_doc`): {1000 * tokenize_s:.1f} ms for the {len(docs)} docs "
        f"({n_tokens / tokenize_s:,.0f} tokens/s).",
        "",
        "## Batched (one `predict` over all docs)",
        "",
        *_table(batched, len(docs), n_tokens, max_depth),
        "",
        "## One doc at a time (`predict([doc])` per doc)",
        "",
        *_table(single, len(docs), n_tokens, max_depth),
        "",
        "## Without the layer timers",
        "",
        f"Batched: {1000 * untimed['batched']:.1f} ms for the {len(docs)} docs; one doc at a time: "
        f"{1e6 * untimed['single'] / len(docs):.0f} µs a doc; a one-token doc one at a time: "
        f"{1e6 * untimed['one_token'] / len(docs):.0f} µs a doc (the cost of a call whatever its text).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if output is not None:
        write_text(output, report)
        data = {"pipeline": str(pipeline), "docs": len(docs), "tokens": n_tokens, "tokenize_seconds": tokenize_s,
                "batched": batched, "single": single, "untimed_seconds": untimed}
        write_json(output.with_suffix(".json"), data)


if __name__ == "__main__":
    typer.run(main)
