"""The paper profile end to end, as a user runs it, on a miniature CUHK-PEDES in the real layout.

The README's three ways in, each with the paper profile's settings (MobileNet v1, 224-px recipe,
batch 16, fp32) cut down only by explicit overrides (one epoch of two steps, 64x32 images, no
ImageNet weights): the notebook through papermill, ``python -m cmp_utils.train`` and ``torchrun``
with two CPU processes (gloo). Each must write its run folder (params.yaml, log.jsonl, checkpoints,
results.json) and results. About a minute of CPU in all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cmp_utils import config

from data_fixtures import write_mini_cuhk

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent  # the venv's papermill, torchrun
SHORT = ["--set", "pretrained=false", "--set", "epochs=1", "--set", "max_steps_per_epoch=2",
         "--set", "image_size=[64, 32]", "--no-progress"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """(data dir holding cuhk_pedes/, environment with its own results and cache folders)."""
    root = tmp_path_factory.mktemp("paper_path")
    write_mini_cuhk(root / "data" / "cuhk_pedes")
    env = {**os.environ, "CMP_RESULTS_DIR": str(root / "results"), "CMP_CACHE_DIR": str(root / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(config.project_root())}
    return root, env


def _run(command, env, cwd=None):
    completed = subprocess.run([str(part) for part in command], env=env, cwd=cwd or config.project_root(),
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
    return completed


def _check_run_folder(run_dir: Path, world_size: int = 1) -> dict:
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert (params["profile"], params["backbone"], params["batch_size"], params["amp"]) == \
        ("paper", "mobilenet_v1_tf", 16, "off")
    assert params["pretrained"] is False and params["image_size"] == [64, 32] and params["world_size"] == world_size
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and log[0]["steps"] == 2 and log[0]["images_per_second"] > 0
    assert (run_dir / "checkpoints" / "last.pt").stat().st_size > 0
    assert (run_dir / "checkpoints" / "best.pt").stat().st_size > 0
    return json.loads((run_dir / "results.json").read_text())


def test_command_line_paper_profile(mini):
    root, env = mini
    out = root / "cli_run"
    completed = _run([sys.executable, "-m", "cmp_utils.train", "--profile", "paper", "--data-dir", root / "data",
                      "--output-dir", out, *SHORT], env)
    # the first paper run says how much image cache it writes, and where, before writing it
    assert "image cache of cuhk_pedes/train: 20 images x 64 x 32 x 3 bytes" in completed.stderr
    results = _check_run_folder(out)
    assert results["best_epoch"] == 1 and 0 <= results["test"]["t2i_R@1"] <= 100
    assert json.loads(completed.stdout.strip().splitlines()[-1])["output_dir"] == str(out)


def test_torchrun_two_processes_paper_profile(mini):
    root, env = mini
    out = root / "torchrun_run"
    _run([BIN / "torchrun", "--standalone", "--nproc_per_node=2", "-m", "cmp_utils.train", "--profile", "paper",
          "--data-dir", root / "data", "--output-dir", out, "--device", "cpu", *SHORT], env)
    results = _check_run_folder(out, world_size=2)
    assert 0 <= results["test"]["t2i_R@1"] <= 100


def test_notebook_paper_profile_through_papermill(mini):
    root, env = mini
    if shutil.which("papermill", path=str(BIN)) is None:
        pytest.skip("papermill is not installed in this environment (make setup installs it)")
    executed = root / "05_paper.ipynb"
    overrides = "{epochs: 1, max_steps_per_epoch: 2, image_size: [64, 32]}"
    _run([BIN / "papermill", "notebooks/05_cuhk_pedes.ipynb", executed, "-p", "profile", "paper",
          "-p", "data_dir", root / "data", "-p", "pretrained", "False", "-p", "num_seeds", "1",
          "-y", f"{{methods: [CMPM+CMPC], overrides: {overrides}}}", "-k", "cmp-repro", "--cwd", "notebooks",
          "--no-progress-bar"], env)
    metrics = pd.read_csv(root / "results" / "cuhk_pedes" / "paper" / "metrics.csv")
    assert set(metrics["method"]) == {"CMPM+CMPC"} and set(metrics["backbone"]) == {"mobilenet_v1_tf"}
    assert metrics["value"].between(0, 100).all() and "R@1" in set(metrics["metric"])
    [run_dir] = (root / "cache" / "experiment_runs").iterdir()
    _check_run_folder(run_dir)
    assert (run_dir / "protocol.json").is_file()
