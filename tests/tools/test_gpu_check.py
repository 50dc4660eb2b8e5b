"""The prepared GPU check runs end to end at tiny sizes on the CPU (--dry-run), and refuses
clearly without CUDA."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cmp_utils.tools import gpu_check

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def test_synthetic_cuhk_has_the_real_layout_and_sizes(tmp_path):
    root = gpu_check.write_synthetic_cuhk(
        tmp_path / "cuhk_pedes", {"train": (6, 3), "val": (2, 1), "test": (2, 2)}, words=20
    )
    records = json.loads((root / "reid_raw.json").read_text())
    assert [r["split"] for r in records].count("train") == 6 and len(records) == 10
    assert {r["id"] for r in records if r["split"] == "train"} == {1, 2, 3}
    assert {r["id"] for r in records if r["split"] == "test"} == {5, 6}  # ids continue across splits
    assert all(len(r["captions"]) == 2 and (root / "imgs" / r["file_path"]).is_file() for r in records)


@pytest.mark.slow
def test_dry_run_writes_every_csv(isolated_dirs, tmp_path):
    assert gpu_check.main(["--dry-run", "--output-dir", str(tmp_path)]) == 0
    epoch = pd.read_csv(tmp_path / "paper_epoch.csv").iloc[0]
    assert epoch["gpu"] == "cpu (dry run)" and epoch["steps"] == 3 and epoch["full_epoch_steps"] == 128 // 16
    assert epoch["projected_epoch_seconds"] == pytest.approx(epoch["step_seconds"] * 8)
    precision = pd.read_csv(tmp_path / "precision.csv")
    assert precision["amp"].tolist() == ["fp32", "bf16"] and precision["speedup_over_fp32"].iloc[0] == 1.0
    assert (precision["step_seconds"] > 0).all()
    bench_rows = pd.read_csv(tmp_path / "bench" / "gpu.csv")
    assert bench_rows["benchmark"].str.startswith("gpu/").all() and (bench_rows["device"] == "cpu").all()
    assert not (tmp_path / "work").exists()  # the synthetic data and its cache are removed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
def test_without_cuda_it_says_so(tmp_path, capsys):
    assert gpu_check.main(["--output-dir", str(tmp_path)]) == 2
    assert "needs a CUDA GPU and none is visible" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
