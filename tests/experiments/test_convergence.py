"""cmp_utils.experiments.convergence and claims.mark_not_converged: the convergence rule, by hand-made cases."""

from __future__ import annotations

import math

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
