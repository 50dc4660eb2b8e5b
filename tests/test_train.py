"""cmp_utils.train / evaluate: a smoke run learns, resumes exactly, is deterministic; paper fails clearly."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cmp_utils import data, evaluate, models, train

FAST = dict(profile="smoke", dataset="cuhk_pedes", progress=False, evaluate_test=True)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def smoke_run(isolated_dirs, tmp_path_factory):
    """One smoke run of 3 epochs, shared by the tests below."""
    out = tmp_path_factory.mktemp("run_full")
    return train.fit(dict(FAST, epochs=3, output_dir=str(out)))


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
    first = train.fit(dict(FAST, epochs=2, output_dir=str(tmp_path)))  # "interrupted" after 2 of 3 epochs
    assert len(first.history) == 2
    resumed = train.fit(dict(FAST, epochs=3, output_dir=str(tmp_path), resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    full_last = _weights(smoke_run.output_dir / "checkpoints" / "last.pt")
    resumed_last = _weights(tmp_path / "checkpoints" / "last.pt")
    for key, value in full_last["model"].items():
        torch.testing.assert_close(resumed_last["model"][key], value, rtol=0, atol=0)
    for mine, theirs in zip(resumed_last["ema"]["shadow"], full_last["ema"]["shadow"]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert resumed.test == smoke_run.test


def test_same_seed_same_metrics(smoke_run, tmp_path):
    again = train.fit(dict(FAST, epochs=3, output_dir=str(tmp_path)))
    assert again.test == smoke_run.test
    assert [r["loss"] for r in again.history] == [r["loss"] for r in smoke_run.history]


def test_end_to_end_two_stage_schedule(isolated_dirs, tmp_path):
    result = train.fit(dict(FAST, feature_mode="end_to_end", backbone="small_cnn", pretrained=False, epochs=2,
                            frozen_epochs=1, lr=1e-3, finetune_lr=1e-4, max_steps_per_epoch=2,
                            output_dir=str(tmp_path), evaluate_test=False))
    assert [(r["lr"], r["cnn_trainable"]) for r in result.history] == [(1e-3, False), (1e-4, True)]


def test_ema_warmup_and_average():
    layer = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    ema = train.WeightAverage(layer, decay=0.9, warmup=True)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema.update(layer)  # n = 1: decay min(0.9, 2/11)
    torch.testing.assert_close(ema.shadow[0], torch.full((1, 2), 1 - 2 / 11))
    ema.update(layer)  # n = 2: decay min(0.9, 3/12)
    torch.testing.assert_close(ema.shadow[0], torch.full((1, 2), 1 - (2 / 11) * (3 / 12)))


def test_weight_decay_groups():
    model = models.build_model(40, backbone="small_cnn", embedding_dim=8, word_dim=8, hidden_size=4, pretrained=False)
    cfg = train.make_config("smoke", "cuhk_pedes")
    groups = train._param_groups(model, torch.nn.Linear(2, 2), cfg)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 4e-5 and groups[1]["weight_decay"] == 0.0
    assert id(model.image_embedding.projection.weight) in decayed
    assert id(model.text_embedding.projection.weight) in decayed
    assert id(model.text_encoder.word_embedding.weight) not in decayed
    assert id(model.image_embedding.batch_norm.weight) not in decayed
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters())) + 2


def test_gallery_holds_each_image_once(isolated_dirs):
    prepared = data.prepare_dataset("cuhk_pedes", "smoke")
    frame = prepared.frames["val"]
    torch.manual_seed(0)
    model = models.build_model(len(prepared.vocabulary), backbone="small_cnn", embedding_dim=16, word_dim=8,
                               hidden_size=4, pretrained=False)
    images, image_labels, texts, text_labels = evaluate.encode(model, prepared, "val", "cpu", batch_size=7)
    assert images.shape == (frame["image_index"].nunique(), 16) and texts.shape == (len(frame), 16)
    assert image_labels.shape == (len(images),) and text_labels.shape == (len(texts),)
    # text embeddings do not depend on the encoding batch size (padding excluded from the max)
    _, _, texts_again, _ = evaluate.encode(model, prepared, "val", "cpu", batch_size=64)
    torch.testing.assert_close(texts, texts_again, rtol=1e-5, atol=1e-5)


def test_config_errors_and_paper_profile_fails_clearly(isolated_dirs, tmp_path):
    with pytest.raises(ValueError, match="unknown training setting"):
        train.make_config("smoke", "cuhk_pedes", batchsize=3)
    with pytest.raises(ValueError, match="losses"):
        train.make_config("smoke", "cuhk_pedes", losses="cmpm,nope")
    paper = train.make_config("paper", "cuhk_pedes")
    assert (paper.backbone, paper.batch_size, paper.epochs, paper.image_size) == ("mobilenet_v1", 16, 50, (224, 224))
    flickr = train.make_config("paper", "flickr30k")
    assert (flickr.backbone, flickr.batch_size, flickr.frozen_epochs, flickr.epochs, flickr.finetune_lr) == \
        ("resnet152", 32, 15, 45, 2e-5)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        train.fit(dict(profile="paper", dataset="cuhk_pedes", output_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="cuhk_pedes"):
        train.fit(dict(profile="paper", dataset="cuhk_pedes", pretrained=False, data_dir=str(tmp_path / "nodata"),
                       output_dir=str(tmp_path)))
