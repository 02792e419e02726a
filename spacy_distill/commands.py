"""CLI commands of the core package: ``augment`` and ``label``."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
