"""Build, check and strip the project's notebooks.

Conventions (checked by :func:`check_notebook`, enforced in ``tests/test_notebooks.py``):

* file name ``notebooks/NN_snake_case.ipynb``;
* the first cell is Markdown: a ``# Title`` line, a one-line purpose, and what it produces;
* exactly one code cell tagged ``parameters``, right after the imports cell, holding only
  literals with type hints and a comment each, among them ``profile: str = "quick"``,
  ``seed``, ``device`` and ``data_dir``; derived values go in the next cell;
* no outputs and no execution counts in the committed file;
* the first code cell after it starts with ``notebook_tools.check_parameters(globals())``, which
  checks the values papermill injected against the declared types (:func:`check_parameters`);
* ``metadata["cmp_repro"]["produces"]``: the files it writes, relative to the results folder,
  with ``{profile}`` standing for the profile (checked after a smoke run).

Command line: ``python -m cmp_utils.reporting.notebook_tools strip|check notebooks/*.ipynb``.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import nbformat

KERNEL_NAME = "cmp-repro"
NAME_PATTERN = re.compile(r"^\d\d_[a-z0-9]+(_[a-z0-9]+)*\.ipynb$")
REQUIRED_PARAMETERS = ("profile", "seed", "device", "data_dir")


def build_notebook(cells: Sequence[tuple[str, str]], produces: Iterable[str], path: str | Path) -> Path:
    """Write a notebook from ``(kind, source)`` pairs; kind is ``md``, ``code`` or ``parameters``.

    ``produces`` lists the files the notebook writes, relative to the results folder, with
    ``{profile}`` as a placeholder. The notebook is written without outputs, atomically.
    """
    from ..core.atomic import write_text

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python (cmp-repro)", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.metadata["cmp_repro"] = {"produces": list(produces)}
    for kind, source in cells:
        source = source.strip("\n")
        if kind == "md":
            notebook.cells.append(nbformat.v4.new_markdown_cell(source))
        elif kind == "code":
            notebook.cells.append(nbformat.v4.new_code_cell(source))
        elif kind == "parameters":
            notebook.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]}))
        else:
            raise ValueError(f"cell kind {kind!r} is not one of md, code, parameters")
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    return write_text(path, nbformat.writes(notebook) + "\n")


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts in place; return True when the file changed."""
    from ..core.atomic import write_text

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            cell["outputs"], cell["execution_count"] = [], None
            changed = True
        for key in ("execution", "papermill"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    for key in ("papermill", "widgets"):
        if key in notebook.metadata:
            del notebook.metadata[key]
            changed = True
    if changed:
        write_text(path, nbformat.writes(notebook) + "\n")
    return changed


#: Types a parameters cell may declare, with an example value of each (as YAML / papermill text).
_PARAMETER_EXAMPLES: dict[type, str] = {
    int: "3",
    float: "0.001",
    str: "some_text",
    bool: "True",
    list: "[1, 2]",
    dict: "{key: 1}",
}


def _declared_type(annotation: object) -> type | None:
    """``int`` (or the string ``"int"``) -> int; None for an annotation this check does not know."""
    if isinstance(annotation, str):
        annotation = {t.__name__: t for t in _PARAMETER_EXAMPLES}.get(annotation.strip())
    return annotation if annotation in _PARAMETER_EXAMPLES else None


def _with_article(type_name: str) -> str:
    return f"an {type_name}" if type_name[0] in "aeiou" else f"a {type_name}"


#: The only value types a notebook parameter may hold, at any depth (what JSON can say).
PLAIN_SCALAR_TYPES = (str, int, float, bool, type(None))


def plain_value_problem(name: str, value: object) -> str | None:
    """Why ``value`` of parameter ``name`` is not plain JSON (None when it is), checked at every depth.

    Plain: str, int, float, bool, None, and lists and str-keyed dicts of them. Anything else
    (bytes from YAML ``!!binary``, a set from ``!!set``, a date, a tuple, an object) is refused:
    papermill writes such an element into the injected cell as quoted but unescaped text, which
    can close the quote and run code.
    """
    stack: list[tuple[str, object]] = [(name, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, list):
            stack.extend((f"{where}[{index}]", element) for index, element in enumerate(item))
        elif isinstance(item, dict):
            for key, element in item.items():
                if not isinstance(key, str):
                    return (
                        f"parameter {name}: key {key!r} of {where} is {_with_article(type(key).__name__)}; "
                        f"only str keys are accepted (quote it, e.g. {{'{key}': ...}})"
                    )
                stack.append((f"{where}[{key!r}]", element))
        elif not isinstance(item, PLAIN_SCALAR_TYPES):
            return (
                f"parameter {name}: {where} = {item!r} is {_with_article(type(item).__name__)}; notebook "
                f"parameters accept only plain JSON values (str, int, float, bool, None, and lists and str-keyed "
                f"dicts of them). Write it as a quoted string or a number, e.g. -p '{name}=[\"text\"]'"
            )
    return None


def parameter_type_problem(name: str, value: object, annotation: object) -> str | None:
    """Why ``value`` does not fit the declared type of parameter ``name`` (None when it fits).

    int: an int, not a bool; float: an int or a float, not a bool; str, bool, list, dict: that
    type exactly (a subclass is fine). Annotations other than these are not checked. Whatever
    the annotation, the value must be plain JSON at every depth (:func:`plain_value_problem`).
    The message names the parameter, the value, both types and a correct command-line form.
    """
    plain = plain_value_problem(name, value)
    if plain:
        return plain
    declared = _declared_type(annotation)
    if declared is None:
        return None
    if declared is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif declared is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, declared)
    if fits:
        return None
    example = _PARAMETER_EXAMPLES[declared]
    if declared is str:
        papermill_form = f"-r {name} {example}` (-r keeps the text a string)"
    elif declared in (list, dict):
        papermill_form = f"-y '{name}: {example}'`"
    else:
        papermill_form = f"-p {name} {example}`"
    return (
        f"parameter {name}={value!r} is {_with_article(type(value).__name__)}, but the parameters cell declares "
        f"{name}: {declared.__name__}. Pass {_with_article(declared.__name__)}, e.g. papermill `{papermill_form} "
        f"or cmp_utils.tools.run_notebooks `-p {name}={example}`"
    )


def check_parameters(namespace: dict) -> None:
    """Check every annotated parameter in ``namespace`` against its declared type; raise ValueError.

    Call it as ``notebook_tools.check_parameters(globals())`` in the cell after the
    ``parameters`` cell: IPython records the cell's annotated assignments (``seed: int = 0``)
    in ``__annotations__``, and papermill's injected cell rebinds the values without
    annotations, so each injected value is checked against the declared type. The error
    names the parameter, the value, the expected type and an example of a correct value.
    """
    annotations = namespace.get("__annotations__", {})
    problems = [
        problem
        for name, annotation in annotations.items()
        if name in namespace
        for problem in [parameter_type_problem(name, namespace[name], annotation)]
        if problem
    ]
    if problems:
        raise ValueError("; ".join(problems))


def parameter_types(notebook: "nbformat.NotebookNode") -> dict[str, str]:
    """The declared type (as written, e.g. ``"int"``) of each parameter of the ``parameters`` cell."""
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


CHECK_PARAMETERS_CALL = "notebook_tools.check_parameters(globals())"


def check_notebook(path: str | Path) -> list[str]:
    """Return every convention the notebook at ``path`` breaks (empty when it keeps them all)."""
    path = Path(path)
    problems: list[str] = []
    if not NAME_PATTERN.match(path.name):
        problems.append(f"{path.name}: name must look like NN_snake_case.ipynb")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises several kinds
        return problems + [f"{path.name}: not a readable notebook ({error})"]
    cells = notebook.cells
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.lstrip().startswith("# "):
        problems.append(f"{path.name}: the first cell must be Markdown opening with a '# Title'")
    elif len([line for line in cells[0].source.splitlines() if line.strip()]) < 3:
        problems.append(f"{path.name}: the first cell needs a title, a one-line purpose and what it produces")
    for index, cell in enumerate(cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            problems.append(f"{path.name}: cell {index} has outputs or an execution count (run `make clean-notebooks`)")
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{path.name}: needs exactly one cell tagged 'parameters', found {len(tagged)}")
        return problems
    index = tagged[0]
    previous_code = [c for c in cells[:index] if c.cell_type == "code"]
    if not previous_code or not re.search(r"^\s*(import|from)\s", previous_code[-1].source, re.M):
        problems.append(f"{path.name}: the parameters cell must come right after the imports cell")
    source = cells[index].source
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return problems + [f"{path.name}: parameters cell does not parse ({error})"]
    names = []
    for node in tree.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            problems.append(
                f"{path.name}: parameters cell line {node.lineno} must be `name: type = literal  # comment`"
            )
            continue
        names.append(node.target.id)
        try:
            ast.literal_eval(node.value)
        except Exception:
            problems.append(f"{path.name}: parameter {node.target.id} must be a literal")
        line = source.splitlines()[node.lineno - 1]
        if "#" not in line:
            problems.append(f"{path.name}: parameter {node.target.id} needs a comment")
    from papermill.translators import PythonTranslator

    inspected = {parameter.name for parameter in PythonTranslator.inspect(cells[index])}
    for name in names:
        if name not in inspected:
            problems.append(
                f"{path.name}: papermill cannot parse parameter {name!r} (`papermill --help-notebook` would miss it)"
            )
    for required in REQUIRED_PARAMETERS:
        if required not in names:
            problems.append(f"{path.name}: parameters cell lacks {required!r}")
    if not re.search(r'^profile:\s*str\s*=\s*"quick"', source, re.M):
        problems.append(f'{path.name}: parameters cell must set profile: str = "quick"')
    following = next((c for c in cells[index + 1 :] if c.cell_type == "code"), None)
    if following is None or not following.source.lstrip().startswith(CHECK_PARAMETERS_CALL):
        problems.append(
            f"{path.name}: the cell after the parameters cell must start with {CHECK_PARAMETERS_CALL} "
            f"(and the imports cell import notebook_tools from cmp_utils)"
        )
    produces = notebook.metadata.get("cmp_repro", {}).get("produces")
    if not isinstance(produces, list):
        problems.append(f"{path.name}: metadata cmp_repro.produces must list the files it writes")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("strip", "check"))
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    status = 0
    for path in args.paths:
        if args.action == "strip":
            if strip_outputs(path):
                print(f"stripped {path}")
        else:
            for problem in check_notebook(path):
                print(problem)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
