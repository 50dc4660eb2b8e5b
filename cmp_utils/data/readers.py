"""Readers of the seven layouts: one DataFrame row per caption (:func:`read_dataset`), with clear errors for
malformed annotation files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .layouts import (
    ANNOTATION_FILES,
    CLASS_LEVEL,
    COLUMNS,
    FILE_SPLITS,
    IMAGE_FOLDER,
    TEXT_FOLDER,
    MissingImagesError,
    _check_name,
    _check_split,
    _layout_error,
)
from .text import tokenize

logger = logging.getLogger(__name__)


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
            f"{path} is not UTF-8: line {line}, byte {error.start} ({raw[error.start : error.end]!r}) cannot be decoded. "
            f"Convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8 {Path(path).name} > fixed && mv fixed "
            f"{Path(path).name}`, if it is Latin-1) and run again"
        ) from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"annotation file {path} is not valid JSON: {error}") from error


def _caption_list(captions: Any, annotation: Path, where: str) -> list[str]:
    """``captions`` of one record, checked to be a list of strings (a bare string is refused:
    iterating it would make every character a caption)."""
    if isinstance(captions, str) or not isinstance(captions, list):
        raise ValueError(
            f'annotation file {annotation}: {where} has "captions" as a {type(captions).__name__} '
            f'({str(captions)[:60]!r}); it must be a list of strings, e.g. "captions": ["a man in ..."]'
        )
    for caption in captions:
        if not isinstance(caption, str):
            raise ValueError(
                f"annotation file {annotation}: {where} has a caption that is a {type(caption).__name__} "
                f"({caption!r}); every caption must be a string"
            )
    return captions


def _check_split_label(name: str, annotation: Path, where: str, label: Any) -> str:
    """``label`` if it is one of :data:`FILE_SPLITS` of ``name``; else an error naming the file, the
    record and the labels (a record with an unknown label would vanish from every split)."""
    if isinstance(label, str) and label in FILE_SPLITS[name]:
        return label
    known = FILE_SPLITS[name]
    hint = (
        f"; did you mean {label.strip().lower()!r}?"
        if isinstance(label, str) and label.strip().lower() in known
        else ""
    )
    raise ValueError(
        f"annotation file {annotation}: {where} has split {label!r}, which is not a split label of "
        f"{name} ({', '.join(known)}){hint} Its captions would be silently left out of every split: fix "
        f"the label in the file"
    )


def _image_path_inside(annotation: Path, where: str, key: str, value: Any) -> str:
    """``value`` (an image path from the annotations) if it is a non-empty relative path without
    ``..``; else an error: an absolute path or one with ``..`` would read an image from outside the
    dataset folder (which the data fingerprint does not cover)."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"annotation file {annotation}: {where} has {key} {value!r}; it must be a non-empty path "
            f"string relative to the dataset's image folder"
        )
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(value).drive or ".." in posix.parts:
        raise ValueError(
            f"annotation file {annotation}: {where} has {key} {value!r}, which points outside the dataset "
            f"folder; image paths must be relative to the dataset's image folder, without '..' or a "
            f"leading '/': move the image into that folder and give its path relative to it"
        )
    return value


def _check_one_label_per_image(annotation: Path, entries: Sequence[tuple[str, int, str]]) -> None:
    """``entries`` ``(image path, label, where)`` of every record of ``annotation`` (all splits): an
    image listed under two labels (ids) is an error naming both records (it would become one image
    with two identities)."""
    first: dict[str, tuple[int, str]] = {}
    for path, label, where in entries:
        seen_label, seen_where = first.setdefault(path, (label, where))
        if seen_label != label:
            raise ValueError(
                f"annotation file {annotation}: image {path} is listed under id {seen_label} ({seen_where}) "
                f"and id {label} ({where}); one image cannot have two identities. Keep one of the "
                f"records, or give both the same id"
            )


def _sentence_list(sentences: Any, annotation: Path, where: str) -> list:
    """A Karpathy record's ``sentences``: a list of ``{raw, tokens}`` objects or strings (a bare
    string is refused: iterating it would make every character a caption)."""
    if not isinstance(sentences, list):
        raise ValueError(
            f'annotation file {annotation}: {where} has "sentences" as a {type(sentences).__name__} '
            f'({str(sentences)[:60]!r}); it must be a list, e.g. "sentences": [{{"raw": "A dog ...", '
            f'"tokens": ["a", "dog"]}}]'
        )
    for sentence in sentences:
        tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
        if not isinstance(sentence, (dict, str)) or (tokens is not None and not isinstance(tokens, list)):
            raise ValueError(
                f"annotation file {annotation}: {where} has a sentence {str(sentence)[:60]!r}; each must "
                f'be a string or an object {{"raw": str, "tokens": [str, ...]}} (tokens a list)'
            )
    return sentences


# ---------------------------------------------------------------------- readers
def _rows_cuhk(root: Path, split: str) -> list[dict]:
    annotation = root / "reid_raw.json"
    if not annotation.is_file():
        raise _layout_error("cuhk_pedes", root, annotation)
    records = _load_json(annotation)
    if not isinstance(records, list):
        raise ValueError(
            f"annotation file {annotation} must hold a JSON list of image records, got {type(records).__name__}"
        )
    rows, entries = [], []
    for image_id, record in enumerate(records):
        try:
            record_split, captions, file_path, person_id = (
                record["split"],
                record["captions"],
                record["file_path"],
                int(record["id"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"annotation file {annotation}: record {image_id} lacks split/captions/file_path/id ({error!r})"
            ) from error
        where = f"record {image_id} ({file_path})"
        _check_split_label("cuhk_pedes", annotation, where, record_split)
        entries.append((_image_path_inside(annotation, where, "file_path", file_path), person_id, where))
        if record_split != split:
            continue
        for caption in _caption_list(captions, annotation, where):
            rows.append(
                {
                    "image_path": str(root / "imgs" / file_path),
                    "caption": caption,
                    "label": person_id,
                    "image_id": image_id,
                }
            )
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
            raise ValueError(
                f"annotation file {annotation}: image record {position} lacks split/{need}/sentences ({error!r})"
            ) from error
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
            caption = (
                sentence.get("raw", " ".join(sentence.get("tokens", [])))
                if isinstance(sentence, dict)
                else str(sentence)
            )
            given = sentence.get("tokens") if isinstance(sentence, dict) else None  # used as given (release)
            rows.append(
                {
                    "image_path": image_path,
                    "caption": caption,
                    "label": image_id,
                    "image_id": image_id,
                    "tokens": [str(token) for token in given] if given else None,
                }
            )
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
            raise ValueError(
                f"annotation file {annotation}: image record {position} ({name}) has no integer "
                f'"imgid" ({error!r}); every record of a Karpathy split file needs its own imgid'
            ) from error
        if image_id in seen:
            raise ValueError(
                f"annotation file {annotation}: image records {seen[image_id]} and {position} ({name}) "
                f"share imgid {image_id}; every image needs its own imgid"
            )
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
    return set(ordered[every // 2 :: every])


def _rows_person_json(name: str, root: Path, split: str) -> list[dict]:
    """Rows of ICFG-PEDES (splits train / val carved from train / test / trainval) or RSTPReid (train / val / test)."""
    file_name, path_key = PERSON_JSON[name]
    annotation = root / file_name
    if not annotation.is_file():
        raise _layout_error(name, root, annotation)
    records = _load_json(annotation)
    if not isinstance(records, list):
        raise ValueError(
            f"annotation file {annotation} must hold a JSON list of image records, got {type(records).__name__}"
        )
    try:
        record_splits = [(record["split"], int(record["id"])) for record in records]
        relative_paths = [record[path_key] for record in records]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"annotation file {annotation}: a record lacks split/id/{path_key} ({error!r}); expected "
            f"records {{id, {path_key}, captions, split}}"
        ) from error
    entries = []
    for position, ((record_split, person_id), relative) in enumerate(zip(record_splits, relative_paths)):
        where = f"record {position} ({relative})"
        _check_split_label(name, annotation, where, record_split)
        entries.append((_image_path_inside(annotation, where, path_key, relative), person_id, where))
    _check_one_label_per_image(annotation, entries)
    held_out: set[int] = set()
    file_split = split
    if name == "icfg_pedes":
        held_out = held_out_identities(
            [person_id for record_split, person_id in record_splits if record_split == "train"]
        )
        file_split = "test" if split == "test" else "train"
    rows = []
    for image_id, (record, (record_split, person_id)) in enumerate(zip(records, record_splits)):
        if record_split != file_split:
            continue
        if (split == "train" and person_id in held_out) or (
            split == "val" and name == "icfg_pedes" and person_id not in held_out
        ):
            continue
        try:
            captions, image_path = record["captions"], str(root / "imgs" / record[path_key])
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"annotation file {annotation}: record {image_id} lacks {path_key}/captions ({error!r})"
            ) from error
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
        val = trainval[step // 2 :: step]
        train = [c for c in trainval if c not in set(val)]
    else:
        val, train = [], trainval
    return {"train": train, "val": val, "test": sorted(lists["test"]), "trainval": trainval}


def _rows_class_level(name: str, root: Path, split: str, val_class_fraction: float) -> list[dict]:
    splits = class_splits(name, root, val_class_fraction)
    if split == "val" and not splits["val"]:
        raise ValueError(
            f"{name} has no 'val' split unless val_class_fraction > 0 (classes carved from trainval); "
            f"use split='train' / 'test', or pass val_class_fraction=0.2"
        )
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
            raise ValueError(
                f"{name}: class folder {class_folder} holds no caption files (<stem>.txt); restore them, "
                f"or remove {class_name} from {TEXT_FOLDER[name]}/trainvalclasses.txt / testclasses.txt"
            )
        for text_file in text_files:
            stem = text_file.stem
            if name == "cub":
                image_path = root / IMAGE_FOLDER[name] / class_name / f"{stem}.jpg"
            else:
                image_path = root / IMAGE_FOLDER[name] / f"{stem}.jpg"
            image_id = int("".join(ch for ch in stem if ch.isdigit()) or 0) if name == "flowers" else None
            for line in read_utf8(text_file).splitlines():
                if line.strip():
                    rows.append(
                        {"image_path": str(image_path), "caption": line.strip(), "label": label, "image_id": image_id}
                    )
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
        raise ValueError(
            f"class folder name {class_name!r} carries no class number (expected like "
            f"'001.Black_footed_Albatross' or 'class_00001')"
        )
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


def read_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    *,
    missing_images: str = "error",
    val_class_fraction: float = 0.0,
    lowercase: bool = True,
) -> pd.DataFrame:
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
    frame["tokens"] = [
        given if given else tokenize(caption, lowercase=lowercase)
        for given, caption in zip(given_tokens, frame["caption"])
    ]
    empty = frame["tokens"].map(len) == 0
    if empty.any():
        message = (
            f"{name}/{split}: dropped {int(empty.sum())} empty caption(s) (e.g. for "
            f"{frame.loc[empty, 'image_path'].iloc[0]})"
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        frame = frame.loc[~empty]
    unique_paths = pd.unique(frame["image_path"])
    missing = [path for path in unique_paths if not os.path.isfile(path)]
    if missing:
        message = (
            f"{name}/{split}: {len(missing)} of {len(unique_paths)} image files named in the annotations "
            f"are missing under {root}, e.g. {', '.join(missing[:3])}"
        )
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
