"""The headline rows alone: CUHK-PEDES, CMPM and CMPM+CMPC, one seed (``make paper-headline``).

The paper's best-known numbers (text-to-image R@1 49.37 for CMPM+CMPC with MobileNet, 44.02 for
CMPM alone) are the two rows this trains and scores, without the rest of notebook 05's grid. Each
run goes through :func:`cmp_utils.experiments.run_method` (memoised like every other run) and its
test scores, with the paper's value beside them where a public source gives one, are written to
``results/headline/<profile>/metrics.csv``.

    python -m cmp_utils.experiments.headline --profile paper --data-dir /data/cmp --weights /weights/mobilenet_v1.pth

The smoke profile runs the same path on synthetic data in seconds (the test suite does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..core import atomic, config

DATASET = "cuhk_pedes"
METHODS = ("CMPM", "CMPM+CMPC")


def headline_frame(
    profile: str, seed: int = 0, device: str = "auto", data_dir: str | None = None, weights_path: str | None = None
) -> pd.DataFrame:
    """Train (or reuse) and score the two headline runs; one row per (method, metric) with ``paper`` values."""
    from . import runner
    from ..evaluation import paper

    overrides: dict[str, Any] = {"weights_path": weights_path} if weights_path else {}
    rows = []
    for method in METHODS:
        record = runner.run_method(DATASET, profile, method, seed, device, data_dir, overrides or None)
        backbone = record["settings"]["backbone"]
        for row in record["rows"]:
            cell = paper.paper_cell(DATASET, method, row["metric"], row["direction"], backbone=backbone)
            rows.append(
                {
                    "method": method,
                    "backbone": backbone,
                    "seed": seed,
                    **row,
                    "paper": None if cell is None else cell["value"],
                    "run_dir": record["run_dir"],
                }
            )
    return pd.DataFrame(rows)


def write_headline(profile: str, frame: pd.DataFrame, results_dir: str | Path | None = None) -> Path:
    """``<results>/headline/<profile>/metrics.csv`` (written atomically); returns its path."""
    path = config.results_dir(results_dir) / "headline" / profile / "metrics.csv"
    atomic.write_text(path, frame.to_csv(index=False))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cmp_utils.experiments.headline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--profile", default="paper", choices=config.PROFILES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None, help="the datasets' folder (paper profile)")
    parser.add_argument("--weights", default=None, help="ImageNet weights of the backbone (paper profile)")
    args = parser.parse_args(argv)
    try:
        frame = headline_frame(args.profile, args.seed, args.device, args.data_dir, args.weights)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = write_headline(args.profile, frame)
    shown = frame[frame["metric"].isin(["R@1", "R@10"])][["method", "metric", "value", "paper"]]
    print(shown.to_string(index=False))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
