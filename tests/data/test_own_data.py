"""docs/datasets.md, "Your own data": a small set converted into the CUHK-PEDES layout is read as the doc says."""

from __future__ import annotations

import json

from data_fixtures import write_image

from cmp_utils import data, training


def _own_data(root):
    """Four training ids (two images each), one validation id, two test ids; no processed_tokens."""
    records = []
    colours = [
        (200, 30, 30),
        (30, 200, 30),
        (30, 30, 200),
        (200, 200, 30),
        (30, 200, 200),
        (120, 120, 120),
        (10, 10, 10),
    ]
    plan = [("train", person) for person in (1, 2, 3, 4) for _ in range(2)] + [
        ("val", 7),
        ("val", 7),
        ("test", 9),
        ("test", 10),
    ]
    for index, (split, person) in enumerate(plan):
        file_path = f"{split}/{person}_{index}.jpg"
        write_image(root / "cuhk_pedes" / "imgs" / file_path, colours[person % len(colours)])
        records.append(
            {
                "split": split,
                "file_path": file_path,
                "id": person,
                "captions": [f"A person, number {person}.", f"Someone in colour {person}!"],
            }
        )
    (root / "cuhk_pedes" / "reid_raw.json").write_text(json.dumps(records), encoding="utf-8")
    return root


def test_own_data_in_the_cuhk_pedes_layout(isolated_dirs, tmp_path):
    root = _own_data(tmp_path / "my_data")
    prepared = data.prepare_dataset("cuhk_pedes", "paper", data_dir=root, image_size=(32, 16))
    frames = prepared.frames
    assert {split: len(frame) for split, frame in frames.items()} == {"train": 16, "val": 4, "test": 4}
    assert sorted(frames["train"]["label"].unique()) == [1, 2, 3, 4]
    assert prepared.validation_split == "val" and prepared.test_split == "test"
    assert prepared.num_classes == 5  # 1 + the largest training id
    tokens = frames["train"]["tokens"].iloc[0]
    assert tokens == ["a", "person", "number", "1"]  # lower-cased, punctuation deleted
    assert prepared.image_cache("train").images.shape[1:] == (32, 16, 3)
    # and it trains on it: the paper profile (real data) with a small CNN for one short epoch
    result = training.fit(
        dict(
            profile="paper",
            dataset="cuhk_pedes",
            data_dir=str(root),
            progress=False,
            epochs=1,
            batch_size=8,
            backbone="small_cnn",
            pretrained=False,
            image_size=(32, 16),
            embedding_dim=16,
            word_dim=8,
            hidden_size=8,
            num_workers=0,
            num_threads=1,
            output_dir=str(tmp_path / "run"),
        )
    )
    assert result.settings["data_dir"] == str(root) and result.history[0]["steps"] == 2
    assert 0 <= result.test["t2i_R@1"] <= 100 and result.test_best_validation  # last epoch and best.pt both scored
