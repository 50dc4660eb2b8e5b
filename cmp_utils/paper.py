"""The paper's published numbers, with where each was found.

``paper_numbers.csv`` (shipped beside this module) holds one tidy row per cell of the paper's
tables: ``table, dataset, method, backbone, direction, metric, value, status, source``.

* ``status`` is ``confirmed`` (value found in a source named in ``source``), ``confirmed
  second-hand`` (quoted by someone else), or ``not confirmed`` (the cell exists in the paper
  but no reachable source could confirm it: ``value`` is **empty**, never filled from memory);
* ``direction`` is ``t2i`` (text query, image gallery) or ``i2t``; ``metric`` uses the names of
  :mod:`cmp_utils.metrics` (``R@1``, ``R@5``, ``R@10``, ``top1_accuracy``, ``ap@50``);
* ``table`` separates cells that share dataset/method/metric (``mscoco_1k`` vs ``mscoco_5k``).

Notebooks attach the paper's value to their own results with :func:`with_paper_values`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

PAPER_NUMBERS_CSV = Path(__file__).with_name("paper_numbers.csv")
COLUMNS = ("table", "dataset", "method", "backbone", "direction", "metric", "value", "status", "source")
STATUSES = ("confirmed", "confirmed second-hand", "not confirmed")


@lru_cache(maxsize=1)
def _load(path: str) -> pd.DataFrame:
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
    return frame[list(COLUMNS)]


def paper_numbers() -> pd.DataFrame:
    """Every cell of the paper's tables; ``value`` is a float, NaN where not confirmed."""
    return _load(str(PAPER_NUMBERS_CSV)).copy()


def paper_value(
    dataset: str,
    method: str,
    metric: str,
    direction: str = "t2i",
    table: str | None = None,
) -> float | None:
    """The published value of one cell, or ``None`` when it is not confirmed or not in the paper.

    ``table`` is needed only where a dataset appears in several tables with the same method
    and metric (MSCOCO: ``mscoco_1k`` / ``mscoco_5k``); otherwise a clear error says so.
    """
    frame = paper_numbers()
    chosen = frame[
        (frame["dataset"] == dataset)
        & (frame["method"] == method)
        & (frame["metric"] == metric)
        & (frame["direction"] == direction)
    ]
    if table is not None:
        chosen = chosen[chosen["table"] == table]
    values = chosen["value"].dropna()
    if values.empty:
        return None
    if values.nunique() > 1:
        raise ValueError(
            f"paper_value({dataset!r}, {method!r}, {metric!r}, direction={direction!r}) matches several tables "
            f"{sorted(chosen['table'].unique())}; pass table=... to choose one"
        )
    return float(values.iloc[0])


def with_paper_values(results: pd.DataFrame, table: str | None = None) -> pd.DataFrame:
    """Copy of a tidy results frame (``dataset, method, direction, metric, ...``) with a
    ``paper_value`` column (NaN where the paper's value is not confirmed)."""
    missing = [column for column in ("dataset", "method", "direction", "metric") if column not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks the columns {missing} needed to look up the paper's values")
    out = results.copy()
    out["paper_value"] = [
        paper_value(row.dataset, row.method, row.metric, row.direction, table) for row in out.itertuples(index=False)
    ]
    out["paper_value"] = out["paper_value"].astype(float)
    return out
