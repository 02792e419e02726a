"""``spacy-distill augment``: augmented variants of a file of texts.

The command checks its output before any work (``io.check_output``), writes it
atomically, and reports failures as one line (``cli_errors.one_line_errors``).
"""

from pathlib import Path
from typing import Dict, List, Optional

import typer

from ..cli_errors import DEBUG_HELP, one_line_errors
from ..io import (
    InputError,
    UsageError,
    atomic_path,
    check_output,
    check_records,
)

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def parse_pos_specs(specs: List[str]) -> Dict[str, str]:
    """``["de=path", ...]`` → ``{"de": "path"}``, checking each path.

    specs (List[str]): The ``--pos`` values.
    RETURNS (Dict[str, str]): Pipeline path or package by language.
    """
    out: Dict[str, str] = {}
    for spec in specs:
        lang, sep, path = spec.partition("=")
        if not sep or not lang or not path:
            raise UsageError(f"--pos {spec!r}: expected LANG=PATH, e.g. --pos de=training/tagger-de/model-best")
        out[lang] = path
    return out


def _load_pos_pipeline(lang: str, path: Optional[str]):
    import spacy

    if path is None:
        nlp = spacy.blank(lang)
    else:
        if not Path(path).exists() and not spacy.util.is_package(path):
            raise UsageError(f"--pos {lang}={path}: no such pipeline directory or package")
        nlp = spacy.load(path)
    # Sentence sampling needs sentence boundaries; taggers trained for
    # augmentation usually have none, so add the rule-based sentencizer
    # (its punctuation list covers 。！？ too).
    if not any(nlp.get_pipe_meta(n).factory in ("parser", "senter", "sentencizer") for n in nlp.pipe_names):
        nlp.add_pipe("sentencizer")
    return nlp


def augment_command(
    ctx: typer.Context,
    input_path: Path = typer.Argument(..., help="Texts: .jsonl/.ndjson ({\"text\", \"lang\"?} per line), .csv (text, lang? columns), .txt, or .spacy DocBin(s)."),
    output_path: Path = typer.Argument(..., help="Output JSONL: {\"text\", \"lang\", \"source\", \"variant\"} per variant."),
    config_path: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Config with an \\[augment] block (@augmenters = \"spacy-distill.PosAugmenter.v1\"). Dotted overrides such as --augment.n_iter 2 follow the options."
    ),
    pos: List[str] = typer.Option(
        [], "--pos", help="LANG=PIPELINE: a spaCy pipeline that sets token.pos_ for that language. Repeat per language."
    ),
    lang: Optional[str] = typer.Option(None, "--lang", help="Language of records that have no 'lang' field."),
    save_table: Optional[Path] = typer.Option(None, "--save-table", help="Also write the POS unigram tables (JSON)."),
    include_original: bool = typer.Option(False, "--include-original", help="Write each original text too (variant 0)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Texts per tagging batch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (never an input or a directory)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress: a bar on a terminal, a line every 30 s in a log."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Augment texts: mask words, swap same-POS words, sample n-grams and sentences.

    Pass 1 tags every text with its language's POS pipeline and counts words per
    POS; pass 2 writes up to n_iter distinct variants per text. Seeded: the
    same config and input give byte-identical output.
    """
    _augment(
        ctx, input_path, output_path, config_path=config_path, pos=pos, lang=lang, save_table=save_table,
        include_original=include_original, batch_size=batch_size, overwrite=overwrite, progress=progress, debug=debug,
    )


@one_line_errors
def _augment(
    ctx: typer.Context, input_path: Path, output_path: Path, *, config_path: Optional[Path], pos: List[str],
    lang: Optional[str], save_table: Optional[Path], include_original: bool, batch_size: int, overwrite: bool,
    progress: bool, debug: bool,
) -> None:
    import srsly
    from spacy.cli._util import parse_config_overrides
    from spacy.util import load_config, registry

    from .augmenter import PosAugmenter, augment_file

    if not input_path.exists():
        raise InputError(input_path, None, "no such file or directory")
    inputs = [input_path] + ([config_path] if config_path else [])
    check_output(output_path, inputs=inputs, overwrite=overwrite)
    if save_table is not None:
        check_output(save_table, inputs=inputs, outputs=[output_path], overwrite=overwrite, name="--save-table")
    overrides = parse_config_overrides(ctx.args)
    if config_path is not None:
        if not config_path.exists():
            raise UsageError(f"--config {config_path}: config file not found")
        config = load_config(config_path, overrides=overrides, interpolate=True)
        if "augment" not in config:
            raise UsageError(f"--config {config_path}: no [augment] section")
        augmenter = registry.resolve({"augment": config["augment"]})["augment"]
    else:
        if overrides:
            raise UsageError(f"overrides {sorted(overrides)} need a --config with an [augment] section")
        augmenter = PosAugmenter()
    pos_paths = parse_pos_specs(pos)
    # Read the input once before any POS pipeline loads: a corrupt or over-long
    # record fails at its file:line first.
    check_records(input_path)
    pipelines: Dict[str, object] = {}

    def pipeline_for(code: str, where: str):
        if code not in pipelines:
            if code not in pos_paths and augmenter.p_pos > 0:
                raise InputError(
                    where, None,
                    f"language {code!r} has no POS pipeline (given: {sorted(pos_paths) or 'none'}); "
                    f"pass --pos {code}=PATH, or set p_pos = 0",
                )
            pipelines[code] = _load_pos_pipeline(code, pos_paths.get(code))
        return pipelines[code]

    stats = augment_file(
        augmenter, input_path, output_path, pipeline_for, default_lang=lang,
        include_original=include_original, batch_size=batch_size, progress=progress, require_pos=pos_paths,
    )
    if save_table is not None:
        with atomic_path(save_table) as tmp_table:
            srsly.write_json(tmp_table, augmenter.to_json())
    typer.echo(f"augment: {stats.n_texts} texts -> {stats.n_variants} variants in {output_path}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``augment`` to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
    app.command("augment", context_settings=_EXTRA)(augment_command)
