"""ICFG-PEDES and RSTPReid (published after the paper) and `python -m cmp_utils.data check`.

Fixtures are written in the two datasets' distributed layouts (as ``tests/data_fixtures.py`` does
for the paper's five); synthetic stand-ins are generated, read back, checked and trained on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from cmp_utils.core import config
from cmp_utils import data, experiments, training
from cmp_utils.data import synthetic
from data_fixtures import ICFG_TEST_IDS, ICFG_TRAIN_IDS, RSTP_SPLITS, write_icfg, write_image, write_rstp


def test_icfg_reader_carves_validation_identities_from_train(tmp_path):
    root = write_icfg(tmp_path / "icfg_pedes")
    frames = {split: data.read_dataset("icfg_pedes", root, split) for split in data.SPLITS["icfg_pedes"]}
    held_out = data.held_out_identities(ICFG_TRAIN_IDS)
    assert held_out == {6}  # sorted ids [1..10], every 10th from the 5th
    assert set(frames["val"]["label"]) == held_out
    assert set(frames["train"]["label"]) == set(ICFG_TRAIN_IDS) - held_out
    assert set(frames["test"]["label"]) == set(ICFG_TEST_IDS)
    assert len(frames["trainval"]) == len(frames["train"]) + len(frames["val"]) == 20
    assert len(frames["test"]) == 6 and frames["test"]["image_path"].nunique() == 6  # one caption an image
    first = frames["train"].iloc[0]
    assert first["image_path"] == str(root / "imgs" / "train/0001/0001_c0_0000.jpg")
    assert first["tokens"][:3] == ["the", "person", "1"]
    # every image keeps one image_id across the splits that show it
    assert set(frames["val"]["image_id"]) <= set(frames["trainval"]["image_id"])


def test_rstp_reader_reads_its_three_splits(tmp_path):
    root = write_rstp(tmp_path / "rstpreid")
    for split, ids in RSTP_SPLITS.items():
        frame = data.read_dataset("rstpreid", root, split)
        stats = data.split_statistics(frame)
        assert (stats["images"], stats["captions"], stats["ids_or_classes"]) == (5 * len(ids), 10 * len(ids), len(ids))
        assert set(frame["label"]) == set(ids)
    assert data.read_dataset("rstpreid", root, "val")["image_path"].iloc[0] == str(root / "imgs" / "0005_c3_0000.jpg")
    with pytest.raises(ValueError, match="not a split of rstpreid"):
        data.read_dataset("rstpreid", root, "trainval")


def test_readers_name_the_missing_file_and_the_layout(tmp_path):
    root = write_rstp(tmp_path / "rstpreid")
    (root / "imgs" / "0006_c3_0000.jpg").unlink()
    with pytest.raises(data.MissingImagesError, match="0006_c3_0000.jpg"):
        data.read_dataset("rstpreid", root, "test")
    with pytest.warns(UserWarning, match="their captions are dropped"):
        assert len(data.read_dataset("rstpreid", root, "test", missing_images="drop")) == 18
    (tmp_path / "icfg_pedes").mkdir()
    with pytest.raises(data.DatasetLayoutError, match=r"ICFG-PEDES\.json does not exist.*imgs/<file_path>"):
        data.read_dataset("icfg_pedes", tmp_path / "icfg_pedes", "train")
    (tmp_path / "icfg_pedes" / "ICFG-PEDES.json").write_text(json.dumps([{"file_path": "a.jpg", "captions": ["x"]}]))
    with pytest.raises(ValueError, match="lacks split/id"):
        data.read_dataset("icfg_pedes", tmp_path / "icfg_pedes", "train")


@pytest.fixture(scope="module")
def synthetic_sets(tmp_path_factory):
    """Every dataset's smoke stand-in under one data folder (as a user's $CMP_DATA_DIR would be)."""
    base = tmp_path_factory.mktemp("synthetic_data")
    for name in config.DATASETS:
        synthetic.generate(name, base / name, "smoke", seed=0)
    return base


@pytest.mark.parametrize("name", ["icfg_pedes", "rstpreid"])
def test_synthetic_sets_are_written_in_the_real_layout_and_read_back(synthetic_sets, name, tmp_path):
    root = synthetic_sets / name
    recorded = {row[1]: row[2:] for row in synthetic.recorded_sizes(root)}
    sizes = synthetic.SIZES["smoke"][name]
    if name == "icfg_pedes":
        assert set(recorded) == {"trainval", "test"}
        records = json.loads((root / "ICFG-PEDES.json").read_text())
        assert {r["split"] for r in records} == {"train", "test"} and all(len(r["captions"]) == 1 for r in records)
        assert all(r["file_path"].startswith(f"{r['split']}/{r['id']:04d}/") for r in records)
    else:
        assert set(recorded) == {"train", "val", "test"}
        records = json.loads((root / "data_captions.json").read_text())
        assert all(len(r["captions"]) == 2 and set(r) == {"id", "img_path", "captions", "split"} for r in records)
        assert recorded["val"] == (5 * sizes["val_ids"], 10 * sizes["val_ids"], sizes["val_ids"])
    for split, (images, captions, ids) in recorded.items():
        stats = data.split_statistics(data.read_dataset(name, root, split))
        assert (stats["images"], stats["captions"], stats["ids_or_classes"]) == (images, captions, ids)
        assert ids == sizes[f"{'train' if split == 'trainval' else split}_ids"]
    again = synthetic.generate(name, tmp_path / name, "smoke", seed=0)  # deterministic: byte-identical annotations
    annotation = data.PERSON_JSON[name][0]
    assert (again / annotation).read_bytes() == (root / annotation).read_bytes()


def test_check_passes_on_every_synthetic_set(synthetic_sets):
    results = data.check_data_dir(synthetic_sets)
    assert set(results) == set(config.DATASETS)
    for name, result in results.items():
        assert result["problems"] == [], name
        sizes = result["sizes"]
        assert len(sizes) >= 6 and sizes["ok"].all(), name
        assert sizes["source"].str.contains("synthetic generator").all()
    completed = subprocess.run(
        [sys.executable, "-m", "cmp_utils.data", "check", str(synthetic_sets)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "7 of 7 dataset folder(s) right" in completed.stdout


def test_check_names_what_is_wrong_in_a_broken_folder(synthetic_sets, tmp_path):
    broken = tmp_path / "data"
    for name in ("rstpreid", "cub"):
        shutil.copytree(synthetic_sets / name, broken / name)
    records = json.loads((broken / "rstpreid" / "data_captions.json").read_text())
    missing = broken / "rstpreid" / "imgs" / records[0]["img_path"]
    missing.unlink()
    extra = write_image(broken / "rstpreid" / "imgs" / "9999_c1_0000.jpg", (1, 2, 3))
    records[-1]["captions"] = records[-1]["captions"][:1]  # a test image lost a caption
    (broken / "rstpreid" / "data_captions.json").write_text(json.dumps(records))
    shutil.rmtree(broken / "cub" / "CUB_200_2011")
    results = data.check_data_dir(broken)
    rstp = results["rstpreid"]
    assert rstp["missing_files"] == [str(missing)] and rstp["extra_files"] == [str(extra)]
    wrong = rstp["sizes"].loc[~rstp["sizes"]["ok"]].set_index(["split", "quantity"])["found"].to_dict()
    expected_train_images = 5 * synthetic.SIZES["smoke"]["rstpreid"]["train_ids"]
    assert wrong == {
        ("train", "images"): expected_train_images - 1,
        ("train", "captions"): 2 * expected_train_images - 2,
        ("test", "captions"): 10 * synthetic.SIZES["smoke"]["rstpreid"]["test_ids"] - 1,
    }
    assert any(str(missing) in line and "missing image" in line for line in rstp["problems"])
    assert not any(str(extra) in line for line in rstp["problems"])  # listed, not a problem
    assert results["cub"]["missing_files"] == [str(broken / "cub" / "CUB_200_2011/images")]
    completed = subprocess.run(
        [sys.executable, "-m", "cmp_utils.data", "check", str(broken)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1
    assert str(missing) in completed.stdout and str(extra) in completed.stdout and "CUB_200_2011" in completed.stdout
    assert "0 of 2 dataset folder(s) right" in completed.stdout


def test_check_compares_real_folders_with_the_published_sizes(tmp_path):
    write_icfg(tmp_path / "icfg_pedes")
    result = data.check_data_dir(tmp_path)["icfg_pedes"]
    sizes = result["sizes"].set_index(["split", "quantity"])
    assert sizes.loc[("trainval", "images"), "expected"] == 34674 and sizes.loc[("trainval", "images"), "found"] == 20
    assert (
        sizes.loc[("test", "ids_or_classes"), "expected"] == 1000
        and sizes.loc[("test", "ids_or_classes"), "found"] == 2
    )
    assert not sizes["ok"].any() and result["missing_files"] == [] and result["extra_files"] == []
    assert any("Ding et al." in line for line in result["problems"])
    published = data.published_sizes().set_index(["dataset", "split"])
    assert published.loc[("rstpreid", "train"), "captions"] == 37010
    assert published.loc[("rstpreid", "val"), "ids_or_classes"] == 200
    with pytest.raises(data.DatasetLayoutError, match="holds none of the dataset folders"):
        data.check_data_dir(tmp_path / "icfg_pedes")


def test_paper_profile_applies_the_cuhk_recipe_and_the_protocol_is_person_search():
    cuhk = training.PROFILE_SETTINGS["paper"]["cuhk_pedes"]
    for name in ("icfg_pedes", "rstpreid"):
        settings = training.PROFILE_SETTINGS["paper"][name]
        assert {k: v for k, v in settings.items() if k != "note"} == {k: v for k, v in cuhk.items() if k != "note"}
        assert "postdates the paper" in settings["note"]
        for profile in ("smoke", "quick"):
            assert training.PROFILE_SETTINGS[profile][name] == training.PROFILE_SETTINGS[profile]["cuhk_pedes"]
    generator = torch.Generator().manual_seed(0)
    image_embeddings, text_embeddings = torch.randn(6, 8, generator=generator), torch.randn(12, 8, generator=generator)
    image_labels, text_labels = torch.arange(6) // 2, torch.arange(12) // 4
    rows = pd.DataFrame(
        experiments.protocol_metrics("rstpreid", image_embeddings, image_labels, text_embeddings, text_labels)
    )
    assert set(rows["table"]) == {"rstpreid"} and set(rows["direction"]) == {"t2i"}
    assert set(rows["metric"]) == {"R@1", "R@5", "R@10", "mAP", "mINP"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["icfg_pedes", "rstpreid"])
def test_a_smoke_training_run_on_each(isolated_dirs, tmp_path, name):
    result = training.fit(
        dict(profile="smoke", dataset=name, progress=False, evaluate_test=True, output_dir=str(tmp_path))
    )
    losses = [record["loss"] for record in result.history]
    assert len(losses) == training.PROFILE_SETTINGS["smoke"][name]["epochs"] and losses[-1] < losses[0]
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 <= results["test"]["t2i_R@1"] <= 100 and "val_t2i_R@1" in result.history[0]
