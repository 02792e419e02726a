"""The ``spacy-distill`` command line.

Each feature owns its commands in its own module and adds them here through a
``register(app)`` function, so this file only lists the modules.
"""

import importlib

import typer

app = typer.Typer(
    name="spacy-distill",
    help="Distil transformer text classifiers into small spaCy students, and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands; imported lazily inside their commands where heavy.
_COMMAND_MODULES = (
    "spacy_distill.augment.cli",  # augment
    "spacy_distill.teacher.cli",  # label, calibrate, calibrate-pipeline
    "spacy_distill.teacher.e5.cli",  # convert-e5
    "spacy_distill.serving.cli",  # serve, classify, client
)

for _mod in _COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
