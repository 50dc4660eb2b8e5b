"""Synthetic datasets: written in the real layouts, read back by read_dataset, deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cmp_utils.core import config
from cmp_utils import data
from cmp_utils.data import synthetic


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "generation_seconds.txt"
    }


@pytest.fixture(scope="module")
def smoke_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    return {name: synthetic.generate(name, base / name, "smoke", seed=0) for name in config.DATASETS}


@pytest.mark.parametrize("name", config.DATASETS)
def test_smoke_dataset_reads_back_through_read_dataset(smoke_roots, name):
    root = smoke_roots[name]
    sizes = synthetic.SIZES["smoke"][name]
    assert synthetic.is_complete(root, name, "smoke", 0) and not synthetic.is_complete(root, name, "smoke", 1)
    if name in data.CLASS_LEVEL:
        train = data.read_dataset(name, root, "train")
        test = data.read_dataset(name, root, "test")
        assert (
            train["label"].nunique() == sizes["trainval_classes"] and test["label"].nunique() == sizes["test_classes"]
        )
        assert set(train["label"]).isdisjoint(test["label"])  # zero-shot: disjoint classes
        assert train.groupby("image_path").size().eq(10).all()  # blank lines in the files are skipped
        assert train["image_path"].nunique() == sizes["trainval_classes"] * sizes["images_per_class"]
    elif name == "cuhk_pedes":
        frames = {split: data.read_dataset(name, root, split) for split in ("train", "val", "test")}
        for split, frame in frames.items():
            assert frame["label"].nunique() == sizes[f"{split}_ids"]
            per_id = frame.groupby("label")["image_path"].nunique()
            assert per_id.between(2, 4).all()
        ids = [sorted(frames[s]["label"].unique()) for s in ("train", "val", "test")]
        assert ids[0][0] == 1 and ids[1][0] == ids[0][-1] + 1 and ids[2][0] == ids[1][-1] + 1  # 1-based, contiguous
        per_image = frames["test"].groupby("image_path").size()
        assert per_image.max() == 10 and (per_image == 2).mean() > 0.9
        extensions = {Path(p).suffix for f in frames.values() for p in f["image_path"]}
        assert extensions <= {".png", ".jpg", ".bmp"} and len(extensions) >= 2
        assert frames["train"]["tokens"].map(len).mean() > 8
    elif name in data.PERSON_JSON:  # ICFG-PEDES / RSTPReid (more in tests/data/test_datasets_new.py)
        for split in ("trainval", "test") if name == "icfg_pedes" else ("train", "val", "test"):
            frame = data.read_dataset(name, root, split)
            assert frame["label"].nunique() == sizes[f"{split.replace('trainval', 'train')}_ids"]
            assert frame.groupby("image_path").size().eq(1 if name == "icfg_pedes" else 2).all()
    else:
        for split in data.SPLITS[name]:
            frame = data.read_dataset(name, root, split)
            assert frame["label"].nunique() == sizes[split]
            per_image = frame.groupby("label").size()
            assert per_image.min() == 5
        if name == "mscoco":
            all_train = data.read_dataset(name, root, "train")
            assert data.read_dataset(name, root, "test")["image_path"].str.contains("val2014").all()
            assert all_train["image_path"].str.contains("train2014").all()


def test_images_have_the_declared_size_and_are_not_blank(smoke_roots):
    from PIL import Image

    for name, root in smoke_roots.items():
        frame = data.read_dataset(name, root, "test")
        path = frame["image_path"].iloc[0]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[:2] == synthetic.IMAGE_SIZES[name]
        assert pixels.std() > 10


def test_same_seed_writes_identical_files_and_another_seed_differs(tmp_path, smoke_roots):
    sizes = {"train_ids": 6, "val_ids": 2, "test_ids": 3}
    first = synthetic.generate("cuhk_pedes", tmp_path / "a", "smoke", seed=3, sizes=sizes)
    second = synthetic.generate("cuhk_pedes", tmp_path / "b", "smoke", seed=3, sizes=sizes)
    other = synthetic.generate("cuhk_pedes", tmp_path / "c", "smoke", seed=4, sizes=sizes)
    assert _digest(first) == _digest(second)
    assert _digest(first) != _digest(other)
    again = synthetic.generate("flowers", tmp_path / "f", "smoke", seed=0)
    assert _digest(again) == _digest(smoke_roots["flowers"])


def test_identities_are_confusable_families():
    rng = np.random.default_rng(0)
    people = synthetic.sample_families(200, rng, synthetic.sample_person, synthetic.vary_person)
    keys = [k for k in synthetic.PERSON_ATTRIBUTES]
    close = 0
    for index in range(1, len(people)):
        differing = sum(people[index][k] != people[index - 1][k] for k in keys)
        close += differing <= 2
    assert close > len(people) * 0.4  # many neighbours differ in one or two attributes


def test_prepare_dataset_generates_synthetic_once(tmp_path):
    prepared = data.prepare_dataset("cub", "smoke", cache_dir=tmp_path, seed=0)
    assert prepared.synthetic and prepared.root == tmp_path / "synthetic" / "smoke" / "cub"
    assert prepared.splits == ("train", "val", "test") and prepared.validation_split == "val"
    assert prepared.image_cache("test").images.shape[1:] == (*synthetic.IMAGE_SIZES["cub"], 3)
    marker = (prepared.root / synthetic.MARKER).stat().st_mtime_ns
    again = data.prepare_dataset("cub", "smoke", cache_dir=tmp_path, seed=0)
    assert (again.root / synthetic.MARKER).stat().st_mtime_ns == marker
    seeded = data.prepare_dataset("cub", "smoke", cache_dir=tmp_path, seed=1)
    assert seeded.root != prepared.root and seeded.prepared_dir != prepared.prepared_dir
