"""The package's shape: imports follow the layers of docs/architecture.md, no cycle, no private name
used across modules, and the lint rules of pyproject.toml ([tool.ruff]) pass."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmp_utils import config

ROOT = config.project_root()
PACKAGE = ROOT / "cmp_utils"
LAYER_ROW = re.compile(r"^\|\s*(\d+)\s*\|[^|]*\|([^|]+)\|\s*$", re.M)


def layers() -> dict[str, int]:
    """Module name -> layer number, from the table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return {module.strip(): int(number) for number, modules in LAYER_ROW.findall(text)
            for module in modules.split(",")}


def package_modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def imported_modules(source: str, modules: set[str]) -> set[str]:
    """The package modules a module's source imports, at the top or inside functions
    (``from . import x``, ``from .x import y``, ``from cmp_utils import x``, ``import cmp_utils.x``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module.startswith("cmp_utils"):
                inner = module.removeprefix("cmp_utils").lstrip(".")
                if inner:
                    found.add(inner.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("cmp_utils."))
    return found & modules


def import_graph() -> dict[str, set[str]]:
    modules = set(package_modules())
    return {name: imported_modules((PACKAGE / f"{name}.py").read_text(encoding="utf-8"), modules) - {name}
            for name in modules}


def test_every_module_has_a_layer():
    placed = layers()
    assert set(placed) == set(package_modules()), (
        f"docs/architecture.md's table lacks {sorted(set(package_modules()) - set(placed))} "
        f"and names missing modules {sorted(set(placed) - set(package_modules()))}")


def test_imports_follow_the_layers():
    placed = layers()
    upward = [f"{name} (layer {placed[name]}) imports {other} (layer {placed[other]})"
              for name, imported in import_graph().items() for other in sorted(imported)
              if placed[other] > placed[name]]
    assert not upward, "imports against the layers of docs/architecture.md: " + "; ".join(upward)


def test_the_layers_check_sees_a_lazy_upward_import():
    source = "def f():\n    from . import train\n    from cmp_utils.report import x\n    import cmp_utils.bench\n"
    assert imported_modules(source, {"train", "report", "bench", "data"}) == {"train", "report", "bench"}


def test_no_import_cycle():
    graph = import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            for other in graph[stack.pop()]:
                if other == goal:
                    return True
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        return False

    cycles = sorted({tuple(sorted((name, other))) for name, imported in graph.items() for other in imported
                     if reaches(other, name)})
    assert not cycles, f"import cycles through: {cycles}"


def test_no_private_name_used_across_modules():
    """A private name of a package module (an attribute ``module._name``, or a from-import of one) used
    outside that module: in the package, the tests or the notebooks."""
    names = "|".join(package_modules())
    attribute = re.compile(rf"\b({names})\._[A-Za-z]\w*")
    imported = re.compile(r"from (?:\.|cmp_utils\.?)\w* import (?:[\w ,]*, )?_[a-z]\w*")  # not "x as _y"
    places = [*PACKAGE.glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "notebooks").glob("*.ipynb")]
    found = [f"{path.relative_to(ROOT)}: {match.group()}" for path in places
             for pattern in (attribute, imported) for match in pattern.finditer(path.read_text(encoding="utf-8"))
             if not (path.parent == PACKAGE and match.group().startswith(f"{path.stem}."))]
    assert not found, f"private names used across modules: {found}"


def ruff_command() -> list[str] | None:
    """``ruff`` of this environment (the test extra installs it), or None."""
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    return [found] if found else None


def test_ruff_check_passes():
    command = ruff_command()
    if command is None:
        pytest.skip("ruff is not installed here: `pip install -e .[test]` (make setup) installs it")
    completed = subprocess.run([*command, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


#: The longest code cell a notebook may hold: longer logic is a cmp_utils function the notebook calls.
MAX_CODE_CELL_LINES = 30
#: Notebooks the rule does not apply to yet (none: every notebook keeps its cells short).
LONG_CELLS_LEFT: set[str] = set()


def test_notebook_code_cells_stay_short():
    import json

    long_cells = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if path.stem in LONG_CELLS_LEFT:
            continue
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        lines = {index: len("".join(cell["source"]).splitlines()) for index, cell in enumerate(cells)
                 if cell["cell_type"] == "code"}
        if over := {index: count for index, count in lines.items() if count > MAX_CODE_CELL_LINES}:
            long_cells[path.name] = over
    assert not long_cells, f"code cells over {MAX_CODE_CELL_LINES} lines (cell: lines): {long_cells}"
