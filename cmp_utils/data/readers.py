"""Datasets: readers of the seven layouts, the prepared dataset, pairs, collate, identity sampler.

Data flows once, from files to tensors::

    files on disk (real, or synthetic written in the same layout)
      -> read_dataset(name, root, split)       one DataFrame row per caption
      -> prepare_dataset(name, profile)        vocabulary (train only) + image cache per split
      -> PairDataset + collate_pairs           images (B, 3, H, W), token ids (B, T), lengths, labels
      -> IdentityBatchSampler                  several captions of one identity per batch

Labels follow the released code: the person id for CUHK-PEDES (and ICFG-PEDES, RSTPReid), the image id for Flickr30K
and MSCOCO (two captions of one image are both positives), the class for CUB and Flowers.

Layouts (under ``root``, the dataset's folder):

===========  ===================================================================================
cuhk_pedes   ``reid_raw.json`` (list of ``{split, captions, file_path, processed_tokens, id}``),
             images at ``imgs/<file_path>``
flickr30k    ``dataset_flickr30k.json`` (``{"images": [{filename, imgid, split, sentences}]}``),
             images at ``flickr30k-images/<filename>``
mscoco       ``dataset_coco.json`` (as Flickr30K plus ``filepath``), images at
             ``<filepath>/<filename>``; splits train, restval, val, test
cub          ``cvpr2016_cub/text_c10/<class>/<stem>.txt`` (10 captions, one a line),
             ``cvpr2016_cub/trainvalclasses.txt``, ``testclasses.txt``,
             images at ``CUB_200_2011/images/<class>/<stem>.jpg``
flowers      ``cvpr2016_flowers/text_c10/class_XXXXX/<stem>.txt``, the same class files,
             images at ``jpg/<stem>.jpg``
icfg_pedes   ``ICFG-PEDES.json`` (list of ``{id, file_path, captions, processed_tokens, split}``,
             split train / test; ``val`` = held-out train identities, see :data:`HELD_OUT_EVERY`),
             images at ``imgs/<file_path>``
rstpreid     ``data_captions.json`` (list of ``{id, img_path, captions, split}``, split train /
             val / test), images at ``imgs/<img_path>``
===========  ===================================================================================

ICFG-PEDES and RSTPReid postdate the paper (2021); ``docs/datasets.md`` says where every dataset
is obtained, and ``python -m cmp_utils.data check DATA_DIR`` checks a data folder against the
published sizes (:func:`check_data_dir`).

Tokens follow the release: Flickr30K / MSCOCO use the Karpathy JSON's ``tokens`` as given; the
other datasets recompute them from the raw caption with :func:`cmp_utils.data.text.tokenize` (lower
case, punctuation deleted, as the release's ``builddata/dataset_utils.py`` does for CUHK-PEDES,
whose ``processed_tokens`` field is not used).

Class-level splits (cub, flowers): ``train`` = the trainval classes, ``test`` = the test
classes (zero-shot). With ``val_class_fraction > 0`` a validation split of whole classes is
carved from trainval deterministically (every k-th class of the sorted trainval list, k =
round(1 / fraction)), and ``train`` becomes the remaining classes; ``trainval`` always names
all trainval classes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..core import config
from .images import ImageCache, normalise
from .text import TOKENISATION, Vocabulary, pad_token_ids, tokenize

logger = logging.getLogger(__name__)

COLUMNS = ("image_path", "caption", "tokens", "label", "image_id", "split")
NUM_CLASSES_FROM = ("all_splits", "train")  # see PreparedDataset.num_classes

LAYOUTS = {
    "cuhk_pedes": "<root>/reid_raw.json (a JSON list of {split, captions, file_path, processed_tokens, id}) "
                  "and images at <root>/imgs/<file_path>",
    "flickr30k": "<root>/dataset_flickr30k.json (Karpathy split: {\"images\": [{filename, imgid, split, sentences: "
                 "[{raw, tokens}]}]}) and images at <root>/flickr30k-images/<filename>",
    "mscoco": "<root>/dataset_coco.json (Karpathy split: {\"images\": [{filepath, filename, imgid, split, "
              "sentences}]}) and images at <root>/<filepath>/<filename>",
    "cub": "<root>/cvpr2016_cub/text_c10/<class>/<stem>.txt (10 captions a file), <root>/cvpr2016_cub/"
           "trainvalclasses.txt and testclasses.txt, images at <root>/CUB_200_2011/images/<class>/<stem>.jpg",
    "flowers": "<root>/cvpr2016_flowers/text_c10/class_XXXXX/<stem>.txt (10 captions a file), <root>/"
               "cvpr2016_flowers/trainvalclasses.txt and testclasses.txt, images at <root>/jpg/<stem>.jpg",
    "icfg_pedes": "<root>/ICFG-PEDES.json (a JSON list of {id, file_path, captions, processed_tokens, split} with "
                  "split train or test) and images at <root>/imgs/<file_path>",
    "rstpreid": "<root>/data_captions.json (a JSON list of {id, img_path, captions, split} with split train, val "
                "or test) and images at <root>/imgs/<img_path>",
}
ANNOTATION_FILES = {"cuhk_pedes": "reid_raw.json", "flickr30k": "dataset_flickr30k.json", "mscoco": "dataset_coco.json",
                    "cub": "cvpr2016_cub", "flowers": "cvpr2016_flowers", "icfg_pedes": "ICFG-PEDES.json",
                    "rstpreid": "data_captions.json"}
SPLITS = {"cuhk_pedes": ("train", "val", "test"), "flickr30k": ("train", "val", "test"),
          "mscoco": ("train", "restval", "val", "test"), "cub": ("train", "val", "test", "trainval"),
          "flowers": ("train", "val", "test", "trainval"), "icfg_pedes": ("train", "val", "test", "trainval"),
          "rstpreid": ("train", "val", "test")}
# The splits a prepared dataset uses for model selection and for the final numbers.
# MSCOCO: the release trains on `train` (scripts/train_coco_resnet_cmpm.sh) and builds its validation
# data from `restval` (builddata/coco.py).
VALIDATION_SPLIT = {"cuhk_pedes": "val", "flickr30k": "val", "mscoco": "restval", "cub": "val", "flowers": "val",
                    "icfg_pedes": "val", "rstpreid": "val"}
TEST_SPLIT = {name: "test" for name in config.DATASETS}
CLASS_LEVEL = ("cub", "flowers")
IMAGE_FOLDER = {"cub": "CUB_200_2011/images", "flowers": "jpg"}
TEXT_FOLDER = {"cub": "cvpr2016_cub", "flowers": "cvpr2016_flowers"}
# Published split sizes of the datasets as distributed. None = not stated by those sources.
# Class-level datasets publish trainval / test class splits.
PUBLISHED_SIZES_SOURCE = ("the datasets as distributed: CUHK-PEDES reid_raw.json (Li et al., CVPR 2017), the Karpathy "
                          "split files of Flickr30K and MSCOCO (Karpathy & Fei-Fei, CVPR 2015), the CUB/Flowers class "
                          "splits of Reed et al. (CVPR 2016)")
PUBLISHED_SIZES = [
    # dataset, split, images, captions, identities or classes
    ("cuhk_pedes", "train", 34054, 68126, 11003), ("cuhk_pedes", "val", 3078, 6158, 1000),
    ("cuhk_pedes", "test", 3074, 6156, 1000),
    ("flickr30k", "train", 29000, 29000 * 5, 29000), ("flickr30k", "val", 1014, 1014 * 5, 1014),
    ("flickr30k", "test", 1000, 1000 * 5, 1000),
    ("mscoco", "train", 82783, None, 82783), ("mscoco", "restval", 30504, None, 30504),
    ("mscoco", "val", 5000, None, 5000), ("mscoco", "test", 5000, None, 5000),
    ("cub", "trainval", None, None, 150), ("cub", "test", None, None, 50), ("cub", "all", 11788, 117880, 200),
    ("flowers", "trainval", None, None, 82), ("flowers", "test", None, None, 20), ("flowers", "all", 8189, 81890, 102),
    # Published after the paper (sources in PUBLISHED_SIZES_SOURCES). ICFG-PEDES: one caption an image, no val split.
    ("icfg_pedes", "trainval", 34674, 34674, 3102), ("icfg_pedes", "test", 19848, 19848, 1000),
    ("rstpreid", "train", 18505, 37010, 3701), ("rstpreid", "val", 1000, 2000, 200),
    ("rstpreid", "test", 1000, 2000, 200),
]
# Where the sizes of the datasets that postdate the paper are published (the other rows: PUBLISHED_SIZES_SOURCE).
PUBLISHED_SIZES_SOURCES = {
    "icfg_pedes": "Ding et al., Semantically Self-Aligned Network for Text-to-Image Part-aware Person "
                  "Re-identification, arXiv:2107.12666 (2021), dataset section",
    "rstpreid": "Zhu et al., DSSL: Deep Surroundings-person Separation Learning for Text-based Person Retrieval, "
                "ACM MM 2021, dataset section",
}


def published_sizes() -> pd.DataFrame:
    """:data:`PUBLISHED_SIZES` as a table with a ``source`` column."""
    frame = pd.DataFrame(PUBLISHED_SIZES, columns=["dataset", "split", "images", "captions", "ids_or_classes"])
    frame["source"] = frame["dataset"].map(PUBLISHED_SIZES_SOURCES).fillna(PUBLISHED_SIZES_SOURCE)
    return frame.astype({"images": "Int64", "captions": "Int64", "ids_or_classes": "Int64"})


def split_statistics(frame: pd.DataFrame) -> dict[str, float]:
    """Images, captions, identities / classes, captions per image and caption length of one split's frame."""
    per_image = frame.groupby("image_path").size()
    lengths = frame["tokens"].map(len)
    return {"images": int(per_image.size), "captions": int(len(frame)), "ids_or_classes": int(frame["label"].nunique()),
            "captions_per_image_mean": float(per_image.mean()), "captions_per_image_min": int(per_image.min()),
            "captions_per_image_max": int(per_image.max()), "caption_length_mean": float(lengths.mean()),
            "caption_length_max": int(lengths.max())}


# Default image size of the cache: the paper resizes real images to 224 x 224 (no crop).
REAL_IMAGE_SIZE = (224, 224)


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder or annotation file is missing; the message names the path and the layout."""


class MissingImagesError(FileNotFoundError):
    """Annotations name image files that are not on disk."""


def _check_name(name: str) -> str:
    if name not in config.DATASETS:
        raise ValueError(f"parameter name={name!r} is not a known dataset; use one of {', '.join(config.DATASETS)}")
    return name


def _check_split(name: str, split: str) -> str:
    if split not in SPLITS[name]:
        raise ValueError(f"parameter split={split!r} is not a split of {name}; use one of {', '.join(SPLITS[name])}")
    return split


def _layout_error(name: str, root: Path, missing: Path) -> DatasetLayoutError:
    return DatasetLayoutError(f"{name}: {missing} does not exist. Expected layout: {LAYOUTS[name]} (root = {root}). "
                              f"Put the dataset there, point data_dir / $CMP_DATA_DIR at its parent, "
                              f"or use the synthetic data (source='synthetic').")


class AnnotationEncodingError(ValueError):
    """An annotation or caption file is not UTF-8; the message names the file, line and bytes."""


def read_utf8(path: Path) -> str:
    """The text of ``path``, decoded strictly as UTF-8 (a BOM is dropped).

    Never replaces undecodable bytes by U+FFFD (which would split or change words): a file
    that is not UTF-8 raises :class:`AnnotationEncodingError` naming the file, the line, the
    byte offset and the bytes, and how to convert it.
    """
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise AnnotationEncodingError(
            f"{path} is not UTF-8: line {line}, byte {error.start} ({raw[error.start:error.end]!r}) cannot be decoded. "
            f"Convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8 {Path(path).name} > fixed && mv fixed "
            f"{Path(path).name}`, if it is Latin-1) and run again") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"annotation file {path} is not valid JSON: {error}") from error


def _caption_list(captions: Any, annotation: Path, where: str) -> list[str]:
    """``captions`` of one record, checked to be a list of strings (a bare string is refused:
    iterating it would make every character a caption)."""
    if isinstance(captions, str) or not isinstance(captions, list):
        raise ValueError(f"annotation file {annotation}: {where} has \"captions\" as a {type(captions).__name__} "
                         f"({str(captions)[:60]!r}); it must be a list of strings, e.g. \"captions\": [\"a man in ...\"]")
    for caption in captions:
        if not isinstance(caption, str):
            raise ValueError(f"annotation file {annotation}: {where} has a caption that is a {type(caption).__name__} "
                             f"({caption!r}); every caption must be a string")
    return captions


#: The split labels each JSON annotation file holds (the readers' derived splits, ``trainval`` and
#: ICFG-PEDES's ``val``, are not in the files). A record with another label would be skipped by every split.
FILE_SPLITS = {"cuhk_pedes": ("train", "val", "test"), "flickr30k": ("train", "val", "test"),
               "mscoco": ("train", "restval", "val", "test"), "icfg_pedes": ("train", "test"),
               "rstpreid": ("train", "val", "test")}


def _check_split_label(name: str, annotation: Path, where: str, label: Any) -> str:
    """``label`` if it is one of :data:`FILE_SPLITS` of ``name``; else an error naming the file, the
    record and the labels (a record with an unknown label would vanish from every split)."""
    if isinstance(label, str) and label in FILE_SPLITS[name]:
        return label
    known = FILE_SPLITS[name]
    hint = f"; did you mean {label.strip().lower()!r}?" if isinstance(label, str) and label.strip().lower() in known else ""
    raise ValueError(f"annotation file {annotation}: {where} has split {label!r}, which is not a split label of "
                     f"{name} ({', '.join(known)}){hint} Its captions would be silently left out of every split: fix "
                     f"the label in the file")


def _image_path_inside(annotation: Path, where: str, key: str, value: Any) -> str:
    """``value`` (an image path from the annotations) if it is a non-empty relative path without
    ``..``; else an error: an absolute path or one with ``..`` would read an image from outside the
    dataset folder (which the data fingerprint does not cover)."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"annotation file {annotation}: {where} has {key} {value!r}; it must be a non-empty path "
                         f"string relative to the dataset's image folder")
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(value).drive or ".." in posix.parts:
        raise ValueError(f"annotation file {annotation}: {where} has {key} {value!r}, which points outside the dataset "
                         f"folder; image paths must be relative to the dataset's image folder, without '..' or a "
                         f"leading '/': move the image into that folder and give its path relative to it")
    return value


def _check_one_label_per_image(annotation: Path, entries: Sequence[tuple[str, int, str]]) -> None:
    """``entries`` ``(image path, label, where)`` of every record of ``annotation`` (all splits): an
    image listed under two labels (ids) is an error naming both records (it would become one image
    with two identities)."""
    first: dict[str, tuple[int, str]] = {}
    for path, label, where in entries:
        seen_label, seen_where = first.setdefault(path, (label, where))
        if seen_label != label:
            raise ValueError(f"annotation file {annotation}: image {path} is listed under id {seen_label} ({seen_where}) "
                             f"and id {label} ({where}); one image cannot have two identities. Keep one of the "
                             f"records, or give both the same id")


def _sentence_list(sentences: Any, annotation: Path, where: str) -> list:
    """A Karpathy record's ``sentences``: a list of ``{raw, tokens}`` objects or strings (a bare
    string is refused: iterating it would make every character a caption)."""
    if not isinstance(sentences, list):
        raise ValueError(f"annotation file {annotation}: {where} has \"sentences\" as a {type(sentences).__name__} "
                         f"({str(sentences)[:60]!r}); it must be a list, e.g. \"sentences\": [{{\"raw\": \"A dog ...\", "
                         f"\"tokens\": [\"a\", \"dog\"]}}]")
    for sentence in sentences:
        tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
        if not isinstance(sentence, (dict, str)) or (tokens is not None and not isinstance(tokens, list)):
            raise ValueError(f"annotation file {annotation}: {where} has a sentence {str(sentence)[:60]!r}; each must "
                             f"be a string or an object {{\"raw\": str, \"tokens\": [str, ...]}} (tokens a list)")
    return sentences


# ---------------------------------------------------------------------- readers
def _rows_cuhk(root: Path, split: str) -> list[dict]:
    annotation = root / "reid_raw.json"
    if not annotation.is_file():
        raise _layout_error("cuhk_pedes", root, annotation)
    records = _load_json(annotation)
    if not isinstance(records, list):
        raise ValueError(f"annotation file {annotation} must hold a JSON list of image records, got {type(records).__name__}")
    rows, entries = [], []
    for image_id, record in enumerate(records):
        try:
            record_split, captions, file_path, person_id = (record["split"], record["captions"], record["file_path"],
                                                            int(record["id"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"annotation file {annotation}: record {image_id} lacks split/captions/file_path/id "
                             f"({error!r})") from error
        where = f"record {image_id} ({file_path})"
        _check_split_label("cuhk_pedes", annotation, where, record_split)
        entries.append((_image_path_inside(annotation, where, "file_path", file_path), person_id, where))
        if record_split != split:
            continue
        for caption in _caption_list(captions, annotation, where):
            rows.append({"image_path": str(root / "imgs" / file_path), "caption": caption, "label": person_id,
                         "image_id": image_id})
    _check_one_label_per_image(annotation, entries)
    return rows


def _rows_karpathy(name: str, root: Path, split: str) -> list[dict]:
    annotation = root / ANNOTATION_FILES[name]
    if not annotation.is_file():
        raise _layout_error(name, root, annotation)
    payload = _load_json(annotation)
    if not isinstance(payload, dict) or "images" not in payload:
        raise ValueError(f"annotation file {annotation} must hold a JSON object with an 'images' list (Karpathy split)")
    rows, entries = [], []
    image_ids = _karpathy_image_ids(payload["images"], annotation)
    for position, record in enumerate(payload["images"]):
        try:
            record_split, filename, sentences = record["split"], record["filename"], record["sentences"]
            image_id = image_ids[position]
            folder = record["filepath"] if name == "mscoco" else "flickr30k-images"
        except (KeyError, TypeError, ValueError) as error:
            need = "filepath, filename" if name == "mscoco" else "filename"
            raise ValueError(f"annotation file {annotation}: image record {position} lacks split/{need}/sentences "
                             f"({error!r})") from error
        where = f"image record {position} ({filename})"
        _check_split_label(name, annotation, where, record_split)
        if name == "mscoco":
            _image_path_inside(annotation, where, "filepath", folder)
        relative = f"{folder}/{_image_path_inside(annotation, where, 'filename', filename)}"
        _image_path_inside(annotation, where, "filepath/filename", relative)
        entries.append((relative, image_id, where))
        if record_split != split:
            continue
        image_path = str(root / folder / filename)
        for sentence in _sentence_list(sentences, annotation, where):
            caption = sentence.get("raw", " ".join(sentence.get("tokens", []))) if isinstance(sentence, dict) else str(sentence)
            given = sentence.get("tokens") if isinstance(sentence, dict) else None  # used as given (release)
            rows.append({"image_path": image_path, "caption": caption, "label": image_id, "image_id": image_id,
                         "tokens": [str(token) for token in given] if given else None})
    _check_one_label_per_image(annotation, entries)
    return rows


def _karpathy_image_ids(records: list, annotation: Path) -> list[int]:
    """The ``imgid`` of every record; a record without one, or two records sharing one, is an error
    (the label of an image is its id: a guessed or shared id would silently merge two images)."""
    ids, seen = [], {}
    for position, record in enumerate(records):
        name = record.get("filename", "?") if isinstance(record, dict) else "?"
        try:
            image_id = int(record["imgid"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"annotation file {annotation}: image record {position} ({name}) has no integer "
                             f"\"imgid\" ({error!r}); every record of a Karpathy split file needs its own imgid") from error
        if image_id in seen:
            raise ValueError(f"annotation file {annotation}: image records {seen[image_id]} and {position} ({name}) "
                             f"share imgid {image_id}; every image needs its own imgid")
        seen[image_id] = position
        ids.append(image_id)
    return ids


# ICFG-PEDES and RSTPReid (published after the paper): a JSON list of image records, images under imgs/.
# name: (annotation file, the record key holding the image path relative to imgs/)
PERSON_JSON = {"icfg_pedes": ("ICFG-PEDES.json", "file_path"), "rstpreid": ("data_captions.json", "img_path")}
# ICFG-PEDES publishes train and test only. Validation = every HELD_OUT_EVERY-th identity of its train split
# (sorted ids, starting at the (HELD_OUT_EVERY // 2)-th), held out of training: about 310 of 3,102 identities.
HELD_OUT_EVERY = 10


def held_out_identities(train_ids: Sequence[int], every: int = HELD_OUT_EVERY) -> set[int]:
    """The train identities ICFG-PEDES holds out as its validation split (deterministic, see above)."""
    ordered = sorted(set(int(i) for i in train_ids))
    return set(ordered[every // 2::every])


def _rows_person_json(name: str, root: Path, split: str) -> list[dict]:
    """Rows of ICFG-PEDES (splits train / val carved from train / test / trainval) or RSTPReid (train / val / test)."""
    file_name, path_key = PERSON_JSON[name]
    annotation = root / file_name
    if not annotation.is_file():
        raise _layout_error(name, root, annotation)
    records = _load_json(annotation)
    if not isinstance(records, list):
        raise ValueError(f"annotation file {annotation} must hold a JSON list of image records, got {type(records).__name__}")
    try:
        record_splits = [(record["split"], int(record["id"])) for record in records]
        relative_paths = [record[path_key] for record in records]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"annotation file {annotation}: a record lacks split/id/{path_key} ({error!r}); expected "
                         f"records {{id, {path_key}, captions, split}}") from error
    entries = []
    for position, ((record_split, person_id), relative) in enumerate(zip(record_splits, relative_paths)):
        where = f"record {position} ({relative})"
        _check_split_label(name, annotation, where, record_split)
        entries.append((_image_path_inside(annotation, where, path_key, relative), person_id, where))
    _check_one_label_per_image(annotation, entries)
    held_out: set[int] = set()
    file_split = split
    if name == "icfg_pedes":
        held_out = held_out_identities([person_id for record_split, person_id in record_splits if record_split == "train"])
        file_split = "test" if split == "test" else "train"
    rows = []
    for image_id, (record, (record_split, person_id)) in enumerate(zip(records, record_splits)):
        if record_split != file_split:
            continue
        if (split == "train" and person_id in held_out) or (split == "val" and name == "icfg_pedes" and person_id not in held_out):
            continue
        try:
            captions, image_path = record["captions"], str(root / "imgs" / record[path_key])
        except (KeyError, TypeError) as error:
            raise ValueError(f"annotation file {annotation}: record {image_id} lacks {path_key}/captions ({error!r})") from error
        for caption in _caption_list(captions, annotation, f"record {image_id} ({record[path_key]})"):
            rows.append({"image_path": image_path, "caption": caption, "label": person_id, "image_id": image_id})
    return rows


def read_class_list(path: Path) -> list[str]:
    """Class folder names, one a line (blank lines ignored)."""
    return [line.strip() for line in read_utf8(path).splitlines() if line.strip()]


def class_splits(name: str, root: Path, val_class_fraction: float = 0.0) -> dict[str, list[str]]:
    """Class folder names per split of a class-level dataset (see the module docstring)."""
    text_root = root / TEXT_FOLDER[name]
    if not root.is_dir():
        raise _layout_error(name, root, root)
    lists = {}
    for key, file_name in (("trainval", "trainvalclasses.txt"), ("test", "testclasses.txt")):
        path = text_root / file_name
        if not path.is_file():
            raise _layout_error(name, root, path)
        lists[key] = read_class_list(path)
    overlap = set(lists["trainval"]) & set(lists["test"])
    if overlap:
        raise ValueError(f"{text_root}: trainvalclasses.txt and testclasses.txt share classes {sorted(overlap)[:5]}")
    trainval = sorted(lists["trainval"])
    if not 0.0 <= val_class_fraction < 1.0:
        raise ValueError(f"parameter val_class_fraction={val_class_fraction} must be in [0, 1)")
    if val_class_fraction > 0:
        step = max(2, int(round(1.0 / val_class_fraction)))
        val = trainval[step // 2::step]
        train = [c for c in trainval if c not in set(val)]
    else:
        val, train = [], trainval
    return {"train": train, "val": val, "test": sorted(lists["test"]), "trainval": trainval}


def _rows_class_level(name: str, root: Path, split: str, val_class_fraction: float) -> list[dict]:
    splits = class_splits(name, root, val_class_fraction)
    if split == "val" and not splits["val"]:
        raise ValueError(f"{name} has no 'val' split unless val_class_fraction > 0 (classes carved from trainval); "
                         f"use split='train' / 'test', or pass val_class_fraction=0.2")
    text_root = root / TEXT_FOLDER[name] / "text_c10"
    if not text_root.is_dir():
        raise _layout_error(name, root, text_root)
    rows = []
    for class_name in splits[split]:
        class_folder = text_root / class_name
        if not class_folder.is_dir():
            raise _layout_error(name, root, class_folder)
        label = class_label(class_name)
        text_files = sorted(class_folder.glob("*.txt"))
        if not text_files:
            raise ValueError(f"{name}: class folder {class_folder} holds no caption files (<stem>.txt); restore them, "
                             f"or remove {class_name} from {TEXT_FOLDER[name]}/trainvalclasses.txt / testclasses.txt")
        for text_file in text_files:
            stem = text_file.stem
            if name == "cub":
                image_path = root / IMAGE_FOLDER[name] / class_name / f"{stem}.jpg"
            else:
                image_path = root / IMAGE_FOLDER[name] / f"{stem}.jpg"
            image_id = int("".join(ch for ch in stem if ch.isdigit()) or 0) if name == "flowers" else None
            for line in read_utf8(text_file).splitlines():
                if line.strip():
                    rows.append({"image_path": str(image_path), "caption": line.strip(), "label": label,
                                 "image_id": image_id})
    if name == "cub" or any(row["image_id"] is None for row in rows):
        # CUB stems carry no global number: number the images in sorted path order.
        ids = {path: index for index, path in enumerate(sorted({row["image_path"] for row in rows}))}
        for row in rows:
            row["image_id"] = ids[row["image_path"]]
    return rows


def class_label(class_name: str) -> int:
    """``001.Black_footed_Albatross`` -> 1, ``class_00017`` -> 17 (the class number in the folder name)."""
    head = class_name.split(".")[0] if "." in class_name else class_name.rsplit("_", 1)[-1]
    digits = "".join(ch for ch in head if ch.isdigit())
    if not digits:
        raise ValueError(f"class folder name {class_name!r} carries no class number (expected like "
                         f"'001.Black_footed_Albatross' or 'class_00001')")
    return int(digits)


#: Rows already parsed from one JSON annotation file, by ``(name, root, split, SHA-256 of the file's
#: bytes)``: a process that prepares a dataset run after run (a worker of
#: :func:`cmp_utils.experiments.train_jobs`) decodes each file once. Keyed on the content, not the
#: modification time, so a file rewritten within the same clock tick is parsed again.
_PARSED_ROWS: dict[tuple[str, str, str, str], list[dict]] = {}
_PARSED_ROWS_LIMIT = 32


def _annotation_rows(name: str, root: Path, split: str, val_class_fraction: float = 0.0) -> list[dict]:
    """The rows the annotation files of ``name`` list for ``split`` (before any check of the images);
    a fresh copy of each row, so callers may change them."""
    annotation = root / ANNOTATION_FILES[name]
    if name in CLASS_LEVEL or not annotation.is_file():  # a folder of caption files, or the readers' error
        return _parse_annotation_rows(name, root, split, val_class_fraction)
    key = (name, str(root.resolve()), split, hashlib.sha256(annotation.read_bytes()).hexdigest())
    rows = _PARSED_ROWS.get(key)
    if rows is None:
        rows = _parse_annotation_rows(name, root, split, val_class_fraction)
        if len(_PARSED_ROWS) >= _PARSED_ROWS_LIMIT:
            _PARSED_ROWS.pop(next(iter(_PARSED_ROWS)))  # the oldest entry
        _PARSED_ROWS[key] = rows
    return [{**row, "tokens": list(row["tokens"])} if row.get("tokens") is not None else dict(row) for row in rows]


def _parse_annotation_rows(name: str, root: Path, split: str, val_class_fraction: float) -> list[dict]:
    if name == "cuhk_pedes":
        return _rows_cuhk(root, split)
    if name in ("flickr30k", "mscoco"):
        return _rows_karpathy(name, root, split)
    if name in PERSON_JSON:
        return _rows_person_json(name, root, split)
    return _rows_class_level(name, root, split, val_class_fraction)


def read_dataset(name: str, root: str | os.PathLike, split: str, *, missing_images: str = "error",
                 val_class_fraction: float = 0.0, lowercase: bool = True) -> pd.DataFrame:
    """Read one split of dataset ``name`` stored under ``root``: one row per caption.

    Columns: ``image_path`` (str, an existing file), ``caption`` (raw text), ``tokens``
    (``text.tokenize(caption)``), ``label`` (person id / image id / class number),
    ``image_id`` (int), ``split``.

    * empty captions are dropped, counted, and reported with a warning;
    * ``missing_images="error"`` (default) raises :class:`MissingImagesError` with the count
      and examples; ``"drop"`` drops their rows with a warning;
    * a missing root or annotation file raises :class:`DatasetLayoutError` naming the path
      and the expected layout; malformed JSON raises ``ValueError`` naming the file.
    """
    _check_name(name)
    _check_split(name, split)
    if missing_images not in ("error", "drop"):
        raise ValueError(f"parameter missing_images={missing_images!r} must be 'error' or 'drop'")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _layout_error(name, root, root)
    rows = _annotation_rows(name, root, split, val_class_fraction)
    frame = pd.DataFrame(rows, columns=["image_path", "caption", "label", "image_id"])
    frame["caption"] = frame["caption"].fillna("").astype(str)
    # Tokens (release): the Karpathy JSON's ``tokens`` as given; otherwise text.tokenize (punctuation deleted);
    # ``lowercase=False`` keeps case (a port's case-sensitive vocabulary).
    given_tokens = [row.get("tokens") for row in rows]
    frame["tokens"] = [given if given else tokenize(caption, lowercase=lowercase)
                       for given, caption in zip(given_tokens, frame["caption"])]
    empty = frame["tokens"].map(len) == 0
    if empty.any():
        message = (f"{name}/{split}: dropped {int(empty.sum())} empty caption(s) (e.g. for "
                   f"{frame.loc[empty, 'image_path'].iloc[0]})")
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        frame = frame.loc[~empty]
    unique_paths = pd.unique(frame["image_path"])
    missing = [path for path in unique_paths if not os.path.isfile(path)]
    if missing:
        message = (f"{name}/{split}: {len(missing)} of {len(unique_paths)} image files named in the annotations "
                   f"are missing under {root}, e.g. {', '.join(missing[:3])}")
        if missing_images == "error":
            raise MissingImagesError(message + ". Restore them, or pass missing_images='drop' to drop their captions.")
        logger.warning(message + "; their captions are dropped")
        warnings.warn(message + "; their captions are dropped", stacklevel=2)
        frame = frame.loc[~frame["image_path"].isin(set(missing))]
    frame = frame.reset_index(drop=True)
    frame["label"] = frame["label"].astype(np.int64)
    frame["image_id"] = frame["image_id"].astype(np.int64)
    frame["split"] = split
    return frame[list(COLUMNS)]


def add_indices(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``class_index`` (labels mapped to 0..K-1 in sorted label order) and ``image_index``
    (row in the split's image cache: unique image paths in order of first appearance)."""
    frame = frame.copy()
    labels = np.sort(frame["label"].unique())
    frame["class_index"] = np.searchsorted(labels, frame["label"].to_numpy()).astype(np.int64)
    paths = pd.unique(frame["image_path"])
    lookup = {path: index for index, path in enumerate(paths)}
    frame["image_index"] = frame["image_path"].map(lookup).astype(np.int64)
    return frame


def image_paths_of(frame: pd.DataFrame) -> list[str]:
    """Unique image paths of ``frame`` in the order ``image_index`` counts them."""
    return [str(p) for p in pd.unique(frame["image_path"])]


# ---------------------------------------------------------------------- locking
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (a lock file), so parallel processes prepare data once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------- prepared dataset
@dataclass
class PreparedDataset:
    """A dataset ready for training: frames per split, the vocabulary, the image caches.

    ``frames[split]`` has the :data:`COLUMNS` plus ``class_index`` (0..K-1 within the split,
    sorted label order) and ``image_index`` (row in ``image_cache(split).images``).
    """

    name: str
    root: Path
    synthetic: bool
    frames: dict[str, pd.DataFrame]
    vocabulary: Vocabulary
    image_size: tuple[int, int]
    prepared_dir: Path
    validation_split: str | None
    test_split: str
    _caches: dict[str, ImageCache] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.frames)

    num_classes_from: str = "all_splits"
    image_resize: str = "pil_antialias"  # how the image caches were resized (cmp_utils.data.images.IMAGE_RESIZES)

    @property
    def num_classes(self) -> int:
        """The CMPC classifier's width (columns of $W$), by ``num_classes_from``.

        ``"all_splits"`` (release): the dataset's own id range. The release feeds the raw ids
        (person id, Karpathy ``imgid``, numbered over all splits) as class indices, so its width
        is 1 + the largest training id: 11004 for CUHK-PEDES (train ids 1..11003), as its script
        says; for Flickr30K / MSCOCO the scripts' 31783 / 123287 are the files' image counts,
        which 1 + the largest training ``imgid`` reaches when the last image is a training one.
        Columns of ids never seen in training stay in the softmax. Training labels here are
        ``class_index`` (0..K_train-1); the extra columns are interchangeable with the unused
        ones (their initialisation is i.i.d.). ``"train"``: K_train, one column per training id.
        CUB / Flowers (no script released): K_train under either option.
        """
        train = self.frames["train"]
        train_classes = int(train["class_index"].max()) + 1
        if self.num_classes_from == "train" or self.name in CLASS_LEVEL:
            return train_classes
        return max(train_classes, int(train["label"].max()) + 1)

    def cache_path(self, split: str) -> Path:
        height, width = self.image_size
        method = "" if self.image_resize == "pil_antialias" else f"_{self.image_resize}"
        return self.prepared_dir / f"images_{split}_{height}x{width}{method}.npy"

    def image_cache(self, split: str) -> ImageCache:
        """The split's image cache (opened once, memory-mapped)."""
        if split not in self.frames:
            raise KeyError(f"{self.name} has no prepared split {split!r}; prepared: {', '.join(self.frames)}")
        if split not in self._caches:
            self._caches[split] = ImageCache.open(self.cache_path(split))
        return self._caches[split]


def default_image_size(name: str, synthetic: bool) -> tuple[int, int]:
    """(H, W) of the cache: the synthetic renderer's native size, or 224 x 224 for real data."""
    if synthetic:
        from .synthetic import IMAGE_SIZES

        return IMAGE_SIZES[name]
    return REAL_IMAGE_SIZE


def synthetic_root(name: str, profile: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the synthetic dataset lives: ``<cache>/synthetic/<profile>/<name>`` (seed 0) or
    ``<cache>/synthetic/<profile>/seed<k>/<name>``."""
    base = config.cache_dir(cache_dir) / "synthetic" / profile
    return (base / name) if seed == 0 else (base / f"seed{seed}" / name)


def ensure_synthetic(name: str, profile: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Generate the synthetic ``name`` for ``profile`` unless a complete copy is already there."""
    from . import synthetic

    root = synthetic_root(name, profile, seed, cache_dir)
    with _file_lock(root.parent / f".{root.name}.lock"):
        if not synthetic.is_complete(root, name, profile, seed):
            synthetic.generate(name, root, profile, seed=seed)
    return root


def dataset_root(name: str, profile: str, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, seed: int = 0, source: str = "auto") -> tuple[Path, bool]:
    """``(root, synthetic)``: the folder dataset ``name`` is read from, as :func:`prepare_dataset` chooses it.

    ``source="auto"``: real data under ``config.data_dir(data_dir)/<name>`` for the paper profile,
    synthetic data (generated here if missing) otherwise; ``"real"`` / ``"synthetic"`` force one.
    """
    _check_name(name)
    config.check_profile(profile)
    if source not in ("auto", "real", "synthetic"):
        raise ValueError(f"parameter source={source!r} must be 'auto', 'real' or 'synthetic'")
    use_synthetic = (profile != "paper") if source == "auto" else (source == "synthetic")
    if use_synthetic:
        return ensure_synthetic(name, profile, seed, cache_dir), True
    root = config.data_dir(data_dir) / name
    if not root.is_dir():
        raise _layout_error(name, root, root)
    return root, False


def files_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 over the relative path, byte size and modification time (ns) of every file under ``root``.

    Covers the annotation files and every image, so replacing any of them (even at the same
    path) changes it; hidden files (locks, temporaries) are skipped. Used in the key of
    memoised experiment runs (:func:`cmp_utils.experiments.run_key`). Costs one ``stat`` a file.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for file_name in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / file_name
            status = path.stat()
            relative = path.relative_to(root).as_posix()
            digest.update(f"{relative}|{status.st_size}|{status.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _frames_fingerprint(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for path, caption in zip(frame["image_path"], frame["caption"]):
        digest.update(f"{path}\t{caption}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def prepare_dataset(name: str, profile: str, data_dir: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, seed: int = 0,
                    image_size: tuple[int, int] | None = None, source: str = "auto", *,
                    missing_images: str = "error", val_class_fraction: float | None = None,
                    min_count: int = 3, progress: bool = False, vocab_case_sensitive: bool = False,
                    pad_shares_most_frequent: bool = False, num_classes_from: str = "all_splits",
                    image_resize: str = "pil_antialias") -> PreparedDataset:
    """Find or generate dataset ``name``, read its splits, build or reload the vocabulary and the image caches.

    ``source``: ``"auto"`` = the real data under ``config.data_dir(data_dir)/<name>`` for
    profile ``paper`` (a clear error if it is missing), synthetic data for smoke / quick;
    ``"real"`` or ``"synthetic"`` force one. Synthetic data is written (once, deterministic
    from ``seed``) under ``config.cache_dir(cache_dir)/synthetic/<profile>/<name>``.
    Vocabulary and caches go to ``<cache>/prepared/<real|synthetic/<profile>/seed<k>>/<name>/``;
    the vocabulary is built from the train split only and reloaded afterwards (rebuilt only
    when the training captions, the tokenisation rule or the vocabulary options change; each
    option setting has its own file, :func:`vocabulary_file_name`). ``val_class_fraction``
    (cub / flowers): None = 0 for profile ``paper`` (the final model trains on all trainval
    classes, no validation split: the last epoch is kept) and 0.2 otherwise (a validation split
    of whole trainval classes); pass 0.2 to the paper profile to hold classes out.

    Recipe options (release default first): ``vocab_case_sensitive`` (tokens keep case and the
    vocabulary tells "A" from "a", a port), ``pad_shares_most_frequent`` (see
    :class:`cmp_utils.data.text.Vocabulary`), ``num_classes_from`` (``"all_splits"`` | ``"train"``,
    see :attr:`PreparedDataset.num_classes`), ``image_resize`` (:data:`cmp_utils.data.images.IMAGE_RESIZES`:
    how images are resized into the caches; the paper profile uses the release's ``"tf1_bilinear"``).
    """
    root, use_synthetic = dataset_root(name, profile, data_dir, cache_dir, seed, source)
    if use_synthetic:
        prepared_dir = config.cache_dir(cache_dir) / "prepared" / "synthetic" / profile / f"seed{seed}" / name
    else:
        prepared_dir = config.cache_dir(cache_dir) / "prepared" / "real" / name
    if num_classes_from not in NUM_CLASSES_FROM:
        raise ValueError(f"parameter num_classes_from={num_classes_from!r} must be one of {NUM_CLASSES_FROM}")
    if name in CLASS_LEVEL:
        fraction = (0.0 if profile == "paper" else 0.2) if val_class_fraction is None else float(val_class_fraction)
        split_names = ["train", "val", "test"] if fraction > 0 else ["train", "test"]
        validation_split = "val" if fraction > 0 else None
    else:
        fraction = 0.0
        split_names = [split for split in SPLITS[name] if split != "trainval"]  # icfg_pedes: trainval = train + val
        validation_split = VALIDATION_SPLIT[name]
    frames = {split: add_indices(read_dataset(name, root, split, missing_images=missing_images,
                                              val_class_fraction=fraction, lowercase=not vocab_case_sensitive))
              for split in split_names}
    for split, frame in frames.items():
        if frame.empty:
            raise ValueError(f"{name}/{split} under {root} has no captions; check the annotation files")
    size = tuple(image_size) if image_size is not None else default_image_size(name, use_synthetic)
    with _file_lock(prepared_dir / ".prepare.lock"):
        options = {"case_sensitive": bool(vocab_case_sensitive),
                   "pad_shares_most_frequent": bool(pad_shares_most_frequent)}
        vocabulary_path = prepared_dir / vocabulary_file_name(**options)
        train_key = _frames_fingerprint(frames["train"])
        vocabulary = None
        if vocabulary_path.is_file():
            loaded = Vocabulary.load(vocabulary_path)
            if (loaded.meta.get("train_fingerprint") == train_key and loaded.min_count == min_count
                    and loaded.meta.get("tokenisation") == TOKENISATION and loaded.options == options):
                vocabulary = loaded
        if vocabulary is None:
            vocabulary = Vocabulary.build(frames["train"]["tokens"], min_count=min_count,
                                          meta={"dataset": name, "built_from": "train", "root": str(root),
                                                "train_fingerprint": train_key, "tokenisation": TOKENISATION},
                                          **options)
            vocabulary.save(vocabulary_path)
            vocabulary = Vocabulary.load(vocabulary_path)
        prepared = PreparedDataset(name=name, root=root, synthetic=use_synthetic, frames=frames, vocabulary=vocabulary,
                                   image_size=size, prepared_dir=prepared_dir, validation_split=validation_split,
                                   test_split=TEST_SPLIT[name], num_classes_from=num_classes_from,
                                   image_resize=image_resize)
        for split, frame in frames.items():
            paths = image_paths_of(frame)
            if not use_synthetic and not ImageCache.is_current(prepared.cache_path(split), paths, size, image_resize):
                print(f"image cache of {name}/{split}: {len(paths)} images x {size[0]} x {size[1]} x 3 bytes = "
                      f"{len(paths) * size[0] * size[1] * 3 / 1e9:.2f} GB, written once to {prepared.cache_path(split)} "
                      "(set CMP_CACHE_DIR to put it elsewhere)", file=sys.stderr, flush=True)
            prepared._caches[split] = ImageCache.build(paths, size, prepared.cache_path(split), progress=progress,
                                                       resize=image_resize)
    return prepared


def vocabulary_file_name(case_sensitive: bool = False, pad_shares_most_frequent: bool = False) -> str:
    """``vocabulary.json`` for the release's options, ``vocabulary_cased_padshared.json`` etc. otherwise."""
    suffix = ("_cased" if case_sensitive else "") + ("_padshared" if pad_shares_most_frequent else "")
    return f"vocabulary{suffix}.json"


RECIPE_OPTIONS = ("vocab_case_sensitive", "pad_shares_most_frequent", "num_classes_from", "image_resize")


def recipe_options(settings: Any) -> dict[str, Any]:
    """The data-side recipe options of a run's settings (a ``TrainConfig``), as keywords of
    :func:`prepare_dataset` and :func:`check_prepared_options`."""
    return {name: getattr(settings, name) for name in RECIPE_OPTIONS}


def check_prepared_options(prepared: PreparedDataset, *, vocab_case_sensitive: bool, pad_shares_most_frequent: bool,
                           num_classes_from: str, image_resize: str = "pil_antialias") -> None:
    """Raise ``ValueError`` when ``prepared`` was made with other recipe options than a run's settings."""
    wanted = {"vocab_case_sensitive": bool(vocab_case_sensitive),
              "pad_shares_most_frequent": bool(pad_shares_most_frequent), "num_classes_from": num_classes_from,
              "image_resize": image_resize}
    found = {"vocab_case_sensitive": prepared.vocabulary.case_sensitive,
             "pad_shares_most_frequent": prepared.vocabulary.pad_shares_most_frequent,
             "num_classes_from": prepared.num_classes_from, "image_resize": prepared.image_resize}
    differ = {key: (found[key], wanted[key]) for key in wanted if found[key] != wanted[key]}
    if differ:
        details = ", ".join(f"{key}: prepared {have!r}, settings {want!r}" for key, (have, want) in differ.items())
        raise ValueError(f"the prepared {prepared.name} data does not match the run's settings ({details}); "
                         f"prepare it with data.prepare_dataset(..., {', '.join(f'{k}={v!r}' for k, v in wanted.items())})")


# ---------------------------------------------------------------------- pairs and batches
class PairDataset(torch.utils.data.Dataset):
    """One item per caption: its image (normalised), its token ids, its class index.

    Item: ``image`` float32 ``(3, H, W)``; ``token_ids`` long ``(T,)`` = ``[<start>, w_1 .. w_n]``
    (the model input of the released code: ``<end>`` dropped); ``label`` = ``class_index``;
    ``image_index`` = row in the image cache. Pixels come from the memory-mapped cache (no
    decoding per step); training flips left-right with probability 0.5.
    """

    def __init__(self, frame: pd.DataFrame, vocabulary: Vocabulary, image_cache: ImageCache, train: bool,
                 backbone: str):
        for column in ("tokens", "class_index", "image_index"):
            if column not in frame.columns:
                raise ValueError(f"PairDataset needs a frame with column {column!r} (use prepare_dataset or add_indices)")
        if len(frame) and int(frame["image_index"].max()) >= len(image_cache):
            raise ValueError(f"frame image_index goes up to {int(frame['image_index'].max())} but the cache "
                             f"{image_cache.cache_path} holds {len(image_cache)} images: they are of different splits")
        normalise(np.zeros((1, 1, 1, 3), dtype=np.uint8), backbone)  # validates the backbone name early
        self.vocabulary = vocabulary
        self.image_cache = image_cache
        self.train = bool(train)
        self.backbone = backbone
        self.token_ids = [torch.tensor(vocabulary.encode(tokens, for_model_input=True), dtype=torch.long)
                          for tokens in frame["tokens"]]
        self.labels = frame["class_index"].to_numpy(dtype=np.int64)
        self.image_indices = frame["image_index"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index = int(self.image_indices[index])
        pixels = torch.from_numpy(np.array(self.image_cache.images[image_index]))  # (H, W, 3) uint8, a copy
        image = normalise(pixels, self.backbone)[0]  # (3, H, W) float32
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "token_ids": self.token_ids[index], "label": int(self.labels[index]),
                "image_index": image_index}


def collate_pairs(items: Sequence[dict[str, Any]], pad_id: int = Vocabulary.pad_id) -> dict[str, torch.Tensor]:
    """Stack items: ``images (B, 3, H, W)``, ``token_ids (B, T)`` padded with ``pad_id`` (0),
    ``lengths (B,)``, ``labels (B,)``, ``image_indices (B,)`` (all long but images)."""
    if not items:
        raise ValueError("collate_pairs got an empty batch")
    token_ids, lengths = pad_token_ids([item["token_ids"] for item in items], pad_id)  # (B, T), (B,)
    return {"images": torch.stack([item["image"] for item in items]),  # (B, 3, H, W)
            "token_ids": token_ids, "lengths": lengths,
            "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
            "image_indices": torch.tensor([item["image_index"] for item in items], dtype=torch.long)}


class IdentityBatchSampler(torch.utils.data.Sampler):
    """Batches of caption indices holding ``instances_per_label`` captions of each identity.

    Each epoch visits every index once: the indices of each label are shuffled and cut into
    groups of ``instances_per_label`` (a label's last group may be smaller), the groups are
    shuffled and packed into batches of ``batch_size``. CMPM needs positives in a batch
    beyond the diagonal; this makes them frequent. Deterministic for ``(seed, epoch)``; call
    :meth:`set_epoch` each epoch. With ``num_replicas > 1`` each rank gets every
    ``num_replicas``-th batch (same count on every rank).
    """

    def __init__(self, labels: Sequence[int], batch_size: int, instances_per_label: int = 2, seed: int = 0,
                 drop_last: bool = True, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1 or instances_per_label < 1:
            raise ValueError(f"batch_size={batch_size} and instances_per_label={instances_per_label} must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.instances_per_label = int(instances_per_label)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        order = np.argsort(self.labels, kind="stable")
        boundaries = np.flatnonzero(np.diff(self.labels[order])) + 1
        self._groups_by_label = np.split(order, boundaries) if len(order) else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = []
        for members in self._groups_by_label:
            shuffled = rng.permutation(members)
            groups.extend(shuffled[start:start + self.instances_per_label]
                          for start in range(0, len(shuffled), self.instances_per_label))
        flat = np.concatenate([groups[i] for i in rng.permutation(len(groups))]) if groups else np.array([], np.int64)
        batches = [flat[start:start + self.batch_size].tolist() for start in range(0, len(flat), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.num_replicas > 1:
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[:usable]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        total = len(self.labels) // self.batch_size if self.drop_last else -(-len(self.labels) // self.batch_size)
        return total // self.num_replicas


# ---------------------------------------------------------------------- checking a data folder
# ``python -m cmp_utils.data check DATA_DIR``: before a GPU-day, is every dataset under DATA_DIR complete?
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SIZE_QUANTITIES = ("images", "captions", "ids_or_classes")


def expected_sizes(name: str, root: str | os.PathLike) -> pd.DataFrame:
    """The sizes ``root`` should have: the synthetic generator's own record when ``root`` is a generated
    stand-in (its ``synthetic.json``), else the published sizes of ``name``. Columns as :func:`published_sizes`."""
    from . import synthetic

    root = Path(root)
    if (root / synthetic.MARKER).is_file():
        rows = synthetic.recorded_sizes(root)
        if rows and rows[0][0] != name:
            raise ValueError(f"{root / synthetic.MARKER} describes dataset {rows[0][0]!r}, but the folder is "
                             f"checked as {name!r}; rename the folder or regenerate it")
        frame = pd.DataFrame(rows, columns=["dataset", "split", "images", "captions", "ids_or_classes"])
        frame["source"] = f"synthetic generator record ({synthetic.MARKER})"
        return frame.astype({"images": "Int64", "captions": "Int64", "ids_or_classes": "Int64"})
    table = published_sizes()
    return table.loc[table["dataset"] == name].reset_index(drop=True)


def _image_folders(name: str, root: Path) -> list[Path]:
    """The folders that hold ``name``'s images (the layout's folders, less caption folders)."""
    return [root / folder for folder in config.DATASET_LAYOUTS[name]["folders"] if "text_c10" not in folder]


def check_dataset(name: str, root: str | os.PathLike) -> dict[str, Any]:
    """Check one dataset folder against its expected sizes (:func:`expected_sizes`).

    Returns ``{"sizes": DataFrame(dataset, split, quantity, expected, found, ok, source),
    "missing_files": [...], "extra_files": [...], "problems": [...]}``: missing files are layout
    entries or images named in the annotations that are not on disk; extra files are images in the
    image folders that no annotation names (listed, not a problem: the Flickr30K archive, for one,
    holds more images than its Karpathy split names); ``problems`` holds one readable line per
    size that differs or file that is missing (empty when the folder is right). Counts are those
    :func:`read_dataset` sees.
    """
    _check_name(name)
    root = Path(root).expanduser()
    layout = config.DATASET_LAYOUTS[name]
    missing_layout = [str(root / item) for item in (*layout["files"], *layout["folders"]) if not (root / item).exists()]
    result: dict[str, Any] = {"sizes": pd.DataFrame(columns=["dataset", "split", "quantity", "expected", "found", "ok",
                                                             "source"]),
                              "missing_files": missing_layout, "extra_files": [], "problems": []}
    if missing_layout:
        result["problems"] = [f"{name}: missing {path} (expected layout: {LAYOUTS[name]})" for path in missing_layout]
        return result
    expected = expected_sizes(name, root)
    measured: dict[str, dict[str, int]] = {}
    referenced: set[str] = set()
    missing_images: set[str] = set()
    readable = [split for split in expected["split"] if split in SPLITS[name]]
    for split in readable:
        paths = {row["image_path"] for row in _annotation_rows(name, root, split)}
        referenced |= paths
        missing_images |= {path for path in paths if not os.path.isfile(path)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = read_dataset(name, root, split, missing_images="drop")
        measured[split] = {"images": int(frame["image_path"].nunique()), "captions": int(len(frame)),
                           "ids_or_classes": int(frame["label"].nunique())}
    if "all" in set(expected["split"]) and {"trainval", "test"} <= set(measured):
        measured["all"] = {key: measured["trainval"][key] + measured["test"][key] for key in SIZE_QUANTITIES}
    rows = []
    for record in expected.itertuples(index=False):
        for quantity in SIZE_QUANTITIES:
            wanted = getattr(record, quantity)
            if pd.isna(wanted):
                continue
            found = measured.get(record.split, {}).get(quantity)
            rows.append({"dataset": name, "split": record.split, "quantity": quantity, "expected": int(wanted),
                         "found": found, "ok": found == int(wanted), "source": record.source})
            if found != int(wanted):
                result["problems"].append(f"{name}/{record.split}: {found if found is not None else 'no'} {quantity} "
                                          f"found, {int(wanted):,} expected ({record.source})")
    result["sizes"] = pd.DataFrame(rows, columns=list(result["sizes"].columns))
    on_disk = {str(path) for folder in _image_folders(name, root) for path in folder.rglob("*")
               if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES}
    result["missing_files"] = sorted(missing_images)
    result["extra_files"] = sorted(on_disk - referenced)
    result["problems"] += [f"{name}: missing image {path} (named in the annotations)" for path in result["missing_files"]]
    return result


def check_data_dir(data_dir: str | os.PathLike, datasets: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`check_dataset` for every dataset folder under ``data_dir`` (``<data_dir>/<name>/``, names as in
    ``config.DATASETS``), or for ``datasets`` (then a missing folder is a finding). Raises
    :class:`DatasetLayoutError` when ``data_dir`` holds none of them."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DatasetLayoutError(f"data folder {data_dir} does not exist; pass the folder that holds "
                                 f"<name>/ sub-folders ({', '.join(config.DATASETS)})")
    names = list(datasets) if datasets else [name for name in config.DATASETS if (data_dir / name).is_dir()]
    if not names:
        raise DatasetLayoutError(f"{data_dir} holds none of the dataset folders {', '.join(config.DATASETS)}; "
                                 f"put each dataset in <data_dir>/<name>/ as it is distributed (docs/datasets.md)")
    return {name: check_dataset(name, data_dir / name) for name in names}


def _check_main(data_dir: str, datasets: Sequence[str] | None) -> int:
    results = check_data_dir(data_dir, datasets)
    failed = 0
    for name, result in results.items():
        sizes = result["sizes"]
        verdict = "OK" if not result["problems"] else f"{len(result['problems'])} problem(s)"
        print(f"== {name} ({Path(data_dir) / name}): {verdict}")
        if len(sizes):
            print(f"expected sizes from: {'; '.join(pd.unique(sizes['source']))}")
            print(sizes.drop(columns=["dataset", "source"]).to_string(index=False))
        for problem in result["problems"]:
            print("  " + problem)
        for path in result["extra_files"]:
            print(f"  extra image {path} (no annotation names it; not used, not an error)")
        failed += bool(result["problems"])
    absent = [name for name in config.DATASETS if name not in results]
    if absent:
        print(f"not present (not checked): {', '.join(absent)}")
    print(f"{len(results) - failed} of {len(results)} dataset folder(s) right")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cmp_utils.data",
                                     description="Check a data folder against the datasets' published sizes.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate DATA_DIR/<name>/ for each dataset found there; exit 1 "
                                              "when any size differs or a file is missing (extra images are listed)")
    check.add_argument("data_dir", help="the folder holding <name>/ dataset folders (like $CMP_DATA_DIR)")
    check.add_argument("--dataset", action="append", choices=config.DATASETS,
                       help="check only this dataset (repeatable); its folder must exist")
    args = parser.parse_args(argv)
    try:
        return _check_main(args.data_dir, args.dataset)
    except (DatasetLayoutError, ValueError) as error:
        print(f"error: {error}")
        return 2

