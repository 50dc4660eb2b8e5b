"""Synthetic datasets written in the real layouts: one writer per layout, :func:`generate` and its sizes per
profile."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .classes import (
    _vary_bird,
    _vary_flower,
    bird_caption,
    flower_caption,
    render_bird,
    render_flower,
    sample_bird,
    sample_flower,
)
from .drawing import IMAGE_SIZES, _save_image, sample_families
from .people import _person_colours, person_caption, render_person, sample_person, vary_person, visible_attributes
from .scenes import _vary_scene, render_scene, sample_scene, scene_caption, scene_facts

GENERATOR_VERSION = 3
MARKER = "synthetic.json"
#: Side file of the generator's ground truth (image attributes, what each caption states), beside
#: the data but outside the real layout; read by :mod:`cmp_utils.evaluation.ceiling`.
GROUND_TRUTH = "synthetic_ground_truth.json"

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "smoke": {
        "cuhk_pedes": {"train_ids": 40, "val_ids": 12, "test_ids": 20},
        "flickr30k": {"train": 60, "val": 15, "test": 20},
        "mscoco": {"train": 60, "restval": 15, "val": 15, "test": 20},
        "cub": {"trainval_classes": 10, "test_classes": 5, "images_per_class": 4},
        "flowers": {"trainval_classes": 10, "test_classes": 5, "images_per_class": 4},
        "icfg_pedes": {"train_ids": 50, "test_ids": 20},
        "rstpreid": {"train_ids": 40, "val_ids": 10, "test_ids": 15},
    },
    "quick": {
        # sized for make reproduce's budget (cmp_utils.training: calibration table)
        "cuhk_pedes": {"train_ids": 1000, "val_ids": 100, "test_ids": 300},
        "flickr30k": {"train": 1000, "val": 200, "test": 300},
        "mscoco": {"train": 1000, "restval": 200, "val": 200, "test": 500},
        "cub": {"trainval_classes": 75, "test_classes": 25, "images_per_class": 16},
        "flowers": {"trainval_classes": 45, "test_classes": 15, "images_per_class": 20},
        "icfg_pedes": {"train_ids": 1500, "test_ids": 500},
        "rstpreid": {"train_ids": 1200, "val_ids": 200, "test_ids": 200},
    },
}
SIZES["paper"] = {
    name: dict(sizes) for name, sizes in SIZES["quick"].items()
}  # paper uses real data; forced synthetic = quick
DATASET_CODES = {"cuhk_pedes": 1, "flickr30k": 2, "mscoco": 3, "cub": 4, "flowers": 5, "icfg_pedes": 6, "rstpreid": 7}


CUHK_FOLDERS = (
    ("CUHK01", ".png"),
    ("CUHK03", ".png"),
    ("Market", ".jpg"),
    ("train_query", ".jpg"),
    ("test_query", ".jpg"),
    ("cam_a", ".bmp"),
    ("cam_b", ".bmp"),
)


def _generate_cuhk(root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, DATASET_CODES["cuhk_pedes"]])
    records = []
    next_id = 1
    persons: dict[int, dict[str, Any]] = {}
    stats: dict[str, Any] = {}
    truth: list[dict[str, Any]] = []  # per image: its attributes and what each of its captions states
    for split in ("train", "val", "test"):
        identities = sample_families(sizes[f"{split}_ids"], rng, sample_person, vary_person)
        images = 0
        for person in identities:
            person_id = next_id
            next_id += 1
            persons[person_id] = person
            item_rng = np.random.default_rng([seed, DATASET_CODES["cuhk_pedes"], person_id])
            shades = _person_colours(person, item_rng)
            folder, extension = CUHK_FOLDERS[int(item_rng.integers(len(CUHK_FOLDERS)))]
            for view in range(int(item_rng.integers(2, 5))):
                file_path = f"{folder}/{person_id:05d}_{view}{extension}"
                _save_image(render_person(person, shades, item_rng), root / "imgs" / file_path)
                caption_mentions = [{}, {}]
                captions = [person_caption(person, item_rng, said) for said in caption_mentions]
                records.append(
                    {
                        "split": split,
                        "captions": captions,
                        "file_path": file_path,
                        "processed_tokens": [],
                        "id": person_id,
                    }
                )
                truth.append(
                    {
                        "split": split,
                        "file_path": file_path,
                        "id": person_id,
                        "attributes": visible_attributes(person),
                        "mentions": caption_mentions,
                    }
                )
                images += 1
        stats[split] = {"ids": len(identities), "images": images}
    # irregularities of the real file: one test image with 10 captions, one val image with 4
    for split, count in (("test", 10), ("val", 4)):
        record = next(r for r in records if r["split"] == split)
        person_rng = np.random.default_rng([seed, DATASET_CODES["cuhk_pedes"], record["id"], count])
        person = persons[record["id"]]
        extra_mentions = [{} for _ in range(count - 2)]
        record["captions"] = record["captions"] + [person_caption(person, person_rng, said) for said in extra_mentions]
        next(t for t in truth if t["file_path"] == record["file_path"])["mentions"].extend(extra_mentions)
    _write_json(root / GROUND_TRUTH, truth)
    for split in stats:  # captions per split, after the irregularities (read by recorded_sizes)
        stats[split]["captions"] = sum(len(record["captions"]) for record in records if record["split"] == split)
    from ..text import tokenize

    for record in records:
        record["processed_tokens"] = [tokenize(c) for c in record["captions"]]
    _write_json(root / "reid_raw.json", records)
    return stats


def _write_json(path: Path, payload: Any) -> None:
    from ...core.atomic import write_text

    write_text(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def _generate_karpathy(name: str, root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, DATASET_CODES[name]])
    splits = ("train", "restval", "val", "test") if name == "mscoco" else ("train", "val", "test")
    images, stats = [], {}
    truth: list[dict[str, Any]] = []  # per image: its facts and what each of its captions states
    sentence_id = 0
    from ..text import tokenize

    for split in splits:
        scenes = sample_families(sizes[split], rng, sample_scene, _vary_scene, max_family=3)
        for scene in scenes:
            image_id = len(images)
            item_rng = np.random.default_rng([seed, DATASET_CODES[name], image_id])
            if name == "mscoco":
                folder = "train2014" if split == "train" else "val2014"
                coco_id = 100000 + image_id * 7
                filename = f"COCO_{folder}_{coco_id:012d}.jpg"
                path = root / folder / filename
            else:
                filename = f"{1000000 + image_id * 13}.jpg"
                path = root / "flickr30k-images" / filename
            _save_image(render_scene(scene, item_rng), path)
            count = 5
            if name == "mscoco" and item_rng.random() < 0.08:
                count = int(item_rng.integers(6, 8))
            sentences, caption_mentions = [], [{} for _ in range(count)]
            for said in caption_mentions:
                raw = scene_caption(scene, item_rng, said)
                sentences.append({"tokens": tokenize(raw), "raw": raw, "imgid": image_id, "sentid": sentence_id})
                sentence_id += 1
            record = {
                "filename": filename,
                "imgid": image_id,
                "split": split,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
            if name == "mscoco":
                record = {"filepath": folder, **record, "cocoid": coco_id}
            images.append(record)
            truth.append(
                {
                    "split": split,
                    "file_path": filename,
                    "id": image_id,
                    "attributes": scene_facts(scene),
                    "mentions": caption_mentions,
                }
            )
        stats[split] = {
            "images": len(scenes),
            "captions": sum(len(r["sentences"]) for r in images if r["split"] == split),
        }
    _write_json(
        root / ("dataset_coco.json" if name == "mscoco" else "dataset_flickr30k.json"),
        {"images": images, "dataset": "coco" if name == "mscoco" else "flickr30k"},
    )
    _write_json(root / GROUND_TRUTH, truth)
    return stats


def _generate_class_level(name: str, root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, DATASET_CODES[name]])
    sample, vary, render, caption = (
        (sample_bird, _vary_bird, render_bird, bird_caption)
        if name == "cub"
        else (sample_flower, _vary_flower, render_flower, flower_caption)
    )
    total = sizes["trainval_classes"] + sizes["test_classes"]
    kinds: list = []
    while len(kinds) < total:  # distinct classes, in families
        for candidate in sample_families(total, rng, sample, vary, max_family=3):
            if candidate not in kinds and len(kinds) < total:
                kinds.append(candidate)
    order = rng.permutation(total)
    test_numbers = set(int(i) + 1 for i in order[: sizes["test_classes"]])
    text_root = root / ("cvpr2016_cub" if name == "cub" else "cvpr2016_flowers")
    class_names, image_number = [], 0
    truth: list[dict[str, Any]] = []  # per image: its class's attributes and what each caption states
    for number, kind in enumerate(kinds, start=1):
        class_name = f"{number:03d}.Synthetic_bird_{number:03d}" if name == "cub" else f"class_{number:05d}"
        class_names.append(class_name)
        for k in range(sizes["images_per_class"]):
            image_number += 1
            item_rng = np.random.default_rng([seed, DATASET_CODES[name], number, k])
            if name == "cub":
                stem = f"Synthetic_Bird_{number:03d}_{k:04d}"
                image_path = root / "CUB_200_2011" / "images" / class_name / f"{stem}.jpg"
            else:
                stem = f"image_{image_number:05d}"
                image_path = root / "jpg" / f"{stem}.jpg"
            _save_image(render(kind, item_rng), image_path)
            caption_mentions = [{} for _ in range(10)]
            lines = [caption(kind, item_rng, said) for said in caption_mentions]
            truth.append(
                {
                    "split": "test" if number in test_numbers else "trainval",
                    "file_path": image_path.relative_to(root).as_posix(),
                    "id": number,
                    "attributes": kind,
                    "mentions": caption_mentions,
                }
            )
            if k == 0:  # irregularity: blank lines inside and at the end of a caption file
                lines = lines[:5] + [""] + lines[5:] + ["", ""]
            path = text_root / "text_c10" / class_name / f"{stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    trainval = [c for i, c in enumerate(class_names, start=1) if i not in test_numbers]
    test = [c for i, c in enumerate(class_names, start=1) if i in test_numbers]
    (text_root / "trainvalclasses.txt").write_text("\n".join(trainval) + "\n", encoding="utf-8")
    (text_root / "testclasses.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    (text_root / "allclasses.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    _write_json(root / GROUND_TRUTH, truth)
    return {
        key: {
            "classes": len(classes),
            "images": len(classes) * sizes["images_per_class"],
            "captions": len(classes) * sizes["images_per_class"] * 10,
        }
        for key, classes in (("trainval", trainval), ("test", test))
    }


# ====================================================================== entry points
def sizes_for(name: str, profile: str) -> dict[str, int]:
    if profile not in SIZES:
        raise ValueError(f"parameter profile={profile!r} is not one of {', '.join(SIZES)}")
    if name not in SIZES[profile]:
        raise ValueError(f"parameter name={name!r} is not one of {', '.join(SIZES[profile])}")
    return SIZES[profile][name]


def is_complete(root: str | os.PathLike, name: str, profile: str, seed: int = 0) -> bool:
    """True when ``root`` holds a finished generation of ``name`` for this profile, seed and generator version,
    with its :data:`GROUND_TRUTH` (older generations lack it for some datasets: regenerating writes the same data)."""
    marker = Path(root) / MARKER
    if not marker.is_file() or not (Path(root) / GROUND_TRUTH).is_file():
        return False
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return False
    return (
        meta.get("name"),
        meta.get("profile"),
        meta.get("seed"),
        meta.get("generator_version"),
        meta.get("sizes"),
    ) == (name, profile, seed, GENERATOR_VERSION, sizes_for(name, profile))


def generate(
    name: str, root: str | os.PathLike, profile: str, seed: int = 0, sizes: dict[str, int] | None = None
) -> Path:
    """Write synthetic ``name`` in its real layout under ``root`` (replacing what is there); return ``root``.

    Written into a temporary sibling folder and renamed into place when complete; the last
    file written is ``synthetic.json`` (name, profile, seed, sizes, timing).
    """
    root = Path(root)
    sizes = dict(sizes) if sizes is not None else sizes_for(name, profile)
    generators = {
        "cuhk_pedes": _generate_cuhk,
        "cub": _generate_class_level,
        "flowers": _generate_class_level,
        "flickr30k": _generate_karpathy,
        "mscoco": _generate_karpathy,
        "icfg_pedes": _generate_person_json,
        "rstpreid": _generate_person_json,
    }
    if name not in generators:
        raise ValueError(f"parameter name={name!r} is not one of {', '.join(generators)}")
    from ...core.atomic import naming_write_failures

    with naming_write_failures(root):  # a full disk / read-only folder: an error naming root and the cause
        return _generate_into(name, root, profile, seed, sizes, generators)


def _generate_into(
    name: str, root: Path, profile: str, seed: int, sizes: dict[str, int], generators: dict[str, Callable[..., dict]]
) -> Path:
    """:func:`generate` after its checks: a temporary sibling folder, renamed into place when complete."""
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    started = time.perf_counter()
    try:
        if name == "cuhk_pedes":
            stats = _generate_cuhk(temporary, sizes, seed)
        else:
            stats = generators[name](name, temporary, sizes, seed)
        meta = {
            "name": name,
            "profile": profile,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
            "sizes": sizes,
            "image_size": list(IMAGE_SIZES[name]),
            "statistics": stats,
        }
        (temporary / MARKER).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(temporary, root)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    seconds = time.perf_counter() - started
    timing = root / "generation_seconds.txt"  # kept out of the marker so files stay byte-identical across runs
    timing.write_text(f"{seconds:.2f}\n", encoding="utf-8")
    return root


# ====================================================================== ICFG-PEDES / RSTPReid-like
# Both came out after the paper. Same person renderer and caption grammar as the CUHK-PEDES stand-in,
# written in their own distributed layouts (``data.PERSON_JSON``):
# * icfg_pedes: ``ICFG-PEDES.json`` = [{id, file_path, captions, processed_tokens, split}], split train / test
#   only, one caption an image, images at ``imgs/<train|test>/<id>/<id>_<view>.jpg``;
# * rstpreid: ``data_captions.json`` = [{id, img_path, captions, split}], split train / val / test, five
#   images an identity (the real set: five cameras), two captions an image, images at ``imgs/<id>_c<cam>_<view>.jpg``.
PERSON_JSON_SPLITS = {"icfg_pedes": ("train", "test"), "rstpreid": ("train", "val", "test")}


def _generate_person_json(name: str, root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """Write synthetic ICFG-PEDES or RSTPReid under ``root``; statistics per split (ICFG-PEDES's train is
    reported as ``trainval``: readers carve ``val`` from it)."""
    from ..text import tokenize

    code = DATASET_CODES[name]
    rng = np.random.default_rng([seed, code])
    records: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []  # per image: its attributes and what each of its captions states
    stats: dict[str, Any] = {}
    next_id = 1
    for split in PERSON_JSON_SPLITS[name]:
        identities = sample_families(sizes[f"{split}_ids"], rng, sample_person, vary_person)
        images = captions = 0
        for person in identities:
            person_id, next_id = next_id, next_id + 1
            item_rng = np.random.default_rng([seed, code, person_id])
            shades = _person_colours(person, item_rng)
            views = int(item_rng.integers(2, 5)) if name == "icfg_pedes" else 5
            for view in range(views):
                pixels = render_person(person, shades, item_rng)
                caption_mentions = [{} for _ in range(1 if name == "icfg_pedes" else 2)]
                texts = [person_caption(person, item_rng, said) for said in caption_mentions]
                if name == "icfg_pedes":
                    relative = f"{split}/{person_id:04d}/{person_id:04d}_{view:03d}.jpg"
                    record = {
                        "id": person_id,
                        "file_path": relative,
                        "captions": texts,
                        "processed_tokens": [tokenize(text) for text in texts],
                        "split": split,
                    }
                else:
                    relative = f"{person_id:04d}_c{view + 1}_{view:04d}.jpg"
                    record = {"id": person_id, "img_path": relative, "captions": texts, "split": split}
                _save_image(pixels, root / "imgs" / relative)
                records.append(record)
                truth.append(
                    {
                        "split": split,
                        "file_path": relative,
                        "id": person_id,
                        "attributes": visible_attributes(person),
                        "mentions": caption_mentions,
                    }
                )
                images, captions = images + 1, captions + len(texts)
        key = "trainval" if (name == "icfg_pedes" and split == "train") else split
        stats[key] = {"ids": len(identities), "images": images, "captions": captions}
    _write_json(root / ("ICFG-PEDES.json" if name == "icfg_pedes" else "data_captions.json"), records)
    _write_json(root / GROUND_TRUTH, truth)
    return stats


def recorded_sizes(root: str | os.PathLike) -> list[tuple[str, str, int | None, int | None, int | None]]:
    """The sizes the generator recorded in ``root/synthetic.json``, as rows like ``data.PUBLISHED_SIZES``:
    ``(dataset, split, images, captions, ids_or_classes)``; None where the marker does not say (older
    generations did not count captions). Raises ``FileNotFoundError`` when ``root`` is not synthetic."""
    marker = Path(root) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} does not exist: {root} is not a generated synthetic dataset")
    meta = json.loads(marker.read_text(encoding="utf-8"))
    name, statistics = meta["name"], meta["statistics"]
    rows = []
    for split, counts in statistics.items():
        images = counts.get("images")
        groups = counts.get("ids", counts.get("classes", images))  # Flickr30K / MSCOCO: every image is its own label
        rows.append((name, split, images, counts.get("captions"), groups))
    if {"trainval", "test"} <= set(statistics) and all("classes" in statistics[s] for s in ("trainval", "test")):
        total = [
            sum(statistics[s].get(key) or 0 for s in ("trainval", "test"))
            if all(statistics[s].get(key) is not None for s in ("trainval", "test"))
            else None
            for key in ("images", "captions", "classes")
        ]
        rows.append((name, "all", *total))
    return rows
