"""Evaluation library of the project's scripts: scoring per language (and, as
they move here, timing, calibration reports, plots and markdown tables).

Torch-free; the scripts under ``scripts/`` are thin typer mains over it.
"""
