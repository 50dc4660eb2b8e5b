"""Do the committed results reproduce? ``make check-results`` (``python -m cmp_utils.check_results``).

Runs the experiment notebooks again (profile ``quick`` by default) into a temporary results
folder, with the project's memo of finished runs (``--cold``: an empty cache, so every run
trains again and the synthetic data is generated again), and compares every number of each
``results/<experiment>/<profile>/metrics.csv`` **as committed at git HEAD** (``--against REV``
for another revision, ``--against files`` for the results folder as it is now) with the new
one, and every verdict of its ``claims.csv``. ``--no-rerun`` compares the results folder as it
is (after ``make reproduce``) with HEAD instead of rerunning. Numbers: rows are matched on
their text and integer columns (dataset, table, method, direction, metric, seed, batch_size, ...)
and every float column (value, paper_value, ceiling, ...) must be **equal**, bit for bit (NaN
equals NaN); timing columns (``seconds``) and the memo bookkeeping (``run_key``) are left out. Every difference, and every row that
is only on one side, is listed; the exit status is 1 if there is any.
"""

from __future__ import annotations

import argparse
import io
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
VERDICT_COLUMNS = ["experiment", "claim", "committed", "rerun"]
COUNT_COLUMNS = ["experiment", "numbers", "numbers_changed", "claims", "verdicts_changed"]
#: How many differences are printed (``--report FILE`` writes them all).
SHOWN_DIFFERENCES = 40


def _key_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in IGNORED_COLUMNS and not pd.api.types.is_float_dtype(frame[c])]


def compare_metrics(committed: pd.DataFrame, rerun: pd.DataFrame, experiment: str = "",
                    tolerance: float = 0.0) -> pd.DataFrame:
    """Every difference between two tidy metrics tables (:data:`DIFFERENCE_COLUMNS`); empty when equal.

    Rows are matched on the key (non-float, non-timing) columns of ``committed``; a duplicated
    key is an error (the table is not tidy). Numbers must be equal (``tolerance`` 0, the default)
    or within ``tolerance`` of each other."""
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
                                                        abs(np.float64(old) - np.float64(new)) <= tolerance)
            if not same:
                rows.append({"experiment": experiment, "row": label, "column": column, "committed": old, "rerun": new})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)  # pandas reads back the exact float64 it wrote (shortest round-trip repr)


def count_numbers(frame: pd.DataFrame) -> int:
    """How many numbers a results table holds: its compared float cells (timing and bookkeeping left out)."""
    keys = _key_columns(frame)
    return int(sum(frame[c].size for c in frame.columns if c not in keys and c not in IGNORED_COLUMNS))


def compare_claims(committed: pd.DataFrame, rerun: pd.DataFrame, experiment: str = "") -> pd.DataFrame:
    """The claims whose verdict differs (:data:`VERDICT_COLUMNS`); claims matched on their text columns
    other than the verdict (claim, better, worse, metric, direction, and any sampler / table column)."""
    keys = [c for c in _key_columns(committed) if c != "verdict" and c in rerun.columns]
    merged = committed[keys + ["verdict"]].merge(rerun[keys + ["verdict"]], on=keys, how="outer",
                                                 suffixes=("_committed", "_rerun"))
    changed = merged[merged["verdict_committed"].fillna("(missing)") != merged["verdict_rerun"].fillna("(missing)")]
    return pd.DataFrame({"experiment": experiment, "claim": changed["claim"],
                         "committed": changed["verdict_committed"].fillna("(missing)"),
                         "rerun": changed["verdict_rerun"].fillna("(missing)")}, columns=VERDICT_COLUMNS)


def committed_table(source: str | Path, relative: str) -> pd.DataFrame | None:
    """``results/<relative>`` as committed at git revision ``source`` (a string such as ``HEAD``), or as it is
    in the folder ``source`` (a :class:`~pathlib.Path`); None when it does not exist there."""
    if isinstance(source, Path):
        path = source / relative
        return _read(path) if path.is_file() else None
    completed = subprocess.run(["git", "show", f"{source}:results/{relative}"], cwd=config.project_root(),
                               capture_output=True)
    if completed.returncode != 0:
        return None
    return pd.read_csv(io.BytesIO(completed.stdout))


def committed_experiments(source: str | Path, profile: str) -> list[str]:
    """The experiments with a ``<experiment>/<profile>/metrics.csv`` at ``source`` (git revision or folder)."""
    if isinstance(source, Path):
        return sorted(p.parent.parent.name for p in source.glob(f"*/{profile}/metrics.csv"))
    completed = subprocess.run(["git", "ls-tree", "-r", "--name-only", source, "results/"], cwd=config.project_root(),
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise ValueError(f"--against {source}: not a git revision of {config.project_root()} "
                         f"({completed.stderr.strip()}); use a commit such as HEAD, or --against files")
    parts = [line.split("/") for line in completed.stdout.splitlines()]
    return sorted(p[1] for p in parts if len(p) == 4 and p[2] == profile and p[3] == "metrics.csv")


def compare_folders(committed: str | Path, rerun_root: Path, profile: str, experiments: Sequence[str],
                    tolerance: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Over every ``<experiment>/<profile>/{metrics,claims}.csv`` of ``experiments``: the number
    differences (:data:`DIFFERENCE_COLUMNS`; the claims' numbers under the column names of claims.csv),
    the verdict differences (:data:`VERDICT_COLUMNS`) and the counts per experiment (numbers and
    claims compared, changed)."""
    number_parts, verdict_parts, counts = [], [], []
    for experiment in experiments:
        old = committed_table(committed, f"{experiment}/{profile}/metrics.csv")
        if old is None:
            continue
        new_path = rerun_root / experiment / profile / "metrics.csv"
        if not new_path.is_file():
            differences = pd.DataFrame([{"experiment": experiment, "row": "", "column": "metrics.csv",
                                         "committed": "present", "rerun": "missing"}])
            number_parts.append(differences)
            counts.append({"experiment": experiment, "numbers": count_numbers(old), "numbers_changed": count_numbers(old),
                           "claims": 0, "verdicts_changed": 0})
            continue
        differences = compare_metrics(old, _read(new_path), experiment, tolerance)
        numbers = count_numbers(old)
        old_claims = committed_table(committed, f"{experiment}/{profile}/claims.csv")
        new_claims_path = rerun_root / experiment / profile / "claims.csv"
        verdicts = pd.DataFrame(columns=VERDICT_COLUMNS)
        if old_claims is not None and new_claims_path.is_file():
            new_claims = _read(new_claims_path)
            verdicts = compare_claims(old_claims, new_claims, experiment)
            verdict_parts.append(verdicts)
            without = ["verdict"] if "verdict" in old_claims.columns else []
            claim_numbers = compare_metrics(old_claims.drop(columns=without),
                                            new_claims.drop(columns=[c for c in without if c in new_claims.columns]),
                                            f"{experiment} (claims)", tolerance)
            differences = pd.concat([differences, claim_numbers], ignore_index=True)
            numbers += count_numbers(old_claims.drop(columns=without))
        number_parts.append(differences)
        counts.append({"experiment": experiment, "numbers": numbers, "numbers_changed": len(differences),
                       "claims": 0 if old_claims is None else len(old_claims), "verdicts_changed": len(verdicts)})

    def concat(parts, columns):
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    return (concat(number_parts, DIFFERENCE_COLUMNS), concat(verdict_parts, VERDICT_COLUMNS),
            pd.DataFrame(counts, columns=COUNT_COLUMNS))


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
    parser.add_argument("--against", default="HEAD",
                        help="what the rerun is compared with: a git revision of results/ (default HEAD, the "
                             "committed files), or 'files' for the results folder as it is now")
    parser.add_argument("--rerun-dir", default=None,
                        help="compare this folder of results instead of rerunning (it must hold <experiment>/<profile>/)")
    parser.add_argument("--no-rerun", action="store_true",
                        help="compare the results folder as it is now (e.g. after make reproduce) with --against")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="largest absolute difference counted as equal (default 0: bit for bit)")
    parser.add_argument("--report", default=None, help="write every difference to this CSV")
    args = parser.parse_args(argv)
    if args.no_rerun and args.against == "files":
        parser.error("--no-rerun --against files compares the results folder with itself; give a git revision")
    committed: str | Path = config.results_dir() if args.against == "files" else args.against
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else \
        experiment_notebooks(config.project_root() / "notebooks")
    try:
        experiments = committed_experiments(committed, args.profile)
    except ValueError as error:
        parser.error(str(error))
    with tempfile.TemporaryDirectory(prefix="cmp-check-") as scratch:
        if args.rerun_dir or args.no_rerun:
            rerun_root = Path(args.rerun_dir) if args.rerun_dir else config.results_dir()
        else:
            rerun_root = Path(scratch) / "results"
            rerun_notebooks(notebooks, args.profile, rerun_root, Path(scratch) / "cache" if args.cold else None)
        if args.notebooks or args.rerun_dir:  # a subset: check what it made
            experiments = [e for e in experiments if (rerun_root / e / args.profile / "metrics.csv").is_file()]
        differences, verdicts, counts = compare_folders(committed, rerun_root, args.profile, experiments,
                                                         args.tolerance)
    where = "the results folder" if isinstance(committed, Path) else f"git {committed}"
    if args.report:
        from . import atomic

        atomic.write_csv(Path(args.report), pd.concat([differences.assign(kind="number"),
                                                       verdicts.rename(columns={"claim": "row"}).assign(kind="verdict")],
                                                      ignore_index=True))
    numbers, changed = int(counts["numbers"].sum()), int(counts["numbers_changed"].sum())
    claims, flipped = int(counts["claims"].sum()), int(counts["verdicts_changed"].sum())
    if differences.empty and verdicts.empty:
        print(f"every number of results/*/{args.profile}/metrics.csv reproduced "
              f"({len(experiments)} experiment{'s' * (len(experiments) != 1)}: {', '.join(experiments)}; "
              f"{numbers} numbers and {claims} verdicts equal to {where})")
        return 0
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 120):
        print(differences.head(SHOWN_DIFFERENCES).to_string(index=False))
        if len(differences) > SHOWN_DIFFERENCES:
            print(f"... and {len(differences) - SHOWN_DIFFERENCES} more (--report FILE writes them all)")
        if not verdicts.empty:
            print("\nverdicts that changed:")
            print(verdicts.to_string(index=False))
        print("\n" + counts.to_string(index=False))
    print(f"{len(differences)} difference(s) from the committed results/*/{args.profile}/metrics.csv ({where}): "
          f"{changed} of {numbers} numbers changed ({100 * changed / max(numbers, 1):.1f}%), "
          f"{flipped} of {claims} verdicts changed")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
