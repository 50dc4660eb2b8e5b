"""Do the committed results reproduce? ``make check-results`` (``python -m cmp_utils.tools.check_results``).

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
is only on one side, is listed; the exit status is 1 if there is any. Every committed experiment
is expected in a ``--rerun-dir``: a ``metrics.csv`` or ``claims.csv`` that is missing there, or
unreadable (not UTF-8, not CSV) on either side, is a difference naming the file, and a check that
compares no experiment at all fails. The last line says how many experiments and numbers were
compared.
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

from ..core import config

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


def compare_metrics(
    committed: pd.DataFrame, rerun: pd.DataFrame, experiment: str = "", tolerance: float = 0.0
) -> pd.DataFrame:
    """Every difference between two tidy metrics tables (:data:`DIFFERENCE_COLUMNS`); empty when equal.

    Rows are matched on the key (non-float, non-timing) columns of ``committed``; a duplicated
    key is an error (the table is not tidy). Numbers must be equal (``tolerance`` 0, the default)
    or within ``tolerance`` of each other."""
    keys = _key_columns(committed)
    values = [c for c in committed.columns if c not in keys and c not in IGNORED_COLUMNS]
    missing_columns = [c for c in keys + values if c not in rerun.columns]
    rows: list[dict] = [
        {"experiment": experiment, "row": "", "column": c, "committed": "present", "rerun": "missing"}
        for c in missing_columns
    ]
    if missing_columns:
        return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)
    for name, frame in (("committed", committed), ("rerun", rerun)):
        if frame.duplicated(keys).any():
            raise ValueError(f"{experiment}: the {name} metrics.csv has several rows with the same {keys}")
    merged = committed[keys + values].merge(
        rerun[keys + values], on=keys, how="outer", suffixes=("_committed", "_rerun"), indicator=True
    )
    for _, row in merged.iterrows():
        label = ", ".join(f"{k}={row[k]}" for k in keys)
        if row["_merge"] != "both":
            side = "committed" if row["_merge"] == "left_only" else "rerun"
            rows.append(
                {
                    "experiment": experiment,
                    "row": label,
                    "column": "(row)",
                    "committed": "present" if side == "committed" else "missing",
                    "rerun": "present" if side == "rerun" else "missing",
                }
            )
            continue
        for column in values:
            old, new = row[f"{column}_committed"], row[f"{column}_rerun"]
            same = (pd.isna(old) and pd.isna(new)) or (
                not pd.isna(old) and not pd.isna(new) and abs(np.float64(old) - np.float64(new)) <= tolerance
            )
            if not same:
                rows.append({"experiment": experiment, "row": label, "column": column, "committed": old, "rerun": new})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


class UnreadableTableError(ValueError):
    """A results CSV that exists but cannot be read (not UTF-8, not CSV, empty, a folder)."""


def _read(path: Path) -> pd.DataFrame:
    """``pd.read_csv(path)`` (pandas reads back the exact float64 it wrote); an unreadable or garbled
    file raises :class:`UnreadableTableError` naming it."""
    try:
        return pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as error:
        raise UnreadableTableError(
            f"{path} cannot be read as a results table ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160] if str(error) else ''}); regenerate it "
            f"(rerun its notebook) or restore it with git checkout"
        ) from error


def _problem_row(experiment: str, file_name: str, committed: str, rerun: str) -> dict:
    """A difference row for a whole file that is missing or unreadable on one side."""
    return {"experiment": experiment, "row": "", "column": file_name, "committed": committed, "rerun": rerun}


def _read_side(source: str | Path, relative: str, label: str) -> tuple[pd.DataFrame | None, str | None]:
    """(table, None), (None, None) when absent, or (None, why) when unreadable; ``label`` names the side."""
    try:
        return committed_table(source, relative), None
    except UnreadableTableError as error:
        return None, f"unreadable ({label}): {error}"


def count_numbers(frame: pd.DataFrame) -> int:
    """How many numbers a results table holds: its compared float cells (timing and bookkeeping left out)."""
    keys = _key_columns(frame)
    return int(sum(frame[c].size for c in frame.columns if c not in keys and c not in IGNORED_COLUMNS))


def compare_claims(committed: pd.DataFrame, rerun: pd.DataFrame, experiment: str = "") -> pd.DataFrame:
    """The claims whose verdict differs (:data:`VERDICT_COLUMNS`); claims matched on their text columns
    other than the verdict (claim, better, worse, metric, direction, and any sampler / table column)."""
    keys = [c for c in _key_columns(committed) if c != "verdict" and c in rerun.columns]
    merged = committed[keys + ["verdict"]].merge(
        rerun[keys + ["verdict"]], on=keys, how="outer", suffixes=("_committed", "_rerun")
    )
    changed = merged[merged["verdict_committed"].fillna("(missing)") != merged["verdict_rerun"].fillna("(missing)")]
    return pd.DataFrame(
        {
            "experiment": experiment,
            "claim": changed["claim"],
            "committed": changed["verdict_committed"].fillna("(missing)"),
            "rerun": changed["verdict_rerun"].fillna("(missing)"),
        },
        columns=VERDICT_COLUMNS,
    )


def committed_table(source: str | Path, relative: str) -> pd.DataFrame | None:
    """``results/<relative>`` as committed at git revision ``source`` (a string such as ``HEAD``), or as it is
    in the folder ``source`` (a :class:`~pathlib.Path`); None when it does not exist there."""
    if isinstance(source, Path):
        path = source / relative
        return _read(path) if path.is_file() else None
    completed = subprocess.run(
        ["git", "show", f"{source}:results/{relative}"], cwd=config.project_root(), capture_output=True
    )
    if completed.returncode != 0:
        return None
    try:
        return pd.read_csv(io.BytesIO(completed.stdout))
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UnreadableTableError(
            f"results/{relative} at git {source} cannot be read as a results table "
            f"({type(error).__name__}); fix the commit or compare --against another"
        ) from error


def committed_experiments(source: str | Path, profile: str) -> list[str]:
    """The experiments with a ``<experiment>/<profile>/metrics.csv`` at ``source`` (git revision or folder)."""
    if isinstance(source, Path):
        return sorted(p.parent.parent.name for p in source.glob(f"*/{profile}/metrics.csv"))
    completed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", source, "results/"],
        cwd=config.project_root(),
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise ValueError(
            f"--against {source}: not a git revision of {config.project_root()} "
            f"({completed.stderr.strip()}); use a commit such as HEAD, or --against files"
        )
    parts = [line.split("/") for line in completed.stdout.splitlines()]
    return sorted(p[1] for p in parts if len(p) == 4 and p[2] == profile and p[3] == "metrics.csv")


def _compare_experiment(
    committed: str | Path, rerun_root: Path, profile: str, experiment: str, tolerance: float
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """:func:`_compare_tables` of one experiment; a table that is not tidy (a repeated key, a
    column of the wrong kind) is itself a difference naming the experiment, not a traceback."""
    try:
        return _compare_tables(committed, rerun_root, profile, experiment, tolerance)
    except (ValueError, KeyError, TypeError) as error:
        row = _problem_row(experiment, "metrics.csv / claims.csv", "comparable", f"not comparable: {error}")
        count = {"experiment": experiment, "numbers": 0, "numbers_changed": 1, "claims": 0, "verdicts_changed": 0}
        return pd.DataFrame([row]), pd.DataFrame(columns=VERDICT_COLUMNS), count


def _compare_tables(
    committed: str | Path, rerun_root: Path, profile: str, experiment: str, tolerance: float
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """One experiment's number differences, verdict differences and counts. A file expected on
    either side (the committed one exists) that is missing or unreadable is itself a difference,
    and all its numbers count as changed."""
    base = f"{experiment}/{profile}"
    verdicts = pd.DataFrame(columns=VERDICT_COLUMNS)
    old, old_problem = _read_side(committed, f"{base}/metrics.csv", "committed")
    if old is None and not old_problem:
        old_problem = f"missing: results/{base}/metrics.csv"
    if old_problem:
        count = {"experiment": experiment, "numbers": 0, "numbers_changed": 1, "claims": 0, "verdicts_changed": 0}
        return pd.DataFrame([_problem_row(experiment, "metrics.csv", old_problem, "")]), verdicts, count
    new, new_problem = _read_side(rerun_root, f"{base}/metrics.csv", "rerun")
    numbers = count_numbers(old)
    if new is None:
        count = {
            "experiment": experiment,
            "numbers": numbers,
            "numbers_changed": numbers,
            "claims": 0,
            "verdicts_changed": 0,
        }
        problem = new_problem or f"missing: {rerun_root / base / 'metrics.csv'}"
        return pd.DataFrame([_problem_row(experiment, "metrics.csv", "present", problem)]), verdicts, count
    differences = compare_metrics(old, new, experiment, tolerance)
    old_claims, old_claims_problem = _read_side(committed, f"{base}/claims.csv", "committed")
    new_claims, new_claims_problem = _read_side(rerun_root, f"{base}/claims.csv", "rerun")
    claims = 0 if old_claims is None else len(old_claims)
    if old_claims_problem or (old_claims is not None and new_claims is None):
        problem = old_claims_problem or new_claims_problem or f"missing: {rerun_root / base / 'claims.csv'}"
        row = _problem_row(
            experiment, "claims.csv", old_claims_problem or "present", "" if old_claims_problem else problem
        )
        differences = pd.concat([differences, pd.DataFrame([row])], ignore_index=True)
    elif old_claims is not None:
        verdicts = compare_claims(old_claims, new_claims, experiment)
        without = ["verdict"] if "verdict" in old_claims.columns else []
        claim_numbers = compare_metrics(
            old_claims.drop(columns=without),
            new_claims.drop(columns=[c for c in without if c in new_claims.columns]),
            f"{experiment} (claims)",
            tolerance,
        )
        differences = pd.concat([differences, claim_numbers], ignore_index=True)
        numbers += count_numbers(old_claims.drop(columns=without))
    return (
        differences,
        verdicts,
        {
            "experiment": experiment,
            "numbers": numbers,
            "numbers_changed": len(differences),
            "claims": claims,
            "verdicts_changed": len(verdicts),
        },
    )


def compare_folders(
    committed: str | Path, rerun_root: Path, profile: str, experiments: Sequence[str], tolerance: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Over every ``<experiment>/<profile>/{metrics,claims}.csv`` of ``experiments``: the number
    differences (:data:`DIFFERENCE_COLUMNS`; the claims' numbers under the column names of claims.csv),
    the verdict differences (:data:`VERDICT_COLUMNS`) and the counts per experiment (numbers and
    claims compared, changed)."""
    number_parts, verdict_parts, counts = [], [], []
    for experiment in experiments:
        differences, verdicts, count = _compare_experiment(committed, rerun_root, profile, experiment, tolerance)
        number_parts.append(differences)
        verdict_parts.append(verdicts)
        counts.append(count)

    def concat(parts, columns):
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    verdict_parts = [part for part in verdict_parts if not part.empty]
    return (
        concat(number_parts, DIFFERENCE_COLUMNS),
        concat(verdict_parts, VERDICT_COLUMNS),
        pd.DataFrame(counts, columns=COUNT_COLUMNS),
    )


def experiment_notebooks(notebook_dir: Path) -> list[Path]:
    """Notebooks numbered from :data:`FIRST_EXPERIMENT_NOTEBOOK` on, in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb") if int(p.name[:2]) >= FIRST_EXPERIMENT_NOTEBOOK)


def rerun_notebooks(notebooks: Sequence[Path], profile: str, results_root: Path, cache_dir: Path | None) -> None:
    """Execute ``notebooks`` with papermill (:mod:`cmp_utils.tools.run_notebooks`), results into ``results_root``."""
    env = dict(os.environ, CMP_RESULTS_DIR=str(results_root))
    if cache_dir is not None:
        env["CMP_CACHE_DIR"] = str(cache_dir)
    command = [
        sys.executable,
        "-m",
        "cmp_utils.tools.run_notebooks",
        "--profile",
        profile,
        "--output-dir",
        str(results_root / "executed"),
        *map(str, notebooks),
    ]
    subprocess.run(command, check=True, env=env, cwd=config.project_root())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=config.PROFILES)
    parser.add_argument(
        "--notebooks", nargs="*", default=None, help="notebooks to rerun (default: every notebook from 05 on)"
    )
    parser.add_argument("--cold", action="store_true", help="an empty cache: retrain every run, regenerate the data")
    parser.add_argument(
        "--against",
        default="HEAD",
        help="what the rerun is compared with: a git revision of results/ (default HEAD, the "
        "committed files), or 'files' for the results folder as it is now",
    )
    parser.add_argument(
        "--rerun-dir",
        default=None,
        help="compare this folder of results instead of rerunning (it must hold <experiment>/<profile>/)",
    )
    parser.add_argument(
        "--no-rerun",
        action="store_true",
        help="compare the results folder as it is now (e.g. after make reproduce) with --against",
    )
    parser.add_argument(
        "--experiments",
        default=None,
        help="comma-separated experiments to compare (default: every committed one; with --rerun-dir "
        "each must be in that folder, so a partial folder fails unless named here)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest absolute difference counted as equal (default 0: bit for bit)",
    )
    parser.add_argument("--report", default=None, help="write every difference to this CSV")
    args = parser.parse_args(argv)
    if args.no_rerun and args.against == "files":
        parser.error("--no-rerun --against files compares the results folder with itself; give a git revision")
    committed: str | Path = config.results_dir() if args.against == "files" else args.against
    notebooks = (
        [Path(p) for p in args.notebooks]
        if args.notebooks
        else experiment_notebooks(config.project_root() / "notebooks")
    )
    try:
        experiments = committed_experiments(committed, args.profile)
    except ValueError as error:
        parser.error(str(error))
    if args.experiments:
        chosen = [name.strip() for name in args.experiments.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in experiments]
        if unknown:
            parser.error(
                f"--experiments {', '.join(unknown)}: no committed results/<experiment>/{args.profile}/"
                f"metrics.csv; choose among {', '.join(experiments)}"
            )
        experiments = chosen
    with tempfile.TemporaryDirectory(prefix="cmp-check-") as scratch:
        if args.rerun_dir or args.no_rerun:
            rerun_root = Path(args.rerun_dir) if args.rerun_dir else config.results_dir()
        else:
            rerun_root = Path(scratch) / "results"
            rerun_notebooks(notebooks, args.profile, rerun_root, Path(scratch) / "cache" if args.cold else None)
        if args.notebooks and not args.rerun_dir:  # a subset of notebooks: check what it made
            experiments = [e for e in experiments if (rerun_root / e / args.profile / "metrics.csv").exists()]
        differences, verdicts, counts = compare_folders(
            committed, rerun_root, args.profile, experiments, args.tolerance
        )
    where = "the results folder" if isinstance(committed, Path) else f"git {committed}"
    if not experiments:
        print(
            f"error: nothing was compared: no <experiment>/{args.profile}/metrics.csv "
            f"{'made by the notebooks given' if args.notebooks else f'at {where}'} (rerun folder {rerun_root}); "
            f"a check that compares nothing certifies nothing. Check --profile, --against and --rerun-dir",
            file=sys.stderr,
        )
        return 1
    if args.report:
        from ..core import atomic

        atomic.write_csv(
            Path(args.report),
            pd.concat(
                [differences.assign(kind="number"), verdicts.rename(columns={"claim": "row"}).assign(kind="verdict")],
                ignore_index=True,
            ),
        )
    numbers, changed = int(counts["numbers"].sum()), int(counts["numbers_changed"].sum())
    claims, flipped = int(counts["claims"].sum()), int(counts["verdicts_changed"].sum())
    if differences.empty and verdicts.empty:
        print(
            f"every number of results/*/{args.profile}/metrics.csv reproduced "
            f"({len(experiments)} experiment{'s' * (len(experiments) != 1)}: {', '.join(experiments)}; "
            f"{numbers} numbers and {claims} verdicts equal to {where})"
        )
        return 0
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 120):
        print(differences.head(SHOWN_DIFFERENCES).to_string(index=False))
        if len(differences) > SHOWN_DIFFERENCES:
            print(f"... and {len(differences) - SHOWN_DIFFERENCES} more (--report FILE writes them all)")
        if not verdicts.empty:
            print("\nverdicts that changed:")
            print(verdicts.to_string(index=False))
        print("\n" + counts.to_string(index=False))
    print(
        f"{len(differences)} difference(s) from the committed results/*/{args.profile}/metrics.csv ({where}), "
        f"{len(experiments)} experiments compared: {changed} of {numbers} numbers changed ({100 * changed / max(numbers, 1):.1f}%), "
        f"{flipped} of {claims} verdicts changed"
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
