"""The measured ceiling of a synthetic test set: the best score any model could reach from the captions.

A synthetic caption states only some attributes of what it describes, and identities (scenes,
classes) come in families that differ in one attribute, so some captions fit several images equally
well: no model can tell those apart, and recall has a ceiling below 100%. The *attribute oracle*
computes it from the generator's ground truth (:data:`cmp_utils.data.synthetic.GROUND_TRUTH`, written
beside the data): the attributes of every test image and the attributes each test caption
states (a scene's as facts, :func:`cmp_utils.data.synthetic.scene_facts`). It scores a query ``c``
(a caption, or a class's captions together) against image ``i`` as

    score(c, i) = #(attributes c states that i has)            if every stated attribute matches i,
                  #(matches) - 1000                            otherwise (an impossible pair),

so every compatible image ties with the true one (text-to-image), and for image-to-text the
compatible captions come first, those stating more attributes first. **Ties are averaged**: the
ceiling is the expected recall when tied items are ordered at random (exact, by the
hypergeometric probability that a correct item lands in the top K), which is the best any model
can do on average, since nothing in the text separates tied items.

Every synthetic dataset has one, each scored as its protocol (:func:`cmp_utils.experiments.protocol_metrics`)
counts a match:

* person datasets (``cuhk_pedes``, ``icfg_pedes``, ``rstpreid``): correct = same identity;
  R@1/5/10 text-to-image (the protocol's direction) and image-to-text. The protocol's ``mAP`` and
  ``mINP`` are not given: their expectation under random tie order is not a hypergeometric tail;
* ``flickr30k``: correct = the caption's own image (image-to-text: any of its captions), R@K both ways;
* ``mscoco``: the same on the protocol's two tables, rows named ``mscoco_1k`` (five folds of
  ``min(1000, N // 5)`` test images in order, averaged, as :func:`cmp_utils.evaluation.metrics.coco_1k_5k`)
  and ``mscoco_5k`` (all test images);
* ``cub`` / ``flowers`` (class level, zero-shot): a class query is the union of what all its test
  captions state (the protocol averages their embeddings into one class embedding); ``i2t``
  ``top1_accuracy`` = expected R@1 of each image ranking the classes, ``t2i`` ``ap@50`` = expected
  share of the class's images among the top 50 images (the protocol's AP@50 divides by 50, so it
  is at most ``min(n_c, 50) / 50`` whatever the model). The protocol breaks ties pessimistically;
  the ceiling averages them, the expected score of the best model.

For scenes the objects a caption names are matched by counts per description, not by a full
assignment of phrases to distinct objects, so in rare cases a wrong image counts as compatible:
the scene ceilings are, if anything, slightly low.
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

#: The datasets whose generator records ground truth (all synthetic ones).
DATASETS_WITH_CEILING = ("cuhk_pedes", "flickr30k", "mscoco", "cub", "flowers", "icfg_pedes", "rstpreid")
#: Class-level datasets: one query per test class (see the module docstring).
CLASS_LEVEL = ("cub", "flowers")
RECALL_AT = (1, 5, 10)
AP_AT = 50  # the class-level protocol's AP@50 (cmp_utils.evaluation.metrics.zero_shot_class_metrics)
COCO_FOLDS = 5
CEILING_COLUMNS = ["dataset", "direction", "metric", "value"]
_IMPOSSIBLE = 1000.0


def load_ground_truth(root: str | os.PathLike, split: str = "test") -> list[dict[str, Any]]:
    """The ground-truth records of ``split`` from a synthetic dataset folder ``root``."""
    from ..data.synthetic import GROUND_TRUTH

    path = Path(root) / GROUND_TRUTH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: regenerate the synthetic data (cmp_utils.data.synthetic.generate) "
            "with a generator that records ground truth"
        )
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


def expected_precision(scores: np.ndarray, correct: np.ndarray, k: int = AP_AT) -> float:
    """Mean over queries of (expected number of correct items in the top ``k``) / ``k``, in %, when ties
    are ordered at random: ``scores`` (Q, G), ``correct`` (Q, G, bool). A tie group straddling rank ``k``
    with ``c`` correct of ``n`` items and ``r`` places left contributes ``r * c / n``."""
    values = []
    for query_scores, query_correct in zip(scores, correct):
        left, hits = k, 0.0
        for level in np.unique(query_scores)[::-1]:
            group = query_scores == level
            size, right = int(group.sum()), int((group & query_correct).sum())
            hits += right if size <= left else left * right / size
            left -= min(size, left)
            if left == 0:
                break
        values.append(hits / k)
    return 100.0 * float(np.mean(values))


def _rows(dataset: str, direction: str, values: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {"dataset": dataset, "direction": direction, "metric": metric, "value": value}
        for metric, value in values.items()
    ]


def _queries(records: Sequence[dict[str, Any]], dataset: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The text queries and their labels: every caption (``(N_T,)`` labels), or for class-level data
    one query per class stating everything its captions state together (``(C,)`` labels)."""
    if dataset not in CLASS_LEVEL:
        return [m for r in records for m in r["mentions"]], np.array([r["id"] for r in records for _ in r["mentions"]])
    classes = sorted({r["id"] for r in records})
    stated = {label: {} for label in classes}
    for r in records:
        for mentions in r["mentions"]:
            stated[r["id"]].update(mentions)
    return [stated[label] for label in classes], np.array(classes)


def _protocol_rows(records: Sequence[dict[str, Any]], dataset: str, table: str) -> list[dict[str, Any]]:
    """Ceiling rows of one gallery of test images (``records``) scored as ``dataset``'s protocol."""
    queries, query_labels = _queries(records, dataset)
    scores = oracle_scores([r["attributes"] for r in records], queries)  # (N_T or C, N_I)
    correct = query_labels[:, None] == np.array([r["id"] for r in records])[None, :]  # same identity / image / class
    if dataset in CLASS_LEVEL:
        return _rows(table, "i2t", {"top1_accuracy": expected_recall(scores.T, correct.T, (1,))[1]}) + _rows(
            table, "t2i", {f"ap@{AP_AT}": expected_precision(scores, correct, AP_AT)}
        )
    return [
        row
        for direction, (s, c) in {"t2i": (scores, correct), "i2t": (scores.T, correct.T)}.items()
        for row in _rows(table, direction, {f"R@{k}": v for k, v in expected_recall(s, c).items()})
    ]


def ceiling_from_ground_truth(records: Sequence[dict[str, Any]], dataset: str = "cuhk_pedes") -> pd.DataFrame:
    """Ceiling rows (:data:`CEILING_COLUMNS`) of one test split, as ``dataset``'s protocol scores it
    (module docstring). Gallery = every test image once; ``id`` is the identity, image or class."""
    if dataset != "mscoco":
        return pd.DataFrame(_protocol_rows(records, dataset, dataset), columns=CEILING_COLUMNS)
    fold_size = 1000 if len(records) >= COCO_FOLDS * 1000 else len(records) // COCO_FOLDS
    folds = [
        pd.DataFrame(_protocol_rows(records[f * fold_size : (f + 1) * fold_size], dataset, "mscoco_1k"))
        for f in range(COCO_FOLDS)
    ]
    one_k = pd.concat(folds).groupby(["dataset", "direction", "metric"], sort=False, as_index=False)["value"].mean()
    return pd.DataFrame(
        [*one_k.to_dict("records"), *_protocol_rows(records, dataset, "mscoco_5k")], columns=CEILING_COLUMNS
    )


def dataset_ceiling(dataset: str, profile: str, seed: int = 0) -> pd.DataFrame:
    """The ceiling of the synthetic ``dataset`` of ``profile`` (generated if missing)."""
    from .. import data

    if dataset not in DATASETS_WITH_CEILING:
        raise ValueError(
            f"dataset {dataset!r} has no recorded ground truth; ceilings exist for {DATASETS_WITH_CEILING}"
        )
    from ..data.synthetic import GROUND_TRUTH

    root = data.ensure_synthetic(dataset, profile, seed)
    path = root / GROUND_TRUTH
    stamp = (str(path), path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else (str(path), 0, 0)
    return _ceiling_of_file(stamp, dataset).copy()


@functools.lru_cache(maxsize=16)
def _ceiling_of_file(stamp: tuple, dataset: str) -> pd.DataFrame:
    """Memo of :func:`dataset_ceiling` by the ground-truth file's path, mtime and size."""
    return ceiling_from_ground_truth(load_ground_truth(Path(stamp[0]).parent, "test"), dataset)
