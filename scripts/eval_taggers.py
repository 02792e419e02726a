"""Report each POS tagger's UPOS accuracy and segmentation agreement on held-out UD sentences.

UPOS accuracy is spaCy's ``pos_acc`` on raw text: a gold token counts as right
only if one predicted token aligns to it with the right tag, so segmentation errors
count as tagging errors. ``upos_acc_matched`` is the accuracy on the tokens whose
span matches a gold token. Segmentation agreement is the token F1 of the tagger's own tokenizer
against the UD tokens, matching tokens by character span (whitespace ignored).
"""

from pathlib import Path
from typing import Dict, List, Set, Tuple

import spacy
import typer
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from spacy_distill.io import write_json, write_text
from spacy_distill.project import run, split_langs

Span = Tuple[int, int]


def char_spans(tokens: List[str]) -> Set[Span]:
    """Token spans in the text with all whitespace removed.

    tokens (List[str]): Token texts in order.
    RETURNS (Set[Span]): (start, end) offsets over non-space characters.
    """
    spans: Set[Span] = set()
    pos = 0
    for tok in tokens:
        n = len("".join(tok.split()))
        if n:
            spans.add((pos, pos + n))
            pos += n
    return spans


def segmentation_prf(gold: List[Doc], pred: List[Doc]) -> Dict[str, float]:
    """Token precision, recall and F1 of predicted vs gold segmentation.

    gold (List[Doc]): Reference docs (UD tokens).
    pred (List[Doc]): The same texts as tokenized by the pipeline.
    RETURNS (Dict[str, float]): "p", "r", "f" in percent.
    """
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        gs = char_spans([t.text for t in g])
        ps = char_spans([t.text for t in p])
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_gold if n_gold else 0.0
    f = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"p": 100 * prec, "r": 100 * rec, "f": 100 * f}


def matched_upos_acc(gold: List[Doc], pred: List[Doc]) -> float:
    """UPOS accuracy over the predicted tokens whose span matches a gold token exactly.

    gold (List[Doc]): Reference docs with POS.
    pred (List[Doc]): Tagged docs.
    RETURNS (float): Accuracy in percent.
    """
    right = total = 0
    for g, p in zip(gold, pred):
        gold_pos = {}
        pos = 0
        for tok in g:
            n = len("".join(tok.text.split()))
            if n:
                gold_pos[(pos, pos + n)] = tok.pos_
                pos += n
        pos = 0
        for tok in p:
            n = len("".join(tok.text.split()))
            if not n:
                continue
            span = (pos, pos + n)
            pos += n
            if span in gold_pos and gold_pos[span]:
                total += 1
                right += int(tok.pos_ == gold_pos[span])
    return 100 * right / total if total else 0.0


def main(
    taggers_dir: Path = typer.Argument(..., help="Folder with <lang>/model-best"),
    ud_dir: Path = typer.Argument(..., help="UD DocBins, <lang>/heldout.spacy"),
    output_json: Path = typer.Argument(..., help="Output JSON (metrics/taggers.json)"),
    output_md: Path = typer.Argument(..., help="Output markdown table (metrics/taggers.md)"),
    langs: str = typer.Option("de,en,es,fr,ja,zh", "--langs", help="Languages"),
) -> None:
    """Evaluate the taggers and write JSON + a markdown table.

    taggers_dir (Path): Trained taggers.
    ud_dir (Path): UD DocBins.
    output_json (Path): JSON results.
    output_md (Path): Markdown table.
    langs (str): Comma-separated language codes.
    """
    results: Dict[str, Dict[str, float]] = {}
    for lang in split_langs(langs):
        nlp = spacy.load(taggers_dir / lang / "model-best")
        gold = list(DocBin().from_disk(ud_dir / lang / "heldout.spacy").get_docs(nlp.vocab))
        scores = nlp.evaluate([Example(nlp.make_doc(g.text), g) for g in gold])
        pred = list(nlp.pipe(g.text for g in gold))
        seg = segmentation_prf(gold, pred)
        results[lang] = {
            "tokenizer": nlp.config["nlp"]["tokenizer"]["@tokenizers"],
            "heldout_sentences": len(gold),
            "heldout_tokens": sum(len(g) for g in gold),
            "upos_acc": 100 * float(scores["pos_acc"]),
            "upos_acc_matched": matched_upos_acc(gold, pred),
            "seg_p": seg["p"],
            "seg_r": seg["r"],
            "seg_f": seg["f"],
        }
        typer.echo(
            f"{lang}: UPOS acc {results[lang]['upos_acc']:.1f} "
            f"(on matched tokens {results[lang]['upos_acc_matched']:.1f}), segmentation F1 {seg['f']:.1f}"
        )
    write_json(output_json, results)
    lines = [
        "| lang | tokenizer | held-out sents | UPOS acc | UPOS acc (matched tokens) | seg. P | seg. R | seg. F1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for lang, r in results.items():
        lines.append(
            f"| {lang} | `{r['tokenizer']}` | {r['heldout_sentences']} | {r['upos_acc']:.1f} | {r['upos_acc_matched']:.1f} | "
            f"{r['seg_p']:.1f} | {r['seg_r']:.1f} | {r['seg_f']:.1f} |"
        )
    write_text(output_md, "\n".join(lines) + "\n")


if __name__ == "__main__":
    run(main)
