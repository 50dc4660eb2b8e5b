"""The paper's published numbers, with where each was found.

``paper_numbers.csv`` (shipped beside this module) holds one tidy row per cell of the paper's
tables: ``table, dataset, method, backbone, test_set, direction, metric, value, status, support,
sources, source``.

* ``status`` is ``confirmed`` (value found in the sources named in ``sources``), ``confirmed
  second-hand`` (quoted by someone else), or ``not confirmed`` (the cell exists in the paper
  but no reachable source gives it: ``value`` is **empty**, never filled from memory);
* ``backbone`` is the paper's image CNN of the row (``MobileNet``, ``ResNet-152``; empty for a
  baseline's row); one cell can exist for several backbones (Flickr30K reports both);
* ``sources`` lists keys of ``paper_sources.csv`` (repository, file, commit of each source),
  separated by ``;``; ``support`` is how many sources give the value. Source ``P`` is a list kept
  by a later co-author of the paper's authors: one source, not independent of their lab, which
  :func:`support_label` says;
* ``direction`` is ``t2i`` (text query, image gallery) or ``i2t``; ``metric`` uses the names of
  :mod:`cmp_utils.evaluation.metrics` (``R@1``, ``R@5``, ``R@10``, ``top1_accuracy``, ``ap@50``);
* ``table`` separates cells that share dataset/method/metric (``mscoco_1k`` vs ``mscoco_5k``).

``third_party_reruns.csv`` holds numbers that are *not* the paper's (later papers' and public
ports' re-runs of the losses); nothing here mixes them into the paper column.

Notebooks attach the paper's value to their own results with :func:`with_paper_values`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

PAPER_NUMBERS_CSV = Path(__file__).with_name("paper_numbers.csv")
PAPER_SOURCES_CSV = Path(__file__).with_name("paper_sources.csv")
THIRD_PARTY_CSV = Path(__file__).with_name("third_party_reruns.csv")
COLUMNS = (
    "table",
    "dataset",
    "method",
    "backbone",
    "test_set",
    "direction",
    "metric",
    "value",
    "status",
    "support",
    "sources",
    "source",
)
SOURCE_COLUMNS = ("key", "repository", "file", "commit", "independent_of_authors", "what")
THIRD_PARTY_COLUMNS = ("dataset", "label", "backbone", "direction", "metric", "value", "who", "note")
STATUSES = ("confirmed", "confirmed second-hand", "not confirmed")
#: Our backbone names (:data:`cmp_utils.models.BACKBONES`) -> the paper's label of the same network.
#: A run of another backbone (the synthetic profiles' MobileNetV2, the tests' small CNN) is
#: compared with the paper's first-listed row of its cell (see :func:`paper_cell`).
BACKBONE_LABELS = {
    "mobilenet_v1": "MobileNet",
    "mobilenet_v1_tf": "MobileNet",
    "resnet152": "ResNet-152",
    "resnet152_slim": "ResNet-152",
}


@lru_cache(maxsize=1)
def read_paper_numbers_csv(path: str) -> pd.DataFrame:
    """The paper-numbers CSV at ``path`` as strings; a ``ValueError`` naming the missing columns."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; expected {list(COLUMNS)}")
    unknown = sorted(set(frame["status"]) - set(STATUSES))
    if unknown:
        raise ValueError(f"{path} has unknown status values {unknown}; use one of {list(STATUSES)}")
    frame["value"] = pd.to_numeric(frame["value"].where(frame["value"] != ""), errors="raise").astype(float)
    unconfirmed_with_value = frame[(frame["status"] == "not confirmed") & frame["value"].notna()]
    if len(unconfirmed_with_value):
        raise ValueError(f"{path}: rows marked 'not confirmed' must have an empty value:\n{unconfirmed_with_value}")
    confirmed_without_value = frame[(frame["status"] != "not confirmed") & frame["value"].isna()]
    if len(confirmed_without_value):
        raise ValueError(f"{path}: confirmed rows need a value:\n{confirmed_without_value}")
    known = set(sources()["key"])
    for row in frame.itertuples(index=False):
        keys = source_keys(row.sources)
        if sorted(set(keys) - known):
            raise ValueError(
                f"{path}: {row.table}/{row.method}/{row.metric} names unknown sources "
                f"{sorted(set(keys) - known)}; add them to {PAPER_SOURCES_CSV.name}"
            )
        if int(row.support or 0) != len(keys):
            raise ValueError(
                f"{path}: {row.table}/{row.method}/{row.metric} has support {row.support!r} but "
                f"{len(keys)} sources {keys}; support counts the sources"
            )
        if not pd.isna(row.value) and not keys:
            raise ValueError(f"{path}: {row.table}/{row.method}/{row.metric} has a value but no source")
    frame["support"] = frame["support"].replace("", "0").astype(int)
    return frame[list(COLUMNS)]


def source_keys(text: str) -> list[str]:
    """The source keys of a ``sources`` cell (``"P;V"`` -> ``["P", "V"]``)."""
    return [key.strip() for key in str(text or "").split(";") if key.strip()]


@lru_cache(maxsize=1)
def _sources(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in SOURCE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; expected {list(SOURCE_COLUMNS)}")
    if frame["key"].duplicated().any() or (frame["repository"] == "").any() or (frame["file"] == "").any():
        raise ValueError(f"{path}: every source needs a unique key, a repository and a file")
    return frame[list(SOURCE_COLUMNS)]


def sources() -> pd.DataFrame:
    """Where the paper's numbers were found: one row per source (``key, repository, file, commit,
    independent_of_authors, what``); ``commit`` may list several, separated by ``;``."""
    return _sources(str(PAPER_SOURCES_CSV)).copy()


def support_label(keys: str | list[str]) -> str:
    """How well a value is supported, in words: ``"4 sources"``, or ``"1 source (authors' lab
    list)"`` when its only source is not independent of the paper's authors."""
    keys = source_keys(keys) if isinstance(keys, str) else list(keys)
    if not keys:
        return ""
    table = sources().set_index("key")
    independent = [key for key in keys if table.loc[key, "independent_of_authors"] == "yes"]
    label = f"{len(keys)} source" + ("s" if len(keys) != 1 else "")
    return label + (" (authors' lab list)" if not independent else "")


def third_party_reruns() -> pd.DataFrame:
    """Re-runs of the losses by later papers and public ports: never the paper's numbers."""
    frame = pd.read_csv(THIRD_PARTY_CSV, dtype=str, keep_default_na=False)
    missing = [column for column in THIRD_PARTY_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{THIRD_PARTY_CSV} lacks the columns {missing}; expected {list(THIRD_PARTY_COLUMNS)}")
    frame["value"] = pd.to_numeric(frame["value"], errors="raise").astype(float)
    return frame[list(THIRD_PARTY_COLUMNS)]


def paper_numbers() -> pd.DataFrame:
    """Every cell of the paper's tables; ``value`` is a float, NaN where not confirmed."""
    return read_paper_numbers_csv(str(PAPER_NUMBERS_CSV)).copy()


def paper_cell(
    dataset: str,
    method: str,
    metric: str,
    direction: str = "t2i",
    table: str | None = None,
    backbone: str | None = None,
) -> dict | None:
    """The paper's row of one cell (a dict of :data:`COLUMNS`), or ``None`` when no source gives it.

    ``backbone`` is ours (``resnet152_slim``) or the paper's label (``ResNet-152``): a backbone the
    paper used is matched exactly (a ResNet-152 run is never compared with a MobileNet value); any
    other backbone, or none, takes the first-listed row of the cell (the paper's main backbone
    for it). ``table`` is needed only where a dataset appears in several tables with the same
    method and metric (MSCOCO: ``mscoco_1k`` / ``mscoco_5k``); otherwise a clear error says so.
    """
    frame = paper_numbers()
    chosen = frame[
        (frame["dataset"] == dataset)
        & (frame["method"] == method)
        & (frame["metric"] == metric)
        & (frame["direction"] == direction)
        & frame["value"].notna()
    ]
    if table is not None:
        chosen = chosen[chosen["table"] == table]
    label = BACKBONE_LABELS.get(backbone, backbone) if isinstance(backbone, str) else None
    if label in set(BACKBONE_LABELS.values()):
        chosen = chosen[chosen["backbone"] == label]
    elif chosen["backbone"].nunique() > 1:
        chosen = chosen[chosen["backbone"] == chosen["backbone"].iloc[0]]
    if chosen.empty:
        return None
    if chosen["value"].nunique() > 1:
        raise ValueError(
            f"paper_value({dataset!r}, {method!r}, {metric!r}, direction={direction!r}) matches several tables "
            f"{sorted(chosen['table'].unique())}; pass table=... to choose one"
        )
    return chosen.iloc[0].to_dict()


def paper_value(
    dataset: str,
    method: str,
    metric: str,
    direction: str = "t2i",
    table: str | None = None,
    backbone: str | None = None,
) -> float | None:
    """The published value of one cell, or ``None`` when it is not confirmed or not in the paper
    (``backbone`` and ``table``: see :func:`paper_cell`)."""
    cell = paper_cell(dataset, method, metric, direction, table, backbone)
    return None if cell is None else float(cell["value"])


def with_paper_values(results: pd.DataFrame, table: str | None = None) -> pd.DataFrame:
    """Copy of a tidy results frame (``dataset, method, direction, metric``, and ``backbone`` where
    it has one) with ``paper_value`` (NaN where no source gives it) and ``paper_support``: the paper's
    backbone of that value and how many sources give it (``"MobileNet, 4 sources"``, see
    :func:`support_label`; empty where none). A synthetic run's row may be compared with a value
    of another backbone than its own: ``paper_support`` names it."""
    missing = [column for column in ("dataset", "method", "direction", "metric") if column not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks the columns {missing} needed to look up the paper's values")
    out = results.copy()
    backbones = out["backbone"] if "backbone" in out.columns else pd.Series([None] * len(out), index=out.index)
    cells = [
        paper_cell(
            row.dataset,
            row.method,
            row.metric,
            row.direction,
            table,
            backbone if isinstance(backbone, str) and backbone else None,
        )
        for row, backbone in zip(out.itertuples(index=False), backbones)
    ]
    out["paper_value"] = pd.Series(
        [float("nan") if cell is None else cell["value"] for cell in cells], index=out.index, dtype=float
    )
    out["paper_support"] = [
        ("" if cell is None else ", ".join(filter(None, [cell["backbone"], support_label(cell["sources"])])))
        for cell in cells
    ]
    return out
