"""The measured ceiling of a synthetic test set: the best recall any model could reach from the captions.

A synthetic caption states only some attributes of the person it describes, and identities come
in families that differ in one attribute, so some captions fit several identities equally well:
no model can tell those apart, and recall has a ceiling below 100%. The *attribute oracle*
computes it from the generator's ground truth (:data:`cmp_utils.synthetic.GROUND_TRUTH`, written
beside the data): the attributes of every test image and the attributes each test caption
states. It scores caption ``c`` against image ``i`` as

    score(c, i) = #(attributes c states that i has)            if every stated attribute matches i,
                  #(matches) - 1000                            otherwise (an impossible pair),

so every compatible image ties with the true one (text-to-image), and for image-to-text the
compatible captions come first, those stating more attributes first. **Ties are averaged**: the
ceiling is the expected recall when tied items are ordered at random (exact, by the
hypergeometric probability that a correct item lands in the top K), which is the best any model
can do on average, since nothing in the text separates tied items.

Currently recorded for the CUHK-PEDES-like data (the generator's other datasets do not record
what their captions state, so they have no ceiling yet).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

#: The datasets whose generator records ground truth.
DATASETS_WITH_CEILING = ("cuhk_pedes",)
RECALL_AT = (1, 5, 10)
CEILING_COLUMNS = ["dataset", "direction", "metric", "value"]
_IMPOSSIBLE = 1000.0


def load_ground_truth(root: str | os.PathLike, split: str = "test") -> list[dict[str, Any]]:
    """The ground-truth records of ``split`` from a synthetic dataset folder ``root``."""
    from .synthetic import GROUND_TRUTH

    path = Path(root) / GROUND_TRUTH
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: regenerate the synthetic data (cmp_utils.synthetic.generate) "
                                "with a generator that records ground truth")
    records = [r for r in json.loads(path.read_text(encoding="utf-8")) if r["split"] == split]
    if not records:
        raise ValueError(f"{path} has no records of split {split!r}")
    return records


def oracle_scores(image_attributes: Sequence[dict[str, Any]], caption_mentions: Sequence[dict[str, Any]]) -> np.ndarray:
    """Oracle score of every caption against every image: (N_T, N_I), see the module docstring."""
    names = sorted({name for attributes in image_attributes for name in attributes})
    codes = {name: {} for name in names}
    image_codes = np.array([[codes[n].setdefault(a.get(n), len(codes[n])) for n in names] for a in image_attributes])
    scores = np.zeros((len(caption_mentions), len(image_attributes)))  # (N_T, N_I)
    for row, mentions in enumerate(caption_mentions):
        matches = np.zeros(len(image_attributes))
        mismatch = np.zeros(len(image_attributes), dtype=bool)
        for name, value in mentions.items():
            if name not in codes:
                raise ValueError(f"caption states attribute {name!r}, which no image has")
            column = names.index(name)
            same = image_codes[:, column] == codes[name].get(value, -1)
            matches += same
            mismatch |= ~same
        scores[row] = matches - _IMPOSSIBLE * mismatch
    return scores


def expected_recall(scores: np.ndarray, correct: np.ndarray, ks: Sequence[int] = RECALL_AT) -> dict[int, float]:
    """Mean recall@K (in %) over queries when ties are ordered at random.

    ``scores`` (Q, G) and ``correct`` (Q, G, bool). Per query, with ``s`` incorrect items scored
    above the best correct one and a tie group of ``c`` correct and ``w`` incorrect items at its
    score: recall@K = 0 if s >= K, else 1 - C(w, K-s) / C(c+w, K-s).
    """
    if not correct.any(axis=1).all():
        raise ValueError("every query needs at least one correct item")
    best_correct = np.where(correct, scores, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    above = ((scores > best_correct) & ~correct).sum(axis=1)
    tied = scores == best_correct
    tied_correct = (tied & correct).sum(axis=1)
    tied_wrong = (tied & ~correct).sum(axis=1)
    result = {}
    for k in ks:
        values = []
        for s, c, w in zip(above, tied_correct, tied_wrong):
            draws = k - int(s)
            if draws <= 0:
                values.append(0.0)
            elif draws > w:
                values.append(1.0)
            else:
                values.append(1.0 - math.comb(int(w), draws) / math.comb(int(c + w), draws))
        result[k] = 100.0 * float(np.mean(values))
    return result


def ceiling_from_ground_truth(records: Sequence[dict[str, Any]], dataset: str = "cuhk_pedes") -> pd.DataFrame:
    """Ceiling rows (:data:`CEILING_COLUMNS`) of one test split: R@1/5/10 in both directions.

    Gallery = every test image once, queries = every caption (text-to-image); image-to-text
    ranks every caption for every image. Correct = same identity (``id``).
    """
    image_attributes = [r["attributes"] for r in records]
    image_ids = np.array([r["id"] for r in records])
    mentions = [m for r in records for m in r["mentions"]]
    caption_ids = np.array([r["id"] for r in records for _ in r["mentions"]])
    scores = oracle_scores(image_attributes, mentions)  # (N_T, N_I)
    correct = caption_ids[:, None] == image_ids[None, :]
    rows = []
    for direction, (s, c) in {"t2i": (scores, correct), "i2t": (scores.T, correct.T)}.items():
        for k, value in expected_recall(s, c).items():
            rows.append({"dataset": dataset, "direction": direction, "metric": f"R@{k}", "value": value})
    return pd.DataFrame(rows, columns=CEILING_COLUMNS)


def dataset_ceiling(dataset: str, profile: str, seed: int = 0) -> pd.DataFrame:
    """The ceiling of the synthetic ``dataset`` of ``profile`` (generated if missing)."""
    from . import data

    if dataset not in DATASETS_WITH_CEILING:
        raise ValueError(f"dataset {dataset!r} has no recorded ground truth; ceilings exist for {DATASETS_WITH_CEILING}")
    from .synthetic import GROUND_TRUTH

    root = data.ensure_synthetic(dataset, profile, seed)
    path = root / GROUND_TRUTH
    stamp = (str(path), path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else (str(path), 0, 0)
    return _ceiling_of_file(stamp, dataset).copy()


@functools.lru_cache(maxsize=16)
def _ceiling_of_file(stamp: tuple, dataset: str) -> pd.DataFrame:
    """Memo of :func:`dataset_ceiling` by the ground-truth file's path, mtime and size."""
    return ceiling_from_ground_truth(load_ground_truth(Path(stamp[0]).parent, "test"), dataset)


def attach_ceiling(summary: pd.DataFrame, ceiling: pd.DataFrame) -> pd.DataFrame:
    """Add ``ceiling`` and ``percent_of_ceiling`` (100 * mean / ceiling) to a summary table
    (columns ``dataset``, ``direction``, ``metric``, ``mean``); NaN where no ceiling is known."""
    keyed = ceiling.rename(columns={"value": "ceiling"})[["dataset", "direction", "metric", "ceiling"]]
    out = summary.drop(columns=[c for c in ("ceiling", "percent_of_ceiling") if c in summary.columns])
    out = out.merge(keyed, on=["dataset", "direction", "metric"], how="left")
    out["percent_of_ceiling"] = 100.0 * out["mean"] / out["ceiling"]
    return out
