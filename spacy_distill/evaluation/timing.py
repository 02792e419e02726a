"""Speed of systems: tokens/s and docs/s, batched (``nlp.pipe``) and one doc at a
time (``nlp(text)``), with the timing passes of several systems interleaved so
that their ratios compare the same stretches of a shared machine's time."""

import time
from typing import Any, Callable, Dict, List

from thinc.api import Model

from ..progress import progress_bar


def _timed_passes(run_once: Callable[[], List[Any]], min_seconds: float) -> Dict[str, float]:
    """Repeat a pass over the texts until ``min_seconds`` have passed; rates over all passes.

    run_once (Callable[[], List[Any]]): Processes every text once, returns the docs.
    min_seconds (float): Minimum total time (fast systems get several passes).
    RETURNS (Dict[str, float]): seconds, tokens, docs, passes, tokens_per_s, docs_per_s.
    """
    seconds = 0.0
    n_tokens = n_docs = passes = 0
    while passes == 0 or seconds < min_seconds:
        start = time.perf_counter()
        docs = run_once()
        seconds += time.perf_counter() - start
        n_tokens += sum(len(doc) for doc in docs)
        n_docs += len(docs)
        passes += 1
    return {"seconds": seconds, "tokens": n_tokens, "docs": n_docs, "passes": passes,
            "tokens_per_s": n_tokens / seconds, "docs_per_s": n_docs / seconds}


def time_system(nlp: Any, texts: List[str], batch_size: int, n_warmup: int, min_seconds: float = 0.0) -> Dict[str, Dict[str, float]]:
    """Tokens/s and docs/s, batched and one doc at a time, of one system.

    nlp (Any): The system.
    texts (List[str]): The timed texts.
    batch_size (int): Batch size for ``pipe``.
    n_warmup (int): Docs processed before timing.
    min_seconds (float): Repeat each measurement until this much time has passed.
    RETURNS (Dict[str, Dict[str, float]]): {"batch": {...}, "single": {...}}.
    """
    return time_systems({"system": nlp}, texts, batch_size, n_warmup, min_seconds, rounds=1)["system"]


def time_systems(
    systems: Dict[str, Any], texts: List[str], batch_size: int, n_warmup: int, min_seconds: float = 0.0, rounds: int = 3,
    progress: bool = False,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Tokens/s and docs/s of several systems, their timing passes interleaved.

    The load of a shared machine drifts within a run (the same two systems were
    timed 58.7x and 104.7x apart in one session), so each system's time is
    gathered in ``rounds`` slices, taken in turn (A B A B ...), and a ratio
    between two systems compares the same stretches of time.

    systems (Dict[str, Any]): Name → system.
    texts (List[str]): The timed texts.
    batch_size (int): Batch size for ``pipe``.
    n_warmup (int): Docs processed by each system before timing.
    min_seconds (float): Minimum total time per system and mode, split over the rounds.
    rounds (int): Interleaved slices per system and mode.
    progress (bool): Show progress.
    RETURNS (Dict[str, Dict[str, Dict[str, float]]]): Name → {"batch": {...}, "single": {...}}.
    """
    for nlp in systems.values():
        list(nlp.pipe(texts[:n_warmup], batch_size=batch_size))
    runs = {
        "batch": lambda nlp: (lambda: list(nlp.pipe(texts, batch_size=batch_size))),
        "single": lambda nlp: (lambda: [nlp(text) for text in texts]),
    }
    out: Dict[str, Dict[str, Dict[str, float]]] = {name: {} for name in systems}
    # Progress in timing slices (each takes at least min_seconds / rounds).
    bar = progress_bar(len(runs) * max(1, rounds) * len(systems), "timing", unit="slice", enabled=progress)
    for mode, make_run in runs.items():
        totals = {name: {"seconds": 0.0, "tokens": 0, "docs": 0, "passes": 0} for name in systems}
        for _ in range(max(1, rounds)):
            for name, nlp in systems.items():
                part = _timed_passes(make_run(nlp), min_seconds / max(1, rounds))
                for key in totals[name]:
                    totals[name][key] += part[key]
                bar.update(1)
        for name, t in totals.items():
            out[name][mode] = {**t, "rounds": max(1, rounds), "tokens_per_s": t["tokens"] / t["seconds"], "docs_per_s": t["docs"] / t["seconds"]}
    bar.close()
    return out


def time_layers(model: Model, run: Callable[[], Any], repeats: int = 1) -> List[Dict[str, Any]]:
    """Wall time spent in each layer of a thinc model while ``run`` runs.

    Every node's forward function is wrapped with a timer for the duration of the
    call (and restored afterwards, also on error), so the times are of the real
    code path; a node's ``seconds`` include its children's, ``self_seconds`` do
    not. Nested timers add ~0.2 µs per layer call: compare layers, not totals.

    model (Model): The model whose layers are timed (e.g. a component's ``model``).
    run (Callable[[], Any]): Runs the model (e.g. ``lambda: textcat.predict(docs)``).
    repeats (int): Calls of ``run``; the times are per call.
    RETURNS (List[Dict[str, Any]]): One row per layer, in ``model.walk()``'s
        depth-first order: path (child indices from the root, "" for the root),
        depth, name, calls, seconds, self_seconds.
    """
    if repeats < 1:
        raise ValueError(f"time_layers: repeats must be at least 1, got {repeats}")
    rows: List[Dict[str, Any]] = []
    by_id: Dict[int, Dict[str, Any]] = {}
    nodes: Dict[int, Model] = {}
    children: Dict[int, List[int]] = {}

    def visit(node: Model, path: str, depth: int) -> None:
        # A layer shared between branches is timed once, where the walk first meets it.
        if node.id in by_id:
            return
        by_id[node.id] = {"path": path, "depth": depth, "name": node.name, "calls": 0, "seconds": 0.0}
        rows.append(by_id[node.id])
        nodes[node.id] = node
        children[node.id] = []
        for i, child in enumerate(node.layers):
            if child.id not in by_id:
                children[node.id].append(child.id)
            visit(child, f"{path}.{i}" if path else str(i), depth + 1)

    visit(model, "", 0)
    originals = {node_id: node._func for node_id, node in nodes.items()}

    def timed(func: Callable, row: Dict[str, Any]) -> Callable:
        def forward(node: Model, X: Any, is_train: bool) -> Any:
            start = time.perf_counter()
            try:
                return func(node, X, is_train)
            finally:
                row["seconds"] += time.perf_counter() - start
                row["calls"] += 1
        return forward

    try:
        for node_id, node in nodes.items():
            node._func = timed(originals[node_id], by_id[node_id])
        for _ in range(repeats):
            run()
    finally:
        for node_id, node in nodes.items():
            node._func = originals[node_id]

    def timed_below(node_id: int) -> float:
        # A layer may call its grandchildren's forward directly (a combinator that
        # never calls a chain it holds): look through children that ran no call.
        return sum(by_id[c]["seconds"] if by_id[c]["calls"] else timed_below(c) for c in children[node_id])

    # Self times from the totals first: timed_below reads the children's totals.
    self_seconds = {node_id: max(0.0, row["seconds"] - timed_below(node_id)) for node_id, row in by_id.items()}
    for node_id, row in by_id.items():
        row["self_seconds"] = self_seconds[node_id] / repeats
        row["seconds"] /= repeats
        row["calls"] //= repeats
    return rows


__all__ = ["time_layers", "time_system", "time_systems"]
