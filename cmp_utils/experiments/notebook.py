"""What the experiment notebooks share besides the runner: their setup cell, settings preview, grouping of
results by backbone, the claims of a paper table, and the feature-distribution statistics of notebook 11."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from ..core import config

#: Name of each experiment's results folder and the notebook that makes it.
EXPERIMENT_NOTEBOOKS = {
    "cuhk_pedes": "05_cuhk_pedes",
    "flickr30k": "06_flickr30k",
    "mscoco": "07_mscoco",
    "cub_flowers": "08_cub_flowers",
    "batch_size": "09_batch_size",
    "ablation": "10_ablation",
    "feature_distribution": "11_feature_distribution",
    "cmpm_family": "14_cmpm_family",
}


def comparable_backbones(results: pd.DataFrame, better: str, worse: str) -> list[str]:
    """The backbones with which both ``better`` and ``worse`` ran (a claim compares losses, never
    a loss on one backbone with another loss on another)."""
    per_method = results.groupby("method")["backbone"].unique()
    if better not in per_method or worse not in per_method:
        return []
    return [backbone for backbone in per_method[better] if backbone in set(per_method[worse])]


def by_row(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` for figures that group by method: where it holds several backbones (the paper
    profile's grid) each method label names its backbone, ``"CMPM+CMPC (mobilenet_v1_tf)"``."""
    if "backbone" not in frame or frame["backbone"].nunique() <= 1:
        return frame
    return frame.assign(method=frame["method"] + " (" + frame["backbone"].astype(str) + ")")


def relative_drop(recall: pd.DataFrame, over: str = "batch_size") -> pd.DataFrame:
    """Per seed (rows) and method (columns): how far a method's score falls across the values of
    ``over``, relative to its own best, ``100 (max - min) / max`` (%). Scale-free: a loss that scores
    higher is not penalised for it, as an absolute range would. ``recall``: tidy rows of one metric."""
    grouped = recall.groupby(["seed", "method"])["value"]
    drop = 100.0 * (grouped.max() - grouped.min()) / grouped.max()
    if recall.groupby(["seed", "method"])[over].nunique().min() < 2:
        raise ValueError(f"relative_drop needs at least two values of {over!r} per seed and method")
    return drop.unstack("method")


# ---------------------------------------------------------------------------------------------
# Feature distribution
# ---------------------------------------------------------------------------------------------


def cosine_statistics(
    image_embeddings: torch.Tensor, image_labels: torch.Tensor, text_embeddings: torch.Tensor, text_labels: torch.Tensor
) -> dict[str, float]:
    """How well the cross-modal cosine similarity separates identities; every image-text pair counts once.

    ``image_embeddings`` (N_I, d), ``text_embeddings`` (N_T, d). Returns the mean cosine of matching
    (``intra_cosine``) and non-matching (``inter_cosine``) pairs and their difference ``cosine_gap``
    (not scale-free: a loss whose cosines spread more gets a larger gap), and two scale-free measures:
    ``separation_auc``, the probability that a matching pair scores above a non-matching one (the
    area under the ROC curve, ties counted half; 0.5 = no separation), and ``d_prime``, the difference
    of the two means over their pooled standard deviation."""
    images = torch.nn.functional.normalize(image_embeddings.double(), dim=1)  # (N_I, d)
    texts = torch.nn.functional.normalize(text_embeddings.double(), dim=1)  # (N_T, d)
    cosine = images @ texts.T  # (N_I, N_T)
    same = image_labels[:, None] == text_labels[None, :]  # (N_I, N_T)
    matching, other = cosine[same], cosine[~same]  # (P,), (Q,)
    intra, inter = float(matching.mean()), float(other.mean())
    pooled = math.sqrt((float(matching.var()) + float(other.var())) / 2.0)
    return {
        "intra_cosine": intra,
        "inter_cosine": inter,
        "cosine_gap": intra - inter,
        "separation_auc": separation_auc(matching, other),
        "d_prime": (intra - inter) / pooled if pooled > 0 else float("nan"),
    }


def separation_auc(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """P(a positive scores above a negative) + P(tie) / 2: the Mann-Whitney form of the ROC AUC, from ranks."""
    scores = torch.cat([positive_scores.ravel(), negative_scores.ravel()]).double()  # (P + Q,)
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    # average ranks (1-based) over runs of equal scores
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # (U,)
    ranks[order] = average[inverse]
    positives, negatives = positive_scores.numel(), negative_scores.numel()
    rank_sum = float(ranks[:positives].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def pick_identities(labels: torch.Tensor, count: int, seed: int = 0) -> list[int]:
    """``count`` distinct labels drawn reproducibly (among those with at least two images)."""
    values, counts = torch.unique(labels, return_counts=True)
    candidates = values[counts >= 2] if (counts >= 2).sum() >= count else values
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(candidates), generator=generator)[:count]
    return sorted(int(v) for v in candidates[order])


# ---------------------------------------------------------------------------------------------
# What the experiment notebooks (05-11) share
# ---------------------------------------------------------------------------------------------

#: The settings a notebook shows before it trains (:func:`settings_preview`).
PREVIEWED_SETTINGS = (
    "backbone",
    "feature_mode",
    "batch_size",
    "epochs",
    "lr",
    "embedding_dim",
    "hidden_size",
    "image_size",
    "pool_grid",
    "ema_decay",
)


@dataclasses.dataclass
class NotebookSetup:
    """What an experiment notebook's set-up cell computes from its parameters (:func:`notebook_setup`)."""

    run_overrides: dict[str, Any]  # settings every run gets on top of the profile's
    seeds: list[int]
    out_dir: Path  # <results>/<experiment>/<profile>
    params: dict[str, Any]  # what params.yaml records


def notebook_setup(
    experiment: str,
    profile: str,
    dataset: str,
    seed: int,
    num_seeds: int,
    device: str,
    data_dir: str,
    methods: Sequence[str],
    pretrained: bool,
    weights_path: str,
    overrides: dict[str, Any],
    varied: Sequence[str] = ("losses", "seed"),
    **extra_params: Any,
) -> NotebookSetup:
    """The set-up of an experiment notebook from its parameters: the profile checked, the runs' setting
    overrides, the seeds (one in the smoke profile, else ``num_seeds`` from ``seed``), the results folder and
    the ``params.yaml`` record (the parameters, ``extra_params``, then
    :func:`cmp_utils.reporting.training_settings` of ``dataset`` with ``varied`` settings)."""
    from .. import reporting

    config.check_profile(profile)
    run_overrides = {"pretrained": pretrained, "weights_path": weights_path or None, **overrides}
    seeds = [seed + offset for offset in range(1 if profile == "smoke" else num_seeds)]
    params = {
        "profile": profile,
        "seeds": seeds,
        "device": device,
        "data_dir": data_dir,
        "overrides": run_overrides,
        "methods": methods,
        **extra_params,
    }
    params.update(reporting.training_settings(profile, dataset, run_overrides, varied=tuple(varied)))
    return NotebookSetup(run_overrides, seeds, config.results_dir() / experiment / profile, params)


def settings_preview(settings: Any) -> pd.Series:
    """The main training settings (:data:`PREVIEWED_SETTINGS`) of a :class:`cmp_utils.training.TrainConfig`,
    named after its dataset."""
    values = settings.to_dict()
    return pd.Series({key: value for key, value in values.items() if key in PREVIEWED_SETTINGS}, name=settings.dataset)


def table_claims(
    results: pd.DataFrame, tables: Sequence[str], better: str = "CMPM+CMPC", worse: str = "CMPM", metric: str = "R@1"
) -> list[dict[str, Any]]:
    """The claims "``better`` > ``worse``" (:func:`cmp_utils.evaluation.claims.paired_claim`) per retrieval table and
    direction, on every backbone that trained both methods (each claim names its backbone when the
    results hold several): the claims of the image-text notebooks (06 Flickr30K, 07 MSCOCO)."""
    from ..evaluation import claims

    several = results["backbone"].nunique() > 1
    return [
        dict(
            claims.paired_claim(
                results[results["backbone"] == backbone],
                better,
                worse,
                metric,
                direction,
                table=table,
                claim=f"{table}: {better} > {worse} ({direction} {metric}" + (f", {backbone})" if several else ")"),
            ),
            table=table,
            **({"backbone": backbone} if several else {}),
        )
        for backbone in comparable_backbones(results, better, worse)
        for table in tables
        for direction in ("i2t", "t2i")
    ]
