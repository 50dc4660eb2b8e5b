"""Notebook 14's planning and reading helpers (cmp_utils.experiments.family), on small hand-made frames: no training."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cmp_utils import experiments, training
from cmp_utils.experiments import family


def _rows(method: str, scope: str, values, dataset: str = "cuhk_pedes"):
    return [
        {
            "dataset": dataset,
            "table": dataset,
            "method": method,
            "backbone": "b",
            "direction": "t2i",
            "metric": "R@1",
            "value": value,
            "seed": seed,
            "seconds": 10.0,
            "run_key": f"{method}-{scope}-{seed}",
            "loss_scope": scope,
            "temperature": "0.1",
            "ceiling": 80.0,
        }
        for seed, value in enumerate(values)
    ]


def test_cmpm_runs_keep_notebook_05s_settings_so_they_are_reused():
    """The memo key of a CMPM run of notebook 14 equals notebook 05's: no loss option is added to it."""
    overrides = {"pretrained": True, "weights_path": None}
    chosen = family.method_overrides(["CMPM", "CMPM+CMPC", "SDM", "R-ITC"], {"SDM": 0.1})
    assert set(chosen) == {"SDM"} and chosen["SDM"] == {"loss_options": {"sdm_temperature": 0.1}}
    for method in ("CMPM", "CMPM+CMPC"):
        mine = training.make_config(
            "quick", "cuhk_pedes", losses=experiments.method_losses(method), **{**overrides, **chosen.get(method, {})}
        ).to_dict()
        theirs = training.make_config(
            "quick", "cuhk_pedes", losses=experiments.method_losses(method), **overrides
        ).to_dict()
        assert experiments.run_key(mine) == experiments.run_key(theirs)
    scoped = training.make_config("quick", "cuhk_pedes", losses=("cmpm",), loss_scope="local:4", **overrides).to_dict()
    assert experiments.run_key(scoped) != experiments.run_key(theirs)


def test_chosen_temperature_is_the_best_validation_score_first_on_ties():
    sweep = pd.DataFrame(
        {
            "method": ["SDM"] * 3 + ["TAL"] * 2,
            "temperature": [0.02, 0.1, 0.2, 0.015, 0.05],
            "validation": [30.0, 55.0, 55.0, float("nan"), 41.0],
        }
    )
    assert family.chosen_temperatures(sweep) == {"SDM": 0.1, "TAL": 0.05}


def test_planned_runs_counts_what_no_earlier_notebook_trains():
    plan = family.planned_runs(
        ["CMPM", "CMPM+CMPC", "SDM", "InfoNCE", "R-ITC"],
        range(5),
        {"SDM": [0.02, 0.1]},
        {"local:4": ["CMPM", "SDM"], "local:2": ["CMPM"]},
        ["CMPM", "SDM"],
    )
    # sweep 2; main (3 new losses x 5 seeds) - SDM's seed-0 run, which the sweep trains; scope 15; Flickr 5
    assert plan == {"sweep": 2, "main": 14, "scope": 15, "flickr": 5, "total": 36}


def test_temperature_labels():
    assert family.temperature_label("SDM", {"SDM": 0.1}) == "0.1"
    assert family.temperature_label("TAL", {}) == "0.015"
    assert family.temperature_label("R-ITC", {}) == "learned from 0.07"
    assert family.temperature_label("CMPM+CMPC", {}) == "none (feature norm)"


def test_scope_and_family_claims_follow_the_claims_rule():
    frame = pd.DataFrame(
        _rows("CMPM", "global", [50, 52, 49, 51, 50])
        + _rows("CMPM", "local:4", [45, 48, 44, 47, 46])
        + _rows("SDM", "global", [53, 54, 52, 55, 52])
    )
    [scope] = family.scope_claims(frame, ["local:4", "local:2"])
    assert scope["method"] == "CMPM" and scope["loss_scope"] == "local:4" and scope["n_seeds"] == 5
    assert scope["mean_difference"] == pytest.approx(4.4) and scope["verdict"] == "held"
    [better] = family.family_claims(frame, [("SDM", "CMPM"), ("SDM", "InfoNCE")])  # InfoNCE did not run
    assert better["claim"].startswith("SDM > CMPM") and better["mean_difference"] == pytest.approx(2.8)
    assert better["loss_scope"] == "global" and better["dataset"] == "cuhk_pedes"


def test_findings_and_budget_are_generated_from_the_results_folder(tmp_path):
    frame = pd.DataFrame(_rows("CMPM", "global", [50, 52, 49, 51, 50]) + _rows("CMPM", "local:4", [45, 48, 44, 47, 46]))
    claim_rows = family.scope_claims(frame, ["local:4"])
    params = {"planned_new_runs": {"sweep": 0, "main": 0, "scope": 5, "flickr": 0, "total": 5}, "wall_seconds": 12.5}
    experiments.save_experiment(tmp_path, frame, params, {}, claim_rows)
    pd.DataFrame(
        [
            {
                "method": "SDM",
                "temperature": 0.1,
                "validation": 55.0,
                "seed": 0,
                "seconds": 9.0,
                "run_key": "x",
                "chosen": True,
            }
        ]
    ).to_csv(tmp_path / "sweep.csv", index=False)
    findings = family.findings_markdown(tmp_path)
    assert "| cuhk_pedes | CMPM | 0.1 | t2i | 50.40 ± 1.14 (5) | 80.00 | 63.00 |" in findings
    assert "CMPM at `local:4`: +4.40 [" in findings and "**held** (5 seeds)" in findings
    assert "SDM 0.1 (validation 55.00; tried 0.1)" in findings
    budget = family.budget_markdown(tmp_path)
    assert "Runs behind these results: 11, 109 s" in budget  # 10 table runs + the sweep's run
    assert "cuhk_pedes at `local:4`: 5 runs, 50 s" in budget and "12 s" in budget
    assert json.dumps(family.budget_markdown(tmp_path / "none")) == json.dumps("No results yet: run the cells above.")


def test_ritc_start_sentence_reads_its_table_and_says_what_the_smoothing_does():
    from cmp_utils.experiments import family

    def curve(epsilon, values, best, test):
        return [
            {
                "epsilon": epsilon,
                "epoch": epoch,
                "validation_t2i_R@1": value,
                "epochs_trained": len(values),
                "best_epoch": best,
                "test_t2i_R@1": test,
            }
            for epoch, value in enumerate(values, start=1)
        ]

    slow_then_fast = pd.DataFrame(
        curve(0.01, [1.4, 8.5, 23.7, 40.0], 4, 59.3) + curve(1e-8, [25.6, 40.1, 48.0], 3, 55.9)
    )
    text = family.ritc_start_markdown(slow_then_fast)
    assert "epsilon 0.01: 1.4, 8.5, 23.7 after epochs 1-3" in text and "epsilon 1e-08: 25.6, 40.1, 48.0" in text
    assert "test R@1 59.30 at its best epoch 4 of 4" in text
    assert "without the smoothing it starts faster" in text
    no_effect = slow_then_fast.assign(epsilon=slow_then_fast["epsilon"].map({0.01: 1e-8, 1e-8: 0.01}))
    assert "does not explain" in family.ritc_start_markdown(no_effect)
    assert family.ritc_start_markdown(None) == "" and family.ritc_start_markdown(slow_then_fast.iloc[:0]) == ""
