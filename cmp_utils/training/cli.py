"""The command line ``python -m cmp_utils.training`` (also under ``torchrun``): one run from a profile,
a dataset and ``--set KEY=VALUE`` overrides."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..core import atomic, config
from . import distributed
from .loop import fit
from .settings import make_config, parse_setting

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m cmp_utils.training``: one run; settings = the profile's, then ``--config FILE``, then
    the named options, then each ``--set KEY=VALUE`` (any :class:`TrainConfig` field)."""
    parser = argparse.ArgumentParser(
        prog="python -m cmp_utils.training",
        description="Train a CMPM/CMPC model (torchrun for several processes).",
        epilog="Example: python -m cmp_utils.training --profile paper --data-dir /data/cmp --set weights_path=mnv1.pth "
        "--set epochs=10. Every setting: see cmp_utils.training.TrainConfig.",
    )
    parser.add_argument("--profile", default="smoke", choices=config.PROFILES)
    parser.add_argument("--dataset", default="cuhk_pedes", choices=config.DATASETS)
    parser.add_argument("--config", help="YAML file of setting overrides (keys of TrainConfig)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one setting (any TrainConfig field; the value is YAML: 32, 2e-4, false, [224, 224]); "
        "repeatable, applied last",
    )
    parser.add_argument("--output-dir", help="run folder (default <results>/runs/<profile>/<dataset>/<losses>_seed<k>)")
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last.pt")
    parser.add_argument("--losses", help="comma-separated loss names, e.g. cmpm,cmpc")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            parser.error(f"--config {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            parser.error(f"--config {path} must hold a mapping of settings")
        overrides.update(loaded)
    for key, value in (
        ("output_dir", args.output_dir),
        ("losses", args.losses),
        ("seed", args.seed),
        ("data_dir", args.data_dir),
        ("epochs", args.epochs),
    ):
        if value is not None:
            overrides[key] = value
    overrides.update(resume=args.resume, device=args.device)
    if args.no_progress:
        overrides["progress"] = False
    try:
        overrides.update(parse_setting(text) for text in args.settings)
        settings = make_config(args.profile, args.dataset, **overrides)
        config.resolve_device(settings.device)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    try:
        result = fit(settings)
    except atomic.FolderLockedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if distributed.is_main_process() and int(os.environ.get("RANK", "0")) == 0:
        print(
            json.dumps(
                {
                    "output_dir": str(result.output_dir),
                    "best_epoch": result.best_epoch,
                    "test": result.test,
                    "seconds": round(result.seconds, 1),
                }
            )
        )
    return 0
