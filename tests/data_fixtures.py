"""Tiny, format-faithful copies of the five dataset layouts (irregularities included), for tests.

Each writer returns the dataset root and builds exactly the files ``data.read_dataset``
expects, with known counts so tests can assert them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> Path:
    """A small solid-colour image (width, height = size) with a mark, in the format of the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = colour
    pixels[0, 0] = (255 - colour[0], 255 - colour[1], 255 - colour[2])
    fmt = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP"}[path.suffix.lower()]
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def _colour(index: int) -> tuple[int, int, int]:
    return ((index * 53) % 256, (index * 97 + 40) % 256, (index * 31 + 90) % 256)


# CUHK-PEDES: train ids 1-3 (5 images: .png, .jpg, .bmp; one image with 10 captions),
# val id 4 (1 image, 4 captions), test ids 5-6 (3 images, 2 captions each).
CUHK_RECORDS = [
    ("train", "CUHK01/0001001.png", 1, ["A man in a red shirt and blue jeans.", "The man wears a red shirt."]),
    ("train", "CUHK01/0001002.png", 1, ["A man wearing a red shirt, carrying a bag.", "Man in red shirt!"]),
    (
        "train",
        "Market/0002_c1.jpg",
        2,
        ["A woman in a red dress."] * 2 + [f"A woman in a red dress, number {k}." for k in range(8)],
    ),
    ("train", "cam_a/003_45.bmp", 3, ["A person with a blue bag.", "Someone carrying a blue backpack."]),
    ("train", "cam_b/003_90.bmp", 3, ["A person in a blue coat.", "A person in a blue coat and red shoes."]),
    ("val", "CUHK03/0004_1.png", 4, ["A man in a green coat.", "A green coat.", "Green coat man.", "Man, green coat."]),
    ("test", "test_query/p5_s1.jpg", 5, ["A zebra striped zebra shirt.", "Zebra zebra zebra pattern."]),
    ("test", "test_query/p5_s2.jpg", 5, ["A woman with a zebra bag.", "A zebra bag."]),
    ("test", "train_query/p6_s1.png", 6, ["A man in black.", "Black clothes on a man."]),
]


def write_cuhk(root: Path) -> Path:
    records = []
    for index, (split, file_path, person_id, captions) in enumerate(CUHK_RECORDS):
        write_image(root / "imgs" / file_path, _colour(index))
        records.append(
            {
                "split": split,
                "captions": captions,
                "file_path": file_path,
                "processed_tokens": [c.lower().split() for c in captions],
                "id": person_id,
            }
        )
    (root / "reid_raw.json").write_text(json.dumps(records), encoding="utf-8")
    return root


def _karpathy_image(imgid: int, split: str, filename: str, sentences: list[str], **extra) -> dict:
    return {
        **extra,
        "filename": filename,
        "imgid": imgid,
        "split": split,
        "sentids": list(range(len(sentences))),
        "sentences": [
            {"tokens": s.lower().split(), "raw": s, "imgid": imgid, "sentid": k} for k, s in enumerate(sentences)
        ],
    }


def write_flickr(root: Path) -> Path:
    """train images 0-2 (5 captions each), val image 3, test image 4."""
    images = []
    for imgid, split in enumerate(["train", "train", "train", "val", "test"]):
        filename = f"{1000 + imgid}.jpg"
        write_image(root / "flickr30k-images" / filename, _colour(imgid), size=(16, 16))
        images.append(
            _karpathy_image(imgid, split, filename, [f"A dog runs on grass number {imgid} take {k}." for k in range(5)])
        )
    (root / "dataset_flickr30k.json").write_text(
        json.dumps({"images": images, "dataset": "flickr30k"}), encoding="utf-8"
    )
    return root


COCO_SPLITS = ["train", "train", "restval", "val", "test"]


def write_coco(root: Path) -> Path:
    """train images 0-1 (image 1 has 7 sentences), restval 2, val 3, test 4."""
    images = []
    for imgid, split in enumerate(COCO_SPLITS):
        folder = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{folder}_{imgid:012d}.jpg"
        write_image(root / folder / filename, _colour(imgid), size=(16, 16))
        count = 7 if imgid == 1 else 5
        images.append(
            _karpathy_image(
                imgid,
                split,
                filename,
                [f"A cat on a mat {imgid}, view {k}." for k in range(count)],
                filepath=folder,
                cocoid=500 + imgid,
            )
        )
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return root


CUB_CLASSES = [
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
    "005.Crested_Auklet",
]
CUB_TEST = ["003.Sooty_Albatross"]


def _caption_file(path: Path, label: str, blank_lines: bool) -> None:
    lines = [f"this bird {label} has a red crown line {k}" for k in range(10)]
    if blank_lines:
        lines = lines[:4] + ["", "   "] + lines[4:] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_cub(root: Path) -> Path:
    """5 classes (4 trainval, 1 test), 2 images each, 10 captions per file, blank lines in some files."""
    text_root = root / "cvpr2016_cub"
    for c, class_name in enumerate(CUB_CLASSES):
        for k in range(2):
            stem = f"{class_name.split('.')[1]}_{k:04d}_{c}"
            write_image(
                root / "CUB_200_2011" / "images" / class_name / f"{stem}.jpg", _colour(10 * c + k), size=(16, 16)
            )
            _caption_file(text_root / "text_c10" / class_name / f"{stem}.txt", class_name, blank_lines=(k == 0))
    (text_root / "trainvalclasses.txt").write_text("\n".join(c for c in CUB_CLASSES if c not in CUB_TEST) + "\n\n")
    (text_root / "testclasses.txt").write_text("\n".join(CUB_TEST) + "\n")
    return root


FLOWER_CLASSES = [f"class_{k:05d}" for k in range(1, 6)]
FLOWER_TEST = ["class_00002", "class_00005"]


def write_flowers(root: Path) -> Path:
    """5 classes (3 trainval, 2 test), 2 images each, flat jpg/ folder."""
    text_root = root / "cvpr2016_flowers"
    number = 0
    for c, class_name in enumerate(FLOWER_CLASSES):
        for k in range(2):
            number += 1
            stem = f"image_{number:05d}"
            write_image(root / "jpg" / f"{stem}.jpg", _colour(number), size=(16, 16))
            _caption_file(text_root / "text_c10" / class_name / f"{stem}.txt", class_name, blank_lines=(k == 1))
    (text_root / "trainvalclasses.txt").write_text("\n".join(c for c in FLOWER_CLASSES if c not in FLOWER_TEST) + "\n")
    (text_root / "testclasses.txt").write_text("\n".join(FLOWER_TEST) + "\n")
    return root


WRITERS = {
    "cuhk_pedes": write_cuhk,
    "flickr30k": write_flickr,
    "mscoco": write_coco,
    "cub": write_cub,
    "flowers": write_flowers,
}


def write_all(data_dir: Path) -> Path:
    """Every fixture under ``data_dir/<name>``; returns ``data_dir``."""
    for name, writer in WRITERS.items():
        writer(data_dir / name)
    return data_dir


# A miniature CUHK-PEDES in the real layout, big enough for the paper profile's batch of 16:
# train ids 1-10, val ids 11-12, test ids 13-15; 2 images per id (.jpg and .png), 2 captions each.
MINI_COLOURS = ["red", "blue", "green", "black", "white"]
MINI_CLOTHES = ["shirt", "coat", "dress", "bag"]


def write_mini_cuhk(root: Path, image_size: tuple[int, int] = (16, 32)) -> Path:
    """``reid_raw.json`` + ``imgs/`` with 30 images / 60 captions of 15 identities (train 40
    captions, val 8, test 12); each identity has its own colour, so the data is learnable.
    ``image_size`` = (width, height) of the stored images."""
    splits = [("train", range(1, 11)), ("val", range(11, 13)), ("test", range(13, 16))]
    records = []
    for split, identities in splits:
        for person_id in identities:
            colour = MINI_COLOURS[person_id % len(MINI_COLOURS)]
            clothes = MINI_CLOTHES[person_id % len(MINI_CLOTHES)]
            for view, suffix in enumerate((".jpg", ".png")):
                file_path = f"{'CUHK01' if view == 0 else 'Market'}/{person_id:04d}_{view}{suffix}"
                write_image(root / "imgs" / file_path, _colour(7 * person_id), size=image_size)
                captions = [
                    f"A person in a {colour} {clothes} walking, view {view}.",
                    f"The {colour} {clothes} of this person is plain and {colour}.",
                ]
                records.append(
                    {
                        "split": split,
                        "captions": captions,
                        "file_path": file_path,
                        "processed_tokens": [c.lower().split() for c in captions],
                        "id": person_id,
                    }
                )
    (root / "reid_raw.json").write_text(json.dumps(records), encoding="utf-8")
    return root


# The two person-search sets published after the paper (tests/data/test_datasets_new.py, tests/test_reliability.py).

# ICFG-PEDES: ids 1-10 in train (2 images each, one caption an image), ids 11-12 in test (3 images each).
ICFG_TRAIN_IDS, ICFG_TEST_IDS = list(range(1, 11)), [11, 12]


def write_icfg(root: Path) -> Path:
    """``ICFG-PEDES.json`` + ``imgs/<split>/<id>/<file>.jpg``, records {id, file_path, captions, processed_tokens, split}."""
    records = []
    for split, ids, views in (("train", ICFG_TRAIN_IDS, 2), ("test", ICFG_TEST_IDS, 3)):
        for person_id in ids:
            for view in range(views):
                file_path = f"{split}/{person_id:04d}/{person_id:04d}_c{view}_{view:04d}.jpg"
                write_image(root / "imgs" / file_path, _colour(person_id * 10 + view))
                caption = f"The person {person_id} wears a coat with {view} buttons and carries a bag."
                records.append(
                    {
                        "id": person_id,
                        "file_path": file_path,
                        "captions": [caption],
                        "processed_tokens": [caption.lower().split()],
                        "split": split,
                    }
                )
    (root / "ICFG-PEDES.json").write_text(json.dumps(records), encoding="utf-8")
    return root


# RSTPReid: train ids 1-4, val id 5, test ids 6-7; 5 images an identity, 2 captions an image.
RSTP_SPLITS = {"train": [1, 2, 3, 4], "val": [5], "test": [6, 7]}


def write_rstp(root: Path) -> Path:
    """``data_captions.json`` + ``imgs/<img_path>``, records {id, img_path, captions, split}."""
    records = []
    for split, ids in RSTP_SPLITS.items():
        for person_id in ids:
            for camera in range(5):
                img_path = f"{person_id:04d}_c{camera + 3}_{camera:04d}.jpg"
                write_image(root / "imgs" / img_path, _colour(person_id * 7 + camera))
                records.append(
                    {
                        "id": person_id,
                        "img_path": img_path,
                        "split": split,
                        "captions": [
                            f"A woman {person_id} in a red skirt seen by camera {camera}.",
                            f"She {person_id} carries a black handbag, view {camera}.",
                        ],
                    }
                )
    (root / "data_captions.json").write_text(json.dumps(records), encoding="utf-8")
    return root
