"""The claims rule: paired t-test and 95% t interval over seeds, verdict from the interval."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cmp_utils.evaluation import claims


def _frame(better_values, worse_values, table="t"):
    rows = []
    for seed, (b, w) in enumerate(zip(better_values, worse_values)):
        rows.append({"table": table, "method": "A", "direction": "t2i", "metric": "R@1", "value": b, "seed": seed})
        rows.append({"table": table, "method": "B", "direction": "t2i", "metric": "R@1", "value": w, "seed": seed})
    return pd.DataFrame(rows)


def test_paired_difference_matches_a_hand_computation():
    differences = [1.0, 2.0, 3.0, 4.0, 5.0]
    result = claims.paired_difference(differences, claim="x")
    # mean 3, sd sqrt(2.5), t_{0.975,4} = 2.7764451051977987 (tables), half width = t * sd / sqrt(5)
    half_width = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert result["mean_difference"] == pytest.approx(3.0)
    assert result["ci_low"] == pytest.approx(3.0 - half_width, rel=1e-9)
    assert result["ci_high"] == pytest.approx(3.0 + half_width, rel=1e-9)
    # t = 3 / (sqrt(2.5)/sqrt(5)) = 4.2426..., two-sided p with 4 degrees of freedom
    t_statistic = 3.0 / (math.sqrt(2.5) / math.sqrt(5))
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(t_statistic, 4), rel=1e-9)
    assert result["p_value"] == pytest.approx(0.01324, abs=1e-5)
    assert result["verdict"] == "held"
    assert result["test"] == "paired t-test" and result["n_seeds"] == 5


def test_paired_claim_agrees_with_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    better = rng.normal(50, 2, size=7)
    worse = better - rng.normal(0.3, 1.0, size=7)
    result = claims.paired_claim(_frame(better, worse), "A", "B", "R@1", "t2i")
    reference = stats.ttest_rel(better, worse)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    interval = reference.confidence_interval(0.95)
    assert result["ci_low"] == pytest.approx(interval.low, rel=1e-9)
    assert result["ci_high"] == pytest.approx(interval.high, rel=1e-9)
    assert result["mean_difference"] == pytest.approx(float(np.mean(better - worse)))
    assert list(result) == claims.CLAIM_COLUMNS


@pytest.mark.parametrize(
    "differences, verdict",
    [
        ([2, 3, 2.5, 3.5, 2.2], "held"),
        ([-2, -3, -2.5, -3.5, -2.2], "did not hold"),
        ([1, -1, 2, -2, 0.5], "inconclusive"),
        ([5, 6, 7, 8], claims.NOT_TESTED),
    ],
)
def test_verdict_follows_the_interval(differences, verdict):
    result = claims.paired_difference(differences)
    assert result["verdict"] == verdict
    if verdict == "held":
        assert result["ci_low"] > 0
    if verdict == "did not hold":
        assert result["ci_high"] < 0
    if verdict == claims.NOT_TESTED:
        assert math.isnan(result["ci_low"]) and math.isnan(result["p_value"])


def test_winning_on_every_seed_is_not_enough_when_the_interval_crosses_zero():
    # Positive on every seed but one large outlier makes the interval wide: the rule says inconclusive.
    result = claims.paired_difference([0.1, 0.1, 0.1, 0.1, 30.0])
    assert result["ci_low"] < 0 and result["verdict"] == "inconclusive"


def test_pairing_uses_the_seed_column_not_row_order():
    frame = _frame([10, 20, 30, 40, 50], [9, 19, 29, 39, 49])
    shuffled = frame.sample(frac=1.0, random_state=3)
    result = claims.paired_claim(shuffled, "A", "B", "R@1", "t2i")
    assert result["mean_difference"] == pytest.approx(1.0)
    assert result["ci_low"] == pytest.approx(1.0) and result["verdict"] == "held"


def test_unpaired_seeds_are_dropped_and_bad_input_is_named():
    frame = _frame([10, 20, 30, 40, 50, 60], [9, 19, 29, 39, 49, 59])
    frame = frame[~((frame["method"] == "B") & (frame["seed"] == 5))]
    assert claims.paired_claim(frame, "A", "B", "R@1", "t2i")["n_seeds"] == 5
    with pytest.raises(ValueError, match="'C'"):
        claims.paired_claim(frame, "A", "C", "R@1", "t2i")
    with pytest.raises(ValueError, match="several rows"):
        claims.paired_claim(pd.concat([frame, frame]), "A", "B", "R@1", "t2i")
    with pytest.raises(ValueError, match="NaN"):
        claims.paired_difference([1.0, float("nan"), 2.0, 3.0, 4.0])


def test_claims_frame_puts_the_shared_columns_first():
    rows = [dict(claims.paired_difference([1, 2, 3, 4, 5], claim="c"), sampler="random")]
    frame = claims.claims_frame(rows)
    assert list(frame.columns) == claims.CLAIM_COLUMNS + claims.FAMILY_COLUMNS + ["sampler"]
    assert "95% CI" in claims.describe(rows[0])


def test_holm_adjusts_a_family_step_down_against_a_loop_transcription():
    """Holm (1979): sort the m p-values, multiply the k-th smallest by m - k + 1, make them non-decreasing."""
    p_values = [0.01, 0.04, 0.03, float("nan"), 0.005]
    tested = sorted(p for p in p_values if p == p)
    expected_sorted, running = [], 0.0
    for k, p in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * p))
        expected_sorted.append(running)
    adjusted = claims.holm_adjusted(p_values)
    assert [adjusted[p_values.index(p)] for p in tested] == pytest.approx(expected_sorted)
    assert adjusted[3] != adjusted[3]  # not tested stays NaN


def test_claims_frame_holm_adjusts_verdicts_and_keeps_the_unadjusted_reading():
    strong = claims.paired_difference([1.0, 2.0, 1.5, 1.2, 1.1], claim="strong")
    marginal = claims.paired_difference([0.3, -0.2, 0.9, 0.1, 0.6], claim="marginal")
    lone = claims.claims_frame([marginal])
    assert lone["verdict"].iloc[0] == lone["verdict_unadjusted"].iloc[0]  # one claim: both readings agree
    assert lone["p_holm"].iloc[0] == pytest.approx(lone["p_value"].iloc[0])
    weak = claims.paired_difference([0.5, 0.1, 0.45, 0.2, 0.3], claim="weak but significant alone")
    family = claims.claims_frame([strong, weak] + [claims.paired_difference([0.1, -0.1, 0.05, -0.05, 0.0])] * 8)
    assert (family["family_size"] == 10).all()
    weak_row = family[family["claim"] == "weak but significant alone"].iloc[0]
    assert weak_row["verdict_unadjusted"] == "held" and weak_row["p_value"] < 0.05
    assert weak_row["p_holm"] >= weak_row["p_value"]
    assert weak_row["verdict"] == ("held" if weak_row["p_holm"] < 0.05 else "inconclusive")
    assert family[family["claim"] == "strong"]["verdict"].iloc[0] == "held"
    again = claims.claims_frame(family.to_dict("records"))
    pd.testing.assert_frame_equal(again, family)  # idempotent
    one_seed = claims.claims_frame([claims.paired_difference([1.0])])
    assert one_seed["verdict"].iloc[0] == claims.NOT_TESTED and one_seed["family_size"].iloc[0] == 0
