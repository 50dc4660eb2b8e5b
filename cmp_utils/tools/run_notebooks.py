"""Execute notebooks in order with papermill: ``make reproduce`` calls this.

``python -m cmp_utils.tools.run_notebooks --profile quick notebooks/*.ipynb`` runs each notebook
with ``profile`` injected, in the project's kernel, with ``notebooks/`` as working folder,
and saves the executed copy to ``<results>/executed/<profile>/<name>.ipynb``. It stops at
the first failing notebook and names it, and the executed copy with the traceback.

Before anything runs it refuses, with a message that names the setting and the fix:

* a notebook that does not exist, or two notebooks with the same file name;
* an output folder that is a file, is not writable, or would overwrite a source notebook;
* ``-p`` parameters that no given notebook declares, whose value does not fit the declared
  type (:func:`cmp_utils.reporting.notebook_tools.parameter_type_problem`), or that hold anything but plain
  JSON values at any depth (YAML ``!!binary``, ``!!set``, dates: papermill would inject them
  unescaped; :func:`cmp_utils.reporting.notebook_tools.plain_value_problem`);
* parameters that contradict the profile it runs and prints (:func:`check_profile_parameters`):
  ``-p profile=smoke`` beside ``--profile quick``, ``num_seeds`` other than 1 in the smoke
  profile, ``source=real`` in the smoke or quick profile (those label synthetic-data results).

``-p name=value`` values are parsed as YAML (numbers, lists, booleans), except for parameters
the notebooks declare as ``str``: those keep the text as given (``-p data_dir=2024`` stays the
string ``"2024"``, ``-p weights_path=~`` stays ``"~"``).

After each notebook, ``<output-dir>/timings.csv`` (notebook, seconds, profile, machine,
started_at) gets its row (replacing an older row of the same notebook and profile), written
atomically, so the README's time table is generated from measured runs.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ..core import atomic, config, numerics
from .. import reporting
from ..reporting.notebook_tools import KERNEL_NAME, parameter_type_problem, parameter_types, plain_value_problem

TIMING_COLUMNS = ["notebook", "seconds", "profile", "machine", "started_at"]


def parse_parameter(text: str, declared_type: str | None = None) -> tuple[str, object]:
    """``name=value`` -> (name, value): the text itself when ``declared_type`` is ``"str"``, else YAML."""
    import yaml

    if "=" not in text:
        raise ValueError(f"parameter {text!r} must look like name=value (e.g. -p seed=1)")
    name, value = text.split("=", 1)
    name = name.strip()
    if declared_type == "str":
        return name, value
    try:
        return name, yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ValueError(
            f"parameter {name}: value {value!r} is not valid YAML ({error}); quote it, e.g. -p '{name}=\"...\"'"
        ) from error


def declared_types(notebooks: Sequence[Path]) -> dict[Path, dict[str, str]]:
    """Each notebook's parameters with their declared types (``{"seed": "int", ...}``)."""
    import nbformat

    types = {}
    for notebook in notebooks:
        try:
            types[notebook] = parameter_types(nbformat.read(notebook, as_version=4))
        except StopIteration:
            raise ValueError(
                f"notebook {notebook} has no cell tagged 'parameters'; see cmp_utils.reporting.notebook_tools"
            ) from None
    return types


def check_profile_parameters(profile: str, parameters: dict[str, Any]) -> None:
    """Refuse parameters that contradict ``profile``, the label every result of the run carries."""
    if "profile" in parameters and parameters["profile"] != profile:
        raise ValueError(
            f"-p profile={parameters['profile']} contradicts --profile {profile}: the run would print and "
            f"file results as {profile!r}. Use --profile {parameters['profile']} and drop -p profile"
        )
    if profile == "smoke" and parameters.get("num_seeds", 1) != 1:
        raise ValueError(
            f"-p num_seeds={parameters['num_seeds']}: the smoke profile runs one seed. Drop -p num_seeds, "
            f"or use --profile quick (or paper) for several seeds"
        )
    if profile in config.SYNTHETIC_PROFILES and parameters.get("source") == "real":
        raise ValueError(
            f"-p source=real: the {profile} profile labels results of synthetic data. "
            f"Use --profile paper for the real datasets, or drop -p source"
        )


def check_output_dir(output_dir: Path, notebooks: Sequence[Path]) -> Path:
    """Create ``output_dir`` if needed and prove it writable; refuse one that would hold a source notebook."""
    resolved = output_dir.expanduser().resolve()
    sources = {notebook.resolve() for notebook in notebooks}
    source_folders = {source.parent for source in sources} | {(config.project_root() / "notebooks").resolve()}
    overwritten = sorted(
        str(resolved / notebook.name)
        for notebook in notebooks
        if (resolved / notebook.name) in sources or resolved in source_folders
    )
    if overwritten:
        raise ValueError(
            f"--output-dir {output_dir} would overwrite the source notebook(s) {', '.join(overwritten)}; "
            f"executed copies go elsewhere, e.g. --output-dir results/executed/<profile>"
        )
    if resolved.exists() and not resolved.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file; pass a folder (it is created if missing)")
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=resolved):
            pass
    except OSError as error:
        raise ValueError(
            f"--output-dir {output_dir} cannot be created or written ({error.strerror or error}); "
            f"pass a writable folder"
        ) from error
    return resolved


def record_timing(path: Path, row: dict[str, Any]) -> Path:
    """Put ``row`` in the timings CSV at ``path`` (replacing the same notebook and profile), atomically."""
    import pandas as pd

    frame = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=TIMING_COLUMNS)
    keep = ~((frame["notebook"] == row["notebook"]) & (frame["profile"] == row["profile"]))
    frame = pd.concat([frame[keep], pd.DataFrame([row])], ignore_index=True)
    frame = frame.sort_values(["profile", "notebook"], kind="stable")[TIMING_COLUMNS]
    return atomic.write_csv(path, frame)


def run_notebooks(
    notebooks: Sequence[str | Path],
    profile: str,
    kernel: str = KERNEL_NAME,
    parameters: dict | None = None,
    output_dir: str | Path | None = None,
) -> list[tuple[Path, float]]:
    """Run ``notebooks`` in the order given; return (executed copy, seconds) for each.

    ``parameters`` (typed values) go to each notebook that declares them. Every check of the
    module docstring runs before the first notebook starts.
    """
    import papermill

    config.check_profile(profile)
    notebooks = [Path(notebook) for notebook in notebooks]
    for notebook in notebooks:
        if not notebook.is_file():
            raise FileNotFoundError(f"notebook {notebook} does not exist; list notebooks/NN_*.ipynb")
    names = [notebook.name for notebook in notebooks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"notebooks {', '.join(repeated)} are given twice (their executed copies would collide)")
    parameters = dict(parameters or {})
    check_profile_parameters(profile, parameters)
    types = declared_types(notebooks)
    unknown = sorted(name for name in parameters if name != "profile" and not any(name in t for t in types.values()))
    if unknown:
        raise ValueError(
            f"parameter(s) {', '.join(unknown)} are declared by none of the notebooks given; "
            f"`papermill --help-notebook <notebook>` lists a notebook's parameters"
        )
    for name, value in parameters.items():
        problem = plain_value_problem(name, value)
        if problem:
            raise ValueError(problem)
    for notebook, declared in types.items():
        for name, value in parameters.items():
            problem = parameter_type_problem(name, value, declared.get(name))
            if problem:
                raise ValueError(f"{notebook.name}: {problem}")
    output_dir = check_output_dir(
        Path(output_dir) if output_dir else config.results_dir() / "executed" / profile, notebooks
    )
    timings_path = output_dir / "timings.csv"
    machine = numerics.machine_description()
    done = []
    for notebook in notebooks:
        executed = output_dir / notebook.name
        given = {name: value for name, value in parameters.items() if name in types[notebook]}
        print(f"[{profile}] {notebook.name} ...", flush=True)
        started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters={**given, "profile": profile},
                kernel_name=kernel,
                cwd=str(notebook.parent),
                progress_bar=False,
            )
        except Exception as error:
            raise RuntimeError(
                f"{notebook} failed in the {profile!r} profile; the executed copy with the traceback "
                f"is {executed}\n{error}"
            ) from error
        seconds = time.perf_counter() - started
        reporting.scrub_notebook(executed)  # the committed copy: no machine paths, no SVG duplicates of figures
        record_timing(
            timings_path,
            {
                "notebook": notebook.stem,
                "seconds": round(seconds, 1),
                "profile": profile,
                "machine": machine,
                "started_at": started_at,
            },
        )
        print(f"[{profile}] {notebook.name} done in {seconds:.1f} s -> {executed}", flush=True)
        done.append((executed, seconds))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute notebooks with papermill, in order.")
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--profile", default="quick", choices=config.PROFILES)
    parser.add_argument("--kernel", default=KERNEL_NAME)
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        help="extra name=value (YAML value; the text as given for parameters declared str)",
    )
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    try:
        existing = [Path(notebook) for notebook in args.notebooks if Path(notebook).is_file()]
        string_parameters = {
            name for declared in declared_types(existing).values() for name, kind in declared.items() if kind == "str"
        }
        parameters = {}
        for text in args.parameter:
            name = text.split("=", 1)[0].strip()
            name, value = parse_parameter(text, "str" if name in string_parameters else None)
            parameters[name] = value
        timings = run_notebooks(args.notebooks, args.profile, args.kernel, parameters, args.output_dir)
    except (RuntimeError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = sum(seconds for _, seconds in timings)
    print(f"ran {len(timings)} notebooks in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
