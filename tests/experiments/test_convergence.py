"""cmp_utils.experiments.convergence and claims.mark_not_converged: the convergence rule, by hand-made cases."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from cmp_utils.evaluation import claims
from cmp_utils.experiments import convergence


def _runs(method, values, epochs, best, stopped=True):
    return [
        {"method": method, "seed": seed, "value": v, "epochs_trained": e, "best_epoch": b, "stopped_early": stopped}
        for seed, (v, e, b) in enumerate(zip(values, epochs, best))
    ]


def test_reference_epochs_is_the_factor_times_the_run():
    assert convergence.reference_epochs(7) == 21 and convergence.reference_epochs(4, factor=5) == 20
    with pytest.raises(ValueError, match="must be >= 1"):
        convergence.reference_epochs(0)


def test_a_method_within_the_tolerance_of_its_reference_has_converged():
    runs = pd.DataFrame(
        _runs("CMPM", [50.0, 52.0, 51.0], [8, 10, 9], [5, 7, 6]) + _runs("ranking", [40.0, 41.0], [6, 6], [3, 4])
    )
    references = pd.DataFrame(
        [
            {"method": "CMPM", "seed": 0, "epochs": 24, "value": 50.8},  # +0.8 over seed 0's 50.0: converged
            {"method": "ranking", "seed": 0, "epochs": 18, "value": 44.0},  # +4.0: still learning
        ]
    )
    table = convergence.convergence_table(runs, references).set_index("method")
    assert table.loc["CMPM", "epochs_trained"] == "8-10" and table.loc["CMPM", "best_epoch"] == "5-7"
    assert table.loc["CMPM", "seeds"] == 3 and bool(table.loc["CMPM", "converged"])
    assert math.isclose(table.loc["CMPM", "gap"], 0.8) and table.loc["CMPM", "reference_epochs"] == 24
    assert not table.loc["ranking", "converged"] and math.isclose(table.loc["ranking", "gap"], 4.0)
    assert convergence.unconverged_methods(table.reset_index()) == {"ranking"}


def test_a_short_reference_or_none_does_not_certify_convergence():
    runs = pd.DataFrame(_runs("CMPM", [50.0], [10], [8]) + _runs("CMPC", [45.0], [5], [5], stopped=False))
    references = pd.DataFrame([{"method": "CMPM", "seed": 0, "epochs": 20, "value": 50.0}])  # 2x, not 3x
    table = convergence.convergence_table(runs, references).set_index("method")
    assert not table.loc["CMPM", "converged"]  # the reference is too short to tell
    assert not table.loc["CMPC", "converged"] and math.isnan(table.loc["CMPC", "gap"])  # no reference at all
    assert not table.loc["CMPC", "stopped_early"]


def test_a_lower_reference_is_converged_and_bad_input_is_named():
    runs = pd.DataFrame(_runs("CMPM", [50.0], [10], [8]))
    lower = pd.DataFrame([{"method": "CMPM", "seed": 0, "epochs": 30, "value": 47.0}])  # past the peak: overfits
    assert bool(convergence.convergence_table(runs, lower)["converged"].iloc[0])
    with pytest.raises(ValueError, match="lacks the column"):
        convergence.convergence_table(runs.drop(columns="best_epoch"), lower)
    with pytest.raises(ValueError, match="seed 3, which has no run"):
        convergence.convergence_table(runs, lower.assign(seed=3))


def test_claims_about_an_unconverged_method_say_so():
    import numpy as np

    differences = np.array([10.0, 9.0, 11.0, 10.5, 9.5])
    rows = [
        claims.paired_difference(
            differences, claim="CMPM > ranking", better="CMPM", worse="ranking", metric="R@1", direction="t2i"
        ),
        claims.paired_difference(
            differences, claim="CMPM > CMCE", better="CMPM", worse="CMCE", metric="R@1", direction="t2i"
        ),
    ]
    frame = claims.claims_frame(rows)
    marked = claims.mark_not_converged(frame, {"ranking"})
    assert marked["verdict"].tolist() == [claims.NOT_CONVERGED, frame["verdict"].iloc[1]]
    assert marked["p_value"].tolist() == frame["p_value"].tolist()  # the statistics stay
    assert frame["verdict"].iloc[0] != claims.NOT_CONVERGED  # the input is not changed


def _claim(claim, better, worse, **context):
    import numpy as np

    row = claims.paired_difference(
        np.array([3.0, 2.0, 4.0, 3.5, 2.5]), claim=claim, better=better, worse=worse, metric="R@1", direction="t2i"
    )
    return {**row, **context}


def _table(rows):
    return pd.DataFrame(rows)


def test_a_convergence_table_marks_only_the_claims_of_its_unconverged_run_groups():
    """Context columns (here sampler and loss_scope) tell run groups apart: a group marks the claims that agree
    with it, a claim without the column is marked by any group of its methods, and a claim between two
    settings of one method ("global > local:4") by either setting."""
    rows = [
        _claim("CMPM > ranking (identity)", "CMPM", "ranking", sampler="identity"),
        _claim("CMPM > ranking (random)", "CMPM", "ranking", sampler="random"),
        _claim("CMPM varies less than ranking", "CMPM", "ranking"),
        _claim("CMPM: global > local:4", "global", "local:4", method="CMPM", loss_scope="local:4"),
        _claim("SDM: global > local:4", "global", "local:4", method="SDM", loss_scope="local:4"),
    ]
    frame = claims.claims_frame(rows)
    table = _table(
        [
            {"method": "ranking", "sampler": "random", "loss_scope": "global", "converged": False},
            {"method": "ranking", "sampler": "identity", "loss_scope": "global", "converged": True},
            {"method": "CMPM", "sampler": "identity", "loss_scope": "global", "converged": False},
            {"method": "SDM", "sampler": "identity", "loss_scope": "global", "converged": True},
        ]
    )
    marked = claims.mark_not_converged(frame, table)
    got = dict(zip(marked["claim"], marked["verdict"]))
    assert got["CMPM > ranking (identity)"] == claims.NOT_CONVERGED  # CMPM under the identity sampler
    assert got["CMPM > ranking (random)"] == claims.NOT_CONVERGED  # ranking under the random sampler
    assert got["CMPM varies less than ranking"] == claims.NOT_CONVERGED  # no sampler of its own: any group
    assert got["CMPM: global > local:4"] == claims.NOT_CONVERGED  # CMPM's global run group
    assert got["SDM: global > local:4"] == frame.set_index("claim").loc["SDM: global > local:4", "verdict"]
    converged_only = claims.mark_not_converged(frame, table.assign(converged=True))
    assert converged_only["verdict"].tolist() == frame["verdict"].tolist()


def test_too_few_seeds_stays_not_tested_when_the_method_did_not_converge():
    row = claims.paired_difference([1.0], claim="CMPM > ranking", better="CMPM", worse="ranking")
    marked = claims.mark_not_converged(claims.claims_frame([row]), {"ranking"})
    assert marked["verdict"].tolist() == [claims.NOT_TESTED]


def test_check_convergence_trains_each_groups_reference_for_three_times_its_epochs(isolated_dirs):
    """End to end on smoke data: the reference of a group is its first seed, trained again from scratch for
    REFERENCE_FACTOR x its epochs without early stopping; the table reads both values from the runs'
    records; a second check trains nothing (the references are memoised)."""
    from cmp_utils import experiments

    overrides = {"epochs": 2, "patience": 1, "max_steps_per_epoch": 2}
    results = experiments.run_grid(
        "cuhk_pedes", "smoke", ["CMPM", "ranking"], [0, 1], overrides=overrides, progress=False, workers=1
    )
    checked = [dict(direction="t2i", metric="R@1")]
    table = experiments.check_convergence(results, checked, workers=1, progress=False)
    assert table.columns.tolist()[:2] == ["method", "checked_on"]
    assert table["method"].tolist() == ["CMPM", "ranking"] and set(table["checked_on"]) == {"t2i R@1"}
    for _, row in table.iterrows():
        runs = results[(results["method"] == row["method"]) & (results["seed"] == 0)]
        record = convergence.run_record(runs["run_key"].iloc[0])
        assert row["reference_seed"] == 0
        assert row["reference_epochs"] == convergence.REFERENCE_FACTOR * record["epochs_trained"]
        value = runs[(runs["direction"] == "t2i") & (runs["metric"] == "R@1")]["value"].iloc[0]
        assert row["run_value"] == value
        assert row["gap"] == row["reference_value"] - row["run_value"]
        assert row["converged"] == (row["gap"] <= convergence.TOLERANCE)
    reference = convergence.reference_job(record, "ranking", "auto")
    assert reference[6]["epochs"] == 3 * record["epochs_trained"] and reference[6]["patience"] is None
    assert reference[6]["max_steps_per_epoch"] == 2  # every other setting of the run carries over
    assert reference[8] == record["run_dir"]  # it continues the run (an exact resume) instead of redoing its epochs
    from cmp_utils.experiments import grid_runs

    reference_record = grid_runs.train_jobs([reference], progress=False, workers=1)[0]
    run_log = (Path(record["run_dir"]) / "log.jsonl").read_text().splitlines()
    reference_log = (Path(reference_record["run_dir"]) / "log.jsonl").read_text().splitlines()
    assert len(reference_log) == 3 * len(run_log) and reference_log[: len(run_log)] == run_log

    from cmp_utils.core import config

    stamps = {
        path: path.stat().st_mtime_ns for path in (config.cache_dir() / "experiment_runs").glob("*/protocol.json")
    }
    again = experiments.check_convergence(results, checked, workers=1, progress=False)
    pd.testing.assert_frame_equal(again, table)
    after = {path: path.stat().st_mtime_ns for path in (config.cache_dir() / "experiment_runs").glob("*/protocol.json")}
    assert after == stamps  # the references were read from the memo, nothing trained again
    assert experiments.check_convergence(results.iloc[:0], checked).empty
    with pytest.raises(ValueError, match="must include 'method'"):
        experiments.check_convergence(results, checked, by=["sampler"])
