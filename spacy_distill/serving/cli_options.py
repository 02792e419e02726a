"""Option definitions that more than one serving command uses."""

import typer

# The cascade options that `serve` and `classify` share (one definition, one help text).
THRESHOLD_OPTION = typer.Option(
    None, "--threshold", min=0.0, help="Cascade: defer texts whose top-class probability (after the temperature) is below this."
)
DEFER_SHARE_OPTION = typer.Option(
    None, "--defer-share", min=0.0, max=1.0, help="Cascade: use the threshold chosen on dev for this share in --cascade-report."
)
CASCADE_REPORT_OPTION = typer.Option(
    None, "--cascade-report", help="Cascade: metrics/cascade.json (dev-chosen thresholds; without --threshold/--defer-share its default)."
)
CALIBRATION_OPTION = typer.Option(
    None, "--calibration", help="Cascade: calibration JSON (spacy-distill calibrate) whose temperature the decision uses."
)
TEMPERATURE_OPTION = typer.Option(
    None, "--temperature", min=1e-6,
    help="Cascade: temperature of the student's probabilities (default: --calibration's, the report's, or 1).",
)
