"""cmp_utils.training / evaluate: a smoke run learns, resumes exactly, is deterministic; paper fails clearly."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cmp_utils import data, models, training
from cmp_utils.evaluation import evaluate

FAST = dict(profile="smoke", dataset="cuhk_pedes", progress=False, evaluate_test=True)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def smoke_run(isolated_dirs, tmp_path_factory):
    """One smoke run of 3 epochs, shared by the tests below."""
    out = tmp_path_factory.mktemp("run_full")
    return training.fit(dict(FAST, epochs=3, output_dir=str(out)))


def test_smoke_run_lowers_loss_and_writes_run_folder(smoke_run):
    losses = [record["loss"] for record in smoke_run.history]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    out = smoke_run.output_dir
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert params["losses"] == ["cmpm", "cmpc"] and params["profile"] == "smoke" and "git_commit" in params
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert "val_t2i_R@1" in json.loads(lines[0]) and "samples_per_second" in json.loads(lines[0])
    results = json.loads((out / "results.json").read_text())
    assert results["best_epoch"] in (1, 2, 3) and 0 <= results["test"]["t2i_R@1"] <= 100
    best = _weights(out / "checkpoints" / "best.pt")
    assert best["epoch"] == results["best_epoch"]
    last = _weights(out / "checkpoints" / "last.pt")  # loads with weights_only=True
    assert {"model", "optimizer", "ema", "loss_module", "rng", "epoch"} <= set(last)
    assert "cmpc.weight" in "".join(last["loss_module"])  # CMPC's W is checkpointed


def test_resume_ends_where_an_uninterrupted_run_ends(smoke_run, tmp_path):
    first = training.fit(dict(FAST, epochs=2, output_dir=str(tmp_path)))  # "interrupted" after 2 of 3 epochs
    assert len(first.history) == 2
    resumed = training.fit(dict(FAST, epochs=3, output_dir=str(tmp_path), resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    full_last = _weights(smoke_run.output_dir / "checkpoints" / "last.pt")
    resumed_last = _weights(tmp_path / "checkpoints" / "last.pt")
    for key, value in full_last["model"].items():
        torch.testing.assert_close(resumed_last["model"][key], value, rtol=0, atol=0)
    for mine, theirs in zip(resumed_last["ema"]["shadow"], full_last["ema"]["shadow"]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert resumed.test == smoke_run.test


def test_same_seed_same_metrics(smoke_run, tmp_path):
    again = training.fit(dict(FAST, epochs=3, output_dir=str(tmp_path)))
    assert again.test == smoke_run.test
    assert [r["loss"] for r in again.history] == [r["loss"] for r in smoke_run.history]


def test_end_to_end_two_stage_schedule(isolated_dirs, tmp_path):
    result = training.fit(
        dict(
            FAST,
            feature_mode="end_to_end",
            backbone="small_cnn",
            pretrained=False,
            epochs=2,
            frozen_epochs=1,
            lr=1e-3,
            finetune_lr=1e-4,
            max_steps_per_epoch=2,
            output_dir=str(tmp_path),
            evaluate_test=False,
        )
    )
    assert [(r["lr"], r["cnn_trainable"]) for r in result.history] == [(1e-3, False), (1e-4, True)]


def test_ema_warmup_and_average():
    layer = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    ema = training.WeightAverage(layer, decay=0.9, warmup=True)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema.update(layer)  # n = 1: decay min(0.9, 2/11)
    torch.testing.assert_close(ema.shadow[0], torch.full((1, 2), 1 - 2 / 11))
    ema.update(layer)  # n = 2: decay min(0.9, 3/12)
    torch.testing.assert_close(ema.shadow[0], torch.full((1, 2), 1 - (2 / 11) * (3 / 12)))


def test_weight_decay_groups():
    model = models.build_model(40, backbone="small_cnn", embedding_dim=8, word_dim=8, hidden_size=4, pretrained=False)
    cfg = training.make_config("smoke", "cuhk_pedes")
    groups = training.param_groups(model, torch.nn.Linear(2, 2), cfg)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 4e-5 and groups[1]["weight_decay"] == 0.0
    assert id(model.image_embedding.projection.weight) in decayed
    assert id(model.text_embedding.projection.weight) in decayed
    assert id(model.text_encoder.word_embedding.weight) not in decayed
    assert id(model.image_embedding.batch_norm.weight) not in decayed
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters())) + 2


def test_evaluate_split_scores_the_ranks_it_is_asked_for(isolated_dirs):
    """``ks`` reaches the metrics: R@K for exactly those K, and rsum their sum over both directions."""
    prepared = data.prepare_dataset("cuhk_pedes", "smoke")
    torch.manual_seed(0)
    model = models.build_model(
        len(prepared.vocabulary), backbone="small_cnn", embedding_dim=16, word_dim=8, hidden_size=4, pretrained=False
    )
    result = evaluate.evaluate_split(model, prepared, "val", "cpu", batch_size=64, ks=(2, 3))
    for direction in ("i2t", "t2i"):
        assert sorted(key for key in result[direction] if key.startswith("R@")) == ["R@2", "R@3"]
    expected_rsum = sum(result[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (2, 3))
    assert result["rsum"] == pytest.approx(expected_rsum)
    default = evaluate.evaluate_split(model, prepared, "val", "cpu", batch_size=64)
    assert sorted(key for key in default["t2i"] if key.startswith("R@")) == ["R@1", "R@10", "R@5"]


def test_gallery_holds_each_image_once(isolated_dirs):
    prepared = data.prepare_dataset("cuhk_pedes", "smoke")
    frame = prepared.frames["val"]
    torch.manual_seed(0)
    model = models.build_model(
        len(prepared.vocabulary), backbone="small_cnn", embedding_dim=16, word_dim=8, hidden_size=4, pretrained=False
    )
    images, image_labels, texts, text_labels = evaluate.encode(model, prepared, "val", "cpu", batch_size=7)
    assert images.shape == (frame["image_index"].nunique(), 16) and texts.shape == (len(frame), 16)
    assert image_labels.shape == (len(images),) and text_labels.shape == (len(texts),)
    # text embeddings do not depend on the encoding batch size (padding excluded from the max)
    _, _, texts_again, _ = evaluate.encode(model, prepared, "val", "cpu", batch_size=64)
    torch.testing.assert_close(texts, texts_again, rtol=1e-5, atol=1e-5)


def test_config_errors_and_paper_profile_fails_clearly(isolated_dirs, tmp_path):
    with pytest.raises(ValueError, match="unknown training setting"):
        training.make_config("smoke", "cuhk_pedes", batchsize=3)
    with pytest.raises(ValueError, match="losses"):
        training.make_config("smoke", "cuhk_pedes", losses="cmpm,nope")
    paper = training.make_config("paper", "cuhk_pedes")
    assert (paper.backbone, paper.batch_size, paper.epochs, paper.image_size) == ("mobilenet_v1_tf", 16, 50, (224, 224))
    flickr = training.make_config("paper", "flickr30k")
    assert (flickr.backbone, flickr.batch_size, flickr.frozen_epochs, flickr.epochs, flickr.finetune_lr) == (
        "resnet152_slim",
        32,
        15,
        45,
        2e-5,
    )
    with pytest.raises(FileNotFoundError, match="weights_path"):
        training.fit(dict(profile="paper", dataset="cuhk_pedes", output_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="cuhk_pedes"):
        training.fit(
            dict(
                profile="paper",
                dataset="cuhk_pedes",
                pretrained=False,
                data_dir=str(tmp_path / "nodata"),
                output_dir=str(tmp_path),
            )
        )


# ---------------------------------------------------------------------------------------------
# Settings: types, --set, the command line
# ---------------------------------------------------------------------------------------------


def test_settings_are_type_checked_and_named():
    with pytest.raises(TypeError, match=r"batch_size='32' is a str; it must be int"):
        training.make_config("smoke", "cuhk_pedes", batch_size="32")
    with pytest.raises(TypeError, match=r"pretrained.*must be bool"):
        training.make_config("smoke", "cuhk_pedes", pretrained="yes")
    with pytest.raises(TypeError, match=r"image_size.*tuple\[int, int\] \| None"):
        training.make_config("smoke", "cuhk_pedes", image_size=[64, 32, 3])
    cfg = training.make_config("smoke", "cuhk_pedes", lr=1, image_size=[64, 32], num_threads=None)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.image_size == (64, 32) and cfg.num_threads is None


def test_set_reaches_every_setting_with_its_type():
    assert training.parse_setting("batch_size=32") == ("batch_size", 32)
    assert training.parse_setting("lr=1e-3") == ("lr", 1e-3)  # YAML 1.1 reads 1e-3 as text: still a float
    assert training.parse_setting("pretrained=false") == ("pretrained", False)
    assert training.parse_setting("image_size=[64, 32]") == ("image_size", (64, 32))
    assert training.parse_setting("loss_options={label_smoothing: 0.1}") == ("loss_options", {"label_smoothing": 0.1})
    assert training.parse_setting("note=2018") == ("note", "2018")
    assert training.parse_setting("weights_path=") == ("weights_path", None)
    with pytest.raises(TypeError, match=r"setting epochs='many' is a str; it must be int"):
        training.parse_setting("epochs=many")
    with pytest.raises(ValueError, match="unknown training setting"):
        training.parse_setting("batchsize=3")
    reference = training.make_config("paper", "flickr30k", pretrained=False)
    for name, value in reference.to_dict().items():  # every field, written as YAML, comes back equal
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        parsed_name, parsed = training.parse_setting(f"{name}={text}")
        assert parsed_name == name and parsed == getattr(reference, name), name


def test_command_line_refuses_bad_settings_by_name(tmp_path, capsys):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text('batch_size: "32"\n')
    with pytest.raises(SystemExit):
        training.main(["--config", str(config_file), "--output-dir", str(tmp_path / "run")])
    assert "batch_size='32' is a str; it must be int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training.main(["--set", "dropout=high", "--output-dir", str(tmp_path / "run")])
    assert "dropout='high' is a str; it must be float" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training.main(["--device", "gpu", "--output-dir", str(tmp_path / "run")])
    assert "device='gpu' is not a device; use one of auto, cpu, cuda" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Runs refused before they start
# ---------------------------------------------------------------------------------------------


def test_batch_larger_than_the_training_split_refuses(isolated_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=100000 is larger than what the training split"):
        training.fit(dict(FAST, batch_size=100_000, output_dir=str(tmp_path)))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results.json").exists()


def test_existing_run_folder_refuses_without_resume(smoke_run):
    with pytest.raises(FileExistsError, match=r"use --resume .* or another --output-dir"):
        training.fit(dict(FAST, epochs=3, output_dir=str(smoke_run.output_dir)))


def test_resume_with_other_settings_refuses_and_names_them(smoke_run):
    with pytest.raises(ValueError, match=r"seed: run 0, now 1.*Resume with the run's settings"):
        training.fit(dict(FAST, epochs=3, seed=1, output_dir=str(smoke_run.output_dir), resume=True))
    with pytest.raises(
        ValueError, match=r"embedding_dim: run 64, now 32; losses: run \['cmpm', 'cmpc'\], now \['cmpm'\]"
    ):
        training.fit(
            dict(FAST, epochs=3, losses="cmpm", embedding_dim=32, output_dir=str(smoke_run.output_dir), resume=True)
        )


def test_damaged_checkpoints_name_the_file_and_the_fix(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run.output_dir, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=r"checkpoint .*last\.pt is empty or truncated.*Delete last\.pt"):
        training.fit(dict(FAST, epochs=4, output_dir=str(run), resume=True))
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(b"")  # empty
    with pytest.raises(ValueError, match=r"best\.pt is empty or truncated"):
        training.load_checkpoint(best)


def test_unknown_device_refuses(isolated_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"device='gpu' is not a device; use one of auto, cpu, cuda, cuda:N"):
        training.fit(dict(FAST, device="gpu", output_dir=str(tmp_path)))


def test_unusable_output_dir_refuses_before_data_preparation(isolated_dirs, tmp_path, monkeypatch):
    cache = tmp_path / "cache"  # a fresh cache: data preparation would create it
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"a_file is a file, not a folder"):
        training.fit(dict(FAST, output_dir=str(a_file), cache_dir=str(cache)))
    with pytest.raises(PermissionError, match=r"cannot be written"):
        training.fit(dict(FAST, output_dir=str(a_file / "run"), cache_dir=str(cache)))
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == read_only else real_access(path, mode))
    with pytest.raises(PermissionError, match=r"read_only is not a writable folder"):
        training.fit(dict(FAST, output_dir=str(read_only / "run"), cache_dir=str(cache)))
    assert not cache.exists()


# ---------------------------------------------------------------------------------------------
# Recipe: stage switch, frozen CNN batch norm, selection, precision, threads, throughput
# ---------------------------------------------------------------------------------------------

END_TO_END = dict(
    FAST,
    feature_mode="end_to_end",
    backbone="small_cnn",
    pretrained=False,
    lr=1e-3,
    finetune_lr=1e-4,
    max_steps_per_epoch=2,
    evaluate_test=False,
    num_workers=0,
)


@pytest.mark.parametrize("restart", [True, False])
def test_stage_two_restarts_adam_and_the_average_as_the_release(isolated_dirs, tmp_path, restart):
    training.fit(dict(END_TO_END, epochs=2, frozen_epochs=1, stage2_restart=restart, output_dir=str(tmp_path)))
    last = _weights(tmp_path / "checkpoints" / "last.pt")
    adam_steps = {int(state["step"]) for state in last["optimizer"]["state"].values()}
    if restart:  # stage 2 (2 steps) only: Adam moments and the EMA step count started again
        assert last["ema"]["num_updates"] == 2 and adam_steps == {2}
    else:
        assert last["ema"]["num_updates"] == 4 and adam_steps == {2, 4}  # the CNN's moments start in stage 2


@pytest.mark.parametrize("mode", ["batch_stats", "eval"])
def test_frozen_cnn_batch_norm_mode(isolated_dirs, tmp_path, mode):
    training.fit(dict(END_TO_END, epochs=1, frozen_epochs=1, frozen_cnn_bn=mode, output_dir=str(tmp_path)))
    model = _weights(tmp_path / "checkpoints" / "last.pt")["model"]
    cnn_means = [
        value for key, value in model.items() if key.startswith("image_encoder.") and key.endswith("running_mean")
    ]
    assert cnn_means
    moved = any(bool(mean.abs().max() > 0) for mean in cnn_means)  # fresh batch norm: running mean 0
    assert moved == (mode == "batch_stats")


def test_validation_schedule_and_selection_split(isolated_dirs, tmp_path):
    every_two = training.fit(dict(FAST, epochs=3, validate_every=2, output_dir=str(tmp_path / "two")))
    assert ["val_t2i_R@1" in r for r in every_two.history] == [False, True, True]  # every 2nd and the last
    assert every_two.best_epoch in (2, 3)
    never = training.fit(dict(FAST, epochs=2, validate_every=0, output_dir=str(tmp_path / "never")))
    assert not any("val_t2i_R@1" in r for r in never.history) and never.best_epoch == 2
    on_test = training.fit(dict(FAST, epochs=1, select_split="test", output_dir=str(tmp_path / "test")))
    assert on_test.history[0]["selected_on"] == "test"
    assert on_test.best_validation["t2i_R@1"] == on_test.test["t2i_R@1"]  # chosen on the split it reports


def test_bf16_on_the_cpu_when_asked(isolated_dirs, tmp_path):
    cpu = torch.device("cpu")
    autocast, scaler = training.autocast_and_scaler(training.make_config("smoke", "cuhk_pedes", amp="bf16"), cpu)
    assert autocast.fast_dtype == torch.bfloat16 and autocast._enabled and scaler is None
    assert not training.autocast_and_scaler(training.make_config("smoke", "cuhk_pedes", amp="auto"), cpu)[0]._enabled
    with pytest.raises(ValueError, match="amp='fp16' needs CUDA"):
        training.autocast_and_scaler(training.make_config("smoke", "cuhk_pedes", amp="fp16"), cpu)
    result = training.fit(dict(END_TO_END, epochs=1, amp="bf16", output_dir=str(tmp_path)))
    assert math.isfinite(result.history[0]["loss"]) and result.history[0]["loss"] > 0


def test_threads_workers_and_throughput_are_recorded(isolated_dirs, tmp_path):
    threads_before = torch.get_num_threads()
    result = training.fit(dict(END_TO_END, epochs=1, num_threads=1, num_workers=None, output_dir=str(tmp_path)))
    assert torch.get_num_threads() == threads_before  # the caller's setting is given back
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["num_threads"] == 1 and params["torch_threads"] == 1
    assert params["cpu_numerics"]["mode"] == "pinned" and params["cpu_numerics"]["mkl_branch"] == "COMPATIBLE"
    assert params["loader_workers"] == min(8, os.cpu_count() or 1)
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert record["steps"] == 2 and record["step_seconds"] == pytest.approx(record["seconds"] / 2)
    assert record["images_per_second"] == pytest.approx(2 * 32 / record["seconds"])
    assert result.history[0]["images_per_second"] > 0
    assert training.make_config("smoke", "cuhk_pedes").num_threads == 1
    assert training.make_config("paper", "cuhk_pedes").num_threads is None


def test_weights_folder_gives_each_backbone_its_file(tmp_path):
    (tmp_path / "resnet152.pth").write_bytes(b"weights")
    flickr = training.resolve_weights_path(training.make_config("paper", "flickr30k", weights_path=str(tmp_path)))
    assert flickr.weights_path == str(tmp_path / "resnet152.pth")
    with pytest.raises(FileNotFoundError, match=r"folder without mobilenet_v1_tf\.pth"):
        training.resolve_weights_path(training.make_config("paper", "cuhk_pedes", weights_path=str(tmp_path)))
    a_file = tmp_path / "resnet152.pth"
    assert training.resolve_weights_path(
        training.make_config("paper", "cuhk_pedes", weights_path=str(a_file))
    ).weights_path == str(a_file)


def test_last_epoch_checkpoint_reports_best_on_validation_beside_it(smoke_run, tmp_path):
    """``checkpoint_choice="last"`` (the release's, paper default) tests the last epoch's averaged
    weights and reports ``best.pt``'s test scores beside them; the smoke default tests ``best.pt``."""
    last = training.fit(dict(FAST, epochs=3, output_dir=str(tmp_path), checkpoint_choice="last", adam_epsilon="tf"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["test_best_validation"]) == set(results["test"])
    assert smoke_run.test_best_validation == {}  # best_validation: one set of test scores
    # without validation the last epoch is all there is
    plain = training.fit(
        dict(FAST, epochs=2, output_dir=str(tmp_path / "plain"), checkpoint_choice="last", validate_every=0)
    )
    assert plain.test and plain.test_best_validation == {}
    assert last.test != {}
    # TF's epsilon: eps / sqrt(1 - beta2^t) before step t, its step count in the optimizer state (resume)
    saved = _weights(tmp_path / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    steps = saved[0]["tf_steps"]
    assert steps == sum(record["steps"] for record in last.history)
    assert saved[0]["eps"] == pytest.approx(1e-8 / math.sqrt(1 - 0.999**steps))


def test_run_folder_has_tensorboard_scalars(smoke_run):
    """Every epoch's losses, learning rate and validation metrics, readable by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(smoke_run.output_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_cmpm", "train/loss_cmpc", "train/lr", "validation/t2i_R@1"} <= tags
    losses = [event.value for event in events.Scalars("train/loss")]
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3]
    assert losses == pytest.approx([record["loss"] for record in smoke_run.history])


# ---------------------------------------------------------------------------------------------
# Early stopping (``patience``)
# ---------------------------------------------------------------------------------------------


def test_validations_since_best_counts_validated_epochs_after_the_best():
    history = [
        {"epoch": 1, "val_rsum": 1.0},
        {"epoch": 2, "val_rsum": 3.0},
        {"epoch": 3},
        {"epoch": 4, "val_rsum": 2.0},
    ]
    assert training.loop.validations_since_best(history, best_epoch=2, metric="rsum") == 1  # epoch 3 not validated
    assert training.loop.validations_since_best(history, best_epoch=4, metric="rsum") == 0
    assert training.loop.validations_since_best(history, best_epoch=1, metric="rsum") == 2


def _scripted_validation(monkeypatch, scores):
    """Validation scores in the order given (the real evaluation still runs and fills the record)."""
    real = training.loop._evaluate_epoch
    calls = iter(scores)

    def scripted(state, cfg, training_data, epoch, device, record):
        real(state, cfg, training_data, epoch, device, record)
        score = next(calls)
        record[f"val_{cfg.select_metric}"] = score
        return score

    monkeypatch.setattr(training.loop, "_evaluate_epoch", scripted)


def test_patience_stops_after_that_many_validations_without_a_new_best(isolated_dirs, tmp_path, monkeypatch):
    # best at epoch 2; epoch 3 ties it (not a new best, as best.pt keeps it), epoch 4 is lower: stop after 4 of 8
    _scripted_validation(monkeypatch, [10.0, 20.0, 20.0, 15.0, 99.0, 99.0, 99.0, 99.0])
    result = training.fit(dict(FAST, epochs=8, patience=2, output_dir=str(tmp_path)))
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.epochs_trained, result.stopped_early) == (2, 4, True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (saved["epochs_trained"], saved["stopped_early"], saved["best_epoch"]) == (4, True, 2)
    assert _weights(tmp_path / "checkpoints" / "best.pt")["epoch"] == 2  # the test scores the best epoch
    assert _weights(tmp_path / "checkpoints" / "last.pt")["epoch"] == 4


def test_a_run_that_keeps_improving_trains_every_epoch(isolated_dirs, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [1.0, 2.0, 3.0])
    result = training.fit(dict(FAST, epochs=3, patience=1, output_dir=str(tmp_path)))
    assert (result.epochs_trained, result.stopped_early, result.best_epoch) == (3, False, 3)


def test_a_stopped_run_resumed_with_more_epochs_stays_stopped(isolated_dirs, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [5.0, 4.0, 99.0, 99.0])
    first = training.fit(dict(FAST, epochs=4, patience=1, output_dir=str(tmp_path)))
    assert (first.epochs_trained, first.stopped_early) == (2, True)
    resumed = training.fit(dict(FAST, epochs=6, patience=1, output_dir=str(tmp_path), resume=True))
    assert ([r["epoch"] for r in resumed.history], resumed.stopped_early) == ([1, 2], True)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(patience=0), "patience=0 must be at least 1"),
        (dict(patience=2, validate_every=0), "validate_every=0 validates nothing"),
    ],
)
def test_patience_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        training.make_config("smoke", "cuhk_pedes", **settings)
