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

#: A reference run trains this many times the epochs of the run it checks.
REFERENCE_FACTOR = 3
#: Largest gain of the reference over the run (metric points) that still counts as converged.
TOLERANCE = 1.0

#: Columns of :func:`convergence_table`, one row per method.
CONVERGENCE_COLUMNS = [
    "method",
    "seeds",
    "epochs_trained",
    "best_epoch",
    "stopped_early",
    "reference_seed",
    "reference_epochs",
    "run_value",
    "reference_value",
    "gap",
    "converged",
]


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
