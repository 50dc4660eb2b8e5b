"""Execute notebooks in order with papermill: ``make reproduce`` calls this.

``python -m cmp_utils.run_notebooks --profile quick notebooks/*.ipynb`` runs each notebook
with ``profile`` injected, in the project's kernel, with ``notebooks/`` as working folder,
and saves the executed copy to ``<results>/executed/<profile>/<name>.ipynb``. It stops at
the first failing notebook and names it, and the executed copy with the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from . import config
from .notebook_tools import KERNEL_NAME


def parse_parameter(text: str) -> tuple[str, object]:
    """``name=value`` -> (name, value) with value parsed as YAML (numbers, lists, booleans)."""
    import yaml

    if "=" not in text:
        raise ValueError(f"parameter {text!r} must look like name=value")
    name, value = text.split("=", 1)
    return name.strip(), yaml.safe_load(value)


def run_notebooks(
    notebooks: Sequence[str | Path],
    profile: str,
    kernel: str = KERNEL_NAME,
    parameters: dict | None = None,
    output_dir: str | Path | None = None,
) -> list[tuple[Path, float]]:
    """Run ``notebooks`` in the order given; return (executed copy, seconds) for each."""
    import papermill

    config.check_profile(profile)
    output_dir = Path(output_dir) if output_dir else config.results_dir() / "executed" / profile
    output_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for notebook in map(Path, notebooks):
        if not notebook.is_file():
            raise FileNotFoundError(f"notebook {notebook} does not exist; list notebooks/NN_*.ipynb")
        executed = output_dir / notebook.name
        print(f"[{profile}] {notebook.name} ...", flush=True)
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters={"profile": profile, **(parameters or {})},
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
        print(f"[{profile}] {notebook.name} done in {seconds:.1f} s -> {executed}", flush=True)
        done.append((executed, seconds))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute notebooks with papermill, in order.")
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--profile", default="quick", choices=config.PROFILES)
    parser.add_argument("--kernel", default=KERNEL_NAME)
    parser.add_argument("-p", "--parameter", action="append", default=[], help="extra name=value (YAML value)")
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    parameters = dict(parse_parameter(text) for text in args.parameter)
    try:
        timings = run_notebooks(args.notebooks, args.profile, args.kernel, parameters, args.output_dir)
    except (RuntimeError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = sum(seconds for _, seconds in timings)
    print(f"ran {len(timings)} notebooks in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
