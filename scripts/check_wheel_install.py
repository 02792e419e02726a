"""Install the packaged student into a fresh venv (spacy + spacy-distill only) and run it.

The venv gets ``spacy`` (pinned to this environment's version, from the package
index or pip's cache), then ``spacy-distill`` (a wheel built from the repository
path) and the pipeline wheel, both with ``--no-deps``, so torch and
spacy-transformers are absent. Then
``scripts/wheel_smoke.py`` runs inside it.
"""

import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import spacy
import typer

from spacy_distill.project import run


def main(
    wheel_dir: Path = typer.Argument(..., help="Folder searched recursively for the pipeline wheel (packages/)"),
    repo_dir: Path = typer.Argument(..., help="Path of the spacy-distill source (the repository root)"),
    test_path: Path = typer.Argument(..., help="Gold test DocBin: one review per language is classified"),
    output_path: Path = typer.Argument(..., help="Report JSON (metrics/wheel_check.json)"),
    package: str = typer.Option("xx_reviews_distilled", "--package", help="Pipeline package name"),
) -> None:
    """Create the venv in a temp folder, install, run the check, and remove the venv.

    wheel_dir (Path): Where the wheel is.
    repo_dir (Path): spacy-distill source.
    test_path (Path): Test DocBin.
    output_path (Path): Report path (written by wheel_smoke.py).
    package (str): Package name.
    """
    wheels = sorted(wheel_dir.rglob(f"{package}-*.whl"))
    if not wheels:
        typer.echo(f"Error: no {package}-*.whl under {wheel_dir}", err=True)
        sys.exit(1)
    with tempfile.TemporaryDirectory(prefix="wheel-venv-") as tmp:
        # spacy-distill is built into a wheel here (this environment has the build tools),
        # then installed into the fresh venv without dependencies.
        dist = Path(tmp) / "dist"
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(repo_dir.resolve())]
        env_dir = Path(tmp) / "venv"
        py = str(env_dir / "bin" / "python")
        pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        steps = [
            build,
            pip + [f"spacy=={spacy.__version__}"],
            pip + ["--no-deps", "<spacy-distill wheel>"],
            pip + ["--no-deps", str(wheels[-1].resolve())],
            [py, str(Path(__file__).with_name("wheel_smoke.py")), package, str(test_path.resolve()), str(output_path.resolve())],
        ]
        venv.create(env_dir, with_pip=True)
        for cmd in steps:
            if "<spacy-distill wheel>" in cmd:
                built = sorted(dist.glob("spacy_distill-*.whl"))
                if not built:
                    typer.echo(f"Error: building spacy-distill from {repo_dir} gave no wheel", err=True)
                    sys.exit(1)
                cmd = [str(built[-1]) if c == "<spacy-distill wheel>" else c for c in cmd]
            typer.echo("$ " + " ".join(cmd))
            result = subprocess.run(cmd, cwd=tmp)
            if result.returncode != 0:
                typer.echo(f"Error: step failed with exit code {result.returncode}", err=True)
                sys.exit(1)


if __name__ == "__main__":
    run(main)
