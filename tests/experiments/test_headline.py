"""``make paper-headline``'s path (``python -m cmp_utils.experiments.headline``) in the smoke profile."""

from __future__ import annotations

import pandas as pd

from cmp_utils.experiments import headline


def test_headline_trains_and_scores_both_rows(isolated_dirs, capsys):
    results, _ = isolated_dirs
    assert headline.main(["--profile", "smoke", "--device", "cpu"]) == 0
    frame = pd.read_csv(results / "headline" / "smoke" / "metrics.csv")
    assert set(frame["method"]) == {"CMPM", "CMPM+CMPC"} and set(frame["seed"]) == {0}
    recall = frame[(frame["metric"] == "R@1") & (frame["direction"] == "t2i")]
    assert len(recall) == 2 and recall["value"].between(0, 100).all()
    assert "paper" in frame.columns
    assert "R@1" in capsys.readouterr().out


def test_makefile_has_the_target():
    from cmp_utils.core import config

    makefile = (config.project_root() / "Makefile").read_text()
    assert "paper-headline:" in makefile and "-m cmp_utils.experiments.headline" in makefile
