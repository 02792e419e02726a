"""``spacy-distill calibrate-pipeline``: a copy of a pipeline whose ``doc.cats`` are calibrated.

The copy has a ``distill_calibration`` component (``spacy_distill.calibration``)
right after its text classifier, holding the scale and bias of a
``spacy-distill calibrate`` JSON, so ``spacy.load`` and ``spacy-distill serve``
return calibrated probabilities.
"""

from pathlib import Path
from typing import Optional

import typer

from .io import UsageError, atomic_path, check_output

FACTORY = "distill_calibration"


def calibrate_pipeline(
    pipeline: str,
    calibration_path: Path,
    output_dir: Path,
    *,
    component: Optional[str] = None,
    name: str = "calibration",
    overwrite: bool = False,
) -> str:
    """Write a copy of ``pipeline`` with a ``distill_calibration`` component after its textcat.

    pipeline (str): Pipeline folder or installed package, with a text classifier.
    calibration_path (Path): JSON written by ``spacy-distill calibrate``.
    output_dir (Path): Folder for the calibrated copy.
    component (Optional[str]): Name of the text classifier, if it has several.
    name (str): Name of the added component.
    overwrite (bool): Replace an existing ``output_dir``.
    RETURNS (str): One line saying what was written.
    """
    import spacy

    from . import calibration as _registers_factory  # noqa: F401 - also without the entry point installed
    from .calibration import read_calibration
    from .label import find_textcat

    is_path = Path(pipeline).exists()
    if not is_path and not spacy.util.is_package(pipeline):
        raise UsageError(f"PIPELINE: {pipeline}: no such pipeline directory or installed package")
    check_output(output_dir, inputs=[pipeline] if is_path else [], overwrite=overwrite, is_dir=True, name="OUTPUT_DIR")
    calibration = read_calibration(calibration_path)
    nlp = spacy.load(pipeline)
    already = [n for n in nlp.pipe_names if nlp.get_pipe_meta(n).factory == FACTORY]
    if already:
        # The calibration was fitted on the raw outputs: stacking it on calibrated ones would be wrong.
        raise UsageError(f"{pipeline} is already calibrated (component {already[0]!r}); start from the uncalibrated pipeline")
    if name in nlp.component_names:
        raise UsageError(f"{pipeline} already has a component named {name!r}; choose another with --name")
    textcat, exclusive = find_textcat(nlp, component)
    if exclusive != calibration.exclusive_classes:
        kinds = {True: "exclusive classes (softmax)", False: "multi-label classes (sigmoids)"}
        raise UsageError(
            f"{calibration_path} was fitted for {kinds[calibration.exclusive_classes]}, "
            f"but {textcat!r} of {pipeline} has {kinds[exclusive]}"
        )
    labels = [str(label) for label in nlp.get_pipe(textcat).labels]
    unknown = sorted(set(calibration.bias) - set(labels))
    if unknown:
        raise UsageError(f"{calibration_path} has a bias for {unknown}, which {textcat!r} does not predict (its labels: {labels})")
    nlp.add_pipe(
        FACTORY,
        name=name,
        after=textcat,
        config={
            "scale": calibration.scale,
            "bias": {label: calibration.bias.get(label, 0.0) for label in labels},
            "exclusive_classes": exclusive,
            "labels": labels,
        },
    )
    with atomic_path(output_dir, is_dir=True) as tmp:
        nlp.to_disk(tmp)
    return (
        f"calibrate-pipeline: {output_dir} = {pipeline} + {name!r} ({FACTORY}) after {textcat!r}: "
        f"scale {calibration.scale:.4g} (temperature {1 / calibration.scale:.4g}), bias {calibration.bias}"
    )


def calibrate_pipeline_command(
    pipeline: str = typer.Argument(..., metavar="PIPELINE", help="Pipeline folder or installed package with a textcat (e.g. training/teacher/model-best)."),
    calibration_path: Path = typer.Argument(..., metavar="CALIBRATION_JSON", help="JSON from `spacy-distill calibrate`: scale and per-label bias."),
    output_dir: Path = typer.Argument(..., metavar="OUTPUT_DIR", help="Folder for the calibrated copy (written atomically)."),
    component: Optional[str] = typer.Option(None, "--component", help="Name of the text classifier, if the pipeline has several."),
    name: str = typer.Option("calibration", "--name", help="Name of the added distill_calibration component."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT_DIR if it exists."),
) -> None:
    """Copy a pipeline with a distill_calibration component after its textcat, so its doc.cats are calibrated.

    `spacy.load` and `spacy-distill serve` accept the copy as they are (the
    component is registered through an entry point).
    """
    try:
        message = calibrate_pipeline(pipeline, calibration_path, output_dir, component=component, name=name, overwrite=overwrite)
    except (ValueError, OSError) as e:
        # spaCy's messages span lines; the CLI's errors are one line.
        typer.echo("error: " + " ".join(str(e).split()), err=True)
        raise typer.Exit(1) from None
    typer.echo(message, err=True)


def register(app: typer.Typer) -> None:
    """Add ``calibrate-pipeline`` to the CLI.

    app (typer.Typer): The ``spacy-distill`` app.
    """
    app.command("calibrate-pipeline")(calibrate_pipeline_command)
