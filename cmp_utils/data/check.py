"""``python -m cmp_utils.data check DATA_DIR``: a data folder checked against the datasets' layouts and
published sizes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..core import config
from .layouts import LAYOUTS, SPLITS, DatasetLayoutError, _check_name, published_sizes
from .readers import _annotation_rows, read_dataset

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
            raise ValueError(
                f"{root / synthetic.MARKER} describes dataset {rows[0][0]!r}, but the folder is "
                f"checked as {name!r}; rename the folder or regenerate it"
            )
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
    result: dict[str, Any] = {
        "sizes": pd.DataFrame(columns=["dataset", "split", "quantity", "expected", "found", "ok", "source"]),
        "missing_files": missing_layout,
        "extra_files": [],
        "problems": [],
    }
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
        measured[split] = {
            "images": int(frame["image_path"].nunique()),
            "captions": int(len(frame)),
            "ids_or_classes": int(frame["label"].nunique()),
        }
    if "all" in set(expected["split"]) and {"trainval", "test"} <= set(measured):
        measured["all"] = {key: measured["trainval"][key] + measured["test"][key] for key in SIZE_QUANTITIES}
    rows = []
    for record in expected.itertuples(index=False):
        for quantity in SIZE_QUANTITIES:
            wanted = getattr(record, quantity)
            if pd.isna(wanted):
                continue
            found = measured.get(record.split, {}).get(quantity)
            rows.append(
                {
                    "dataset": name,
                    "split": record.split,
                    "quantity": quantity,
                    "expected": int(wanted),
                    "found": found,
                    "ok": found == int(wanted),
                    "source": record.source,
                }
            )
            if found != int(wanted):
                result["problems"].append(
                    f"{name}/{record.split}: {found if found is not None else 'no'} {quantity} "
                    f"found, {int(wanted):,} expected ({record.source})"
                )
    result["sizes"] = pd.DataFrame(rows, columns=list(result["sizes"].columns))
    on_disk = {
        str(path)
        for folder in _image_folders(name, root)
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    }
    result["missing_files"] = sorted(missing_images)
    result["extra_files"] = sorted(on_disk - referenced)
    result["problems"] += [
        f"{name}: missing image {path} (named in the annotations)" for path in result["missing_files"]
    ]
    return result


def check_data_dir(data_dir: str | os.PathLike, datasets: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`check_dataset` for every dataset folder under ``data_dir`` (``<data_dir>/<name>/``, names as in
    ``config.DATASETS``), or for ``datasets`` (then a missing folder is a finding). Raises
    :class:`DatasetLayoutError` when ``data_dir`` holds none of them."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DatasetLayoutError(
            f"data folder {data_dir} does not exist; pass the folder that holds "
            f"<name>/ sub-folders ({', '.join(config.DATASETS)})"
        )
    names = list(datasets) if datasets else [name for name in config.DATASETS if (data_dir / name).is_dir()]
    if not names:
        raise DatasetLayoutError(
            f"{data_dir} holds none of the dataset folders {', '.join(config.DATASETS)}; "
            f"put each dataset in <data_dir>/<name>/ as it is distributed (docs/datasets.md)"
        )
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

    parser = argparse.ArgumentParser(
        prog="python -m cmp_utils.data", description="Check a data folder against the datasets' published sizes."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="validate DATA_DIR/<name>/ for each dataset found there; exit 1 "
        "when any size differs or a file is missing (extra images are listed)",
    )
    check.add_argument("data_dir", help="the folder holding <name>/ dataset folders (like $CMP_DATA_DIR)")
    check.add_argument(
        "--dataset",
        action="append",
        choices=config.DATASETS,
        help="check only this dataset (repeatable); its folder must exist",
    )
    args = parser.parse_args(argv)
    try:
        return _check_main(args.data_dir, args.dataset)
    except (DatasetLayoutError, ValueError) as error:
        print(f"error: {error}")
        return 2
