"""cmp_utils.tools.bench: every benchmark runs at tiny sizes and writes tidy rows (no timing assertions)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from cmp_utils.tools import bench

TINY = bench.group_settings(quick_check=True, full=False)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _check_rows(rows: bench.Rows, prefix: str) -> pd.DataFrame:
    frame = rows.frame()
    assert list(frame.columns) == list(bench.COLUMNS)
    assert len(frame) > 0
    assert frame["benchmark"].str.startswith(prefix).all()
    assert (frame["device"] != "").all() and (frame["machine"] != "").all()
    assert (frame["torch"] == str(torch.__version__)).all()
    assert frame["date"].str.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    # a ratio always says what it compares with
    with_ratio = frame[frame["ratio"].notna()]
    assert (with_ratio["ratio_to"] != "").all()
    return frame


def test_time_interleaved_alternates_and_counts_rounds():
    calls: list[str] = []
    samples = bench.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2
    )
    assert calls == ["a", "b"] * 5
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3}
    assert all(value >= 0 for values in samples.values() for value in values)
    with pytest.raises(ValueError, match="repeats"):
        bench.time_interleaved({"a": lambda: None}, repeats=0)


def test_measure_peak_memory_sees_a_large_temporary():
    def allocate() -> int:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched, then freed
        return int(block[0])

    result, peak = bench.measure_peak_memory(allocate)
    assert result == 1
    if peak is not None:  # Linux
        assert peak >= 48


def test_training_step_rows(isolated_dirs):
    rows = bench.Rows()
    bench.bench_training_step(rows, **TINY["training_step"])
    frame = _check_rows(rows, "training_step/")
    assert set(frame["benchmark"]) == {"training_step/cached_features", "training_step/end_to_end_small_cnn"}
    efficiency = frame[frame["case"].str.startswith("pipeline efficiency")]
    assert len(efficiency) == 2
    # efficiency is exactly model-only / full of the rows beside it
    for name, group in frame.groupby("benchmark"):
        if name.endswith(("cached_features", "small_cnn")):
            full = group.loc[group["case"].str.startswith("full step"), "value"].item()
            model = group.loc[group["case"].str.startswith("model-only"), "value"].item()
            ratio = group.loc[group["case"].str.startswith("pipeline efficiency"), "value"].item()
            assert ratio == pytest.approx(model / full)


def test_evaluation_rows_label_extrapolation():
    rows = bench.Rows()
    bench.bench_evaluation(rows, **TINY["evaluation"])
    frame = _check_rows(rows, "evaluation/")
    large = frame[frame["benchmark"] == "evaluation/2000x10000"]
    measured = large.loc[large["case"].str.contains("(measured)", regex=False), "value"].item()
    total = large.loc[large["case"].str.startswith("retrieval_metrics, all 2000"),]
    assert total["notes"].item().startswith("EXTRAPOLATED from measured slices of 50 and 200 queries")
    # fixed + per-query cost: all 2000 queries take at least the 200 measured ones
    assert total["value"].item() >= measured
    assert frame["case"].str.startswith("recall_at_k").any()
    # measured whole when no slice is asked for
    rows = bench.Rows()
    bench.bench_evaluation(rows, **{**TINY["evaluation"], "large_slice_queries": None, "large": (300, 1500)})
    whole = rows.frame().query("case == 'retrieval_metrics, all 300 queries'")
    assert whole["notes"].item().startswith("measured whole")


def test_data_rows(isolated_dirs):
    rows = bench.Rows()
    bench.bench_data(rows, **TINY["data"])
    frame = _check_rows(rows, "data/")
    assert set(frame["unit"]) == {"images/s"}
    assert (frame["value"] > 0).all()


def test_loss_rows():
    rows = bench.Rows()
    bench.bench_losses(rows, **TINY["losses"])
    frame = _check_rows(rows, "losses/")
    assert {"CMPM", "plain matmul (n x n x d)"} <= set(frame["case"])
    assert frame["case"].str.startswith("CMPC (100 classes)").any()


def test_gpu_rows_without_cuda_and_code_path_on_cpu():
    rows = bench.Rows()
    bench.bench_gpu(rows)  # device None: CUDA if present, else one "no CUDA device" row
    frame = _check_rows(rows, "gpu")
    if not torch.cuda.is_available():
        assert frame["case"].tolist() == ["no CUDA device"]
    # the same code path on the CPU at tiny sizes
    rows = bench.Rows()
    bench.bench_gpu(rows, device="cpu", **TINY["gpu"])
    frame = _check_rows(rows, "gpu/")
    steps = frame[frame["benchmark"] == "gpu/batch_2"]
    assert steps["case"].tolist() == ["train step, fp32", "train step, bf16"]
    assert steps["value"].map(math.isfinite).all(), steps["notes"].tolist()
    assert steps["ratio"].iloc[0] == 1.0
    assert (frame["benchmark"] == "gpu/epoch").sum() == 2


def test_cli_writes_csvs(tmp_path, isolated_dirs):
    assert bench.main(["--quick-check", "--only", "losses,gpu", "--output-dir", str(tmp_path)]) == 0
    for group in ("losses", "gpu"):
        frame = pd.read_csv(tmp_path / f"{group}.csv")
        assert list(frame.columns) == list(bench.COLUMNS)
    with pytest.raises(ValueError, match="unknown benchmark group"):
        bench.run(tmp_path, ["nope"])


def test_numerics_rows_time_the_same_runs_in_both_modes(isolated_dirs):
    rows = bench.Rows()
    bench.bench_numerics(rows, **TINY["numerics"])
    frame = _check_rows(rows, "numerics/")
    kernels = frame[frame["benchmark"] != "numerics/quick_run"]
    assert set(kernels["benchmark"]) == {"numerics/sqrt", "numerics/exp", "numerics/log", "numerics/tanh"}
    assert (kernels["value"] > 0).all() and kernels["case"].str.endswith("vendor-independent").sum() == len(kernels) / 2
    frame = frame[frame["benchmark"] == "numerics/quick_run"]
    assert len(frame) == 4 and (frame["unit"] == "s").all() and (frame["value"] > 0).all()
    assert frame["case"].str.endswith(": native").sum() == 2 and frame["case"].str.endswith(": pinned").sum() == 2
    pinned = frame[frame["case"].str.endswith(": pinned")]
    native = frame[frame["case"].str.endswith(": native")]
    for (_, p), (_, n) in zip(pinned.iterrows(), native.iterrows()):
        assert p["ratio"] == pytest.approx(p["value"] / n["value"])


def test_paper_step_times_the_paper_recipe_through_train_step(monkeypatch):
    """The GPU benchmark's step is the paper profile's recipe (TF-slim MobileNet v1, Adam with the
    weight-decay groups, the weight average) and calls train.train_step, the step fit calls."""
    from cmp_utils import training

    runner = bench.PaperStep(torch.device("cpu"), "fp32", 32, vocabulary=50, num_classes=5, dim=16)
    paper = training.make_config("paper", "cuhk_pedes")
    assert runner.cfg.backbone == paper.backbone == "mobilenet_v1_tf"
    assert (runner.cfg.bn_style, runner.cfg.ema_scope) == (paper.bn_style, paper.ema_scope)
    groups = {group["name"]: group["weight_decay"] for group in runner.state.optimizer.param_groups}
    assert groups == {"decayed": paper.weight_decay, "others": 0.0}
    calls = []
    monkeypatch.setattr(training, "train_step", lambda *args, **kwargs: calls.append(args))
    generator = torch.Generator().manual_seed(0)
    runner.step(*bench.paper_batch(4, 32, torch.device("cpu"), 50, 5, generator=generator))
    assert len(calls) == 1 and calls[0][0] is runner.state


def test_training_step_benchmark_builds_fits_run_state(isolated_dirs):
    """The cached-features benchmark trains the model fit builds (every recipe setting) with fit's optimiser."""
    from cmp_utils import data, training

    cfg = training.make_config("smoke", "cuhk_pedes", device="cpu", progress=False)
    prepared = data.prepare_dataset(cfg.dataset, cfg.profile, seed=cfg.data_seed, **data.recipe_options(cfg))
    trainer = bench.RunTrainer(cfg, prepared, 24, torch.device("cpu"))
    assert isinstance(trainer.state, training.RunState)
    assert trainer.state.ema.scope == cfg.ema_scope
    assert [group["name"] for group in trainer.state.optimizer.param_groups] == ["decayed", "others"]
