"""The claims rule: one way to test "method A beats method B" on our runs.

A claim compares two methods (or two settings) on one metric, **paired over seeds**: seed ``s``
of ``better`` is compared with seed ``s`` of ``worse`` (same data order, same initial weights
where the two share them), which removes most of the seed-to-seed spread from the comparison.
With ``d_s`` the per-seed difference ``better - worse`` over ``n`` seeds:

* ``mean_difference`` = mean of ``d_s``;
* ``ci_low`` / ``ci_high`` = the 95% Student-t confidence interval of that mean,
  ``mean ± t_{0.975, n-1} · sd(d) / sqrt(n)``;
* ``p_value`` = the two-sided paired t-test (:func:`scipy.stats.ttest_rel`, equivalently the
  one-sample t-test of ``d`` against 0);
* for one claim alone, the ``verdict`` follows the interval: ``held`` when ``ci_low > 0``,
  ``did not hold`` when ``ci_high < 0``, ``inconclusive`` otherwise; with fewer than
  :data:`MIN_SEEDS` seeds nothing is tested (``not tested (fewer than 5 seeds)``: the smoke
  profile runs one seed).

**Several claims tested together** (a notebook's claims are one family): :func:`claims_frame`
controls the family-wise error rate with Holm's step-down procedure (Holm 1979). The ``m``
tested claims' p-values, in increasing order, are multiplied by ``m, m-1, ..., 1`` and made
non-decreasing (``p_holm``, capped at 1); a claim then ``held`` when ``p_holm < 0.05`` and its mean
difference is positive, ``did not hold`` when ``p_holm < 0.05`` and it is negative, else
``inconclusive``. ``verdict`` is that adjusted verdict; ``verdict_unadjusted`` keeps the reading of
the claim's own 95% interval, and ``family_size`` says how many claims were tested together.
With one claim, both verdicts agree.

Every ``claims.csv`` of the experiment notebooks has the columns :data:`CLAIM_COLUMNS`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

#: Fewest paired seeds for which a claim is tested.
MIN_SEEDS = 5
#: Confidence level of the interval.
CONFIDENCE = 0.95
#: The test named in every claim row.
TEST_NAME = "paired t-test"
NOT_TESTED = f"not tested (fewer than {MIN_SEEDS} seeds)"
#: The verdict of a claim about a method whose runs had not converged (:mod:`cmp_utils.experiments.convergence`).
NOT_CONVERGED = "not converged"
VERDICTS = ("held", "did not hold", "inconclusive", NOT_TESTED, NOT_CONVERGED)

#: Columns of every claims.csv (a notebook may add more after these, e.g. ``sampler`` or ``table``).
CLAIM_COLUMNS = [
    "claim",
    "better",
    "worse",
    "metric",
    "direction",
    "n_seeds",
    "mean_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "test",
    "verdict",
]
#: Columns :func:`claims_frame` adds for the family of claims tested together.
FAMILY_COLUMNS = ["p_holm", "family_size", "verdict_unadjusted"]
#: The family-wise error rate Holm's procedure keeps.
ALPHA = 1 - CONFIDENCE
ADJUSTMENT = "Holm-Bonferroni within the notebook's claims"


def paired_difference(
    differences: Sequence[float] | np.ndarray | pd.Series,
    claim: str = "",
    better: str = "",
    worse: str = "",
    metric: str = "",
    direction: str = "",
) -> dict[str, Any]:
    """Test "the mean of the paired ``differences`` (better - worse, one per seed) is above 0".

    Returns a dict with the keys :data:`CLAIM_COLUMNS`. NaN differences are an error (a missing
    seed must be dropped by the caller, who knows why it is missing).
    """
    from scipy import stats

    values = np.asarray(differences, dtype=float).ravel()  # (n_seeds,)
    if np.isnan(values).any():
        raise ValueError(f"claim {claim!r}: the paired differences contain NaN; drop unpaired seeds first")
    n_seeds = int(values.size)
    mean = float(values.mean()) if n_seeds else float("nan")
    ci_low = ci_high = p_value = float("nan")
    if n_seeds < MIN_SEEDS:
        verdict = NOT_TESTED
    else:
        spread = float(values.std(ddof=1))
        half_width = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n_seeds - 1)) * spread / math.sqrt(n_seeds)
        ci_low, ci_high = mean - half_width, mean + half_width
        if spread == 0.0:
            # Identical differences on every seed: the t statistic is undefined (0/0 or ±inf).
            p_value = 1.0 if mean == 0.0 else 0.0
        else:
            p_value = float(stats.ttest_1samp(values, 0.0).pvalue)
        verdict = "held" if ci_low > 0 else "did not hold" if ci_high < 0 else "inconclusive"
    return {
        "claim": claim,
        "better": better,
        "worse": worse,
        "metric": metric,
        "direction": direction,
        "n_seeds": n_seeds,
        "mean_difference": mean,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_value": p_value,
        "test": TEST_NAME,
        "verdict": verdict,
    }


def paired_values(
    frame: pd.DataFrame,
    better: str,
    worse: str,
    metric: str,
    direction: str,
    table: str | None = None,
    by: str = "method",
) -> pd.DataFrame:
    """The ``value`` of ``better`` and ``worse`` (levels of column ``by``) per seed, seeds that have
    both only: a frame indexed by ``seed`` with the columns ``better`` and ``worse``."""
    needed = {"seed", "value", "metric", "direction", by} | ({"table"} if table is not None else set())
    missing = needed - set(frame.columns)
    if missing:
        raise ValueError(f"paired_claim needs the columns {sorted(missing)} in the results frame")
    chosen = frame[(frame["metric"] == metric) & (frame["direction"] == direction)]
    if table is not None:
        chosen = chosen[chosen["table"] == table]
    duplicated = chosen.duplicated(["seed", by])
    if duplicated.any():
        raise ValueError(
            f"paired_claim: several rows per (seed, {by}) for {direction} {metric}"
            f"{'' if table is None else ' in table ' + table}; filter the frame (e.g. by table, sampler) first"
        )
    pivot = chosen.pivot(index="seed", columns=by, values="value")
    for name in (better, worse):
        if name not in pivot.columns:
            raise ValueError(
                f"paired_claim: no rows with {by} == {name!r} for {direction} {metric}; have {list(pivot.columns)}"
            )
    return pivot[[better, worse]].dropna()


def paired_claim(
    frame: pd.DataFrame,
    better: str,
    worse: str,
    metric: str,
    direction: str,
    table: str | None = None,
    claim: str | None = None,
    by: str = "method",
) -> dict[str, Any]:
    """Test the claim "``better`` beats ``worse`` on ``direction`` ``metric``" on tidy result rows.

    ``frame`` has the columns ``seed``, ``value``, ``metric``, ``direction``, ``by`` (and ``table``
    when ``table`` is given). Seeds are paired; see the module docstring for the rule.
    """
    pairs = paired_values(frame, better, worse, metric, direction, table=table, by=by)
    text = claim or f"{better} > {worse} ({direction} {metric}{'' if table is None else ', ' + table})"
    return paired_difference(
        (pairs[better] - pairs[worse]).to_numpy(),
        claim=text,
        better=better,
        worse=worse,
        metric=metric,
        direction=direction,
    )


def describe(result: dict[str, Any]) -> str:
    """One sentence for a claim dict."""
    head = f"{result['claim']}: {result['verdict']}"
    if result["verdict"] == NOT_TESTED:
        return f"{head} (mean difference {result['mean_difference']:+.2f} over {result['n_seeds']} seed(s))"
    return (
        f"{head} on this data (mean difference {result['mean_difference']:+.2f}, 95% CI "
        f"[{result['ci_low']:+.2f}, {result['ci_high']:+.2f}], p = {result['p_value']:.3g}, "
        f"{result['n_seeds']} paired seeds)"
    )


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of a family (NaN entries are not tested and stay NaN)."""
    values = [float(p) for p in p_values]
    tested = sorted((p, index) for index, p in enumerate(values) if not math.isnan(p))
    adjusted = [float("nan")] * len(values)
    running, family = 0.0, len(tested)
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (family - rank) * p))
        adjusted[index] = running
    return adjusted


def adjusted_verdict(mean_difference: float, p_holm: float, unadjusted: str) -> str:
    """The verdict of one claim of a family, from its Holm-adjusted p-value and the sign of its mean."""
    if unadjusted == NOT_TESTED or math.isnan(p_holm):
        return unadjusted
    if p_holm < ALPHA:
        return "held" if mean_difference > 0 else "did not hold"
    return "inconclusive"


def claims_frame(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """A notebook's claim dicts as one family: a table whose first columns are :data:`CLAIM_COLUMNS`
    (with ``verdict`` Holm-adjusted over the family), then :data:`FAMILY_COLUMNS`, then any extra keys.
    Applying it to a frame it made already gives the same frame."""
    frame = pd.DataFrame(list(results))
    for column in CLAIM_COLUMNS:
        if column not in frame.columns:
            raise ValueError(f"claim rows lack the column {column!r}; build them with claims.paired_claim")
    if frame.empty:
        return frame.reindex(columns=CLAIM_COLUMNS + FAMILY_COLUMNS)
    unadjusted = frame["verdict_unadjusted"] if "verdict_unadjusted" in frame.columns else frame["verdict"]
    tested = unadjusted != NOT_TESTED
    p_values = frame["p_value"].where(tested, float("nan")).astype(float)
    frame["verdict_unadjusted"] = unadjusted
    frame["p_holm"] = holm_adjusted(p_values.tolist())
    frame["family_size"] = int(tested.sum())
    frame["verdict"] = [
        adjusted_verdict(mean, p, verdict)
        for mean, p, verdict in zip(frame["mean_difference"], frame["p_holm"], frame["verdict_unadjusted"])
    ]
    extra = [c for c in frame.columns if c not in CLAIM_COLUMNS + FAMILY_COLUMNS]
    return frame[CLAIM_COLUMNS + FAMILY_COLUMNS + extra]


def mark_not_converged(frame: pd.DataFrame, unconverged: Any) -> pd.DataFrame:
    """``frame`` (from :func:`claims_frame`) with ``verdict`` = :data:`NOT_CONVERGED` in every claim that
    involves a run group which had not converged: a difference between models still learning may
    measure how fast they learn, not how well. The statistics stay for reading.

    ``unconverged``: method names (a claim whose ``better`` or ``worse`` is one of them is marked), or a
    convergence table (:func:`cmp_utils.experiments.convergence.check_convergence`: ``method``, a boolean
    ``converged`` and the columns that tell its run groups apart, e.g. ``sampler`` or ``dataset``): a claim
    is marked when a not-converged row names its ``better``, ``worse`` or ``method`` and agrees with the
    claim on every such column the claim also has, or names there one of the claim's two sides (a claim
    without the column, e.g. one across batch sizes, is marked by any of its methods' rows; "CMPM: global
    > local:4" by CMPM's global and local:4 rows)."""
    frame = frame.copy()
    if isinstance(unconverged, pd.DataFrame):
        rows = unconverged[~unconverged["converged"].astype(bool)]
        context = [c for c in rows.columns if c in frame.columns and c not in _CONVERGENCE_OWN_COLUMNS]
        involved = pd.Series(False, index=frame.index)
        for _, row in rows.iterrows():
            match = frame["better"].eq(row["method"]) | frame["worse"].eq(row["method"])
            if "method" in frame.columns:  # a claim between two settings of one method (e.g. global > local:4)
                match |= frame["method"].eq(row["method"])
            for column in context:
                value = str(row[column])
                match &= (
                    frame[column].isna()
                    | frame[column].astype(str).eq(value)
                    | frame["better"].eq(value)
                    | frame["worse"].eq(value)
                )
            involved |= match
    else:
        names = set(unconverged)
        involved = frame["better"].isin(names) | frame["worse"].isin(names)
    frame.loc[involved & frame["verdict"].ne(NOT_TESTED), "verdict"] = NOT_CONVERGED  # too few seeds stays so
    return frame


#: Columns of a convergence table (:mod:`cmp_utils.experiments.convergence`), one row per method; a
#: notebook's table puts the columns that tell its run groups apart (``sampler``, ``dataset``, ...) and
#: ``checked_on`` (the metric) before the rest.
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
_CONVERGENCE_OWN_COLUMNS = set(CONVERGENCE_COLUMNS) | {"checked_on"}


def unconverged_groups(table: pd.DataFrame) -> list[str]:
    """``"method (column=value, ...)"`` for each run group of a convergence table that did not converge on
    some metric, in table order."""
    context = [c for c in table.columns if c not in _CONVERGENCE_OWN_COLUMNS]
    names = []
    for _, row in table[~table["converged"].astype(bool)].iterrows():
        extra = ", ".join(f"{c}={row[c]}" for c in context if c != "method")
        name = f"{row['method']} ({extra})" if extra else str(row["method"])
        if name not in names:
            names.append(name)
    return names


def converged_count(table: pd.DataFrame) -> tuple[int, int]:
    """``(converged, all)`` run groups of a convergence table (a group converged when it did on every metric)."""
    context = ["method"] + [c for c in table.columns if c not in _CONVERGENCE_OWN_COLUMNS]
    groups = table.groupby(context, sort=False, dropna=False)["converged"].all()
    return int(groups.sum()), len(groups)
