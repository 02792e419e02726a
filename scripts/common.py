"""Helpers shared by the project scripts (not part of the spacy-distill package).

The scripts are run as ``python scripts/<name>.py``, so this module is imported
as ``common`` (the script's folder is on ``sys.path``).
"""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import typer
from spacy.util import load_config

LABELS = ("NEGATIVE", "POSITIVE")


def split_langs(langs: Union[str, List[str]]) -> List[str]:
    """Turn a language list from a config or var into a list.

    langs (Union[str, List[str]]): "de,en" / "de en" or a list.
    RETURNS (List[str]): The language codes, in order.
    """
    if isinstance(langs, str):
        langs = langs.replace(",", " ").split()
    return [str(lang).strip() for lang in langs if str(lang).strip()]


def load_section(config_path: Path, section: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Load one section of a script config, with dotted overrides applied.

    config_path (Path): The .cfg file.
    section (str): The section name, e.g. "corpus".
    overrides (Optional[Dict[str, Any]]): Dotted overrides, e.g. {"corpus.n_train": 40}.
    RETURNS (Dict[str, Any]): The section's settings.
    """
    config = load_config(config_path, overrides=dict(overrides or {}), interpolate=True)
    if section not in config:
        raise ValueError(f"{config_path}: no [{section}] section")
    return dict(config[section])


@contextmanager
def atomic_path(path: Union[str, Path], suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` on success.

    path (Union[str, Path]): The final output path (a file).
    suffix (str): Suffix for the temp file, e.g. ".spacy" (some writers check it).
    YIELDS (Path): The temp path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: Union[str, Path], data: Any) -> None:
    """Write JSON atomically (temp file, then rename).

    path (Union[str, Path]): Output path.
    data (Any): JSON-serialisable data.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf8")


def write_text(path: Union[str, Path], text: str) -> None:
    """Write a text file atomically (temp file, then rename).

    path (Union[str, Path]): Output path.
    text (str): The content.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf8")


def write_jsonl(path: Union[str, Path], rows: List[Dict[str, Any]]) -> None:
    """Write JSON lines atomically (temp file, then rename).

    path (Union[str, Path]): Output path.
    rows (List[Dict[str, Any]]): One object per line.
    """
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def dir_size(path: Union[str, Path]) -> int:
    """Total size in bytes of a file or of all files under a directory.

    path (Union[str, Path]): File or directory.
    RETURNS (int): Bytes.
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(main: Callable[..., None]) -> None:
    """Run a script's typer ``main``; unknown ``--a.b value`` args reach it as ``ctx.args``.

    main (Callable[..., None]): The script's main function.
    """
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(main)
    app()
