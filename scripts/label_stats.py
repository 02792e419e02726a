"""What the teacher's soft labels look like: class balance per part and language.

The student can only be as balanced as its targets, so this summarises, for each
part of the labelled corpus (gold train docs, augmented variants, transfer text)
and each language: the number of docs, the mean teacher P(label), the share of
docs whose teacher argmax is each label, and, where docs have gold cats, the
teacher's accuracy against them. ``--extra`` adds the parts of a second labelled
folder (``corpus/labelled_more``, which only the fitted linear blocks read); a
part whose DocBins hold no docs is reported with 0 docs.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import typer
from spacy.tokens import DocBin

from spacy_distill.io import write_json, write_text
from spacy_distill.pipeline.teacher_scores import get_teacher_probs
from spacy_distill.project import run


def summarise(labelled: Path, parts: List[str]) -> Dict[str, Any]:
    """Per part and language: docs, mean teacher probabilities, argmax shares, gold agreement.

    labelled (Path): The labelled corpus folder (one subfolder of DocBins per part).
    parts (List[str]): Subfolders to read.
    RETURNS (Dict[str, Any]): {part: {lang: stats}} with an "all" entry per part; {} for a
        part whose DocBins hold no docs.
    """
    vocab = spacy.blank("xx").vocab
    out: Dict[str, Any] = {}
    for part in parts:
        files = sorted((labelled / part).glob("**/*.spacy"))
        if not files:
            raise typer.BadParameter(f"{labelled / part}: no .spacy files (run the label step first)")
        probs: Dict[str, List[Dict[str, float]]] = defaultdict(list)
        agree: Dict[str, List[bool]] = defaultdict(list)
        for path in files:
            for i, doc in enumerate(DocBin().from_disk(path).get_docs(vocab)):
                p = get_teacher_probs(doc)
                if not p:
                    raise ValueError(f"{path}: doc {i} has no teacher probabilities")
                # The labelled docs share one xx vocab: the review's language is in user_data.
                for key in (doc.user_data.get("lang") or doc.lang_, "all"):
                    probs[key].append(p)
                    if doc.cats:
                        agree[key].append(max(p, key=p.get) == max(doc.cats, key=doc.cats.get))
        out[part] = {lang: _stats(rows, agree.get(lang, [])) for lang, rows in sorted(probs.items())}
    return out


def _stats(rows: List[Dict[str, float]], agree: List[bool]) -> Dict[str, Any]:
    labels = sorted(rows[0])
    n = len(rows)
    stats: Dict[str, Any] = {
        "n_docs": n,
        "mean_prob": {lb: sum(r[lb] for r in rows) / n for lb in labels},
        "argmax_share": {lb: sum(max(r, key=r.get) == lb for r in rows) / n for lb in labels},
    }
    if agree:
        stats["gold_accuracy"] = sum(agree) / len(agree)
    return stats


def main(
    labelled: Path = typer.Argument(..., help="corpus/labelled"),
    output_prefix: Path = typer.Argument(..., help="Writes <prefix>.json and <prefix>.md"),
    parts: str = typer.Option("gold,augmented,transfer,ud", "--parts", help="Comma-separated subfolders"),
    extra: Optional[Path] = typer.Option(None, "--extra", help="A second labelled folder (corpus/labelled_more): every subfolder is a part too"),
    label: str = typer.Option("POSITIVE", "--label", help="Label whose share the table shows"),
) -> None:
    """Summarise the teacher's labels of the labelled corpus.

    labelled (Path): Labelled corpus folder.
    output_prefix (Path): Output prefix.
    parts (str): Parts to read.
    extra (Optional[Path]): A second labelled folder whose subfolders are summarised too.
    label (str): Label for the markdown table.
    """
    summary = summarise(labelled, [p for p in parts.split(",") if p])
    if extra is not None:
        if not extra.is_dir():
            raise typer.BadParameter(f"{extra}: not a folder (run the label-more step first)", param_hint="--extra")
        more = summarise(extra, sorted(d.name for d in extra.iterdir() if d.is_dir()))
        clash = sorted(set(more) & set(summary))
        if clash:
            raise typer.BadParameter(f"{extra}: parts {clash} are also parts of {labelled}", param_hint="--extra")
        summary.update(more)
    write_json(output_prefix.with_suffix(".json"), summary)
    lines = [
        f"| part | lang | docs | mean P({label}) | argmax {label} | teacher = gold |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for part, by_lang in summary.items():
        if not by_lang:
            lines.append(f"| {part} | all | 0 | - | - | - |")
        for lang, s in by_lang.items():
            gold = f"{100 * s['gold_accuracy']:.1f} %" if "gold_accuracy" in s else "-"
            lines.append(
                f"| {part} | {lang} | {s['n_docs']:,} | {s['mean_prob'].get(label, float('nan')):.3f} | "
                f"{100 * s['argmax_share'].get(label, float('nan')):.1f} % | {gold} |"
            )
    write_text(output_prefix.with_suffix(".md"), "\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    run(main)
