"""Has a table's every method converged? Epochs trained, best epoch, and the gap to a longer reference run.

The rule (one for every method of a table): each method trains with early stopping
(``TrainConfig.patience``), and one seed of it is trained again as a *reference* for
:data:`REFERENCE_FACTOR` times the epochs that seed trained, without early stopping. The method has
converged when the reference scores at most :data:`TOLERANCE` points above that seed's run on the
table's metric (test split, the checkpoint each run's validation chose). A method that has not gets
the verdict ``"not converged"`` in every claim it is part of
(:func:`cmp_utils.evaluation.claims.mark_not_converged`).
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ..evaluation import claims

#: A reference run trains this many times the epochs of the run it checks.
REFERENCE_FACTOR = 3
#: Largest gain of the reference over the run (metric points) that still counts as converged.
TOLERANCE = 1.0

#: Columns of :func:`convergence_table`, one row per method.
CONVERGENCE_COLUMNS = claims.CONVERGENCE_COLUMNS
#: The run groups of a :func:`check_convergence` table that did not converge.
unconverged_groups = claims.unconverged_groups


def reference_epochs(epochs_trained: int, factor: int = REFERENCE_FACTOR) -> int:
    """The epochs of the reference run that checks a run of ``epochs_trained`` epochs."""
    if epochs_trained < 1 or factor < 1:
        raise ValueError(f"reference_epochs: epochs_trained ({epochs_trained}) and factor ({factor}) must be >= 1")
    return factor * epochs_trained


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def convergence_table(
    runs: pd.DataFrame, references: pd.DataFrame, tolerance: float = TOLERANCE, factor: int = REFERENCE_FACTOR
) -> pd.DataFrame:
    """One row per method (in ``runs``' order): its seeds, epochs trained and best epochs (min-max over
    seeds), whether early stopping ended every seed, and the reference check.

    ``runs``: one row per (method, seed) with ``epochs_trained``, ``best_epoch``, ``stopped_early`` and
    ``value`` (the table's metric). ``references``: one row per method with ``seed``, ``epochs`` and
    ``value``. ``gap`` = reference value - the value of the run of the reference's seed;
    ``converged`` = the reference trained at least ``factor`` times that run's epochs and ``gap`` <=
    ``tolerance``; a method without a reference row is not converged (``reference_*`` missing)."""
    for name, frame, needed in (
        ("runs", runs, {"method", "seed", "epochs_trained", "best_epoch", "stopped_early", "value"}),
        ("references", references, {"method", "seed", "epochs", "value"}),
    ):
        missing = sorted(needed - set(frame.columns))
        if missing:
            raise ValueError(f"convergence_table: {name} lacks the column(s) {missing}")
    rows: list[dict[str, Any]] = []
    for method, group in runs.groupby("method", sort=False):
        row: dict[str, Any] = {
            "method": method,
            "seeds": len(group),
            "epochs_trained": _span(group["epochs_trained"].astype(int).tolist()),
            "best_epoch": _span(group["best_epoch"].astype(int).tolist()),
            "stopped_early": bool(group["stopped_early"].all()),
            "reference_seed": None,
            "reference_epochs": None,
            "run_value": float("nan"),
            "reference_value": float("nan"),
            "gap": float("nan"),
            "converged": False,
        }
        reference = references[references["method"] == method]
        if len(reference) > 1:
            raise ValueError(f"convergence_table: {len(reference)} reference rows for method {method!r}; give one")
        if len(reference) == 1:
            ref = reference.iloc[0]
            same_seed = group[group["seed"] == ref["seed"]]
            if same_seed.empty:
                raise ValueError(
                    f"convergence_table: the reference of {method!r} is seed {ref['seed']}, which has no run"
                )
            run = same_seed.iloc[0]
            gap = float(ref["value"]) - float(run["value"])
            long_enough = int(ref["epochs"]) >= factor * int(run["epochs_trained"])
            row.update(
                reference_seed=int(ref["seed"]),
                reference_epochs=int(ref["epochs"]),
                run_value=float(run["value"]),
                reference_value=float(ref["value"]),
                gap=gap,
                converged=bool(long_enough and gap <= tolerance),
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=CONVERGENCE_COLUMNS)


def unconverged_methods(table: pd.DataFrame) -> set[str]:
    """The methods :func:`convergence_table` did not find converged."""
    return set(table.loc[~table["converged"].astype(bool), "method"])


# ---------------------------------------------------------------------------------------------
# The check of a notebook's runs: reference runs trained from the runs' own records
# ---------------------------------------------------------------------------------------------

#: Settings of a run's record that :func:`~cmp_utils.experiments.runner.run_method` sets itself, so a
#: reference job does not pass them on as overrides.
_JOB_SETTINGS = (
    "dataset",
    "profile",
    "losses",
    "seed",
    "device",
    "data_dir",
    "progress",
    "evaluate_test",
    "output_dir",
    "resume",
)


def run_record(run_key: str) -> dict[str, Any]:
    """The memoised record (``protocol.json``) of the run whose folder name is ``run_key`` (the
    ``run_key`` column of a results frame)."""
    import json

    from ..core import config

    path = config.cache_dir() / "experiment_runs" / str(run_key) / "protocol.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no record of run {run_key} at {path}: train the notebook's runs (in this cache folder) before "
            "checking their convergence"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def reference_job(record: dict[str, Any], method: str, device: str = "auto", factor: int = REFERENCE_FACTOR) -> tuple:
    """The :func:`~cmp_utils.experiments.runner.run_method` job of the reference of the run ``record``
    (of ``method``): the same settings and seed, ``factor`` times its epochs, no early stopping. Its
    first epochs are the run's own (same seed, same data order), so it continues the run's folder
    (``continue_from``, an exact resume) instead of training them again."""
    settings = record["settings"]
    overrides = {key: value for key, value in settings.items() if key not in _JOB_SETTINGS}
    overrides.update(epochs=reference_epochs(int(record["epochs_trained"]), factor), patience=None)
    return (
        settings["dataset"],
        settings["profile"],
        method,
        int(settings["seed"]),
        device,
        settings["data_dir"],
        overrides,
        False,  # refresh
        record["run_dir"],  # continue_from
    )


def _metric_value(rows: Sequence[dict[str, Any]] | pd.DataFrame, checked: dict[str, Any]) -> float:
    frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    match = (frame["direction"] == checked["direction"]) & (frame["metric"] == checked["metric"])
    if checked.get("table") is not None:
        match &= frame["table"] == checked["table"]
    values = frame.loc[match, "value"].astype(float).unique()
    if len(values) != 1:
        raise ValueError(f"convergence check: {len(values)} values of {checked} in a run's rows; name its table")
    return float(values[0])


def checked_name(checked: dict[str, Any]) -> str:
    """``"t2i R@1"`` (``"mscoco_1k t2i R@1"`` with a table) for a metric ``{"direction", "metric", "table"}``."""
    return " ".join(str(checked[key]) for key in ("table", "direction", "metric") if checked.get(key) is not None)


def check_convergence(
    results: pd.DataFrame,
    metrics: Sequence[dict[str, Any]],
    by: Sequence[str] = ("method",),
    device: str = "auto",
    workers: int | None = None,
    progress: bool = True,
    factor: int = REFERENCE_FACTOR,
    tolerance: float = TOLERANCE,
) -> pd.DataFrame:
    """The convergence table of a notebook's runs, reference runs trained (or read from the memo) as needed.

    ``results``: the notebook's rows with ``run_key`` and ``seed`` (the metrics are read from each run's
    record, so the rows may hold other statistics, as notebook 11's do); ``by``: the columns that tell its run
    groups apart (``method``, plus e.g. ``sampler``, ``dataset`` or ``batch_size``); ``metrics``: what the
    claims read, each ``{"direction", "metric"}`` and optionally ``"table"``. For each group, its first
    seed is trained on to ``factor`` times its epochs without early stopping (one pool of workers for
    all); a row per group and metric then says whether the reference gained more than ``tolerance``
    (:func:`convergence_table`). Columns: ``by``, ``checked_on``, then :data:`CONVERGENCE_COLUMNS` less
    ``method`` (unless ``by`` has it). An empty ``results`` gives an empty table."""
    from .grid_runs import train_jobs

    by = list(by)
    if "method" not in by:
        raise ValueError(f"check_convergence: by={by} must include 'method'")
    columns = by + ["checked_on"] + [c for c in CONVERGENCE_COLUMNS if c != "method"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    missing = sorted(set(by) - set(results.columns))
    if missing:
        raise ValueError(f"check_convergence: the results lack the column(s) {missing} named in by")
    runs = results.drop_duplicates("run_key")
    groups, jobs = [], []
    for keys, group in runs.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        context = dict(zip(by, keys))
        records = {int(row["seed"]): run_record(row["run_key"]) for _, row in group.iterrows()}
        first = min(records)
        groups.append((context, records, group))
        jobs.append(reference_job(records[first], context["method"], device, factor))
    profile = jobs[0][1]
    references = train_jobs(jobs, device, profile, workers, progress, desc="reference runs")
    tables = []
    for checked in metrics:
        for index, (context, records, group) in enumerate(groups):
            label = "\x1f".join(str(context[key]) for key in by)
            run_rows = pd.DataFrame(
                [
                    {
                        "method": label,
                        "seed": seed,
                        "epochs_trained": record["epochs_trained"],
                        "best_epoch": record["best_epoch"],
                        "stopped_early": record["stopped_early"],
                        "value": _metric_value(record["rows"], checked),
                    }
                    for seed, record in records.items()
                ]
            )
            reference = references[index]
            reference_row = pd.DataFrame(
                [
                    {
                        "method": label,
                        "seed": int(reference["settings"]["seed"]),
                        "epochs": int(reference["epochs_trained"]),
                        "value": _metric_value(reference["rows"], checked),
                    }
                ]
            )
            table = convergence_table(run_rows, reference_row, tolerance, factor).drop(columns="method")
            tables.append(pd.DataFrame([{**context, "checked_on": checked_name(checked)}]).join(table))
    return pd.concat(tables, ignore_index=True)[columns]


def convergence_markdown(table: pd.DataFrame) -> str:
    """The convergence table of a notebook as Markdown, with a sentence saying which run groups did not
    converge (their claims say "not converged") or that all did."""
    if table.empty:
        return "_No trained runs to check (nothing was trained here)._"
    shown = table.copy()
    for column in ("run_value", "reference_value", "gap"):
        shown[column] = shown[column].map(lambda value: "" if pd.isna(value) else f"{value:.2f}")
    shown["converged"] = shown["converged"].map({True: "yes", False: "**no**"})
    from ..reporting import markdown_table

    missing = unconverged_groups(table)
    verdict = (
        f"Not converged (the reference gained more than {TOLERANCE:g} point, or has no run): "
        + "; ".join(missing)
        + '. Every claim about them says "not converged".'
        if missing
        else f"Every method converged: its reference, trained {REFERENCE_FACTOR}x as many epochs, gained at most "
        f"{TOLERANCE:g} point."
    )
    return markdown_table(list(shown.columns), shown.itertuples(index=False)) + "\n\n" + verdict
