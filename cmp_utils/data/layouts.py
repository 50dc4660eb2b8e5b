"""The seven datasets' on-disk layouts and published sizes: file names, splits, labels' kinds, and the errors
that name a missing file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core import config

COLUMNS = ("image_path", "caption", "tokens", "label", "image_id", "split")
NUM_CLASSES_FROM = ("all_splits", "train")  # see PreparedDataset.num_classes

LAYOUTS = {
    "cuhk_pedes": "<root>/reid_raw.json (a JSON list of {split, captions, file_path, processed_tokens, id}) "
    "and images at <root>/imgs/<file_path>",
    "flickr30k": '<root>/dataset_flickr30k.json (Karpathy split: {"images": [{filename, imgid, split, sentences: '
    "[{raw, tokens}]}]}) and images at <root>/flickr30k-images/<filename>",
    "mscoco": '<root>/dataset_coco.json (Karpathy split: {"images": [{filepath, filename, imgid, split, '
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
ANNOTATION_FILES = {
    "cuhk_pedes": "reid_raw.json",
    "flickr30k": "dataset_flickr30k.json",
    "mscoco": "dataset_coco.json",
    "cub": "cvpr2016_cub",
    "flowers": "cvpr2016_flowers",
    "icfg_pedes": "ICFG-PEDES.json",
    "rstpreid": "data_captions.json",
}
SPLITS = {
    "cuhk_pedes": ("train", "val", "test"),
    "flickr30k": ("train", "val", "test"),
    "mscoco": ("train", "restval", "val", "test"),
    "cub": ("train", "val", "test", "trainval"),
    "flowers": ("train", "val", "test", "trainval"),
    "icfg_pedes": ("train", "val", "test", "trainval"),
    "rstpreid": ("train", "val", "test"),
}
# The splits a prepared dataset uses for model selection and for the final numbers.
# MSCOCO: the release trains on `train` (scripts/train_coco_resnet_cmpm.sh) and builds its validation
# data from `restval` (builddata/coco.py).
VALIDATION_SPLIT = {
    "cuhk_pedes": "val",
    "flickr30k": "val",
    "mscoco": "restval",
    "cub": "val",
    "flowers": "val",
    "icfg_pedes": "val",
    "rstpreid": "val",
}
TEST_SPLIT = {name: "test" for name in config.DATASETS}
CLASS_LEVEL = ("cub", "flowers")
IMAGE_FOLDER = {"cub": "CUB_200_2011/images", "flowers": "jpg"}
TEXT_FOLDER = {"cub": "cvpr2016_cub", "flowers": "cvpr2016_flowers"}
# Published split sizes of the datasets as distributed. None = not stated by those sources.
# Class-level datasets publish trainval / test class splits.
PUBLISHED_SIZES_SOURCE = (
    "the datasets as distributed: CUHK-PEDES reid_raw.json (Li et al., CVPR 2017), the Karpathy "
    "split files of Flickr30K and MSCOCO (Karpathy & Fei-Fei, CVPR 2015), the CUB/Flowers class "
    "splits of Reed et al. (CVPR 2016)"
)
PUBLISHED_SIZES = [
    # dataset, split, images, captions, identities or classes
    ("cuhk_pedes", "train", 34054, 68126, 11003),
    ("cuhk_pedes", "val", 3078, 6158, 1000),
    ("cuhk_pedes", "test", 3074, 6156, 1000),
    ("flickr30k", "train", 29000, 29000 * 5, 29000),
    ("flickr30k", "val", 1014, 1014 * 5, 1014),
    ("flickr30k", "test", 1000, 1000 * 5, 1000),
    ("mscoco", "train", 82783, None, 82783),
    ("mscoco", "restval", 30504, None, 30504),
    ("mscoco", "val", 5000, None, 5000),
    ("mscoco", "test", 5000, None, 5000),
    ("cub", "trainval", None, None, 150),
    ("cub", "test", None, None, 50),
    ("cub", "all", 11788, 117880, 200),
    ("flowers", "trainval", None, None, 82),
    ("flowers", "test", None, None, 20),
    ("flowers", "all", 8189, 81890, 102),
    # Published after the paper (sources in PUBLISHED_SIZES_SOURCES). ICFG-PEDES: one caption an image, no val split.
    ("icfg_pedes", "trainval", 34674, 34674, 3102),
    ("icfg_pedes", "test", 19848, 19848, 1000),
    ("rstpreid", "train", 18505, 37010, 3701),
    ("rstpreid", "val", 1000, 2000, 200),
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
    return {
        "images": int(per_image.size),
        "captions": int(len(frame)),
        "ids_or_classes": int(frame["label"].nunique()),
        "captions_per_image_mean": float(per_image.mean()),
        "captions_per_image_min": int(per_image.min()),
        "captions_per_image_max": int(per_image.max()),
        "caption_length_mean": float(lengths.mean()),
        "caption_length_max": int(lengths.max()),
    }


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
    return DatasetLayoutError(
        f"{name}: {missing} does not exist. Expected layout: {LAYOUTS[name]} (root = {root}). "
        f"Put the dataset there, point data_dir / $CMP_DATA_DIR at its parent, "
        f"or use the synthetic data (source='synthetic')."
    )


#: The split labels each JSON annotation file holds (the readers' derived splits, ``trainval`` and
#: ICFG-PEDES's ``val``, are not in the files). A record with another label would be skipped by every split.
FILE_SPLITS = {
    "cuhk_pedes": ("train", "val", "test"),
    "flickr30k": ("train", "val", "test"),
    "mscoco": ("train", "restval", "val", "test"),
    "icfg_pedes": ("train", "test"),
    "rstpreid": ("train", "val", "test"),
}
