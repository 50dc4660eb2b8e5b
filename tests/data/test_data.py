"""Readers of the five layouts, the prepared dataset, pairs, collate and the identity sampler."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from cmp_utils import data
from cmp_utils.data import images
from cmp_utils.data.text import Vocabulary

from data_fixtures import (
    COCO_SPLITS,
    CUB_CLASSES,
    CUB_TEST,
    CUHK_RECORDS,
    FLOWER_TEST,
    write_all,
    write_flickr,
    write_image,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("datasets"))


# ---------------------------------------------------------------------- readers
def test_cuhk_counts_labels_tokens_and_irregularities(data_root):
    train = data.read_dataset("cuhk_pedes", data_root / "cuhk_pedes", "train")
    assert list(train.columns) == list(data.COLUMNS)
    expected = [r for r in CUHK_RECORDS if r[0] == "train"]
    assert len(train) == sum(len(r[3]) for r in expected) == 18  # one image has 10 captions
    assert train["image_path"].nunique() == 5
    assert sorted(train["label"].unique()) == [1, 2, 3]
    assert train.groupby("image_path").size().max() == 10
    assert {os.path.splitext(p)[1] for p in train["image_path"]} == {".png", ".jpg", ".bmp"}
    assert all(os.path.isfile(p) for p in train["image_path"])
    row = train.iloc[0]
    assert row["caption"] == "A man in a red shirt and blue jeans."
    assert row["tokens"] == ["a", "man", "in", "a", "red", "shirt", "and", "blue", "jeans"]
    assert (train["split"] == "train").all()
    val = data.read_dataset("cuhk_pedes", data_root / "cuhk_pedes", "val")
    assert len(val) == 4 and val["label"].unique().tolist() == [4]
    test = data.read_dataset("cuhk_pedes", data_root / "cuhk_pedes", "test")
    assert len(test) == 6 and test["image_id"].nunique() == 3


def test_flickr_and_coco_labels_are_image_ids(data_root):
    train = data.read_dataset("flickr30k", data_root / "flickr30k", "train")
    assert len(train) == 15 and train["label"].nunique() == 3
    assert (train["label"] == train["image_id"]).all()
    assert train["image_path"].str.contains("flickr30k-images").all()
    coco_train = data.read_dataset("mscoco", data_root / "mscoco", "train")
    assert len(coco_train) == 5 + 7  # an image with more than 5 sentences
    assert coco_train.groupby("label").size().to_dict() == {0: 5, 1: 7}
    assert coco_train["image_path"].str.contains("train2014").all()
    for split in ("restval", "val", "test"):
        frame = data.read_dataset("mscoco", data_root / "mscoco", split)
        assert frame["label"].tolist() == [COCO_SPLITS.index(split)] * 5
        assert frame["image_path"].str.contains("val2014").all()


def test_cub_class_level_splits_and_blank_lines(data_root):
    root = data_root / "cub"
    train = data.read_dataset("cub", root, "train")
    test = data.read_dataset("cub", root, "test")
    trainval_classes = [c for c in CUB_CLASSES if c not in CUB_TEST]
    assert sorted(train["label"].unique()) == sorted(data.class_label(c) for c in trainval_classes) == [1, 2, 4, 5]
    assert test["label"].unique().tolist() == [3]
    # 10 captions per file: the blank lines are not captions
    assert train.groupby("image_path").size().eq(10).all() and len(train) == 4 * 2 * 10
    assert set(train["label"]).isdisjoint(test["label"])
    assert train["image_id"].nunique() == 8 and train["image_path"].str.contains("CUB_200_2011/images").all()
    with pytest.raises(ValueError, match="val_class_fraction"):
        data.read_dataset("cub", root, "val")
    carved = data.class_splits("cub", root, val_class_fraction=0.5)
    assert carved["val"] and set(carved["val"]).isdisjoint(carved["train"])
    assert sorted(carved["val"] + carved["train"]) == sorted(trainval_classes) == carved["trainval"]
    assert carved == data.class_splits("cub", root, val_class_fraction=0.5)  # deterministic
    val = data.read_dataset("cub", root, "val", val_class_fraction=0.5)
    assert set(val["label"]) == {data.class_label(c) for c in carved["val"]}


def test_flowers_flat_images_and_class_numbers(data_root):
    root = data_root / "flowers"
    train = data.read_dataset("flowers", root, "train")
    test = data.read_dataset("flowers", root, "test")
    assert sorted(train["label"].unique()) == [1, 3, 4]
    assert sorted(test["label"].unique()) == [data.class_label(c) for c in FLOWER_TEST] == [2, 5]
    assert len(train) == 3 * 2 * 10 and len(test) == 2 * 2 * 10
    assert train["image_path"].str.match(r".*/jpg/image_\d{5}\.jpg$").all()
    assert sorted(train["image_id"].unique()) == [1, 2, 5, 6, 7, 8]


# ---------------------------------------------------------------------- bad input
def test_missing_root_and_annotation_name_path_and_layout(tmp_path):
    with pytest.raises(data.DatasetLayoutError) as error:
        data.read_dataset("cuhk_pedes", tmp_path / "nowhere", "train")
    assert "nowhere" in str(error.value) and "reid_raw.json" in str(error.value)
    (tmp_path / "flickr30k").mkdir()
    with pytest.raises(data.DatasetLayoutError, match="dataset_flickr30k.json"):
        data.read_dataset("flickr30k", tmp_path / "flickr30k", "train")
    (tmp_path / "cub").mkdir()
    with pytest.raises(data.DatasetLayoutError, match="trainvalclasses.txt"):
        data.read_dataset("cub", tmp_path / "cub", "train")
    with pytest.raises(ValueError, match="split='nope'"):
        data.read_dataset("cub", tmp_path / "cub", "nope")
    with pytest.raises(ValueError, match="not a known dataset"):
        data.read_dataset("imagenet", tmp_path, "train")


def test_malformed_json_names_the_file(tmp_path):
    root = tmp_path / "mscoco"
    root.mkdir()
    (root / "dataset_coco.json").write_text('{"images": [', encoding="utf-8")
    with pytest.raises(ValueError, match="dataset_coco.json"):
        data.read_dataset("mscoco", root, "train")
    (root / "dataset_coco.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="'images' list"):
        data.read_dataset("mscoco", root, "train")


def test_missing_images_error_by_default_or_dropped_with_warning(tmp_path):
    root = write_flickr(tmp_path / "flickr30k")
    (root / "flickr30k-images" / "1000.jpg").unlink()
    (root / "flickr30k-images" / "1001.jpg").unlink()
    with pytest.raises(data.MissingImagesError) as error:
        data.read_dataset("flickr30k", root, "train")
    assert "2 of 3" in str(error.value) and "1000.jpg" in str(error.value)
    with pytest.warns(UserWarning, match="2 of 3"):
        frame = data.read_dataset("flickr30k", root, "train", missing_images="drop")
    assert frame["label"].unique().tolist() == [2] and len(frame) == 5


def test_empty_captions_are_dropped_and_counted(tmp_path):
    root = tmp_path / "cuhk_pedes"
    write_image(root / "imgs" / "a.png", (10, 20, 30))
    records = [
        {"split": "train", "captions": ["A red coat.", "", " ... ", "Blue shoes"], "file_path": "a.png", "id": 1}
    ]
    (root / "reid_raw.json").write_text(json.dumps(records))
    with pytest.warns(UserWarning, match="dropped 2 empty caption"):
        frame = data.read_dataset("cuhk_pedes", root, "train")
    assert frame["caption"].tolist() == ["A red coat.", "Blue shoes"]


def test_undecodable_image_names_its_path(tmp_path):
    good = write_image(tmp_path / "good.png", (1, 2, 3))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        images.ImageCache.build([good, bad], (8, 8), tmp_path / "cache.npy", progress=False)
    assert not images.ImageCache.is_current(tmp_path / "cache.npy", [str(good), str(bad)], (8, 8))


# ---------------------------------------------------------------------- image cache and transforms
def test_image_cache_reopens_without_decoding_and_rebuilds_when_stale(tmp_path, monkeypatch):
    paths = [str(write_image(tmp_path / f"{k}.png", (40 * k, 10, 200 - 40 * k), size=(10, 20))) for k in range(4)]
    cache = images.ImageCache.build(paths, (6, 4), tmp_path / "c" / "cache.npy", progress=False)
    assert cache.images.shape == (4, 6, 4, 3) and cache.images.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    assert cache.index_of(paths[2]) == 2 and cache.paths == paths
    unpickled = pickle.loads(pickle.dumps(cache))  # DataLoader workers: the location travels, not the pixels
    assert len(pickle.dumps(cache)) < 1000 and isinstance(unpickled.images, np.memmap)
    np.testing.assert_array_equal(unpickled.images, cache.images)
    assert tuple(cache.images[2, 3, 2]) == (80, 10, 120)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is current")

    monkeypatch.setattr(images, "decode_image", no_decoding)
    reopened = images.ImageCache.open(tmp_path / "c" / "cache.npy")
    np.testing.assert_array_equal(reopened.images, cache.images)
    again = images.ImageCache.build(paths, (6, 4), tmp_path / "c" / "cache.npy", progress=False)
    assert again.fingerprint == cache.fingerprint
    with pytest.raises(AssertionError, match="decoded although"):  # other size -> stale -> rebuilt
        images.ImageCache.build(paths, (8, 4), tmp_path / "c" / "cache.npy", progress=False)
    monkeypatch.undo()
    rebuilt = images.ImageCache.build(paths[:3], (6, 4), tmp_path / "c" / "cache.npy", progress=False)
    assert len(rebuilt) == 3 and rebuilt.fingerprint != cache.fingerprint
    with pytest.raises(KeyError, match="3.png"):
        rebuilt.index_of(paths[3])
    with pytest.raises(FileNotFoundError, match="ImageCache.build"):
        images.ImageCache.open(tmp_path / "missing.npy")


def test_normalise_per_backbone_and_layouts():
    pixels = np.array([0, 127, 255], dtype=np.uint8).reshape(1, 1, 3, 1).repeat(3, axis=3)  # (1, 1, 3, 3) HWC
    mobilenet = images.normalise(pixels, "mobilenet")
    assert mobilenet.shape == (1, 3, 1, 3) and mobilenet.dtype == torch.float32
    assert mobilenet.min() == -1.0 and mobilenet.max() == 1.0
    unit = images.normalise(pixels, "unit")
    torch.testing.assert_close(unit[0, :, 0, 2], torch.ones(3))
    resnet = images.normalise(np.full((2, 3, 4, 5), 100, dtype=np.uint8), "resnet")  # CHW input
    torch.testing.assert_close(resnet[1, :, 0, 0], torch.tensor([100 - 123.68, 100 - 116.78, 100 - 103.94]))
    with pytest.raises(ValueError, match="backbone='vgg'"):
        images.normalise(pixels, "vgg")
    with pytest.raises(TypeError, match="uint8"):
        images.normalise(np.zeros((1, 2, 2, 3), dtype=np.float32), "unit")
    batch = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    flipped = images.random_horizontal_flip(batch, probability=1.0)
    torch.testing.assert_close(flipped, batch.flip(-1))
    torch.testing.assert_close(images.random_horizontal_flip(batch, probability=0.0), batch)


# ---------------------------------------------------------------------- prepared data, pairs, sampler
def test_prepare_dataset_real_layout_builds_once_from_train_only(data_root, tmp_path):
    cache = tmp_path / "cache"
    prepared = data.prepare_dataset("cuhk_pedes", "paper", data_dir=data_root, cache_dir=cache, image_size=(8, 4))
    assert not prepared.synthetic and prepared.splits == ("train", "val", "test")
    assert prepared.validation_split == "val" and prepared.test_split == "test"
    train = prepared.frames["train"]
    assert prepared.num_classes == 4  # release (num_classes_from='all_splits'): 1 + the largest train id (1..3)
    assert train.groupby("label")["class_index"].first().to_dict() == {1: 0, 2: 1, 3: 2}
    assert prepared.frames["test"]["class_index"].tolist() == [0, 0, 0, 0, 1, 1]
    cache_train = prepared.image_cache("train")
    assert [cache_train.paths[i] for i in train["image_index"]] == train["image_path"].tolist()
    vocabulary = prepared.vocabulary
    assert "zebra" not in vocabulary  # 6 times in test captions, never in train
    assert "red" in vocabulary and "man" in vocabulary
    assert "jeans" not in vocabulary  # once in train: below min_count 3
    vocabulary_file = prepared.prepared_dir / "vocabulary.json"
    stamp = vocabulary_file.stat().st_mtime_ns
    again = data.prepare_dataset("cuhk_pedes", "paper", data_dir=data_root, cache_dir=cache, image_size=(8, 4))
    assert vocabulary_file.stat().st_mtime_ns == stamp and again.vocabulary == vocabulary
    coco = data.prepare_dataset("mscoco", "paper", data_dir=data_root, cache_dir=cache, image_size=(8, 8))
    assert coco.validation_split == "restval" and coco.splits == ("train", "restval", "val", "test")
    flowers = data.prepare_dataset(
        "flowers", "quick", data_dir=data_root, cache_dir=cache, source="real", image_size=(8, 8), val_class_fraction=0
    )
    assert flowers.splits == ("train", "test") and flowers.validation_split is None and flowers.num_classes == 3


def test_prepare_dataset_paper_without_data_names_path(tmp_path):
    with pytest.raises(data.DatasetLayoutError) as error:
        data.prepare_dataset("flickr30k", "paper", data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert str(tmp_path / "empty" / "flickr30k") in str(error.value) and "dataset_flickr30k.json" in str(error.value)


def test_pair_dataset_and_collate_pad_with_zero(data_root, tmp_path):
    prepared = data.prepare_dataset("cuhk_pedes", "paper", data_dir=data_root, cache_dir=tmp_path, image_size=(8, 4))
    frame = prepared.frames["train"]
    dataset = data.PairDataset(
        frame, prepared.vocabulary, prepared.image_cache("train"), train=False, backbone="mobilenet"
    )
    assert len(dataset) == len(frame)
    item = dataset[3]
    assert item["image"].shape == (3, 8, 4) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["token_ids"][0] == Vocabulary.start_id and Vocabulary.end_id not in item["token_ids"].tolist()
    assert len(item["token_ids"]) == len(frame["tokens"].iloc[3]) + 1
    assert item["label"] == frame["class_index"].iloc[3] and item["image_index"] == frame["image_index"].iloc[3]
    expected = images.normalise(prepared.image_cache("train").images[item["image_index"]], "mobilenet")[0]
    torch.testing.assert_close(item["image"], expected)
    batch = data.collate_pairs([dataset[i] for i in (0, 2, 5)])
    lengths = [len(frame["tokens"].iloc[i]) + 1 for i in (0, 2, 5)]
    assert batch["lengths"].tolist() == lengths
    assert batch["token_ids"].shape == (3, max(lengths)) and batch["token_ids"].dtype == torch.long
    for row, length in enumerate(lengths):
        assert (batch["token_ids"][row, length:] == 0).all() and (batch["token_ids"][row, :length] != 0).all()
    assert batch["images"].shape == (3, 3, 8, 4) and batch["labels"].dtype == torch.long
    assert batch["image_indices"].tolist() == [int(frame["image_index"].iloc[i]) for i in (0, 2, 5)]
    flipping = data.PairDataset(frame, prepared.vocabulary, prepared.image_cache("train"), train=True, backbone="unit")
    torch.manual_seed(0)
    seen = {tuple(flipping[0]["image"][0, 0].tolist()) for _ in range(20)}
    assert len(seen) == 2  # the image and its mirror
    with pytest.raises(ValueError, match="different splits"):
        data.PairDataset(frame, prepared.vocabulary, prepared.image_cache("val"), train=False, backbone="unit")


def test_identity_batch_sampler_groups_identities():
    labels = np.repeat(np.arange(30), 4)  # 30 identities x 4 captions
    sampler = data.IdentityBatchSampler(labels, batch_size=8, instances_per_label=2, seed=1, drop_last=False)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(120))  # every caption once per epoch
    assert len(batches) == len(sampler) == 15
    for batch in batches:
        counts = pd.Series(labels[batch]).value_counts()
        assert (counts % 2 == 0).all()  # pairs of one identity
    assert list(data.IdentityBatchSampler(labels, 8, 2, seed=1, drop_last=False)) == batches  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != batches
    odd = data.IdentityBatchSampler(np.arange(10), batch_size=4, drop_last=True)
    assert len(list(odd)) == len(odd) == 2 and all(len(b) == 4 for b in odd)
    ranks = [list(data.IdentityBatchSampler(labels, 8, 2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 7
    assert not set(i for b in ranks[0] for i in b) & set(i for b in ranks[1] for i in b)


def test_parsed_annotations_are_reused_until_the_file_changes(tmp_path):
    """read_dataset parses a JSON annotation file once per process and content: a second read gives
    equal rows (and rows a caller may change freely), a rewrite of the file, even of the same size
    within the same clock tick, is read again."""
    root = write_flickr(tmp_path / "flickr30k")
    first = data.read_dataset("flickr30k", root, "train")
    first.loc[0, "tokens"].append("changed by a caller")
    again = data.read_dataset("flickr30k", root, "train")
    pd.testing.assert_frame_equal(again, data.read_dataset("flickr30k", root, "train"))
    assert "changed by a caller" not in again.loc[0, "tokens"]
    annotation = root / "dataset_flickr30k.json"
    text = annotation.read_text(encoding="utf-8")
    caption = again.loc[0, "caption"]
    swapped = caption[::-1] if caption[::-1] != caption else caption.upper()
    annotation.write_text(text.replace(caption, swapped, 1), encoding="utf-8")  # same size
    assert len(annotation.read_bytes()) == len(text.encode("utf-8"))
    assert data.read_dataset("flickr30k", root, "train").loc[0, "caption"] == swapped
