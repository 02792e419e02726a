"""Evaluation library of the project's scripts: scoring per language
(``scoring``), the evaluation's data (``data``), predictions of a system and the
rule baselines (``predict``, ``baselines``), interleaved timing (``timing``),
calibration reports and reliability diagrams (``calibration``), the markdown
tables of ``results.md`` (``markdown``), and the accuracy-vs-speed plot (``plots``).

Torch-free; the scripts under ``scripts/`` are thin typer mains over it.
"""
