"""The package's shape: imports follow the layers of docs/architecture.md, no cycle, no private name
used across packages, and the lint rules of pyproject.toml ([tool.ruff]) pass."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmp_utils.core import config

ROOT = config.project_root()
PACKAGE = ROOT / "cmp_utils"
#: A row of the layer table: ``| layer | package | modules |``.
LAYER_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`?(\w+)/?`?\s*\|([^|]+)\|\s*$", re.M)


def layers() -> dict[str, int]:
    """Package name -> layer number, from the table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return {package: int(number) for number, package, _ in LAYER_ROW.findall(text)}


def named_modules() -> set[str]:
    """The modules the table names, as dotted paths under cmp_utils (``training.loop``)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return {
        f"{package}.{module.strip().strip('`')}"
        for _, package, modules in LAYER_ROW.findall(text)
        for module in modules.split(",")
        if module.strip()
    }


def module_name(path: Path) -> str:
    """cmp_utils/training/loop.py -> ``training.loop``; a package's __init__.py -> the package (``training``)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_files() -> dict[str, Path]:
    """Every module of the package (``__init__`` as its package, ``__main__`` included), by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if module_name(path)}


def plain_modules() -> set[str]:
    """The modules a layer must name: all but the packages' ``__init__`` and ``__main__`` files."""
    return {
        name
        for name, path in package_files().items()
        if path.name not in ("__init__.py", "__main__.py") and "." in name
    }


def package_of(module: str) -> str:
    return module.split(".")[0]


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The dotted name (under cmp_utils) that ``node`` imports from, or None outside cmp_utils."""
    if node.level:
        parts = [part for part in module.split(".") if part]
        base = parts if is_package else parts[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        return ".".join([*base, *(node.module.split(".") if node.module else [])])
    if node.module == "cmp_utils":
        return ""
    if node.module and node.module.startswith("cmp_utils."):
        return node.module.removeprefix("cmp_utils.")
    return None


def imported_modules(
    source: str, module: str = "", is_package: bool = False, known: set[str] | None = None
) -> set[str]:
    """The package modules a module's source imports, at the top or inside functions (``from . import x``,
    ``from .x import y``, ``from ..data import text``, ``from cmp_utils import x``, ``import cmp_utils.x``):
    ``from P import n`` counts as importing ``P.n`` where that is a module, else ``P``."""
    known = set(package_files()) if known is None else known
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = resolve(node, module, is_package)
            if base is None:
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.removeprefix("cmp_utils.") for alias in node.names if alias.name.startswith("cmp_utils.")
            )
    return {name for name in found if name}


def import_graph() -> dict[str, set[str]]:
    files = package_files()
    known = set(files)
    return {
        name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known) - {name}
        for name, path in files.items()
    }


def test_every_module_has_a_layer():
    placed, named = layers(), named_modules()
    packages = {package_of(name) for name in package_files()}
    assert packages == set(placed), (
        f"docs/architecture.md's table lacks the packages {sorted(packages - set(placed))} "
        f"and names missing ones {sorted(set(placed) - packages)}"
    )
    assert named == plain_modules(), (
        f"docs/architecture.md's table lacks the modules {sorted(plain_modules() - named)} "
        f"and names missing ones {sorted(named - plain_modules())}"
    )


def test_imports_follow_the_layers():
    placed = layers()
    upward = [
        f"{name} (layer {placed[package_of(name)]}) imports {other} (layer {placed[package_of(other)]})"
        for name, imported in import_graph().items()
        for other in sorted(imported)
        if placed[package_of(other)] > placed[package_of(name)]
    ]
    assert not upward, "imports against the layers of docs/architecture.md: " + "; ".join(upward)
    top = imported_modules((PACKAGE / "__init__.py").read_text(encoding="utf-8"), "", True)
    assert {package_of(name) for name in top} <= {"core"}, f"cmp_utils/__init__.py imports more than core: {top}"


def test_the_layers_check_sees_a_lazy_upward_import():
    source = (
        "def f():\n    from .. import training\n    from ..reporting.readme import x\n"
        "    import cmp_utils.tools.bench\n    from . import images\n"
    )
    known = {"training", "reporting", "reporting.readme", "tools", "tools.bench", "data", "data.images"}
    assert imported_modules(source, "data.readers", False, known) == {
        "training",
        "reporting.readme",
        "tools.bench",
        "data.images",
    }


def _cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            for other in graph.get(stack.pop(), ()):
                if other == goal:
                    return True
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        return False

    return sorted(
        {tuple(sorted((name, other))) for name, imported in graph.items() for other in imported if reaches(other, name)}
    )


def test_no_import_cycle():
    graph = import_graph()
    assert not (cycles := _cycles(graph)), f"import cycles through modules: {cycles}"
    packages: dict[str, set[str]] = {}
    for name, imported in graph.items():
        packages.setdefault(package_of(name), set()).update(
            package_of(other) for other in imported if package_of(other) != package_of(name)
        )
    assert not (cycles := _cycles(packages)), f"import cycles through packages: {cycles}"


def _code_cells(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def private_uses(source: str, module: str | None, is_package: bool = False) -> list[str]:
    """Private names (``_name``) of cmp_utils that ``source`` takes from another package: from-imports of one,
    and attributes ``m._name`` of a name ``m`` bound to a cmp_utils module. ``module`` None: a test or a
    notebook, outside every package, for which every cmp_utils private name is another package's."""
    tree = ast.parse(source)
    own = package_of(module) if module else None
    bound: dict[str, str] = {}  # local name -> the cmp_utils module or package it names
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = resolve(node, module or "", is_package) if module is not None or node.level == 0 else None
            if base is None:
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}" if base else alias.name
                if alias.name.startswith("_") and package_of(base or alias.name) != own:
                    found.append(f"from {node.module or '.'} import {alias.name}")
                bound[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cmp_utils.") and alias.asname:
                    bound[alias.asname] = alias.name.removeprefix("cmp_utils.")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and package_of(bound[node.value.id]) != own
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_private_name_used_across_packages():
    """A private name of a package module (an attribute ``module._name``, or a from-import of one) used
    outside its package: in another package, the tests or the notebooks."""
    found = [
        f"cmp_utils/{path.relative_to(PACKAGE)}: {use}"
        for name, path in package_files().items()
        for use in private_uses(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
    ]
    found += [
        f"{path.relative_to(ROOT)}: {use}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for use in private_uses(path.read_text(encoding="utf-8"), None)
    ]
    found += [
        f"{path.relative_to(ROOT)}: {use}"
        for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
        for use in private_uses(_code_cells(path), None)
    ]
    assert not found, f"private names used across packages: {found}"
    _the_private_name_check_sees_imports_and_attributes()


def _the_private_name_check_sees_imports_and_attributes():
    source = "from cmp_utils.training.loop import _fit\nfrom cmp_utils.data import text\ntext._x\n"
    assert private_uses(source, None) == ["from cmp_utils.training.loop import _fit", "text._x"]
    inside = "from .common import _check_pair\nfrom ..data import text\ntext._y\n"
    assert private_uses(inside, "losses.cmpm") == ["text._y"]


def ruff_command() -> list[str] | None:
    """``ruff`` of this environment (the test extra installs it), or None."""
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    return [found] if found else None


def test_ruff_check_and_format_pass():
    """``ruff check`` finds nothing and ``ruff format --check`` would change nothing (pyproject.toml [tool.ruff])."""
    command = ruff_command()
    if command is None:
        pytest.skip("ruff is not installed here: `pip install -e .[test]` (make setup) installs it")
    completed = subprocess.run(
        [*command, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    formatted = subprocess.run(
        [*command, "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert formatted.returncode == 0, (
        "run `ruff format` (the pre-commit hook does): " + formatted.stdout + formatted.stderr
    )


#: The longest code cell a notebook may hold: longer logic is a cmp_utils function the notebook calls.
MAX_CODE_CELL_LINES = 30
#: Notebooks the rule does not apply to yet (none: every notebook keeps its cells short).
LONG_CELLS_LEFT: set[str] = set()


def test_notebook_code_cells_stay_short():
    long_cells = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if path.stem in LONG_CELLS_LEFT:
            continue
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        lines = {
            index: len("".join(cell["source"]).splitlines())
            for index, cell in enumerate(cells)
            if cell["cell_type"] == "code"
        }
        if over := {index: count for index, count in lines.items() if count > MAX_CODE_CELL_LINES}:
            long_cells[path.name] = over
    assert not long_cells, f"code cells over {MAX_CODE_CELL_LINES} lines (cell: lines): {long_cells}"
