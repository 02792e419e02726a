"""The student's LSTM at inference: spacy-distill.LSTM.v1 (with numba installed, its
recurrence compiled; without, both directions in one pass of thinc's kernel; the report
says which) against thinc's own LSTM with the same weights, on the inputs the student's
LSTM gets for the test docs ``evaluate`` times, and the whole textcat model with each.

    python benchmarks/bench_lstm.py training/student_mix corpus/test.spacy \
        -o metrics/lstm_inference.md [--n 50] [--seed 0] [--rounds 8]

The two are timed in turns (A B, then B A, ...) so that they share the machine's state; the
report gives the median over the rounds and checks that their outputs are the same floats. Run with
nothing else on the machine.
"""

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy
import spacy
import typer
from thinc.api import LSTM as ThincLSTM
from thinc.api import Model, with_padded

from spacy_distill.evaluation.data import read_test, sample_per_lang
from spacy_distill.io import write_json, write_text
from spacy_distill.pipeline.lstm_numba import use_numba

LANGS = "de,en,es,fr,ja,zh"


def _lstm_node(model: Model) -> Model:
    for node in model.walk():
        if node.name == "with_padded(lstm)":
            return node
    raise ValueError("bench_lstm: the model has no with_padded(lstm) layer (not a BiLSTM student)")


def _stock_copy(node: Model) -> Model:
    """thinc's LSTM.v1 in thinc's with_padded, with the node's weights."""
    lstm = node.layers[0]
    stock = with_padded(
        ThincLSTM(nO=lstm.get_dim("nO"), nI=lstm.get_dim("nI"), bi=lstm.get_dim("dirs") == 2, depth=lstm.get_dim("depth"))
    )
    stock.initialize(X=[numpy.zeros((2, lstm.get_dim("nI")), dtype="f")])
    stock.from_bytes(node.to_bytes())
    return stock


def _lstm_inputs(model: Model, node: Model, docs: List[Any]) -> List[numpy.ndarray]:
    # Record what the LSTM layer is given during one prediction (its forward, wrapped for
    # the call, as evaluation.timing.time_layers wraps every layer).
    seen: List[numpy.ndarray] = []
    forward = node._func

    def recording(model_: Model, X: Any, is_train: bool) -> Any:
        seen.extend(X)
        return forward(model_, X, is_train)

    node._func = recording
    try:
        model.predict(docs)
    finally:
        node._func = forward
    return seen


def _median_seconds(runs: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, float]:
    times: Dict[str, List[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(rounds):
        # Every other round in reverse order: whichever pass follows another kind of pass
        # runs ~10 % slower (caches, the allocator), measured with the same code path on
        # both sides; the reversal spreads that over the variants alike.
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _variants(ours: Model, thinc: Model, inputs: List[Any]) -> Dict[str, Callable[[], Any]]:
    """The four timed passes: each model batched (one predict) and one input at a time."""
    return {
        "ours_batched": lambda: ours.predict(inputs),
        "thinc_batched": lambda: thinc.predict(inputs),
        "ours_single": lambda: [ours.predict([x]) for x in inputs],
        "thinc_single": lambda: [thinc.predict([x]) for x in inputs],
    }


def main(
    pipeline: Path = typer.Argument(..., help="A trained BiLSTM student (training/student_mix)"),
    test: Path = typer.Argument(..., help="Test DocBin (corpus/test.spacy)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Markdown report (and a .json beside it)"),
    n: int = typer.Option(50, help="Docs per language (evaluate's n_speed)"),
    seed: int = typer.Option(0, help="Seed of the sample (evaluate's seed)"),
    langs: str = typer.Option(LANGS, help="Comma-separated languages"),
    rounds: int = typer.Option(8, help="Timed rounds (each: every variant once, in turn)"),
) -> None:
    """Time the student's LSTM layer and model with spacy-distill's and thinc's LSTM.

    pipeline (Path): The trained student.
    test (Path): The test DocBin.
    output (Optional[Path]): Markdown report; its .json has the times.
    n (int): Docs per language.
    seed (int): Seed of the sample.
    langs (str): Languages.
    rounds (int): Timed rounds.
    """
    lang_list = [lang for lang in langs.split(",") if lang]
    texts, gold = read_test(test, lang_list)
    texts = [texts[i] for i in sample_per_lang(gold, lang_list, n, f"{seed}:speed")]
    nlp = spacy.load(pipeline)
    model = nlp.get_pipe("textcat").model
    docs = [nlp.make_doc(text) for text in texts]
    node = _lstm_node(model)
    stock = _stock_copy(node)
    Xs = _lstm_inputs(model, node, docs)
    # The same model with thinc's layer in place of spacy-distill's (a second copy).
    stock_model = spacy.load(pipeline).get_pipe("textcat").model
    stock_model.replace_node(_lstm_node(stock_model), _stock_copy(node))

    same_layer = all(numpy.array_equal(a, b) for a, b in zip(node.predict(Xs), stock.predict(Xs)))
    same_model = numpy.array_equal(model.predict(docs), stock_model.predict(docs)) and all(
        numpy.array_equal(model.predict([d]), stock_model.predict([d])) for d in docs
    )
    layer = _median_seconds(_variants(node, stock, Xs), rounds)
    whole = _median_seconds(_variants(model, stock_model, docs), rounds)
    n_docs, n_tokens = len(docs), sum(len(x) for x in Xs)
    kernel = (
        "the compiled recurrence (`spacy_distill/pipeline/lstm_numba.py`, numba installed)"
        if use_numba()
        else "thinc's kernel, both directions in one pass for batches of up to 64 (no numba, or `SPACY_DISTILL_LSTM_KERNEL=thinc`)"
    )

    def row(what: str, t: Dict[str, float], mode: str) -> str:
        ours, thinc = t[f"ours_{mode}"], t[f"thinc_{mode}"]
        return (
            f"| {what} | {mode} | {1e6 * thinc / n_docs:,.0f} | {1e6 * ours / n_docs:,.0f} "
            f"| {100 * (ours - thinc) / thinc:+.0f} % |"
        )

    lines = [
        f"# The student's LSTM at inference: `{pipeline}`",
        "",
        f"`python benchmarks/bench_lstm.py {pipeline} {test} --n {n} --seed {seed} --rounds {rounds}`: "
        f"{n_docs} test docs ({n_tokens:,} tokens), thinc's `LSTM.v1` and `spacy-distill.LSTM.v1` with the same "
        f"weights, timed in turns (every other round reversed), median of {rounds} rounds. Batched: one `predict` over all docs; single: one "
        "doc per `predict`.",
        "",
        "| what | mode | thinc's LSTM (µs a doc) | spacy-distill.LSTM.v1 (µs a doc) | change |",
        "|---|---|---:|---:|---:|",
        row("the LSTM layer (`with_padded(lstm)`)", layer, "batched"),
        row("the LSTM layer (`with_padded(lstm)`)", layer, "single"),
        row("the textcat model (`predict`)", whole, "batched"),
        row("the textcat model (`predict`)", whole, "single"),
        "",
        f"Same outputs (every float): the layer {'yes' if same_layer else 'NO'}, the model's logits "
        f"{'yes' if same_model else 'NO'}.",
        "",
        f"spacy-distill.LSTM.v1's inference here: {kernel}.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if output is not None:
        write_text(output, report)
        write_json(
            output.with_suffix(".json"),
            {"pipeline": str(pipeline), "docs": n_docs, "tokens": n_tokens, "rounds": rounds,
             "layer_seconds": layer, "model_seconds": whole, "same_layer": same_layer, "same_model": same_model,
             "numba_kernel": use_numba()},
        )
    if not (same_layer and same_model):
        raise SystemExit("bench_lstm: the two LSTMs gave different outputs")


if __name__ == "__main__":
    typer.run(main)
