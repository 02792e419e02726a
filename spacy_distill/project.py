"""Helpers of the project's workflow scripts (``scripts/*.py``, run by ``project.yml``).

The scripts are thin typer mains; what they share lives here: the labels of the
corpus, reading a section of a script config with dotted overrides, the
language lists of configs and project vars, sizes on disk, and the typer
runner that passes unknown ``--a.b value`` arguments on as overrides. Writing
outputs (``atomic_path``, ``write_json`` ...) is :mod:`spacy_distill.io`'s.
"""

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

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


def variant_overrides(variant: Dict[str, Any]) -> Dict[str, Any]:
    """The dotted overrides of one ablation variant (a list of [key, value] pairs in the config).

    variant (Dict[str, Any]): The variant's settings.
    RETURNS (Dict[str, Any]): Dotted key → value.
    """
    # [key, value] pairs rather than a dict: confection re-parses a dict value with
    # dotted keys as sections when it interpolates.
    return {str(key): value for key, value in variant.get("overrides", [])}


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


__all__ = ["LABELS", "dir_size", "load_section", "run", "split_langs", "variant_overrides"]
