"""Paths, device resolution, seeding, atomic writes and the environment report."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from cmp_utils.core import atomic, config
from cmp_utils.reporting import environment


def test_data_dir_prefers_parameter_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CMP_DATA_DIR", str(tmp_path / "from_env"))
    assert config.data_dir() == (tmp_path / "from_env").resolve()
    assert config.data_dir(tmp_path / "param") == (tmp_path / "param").resolve()
    monkeypatch.delenv("CMP_DATA_DIR")
    assert config.data_dir() == config.project_root() / "data"


def test_results_and_cache_dirs_follow_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CMP_RESULTS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("CMP_CACHE_DIR", str(tmp_path / "c"))
    assert config.results_dir() == (tmp_path / "r").resolve()
    assert config.cache_dir() == (tmp_path / "c").resolve()


def test_resolve_device():
    assert config.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='auto'"):
            config.resolve_device("cuda")


def test_check_profile_names_the_choices():
    assert config.check_profile("smoke") == "smoke"
    with pytest.raises(ValueError, match="smoke, quick, paper"):
        config.check_profile("fast")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    config.seed_everything(7)
    first = draw()
    config.seed_everything(7)
    assert draw() == first


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out" / "table.csv"
    atomic.write_csv(path, pd.DataFrame({"a": [1, 2]}))
    before = path.read_text()

    class Broken:
        def to_csv(self, destination, **kwargs):
            destination.write_text("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_csv(path, Broken())
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"]


def test_dataset_presence_reports_found_and_missing(tmp_path):
    (tmp_path / "flickr30k" / "flickr30k-images").mkdir(parents=True)
    (tmp_path / "flickr30k" / "dataset_flickr30k.json").write_text("{}")
    table = environment.dataset_presence(tmp_path).set_index("dataset")
    assert table.loc["flickr30k", "status"] == "found"
    assert table.loc["cuhk_pedes", "status"] == "missing"
    assert "reid_raw.json" in table.loc["cuhk_pedes", "missing"]


def test_offline_mobilenet_v2_weights_load():
    report = environment.check_mobilenet_v2_weights()
    assert report["loads"] and report["tensors"] > 300


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os
    import stat

    path = atomic.write_text(tmp_path / "new.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    os.chmod(path, 0o640)
    atomic.write_text(path, "y")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_file_stamp_changes_when_a_file_is_replaced_at_the_same_path(tmp_path):
    path = tmp_path / "weights.pt"
    assert config.file_stamp(None) == "" and config.file_stamp(path).endswith("|missing")
    path.write_bytes(b"12345")
    first = config.file_stamp(path)
    assert first.endswith(f"|5|{path.stat().st_mtime_ns}")
    path.write_bytes(b"123456")
    assert config.file_stamp(path) != first
