"""Do the committed results reproduce? ``make check-results`` (``python -m cmp_utils.check_results``).

Runs the experiment notebooks again (profile ``quick`` by default) into a temporary results
folder, with the project's memo of finished runs (``--cold``: an empty cache, so every run
trains again and the synthetic data is generated again), and compares every number of each
committed ``results/<experiment>/<profile>/metrics.csv`` with the new one: rows are matched on
their text and integer columns (dataset, table, method, direction, metric, seed, batch_size, ...)
and every float column (value, paper_value, ceiling, ...) must be **equal**, bit for bit (NaN
equals NaN); timing columns (``seconds``) and the memo bookkeeping (``run_key``) are left out. Every difference, and every row that
is only on one side, is listed; the exit status is 1 if there is any.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import config

#: Columns that measure time, not results: never compared.
TIMING_COLUMNS = ("seconds", "samples_per_second")
#: Bookkeeping columns that name where a run is memoised, not what it measured: its memo key
#: hashes the input files' sizes and modification times, which differ between clones.
BOOKKEEPING_COLUMNS = ("run_key", "run_dir")
#: Columns never compared.
IGNORED_COLUMNS = TIMING_COLUMNS + BOOKKEEPING_COLUMNS
#: The first notebook whose results are checked (00-04 hold no experiment tables).
FIRST_EXPERIMENT_NOTEBOOK = 5
DIFFERENCE_COLUMNS = ["experiment", "row", "column", "committed", "rerun"]


def _key_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in IGNORED_COLUMNS and not pd.api.types.is_float_dtype(frame[c])]


def compare_metrics(committed: pd.DataFrame, rerun: pd.DataFrame, experiment: str = "") -> pd.DataFrame:
    """Every difference between two tidy metrics tables (:data:`DIFFERENCE_COLUMNS`); empty when equal.

    Rows are matched on the key (non-float, non-timing) columns of ``committed``; a duplicated
    key is an error (the table is not tidy)."""
    keys = _key_columns(committed)
    values = [c for c in committed.columns if c not in keys and c not in IGNORED_COLUMNS]
    missing_columns = [c for c in keys + values if c not in rerun.columns]
    rows: list[dict] = [{"experiment": experiment, "row": "", "column": c, "committed": "present", "rerun": "missing"}
                        for c in missing_columns]
    if missing_columns:
        return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)
    for name, frame in (("committed", committed), ("rerun", rerun)):
        if frame.duplicated(keys).any():
            raise ValueError(f"{experiment}: the {name} metrics.csv has several rows with the same {keys}")
    merged = committed[keys + values].merge(rerun[keys + values], on=keys, how="outer", suffixes=("_committed", "_rerun"),
                                            indicator=True)
    for _, row in merged.iterrows():
        label = ", ".join(f"{k}={row[k]}" for k in keys)
        if row["_merge"] != "both":
            side = "committed" if row["_merge"] == "left_only" else "rerun"
            rows.append({"experiment": experiment, "row": label, "column": "(row)",
                         "committed": "present" if side == "committed" else "missing",
                         "rerun": "present" if side == "rerun" else "missing"})
            continue
        for column in values:
            old, new = row[f"{column}_committed"], row[f"{column}_rerun"]
            same = (pd.isna(old) and pd.isna(new)) or (not pd.isna(old) and not pd.isna(new) and
                                                        np.float64(old) == np.float64(new))
            if not same:
                rows.append({"experiment": experiment, "row": label, "column": column, "committed": old, "rerun": new})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)  # pandas reads back the exact float64 it wrote (shortest round-trip repr)


def compare_folders(committed_root: Path, rerun_root: Path, profile: str, experiments: Sequence[str]) -> pd.DataFrame:
    """Differences over every ``<experiment>/<profile>/metrics.csv`` of ``experiments``."""
    parts = []
    for experiment in experiments:
        old, new = committed_root / experiment / profile / "metrics.csv", rerun_root / experiment / profile / "metrics.csv"
        if not old.is_file():
            continue
        if not new.is_file():
            parts.append(pd.DataFrame([{"experiment": experiment, "row": "", "column": "metrics.csv",
                                        "committed": "present", "rerun": "missing"}]))
            continue
        parts.append(compare_metrics(_read(old), _read(new), experiment))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=DIFFERENCE_COLUMNS)


def experiment_notebooks(notebook_dir: Path) -> list[Path]:
    """Notebooks numbered from :data:`FIRST_EXPERIMENT_NOTEBOOK` on, in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb") if int(p.name[:2]) >= FIRST_EXPERIMENT_NOTEBOOK)


def rerun_notebooks(notebooks: Sequence[Path], profile: str, results_root: Path, cache_dir: Path | None) -> None:
    """Execute ``notebooks`` with papermill (:mod:`cmp_utils.run_notebooks`), results into ``results_root``."""
    env = dict(os.environ, CMP_RESULTS_DIR=str(results_root))
    if cache_dir is not None:
        env["CMP_CACHE_DIR"] = str(cache_dir)
    command = [sys.executable, "-m", "cmp_utils.run_notebooks", "--profile", profile,
               "--output-dir", str(results_root / "executed"), *map(str, notebooks)]
    subprocess.run(command, check=True, env=env, cwd=config.project_root())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=config.PROFILES)
    parser.add_argument("--notebooks", nargs="*", default=None,
                        help="notebooks to rerun (default: every notebook from 05 on)")
    parser.add_argument("--cold", action="store_true", help="an empty cache: retrain every run, regenerate the data")
    parser.add_argument("--rerun-dir", default=None,
                        help="compare with this folder of results instead of rerunning (it must hold <experiment>/<profile>/)")
    args = parser.parse_args(argv)
    committed_root = config.results_dir()
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else \
        experiment_notebooks(config.project_root() / "notebooks")
    with tempfile.TemporaryDirectory(prefix="cmp-check-") as scratch:
        if args.rerun_dir:
            rerun_root = Path(args.rerun_dir)
        else:
            rerun_root = Path(scratch) / "results"
            rerun_notebooks(notebooks, args.profile, rerun_root, Path(scratch) / "cache" if args.cold else None)
        experiments = sorted(p.parent.parent.name for p in committed_root.glob(f"*/{args.profile}/metrics.csv"))
        if args.notebooks or args.rerun_dir:  # a subset: check what it made
            experiments = [e for e in experiments if (rerun_root / e / args.profile / "metrics.csv").is_file()]
        differences = compare_folders(committed_root, rerun_root, args.profile, experiments)
    if differences.empty:
        print(f"every number of results/*/{args.profile}/metrics.csv reproduced "
              f"({len(experiments)} experiment{'s' * (len(experiments) != 1)}: {', '.join(experiments)})")
        return 0
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 120):
        print(differences.to_string(index=False))
    print(f"{len(differences)} difference(s) from the committed results/*/{args.profile}/metrics.csv")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
