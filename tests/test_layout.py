"""The package layout: no import cycle between folders, no plugin module that
imports test code, and no plugin module that only the tests use.

The import graph is read from the source with ``ast`` (nothing is imported):
every ``import``/``from ... import`` in a module, at module level or inside a
function (lazy imports count: they run too), plus string literals that name a
module of the package (``importlib.import_module("spacy_distill.serving.cli")``).
"""

import ast
import re
from collections import deque
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "spacy_distill"
# Code that is not the plugin: the plugin must never import it.
NOT_THE_PLUGIN = ("tests", "benchmarks", "scripts")
# Where the plugin is used outside itself, other than by tests: its entry points
# (pyproject.toml), Ray Serve configs naming an import path, the project's
# workflow (project.yml) and its scripts.
USERS = ["pyproject.toml", "project.yml", "configs/*", "scripts/*.py"]
DOTTED = re.compile(rf"\b{PACKAGE}(?:\.[A-Za-z_]\w*)*")


def module_names(root: Path) -> Dict[str, Path]:
    """Module name → file, for every module of the package under ``root``."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def folder(module: str, modules: Dict[str, Path]) -> str:
    """The package (folder) a module's file is in."""
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def _known(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The longest prefix of a dotted name that is a module of the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, modules: Dict[str, Path]) -> Set[str]:
    """The modules of the package that ``module`` imports, anywhere in its code.

    Imports of other packages (spaCy, ``tests``, ...) are left out; see
    :func:`foreign_imports`.
    """
    tree = ast.parse(modules[module].read_text(encoding="utf8"))
    package = folder(module, modules)
    found: Set[str] = set()
    for node in ast.walk(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod when that is a module.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            names = [node.value]
        for name in names:
            known = _known(name, modules)
            if known is not None and known != module:
                found.add(known)
    return found


def absolute_imports(path: Path) -> List[Tuple[int, str]]:
    """``(line, module)`` of every absolute import in the file, anywhere in its code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.lineno, node.module or ""))
    return sorted(found)


def foreign_imports(module: str, modules: Dict[str, Path], tops: Iterable[str]) -> Set[str]:
    """The imports of ``module`` whose top-level package is one of ``tops``."""
    return {name for _, name in absolute_imports(modules[module]) if name.split(".")[0] in tops}


def import_graph(root: Path) -> Dict[str, Set[str]]:
    modules = module_names(root)
    return {module: imports(module, modules) for module in modules}


def folder_cycles(root: Path) -> List[List[str]]:
    """Import paths that leave a subpackage and come back into it.

    Every folder below the package top is checked; the paths may run through
    any module, the package top's included. The top itself is not checked as a
    start: it holds the CLI, which wires every folder together, and modules that
    have no folder yet.

    RETURNS (List[List[str]]): One path (a list of modules) per offending folder.
    """
    modules = module_names(root)
    graph = {module: imports(module, modules) for module in modules}
    folders = {folder(module, modules) for module in modules} - {PACKAGE}
    cycles = []
    for home in sorted(folders):
        inside = {m for m in modules if folder(m, modules) == home}
        # Breadth-first from every edge out of the folder, never stepping back in
        # until a path does: that path is the cycle.
        parent: Dict[str, str] = {}
        queue = deque()
        for a in sorted(inside):
            for b in sorted(graph[a] - inside):
                if b not in parent:
                    parent[b] = a
                    queue.append(b)
        while queue:
            node = queue.popleft()
            back = sorted(graph[node] & inside)
            if back:
                path = [back[0], node]
                while path[-1] in parent:
                    path.append(parent[path[-1]])
                cycles.append(path[::-1])
                break
            for b in sorted(graph[node] - inside):
                if b not in parent:
                    parent[b] = node
                    queue.append(b)
    return cycles


def used_outside_tests(root: Path) -> Set[str]:
    """The modules that the plugin's users reach (see ``USERS``), by imports."""
    modules = module_names(root)
    graph = {module: imports(module, modules) for module in modules}
    for module in modules:
        # Importing a.b.c runs a/__init__ and a/b/__init__.
        parts = module.split(".")
        graph[module] |= {".".join(parts[:i]) for i in range(1, len(parts))}
    start = {PACKAGE}
    for pattern in USERS:
        for path in root.glob(pattern):
            if path.is_file():
                for name in DOTTED.findall(path.read_text(encoding="utf8", errors="replace")):
                    known = _known(name, modules)
                    if known:
                        start.add(known)
    seen, queue = set(start), deque(start)
    while queue:
        for b in graph[queue.popleft()] - seen:
            seen.add(b)
            queue.append(b)
    return seen


def test_import_graph_sees_relative_lazy_and_string_imports():
    modules = module_names(REPO)
    # A lazy relative import inside a function (the `serve --ray` command).
    assert "spacy_distill.serving.ray_serve" in imports("spacy_distill.serving.cli", modules)
    # importlib.import_module("spacy_distill.serving.cli") in the CLI.
    assert "spacy_distill.serving.cli" in imports("spacy_distill.cli", modules)
    # `from .. import x` style and parent-relative imports.
    assert "spacy_distill.ray_connect" in imports("spacy_distill.serving.ray_serve", modules)


def test_no_import_cycle_between_folders():
    cycles = folder_cycles(REPO)
    assert not cycles, "imports that leave a folder and come back: " + "; ".join(" -> ".join(c) for c in cycles)


def test_folder_cycle_is_detected(tmp_path):
    # The check itself: serving/cli -> ray_serving (top) -> serving/app, the cycle
    # this layout removed, is found; the same modules without it are not.
    pkg = tmp_path / PACKAGE
    (pkg / "serving").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "serving" / "__init__.py").write_text("")
    (pkg / "serving" / "app.py").write_text("")
    (pkg / "serving" / "cli.py").write_text("def serve():\n    from ..ray_serving import x\n")
    (pkg / "ray_serving.py").write_text("from .serving.app import create_app\n")
    assert folder_cycles(tmp_path) == [
        ["spacy_distill.serving.cli", "spacy_distill.ray_serving", "spacy_distill.serving.app"]
    ]
    (pkg / "ray_serving.py").write_text("import ray\n")
    assert folder_cycles(tmp_path) == []


@pytest.mark.parametrize("module", sorted(module_names(REPO)))
def test_plugin_never_imports_test_code(module):
    assert not foreign_imports(module, module_names(REPO), NOT_THE_PLUGIN)


def test_every_plugin_module_is_used_outside_the_tests():
    unused = set(module_names(REPO)) - used_outside_tests(REPO)
    assert not unused, (
        f"{sorted(unused)} are used by no entry point, config, project command or script "
        "(test harnesses belong under tests/)"
    )


def script_imports_of_scripts(scripts_dir: Path) -> List[str]:
    """``file:line`` of every import, in a script, of another script module.

    The scripts run as ``python scripts/<name>.py``, so their folder is on
    ``sys.path`` and ``import common`` would find ``scripts/common.py``: shared
    code then hides outside the package. An import (anywhere in the file) whose
    first name is the stem of a ``scripts/*.py`` file is such an import.
    """
    stems = {path.stem for path in scripts_dir.glob("*.py")}
    return [
        f"{path.relative_to(scripts_dir.parent)}:{line}: imports {name}"
        for path in sorted(scripts_dir.glob("*.py"))
        for line, name in absolute_imports(path)
        if name.split(".")[0] in stems
    ]


def test_no_script_imports_another_script():
    found = script_imports_of_scripts(REPO / "scripts")
    assert not found, "scripts import other scripts (move the shared code into the package): " + "; ".join(found)


def test_script_import_of_a_script_is_detected(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "common.py").write_text("import json\n")
    (scripts / "a.py").write_text("import spacy\nfrom common import run\n\ndef main():\n    import b.x\n")
    (scripts / "b.py").write_text("from spacy_distill.project import run\n")
    assert script_imports_of_scripts(scripts) == ["scripts/a.py:2: imports common", "scripts/a.py:5: imports b.x"]


# The runners a project.yml step may use (docs/workflow.md states the rule).
RUNNERS = ("python -m spacy train ", "python -m spacy assemble ", "python -m spacy package ", "python -m spacy_distill.cli ", "python scripts/")


def test_every_step_uses_one_of_the_stated_runners():
    import srsly
    import typer

    from spacy_distill.cli import app

    commands = set(typer.main.get_command(app).commands)
    for command in srsly.read_yaml(REPO / "project.yml")["commands"]:
        for line in command["script"]:
            line = " ".join(line.split())
            assert line.startswith(RUNNERS), f"{command['name']}: {line[:80]!r} uses none of {RUNNERS}"
            if line.startswith("python -m spacy_distill.cli "):
                assert line.split()[3] in commands, f"{command['name']}: no spacy-distill command {line.split()[3]!r}"
            if line.startswith("python scripts/"):
                assert (REPO / line.split()[1]).is_file(), f"{command['name']}: {line.split()[1]} is missing"
