"""The paper profile end to end, as a user runs it, on a miniature CUHK-PEDES in the real layout.

The README's three ways in, each with the paper profile's settings (MobileNet v1, 224-px recipe,
batch 16, fp32) cut down only by explicit overrides (one epoch of two steps, 64x32 images, no
ImageNet weights): the notebook through papermill, ``python -m cmp_utils.training`` and ``torchrun``
with two CPU processes (gloo). Each must write its run folder (params.yaml, log.jsonl, checkpoints,
results.json) and results. About a minute of CPU in all; the three run at once (a module fixture).
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

from cmp_utils.core import config

from data_fixtures import write_mini_cuhk

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent  # the venv's papermill, torchrun
SHORT = [
    "--set",
    "pretrained=false",
    "--set",
    "epochs=1",
    "--set",
    "max_steps_per_epoch=2",
    "--set",
    "image_size=[64, 32]",
    "--no-progress",
]


def _environment(root: Path) -> dict[str, str]:
    """This process's environment with its own results and cache folders under ``root``."""
    return {
        **os.environ,
        "CMP_RESULTS_DIR": str(root / "results"),
        "CMP_CACHE_DIR": str(root / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(config.project_root()),
    }


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """(data dir holding cuhk_pedes/, {way in: finished run}). The three ways in run at once (each
    mostly on one core), each with its own results and cache folders (``<root>/<way>/``), so every
    one starts from an empty cache as a user's first run does."""
    root = tmp_path_factory.mktemp("paper_path")
    write_mini_cuhk(root / "data" / "cuhk_pedes")
    overrides = "{epochs: 1, max_steps_per_epoch: 2, image_size: [64, 32]}"
    commands = {
        "cli": [
            sys.executable,
            "-m",
            "cmp_utils.training",
            "--profile",
            "paper",
            "--data-dir",
            root / "data",
            "--output-dir",
            root / "cli" / "run",
            *SHORT,
        ],
        "torchrun": [
            BIN / "torchrun",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "cmp_utils.training",
            "--profile",
            "paper",
            "--data-dir",
            root / "data",
            "--output-dir",
            root / "torchrun" / "run",
            "--device",
            "cpu",
            *SHORT,
        ],
    }
    if shutil.which("papermill", path=str(BIN)) is not None:
        commands["notebook"] = [
            BIN / "papermill",
            "notebooks/05_cuhk_pedes.ipynb",
            root / "notebook" / "05_paper.ipynb",
            "-p",
            "profile",
            "paper",
            "-p",
            "data_dir",
            root / "data",
            "-p",
            "pretrained",
            "False",
            "-p",
            "num_seeds",
            "1",
            "-y",
            f"{{methods: [CMPM+CMPC], overrides: {overrides}}}",
            "-k",
            "cmp-repro",
            "--cwd",
            "notebooks",
            "--no-progress-bar",
        ]
    started = {}
    for way, command in commands.items():
        (root / way).mkdir()
        started[way] = _start(command, _environment(root / way), root / way)
    return root, {way: _finish(*run) for way, run in started.items()}


def _start(command, env, log_dir: Path):
    command = [str(part) for part in command]
    stdout, stderr = open(log_dir / "stdout.txt", "w+"), open(log_dir / "stderr.txt", "w+")
    process = subprocess.Popen(command, env=env, cwd=config.project_root(), stdout=stdout, stderr=stderr, text=True)
    return command, process, stdout, stderr


def _finish(command, process, stdout, stderr) -> subprocess.CompletedProcess:
    try:
        process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    texts = []
    for handle in (stdout, stderr):
        handle.seek(0)
        texts.append(handle.read())
        handle.close()
    return subprocess.CompletedProcess(command, process.returncode, *texts)


def _run(mini, way: str) -> tuple[Path, subprocess.CompletedProcess]:
    """The folder of ``way``'s run (results/, cache/, run/) and its finished process, which succeeded."""
    root, runs = mini
    completed = runs[way]
    assert completed.returncode == 0, f"{completed.args}\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
    return root / way, completed


def _check_run_folder(run_dir: Path, world_size: int = 1) -> dict:
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert (params["profile"], params["backbone"], params["batch_size"], params["amp"]) == (
        "paper",
        "mobilenet_v1_tf",
        16,
        "off",
    )
    assert params["pretrained"] is False and params["image_size"] == [64, 32] and params["world_size"] == world_size
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and log[0]["steps"] == 2 and log[0]["images_per_second"] > 0
    assert (run_dir / "checkpoints" / "last.pt").stat().st_size > 0
    assert (run_dir / "checkpoints" / "best.pt").stat().st_size > 0
    return json.loads((run_dir / "results.json").read_text())


def test_command_line_paper_profile(mini):
    folder, completed = _run(mini, "cli")
    out = folder / "run"
    # the first paper run says how much image cache it writes, and where, before writing it
    assert "image cache of cuhk_pedes/train: 20 images x 64 x 32 x 3 bytes" in completed.stderr
    results = _check_run_folder(out)
    assert results["best_epoch"] == 1 and 0 <= results["test"]["t2i_R@1"] <= 100
    assert json.loads(completed.stdout.strip().splitlines()[-1])["output_dir"] == str(out)


def test_torchrun_two_processes_paper_profile(mini):
    folder, _ = _run(mini, "torchrun")
    results = _check_run_folder(folder / "run", world_size=2)
    assert 0 <= results["test"]["t2i_R@1"] <= 100


def test_notebook_paper_profile_through_papermill(mini):
    if "notebook" not in mini[1]:
        pytest.skip("papermill is not installed in this environment (make setup installs it)")
    folder, _ = _run(mini, "notebook")
    metrics = pd.read_csv(folder / "results" / "cuhk_pedes" / "paper" / "metrics.csv")
    assert set(metrics["method"]) == {"CMPM+CMPC"} and set(metrics["backbone"]) == {"mobilenet_v1_tf"}
    assert metrics["value"].between(0, 100).all() and "R@1" in set(metrics["metric"])
    runs = {
        yaml.safe_load((path / "params.yaml").read_text())["epochs"]: path
        for path in (folder / "cache" / "experiment_runs").iterdir()
    }
    assert sorted(runs) == [1, 3]  # the run, and its convergence reference (3x its epochs)
    run_dir = runs[1]
    _check_run_folder(run_dir)
    convergence = pd.read_csv(folder / "results" / "cuhk_pedes" / "paper" / "convergence.csv")
    assert convergence[["method", "reference_epochs"]].values.tolist() == [["CMPM+CMPC", 3]]
    assert (run_dir / "protocol.json").is_file()
