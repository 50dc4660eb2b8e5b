"""The frozen backbone's image features, computed once per image (and flipped image) and cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .. import models
from ..core import atomic, config, numerics
from ..data import images as image_ops
from .settings import TrainConfig

# ---------------------------------------------------------------------------------------------
# Frozen cached features
# ---------------------------------------------------------------------------------------------


def feature_cache_path(prepared, split: str, cfg: TrainConfig, flips: bool) -> Path:
    """``<cache>/features/<dataset>/<profile>/<backbone>[_b<blocks>]_<HxW>_g<rows>x<cols>_<split>[_flips]_<key>.pt``;
    ``key`` hashes the image cache's fingerprint, the weights, the preparation folder and the CPU
    numerics (:func:`cmp_utils.core.numerics.fingerprint`: features computed unpinned are never reused pinned)."""
    cache = prepared.image_cache(split)
    height, width = cache.size
    weights = config.file_stamp(cfg.weights_path)  # path, size and mtime: replaced weights -> new features
    digest = hashlib.sha256(
        f"{cache.fingerprint}|{weights}|{cfg.pretrained}|{prepared.prepared_dir}|{numerics.fingerprint()}".encode()
    )
    blocks = "" if cfg.backbone_blocks is None else f"_b{cfg.backbone_blocks}"
    name = (
        f"{cfg.backbone}{blocks}_{height}x{width}_g{cfg.pool_grid[0]}x{cfg.pool_grid[1]}_{split}"
        f"{'_flips' if flips else ''}_{digest.hexdigest()[:12]}.pt"
    )
    return config.cache_dir(cfg.cache_dir) / "features" / prepared.name / cfg.profile / name


@torch.no_grad()
def cached_image_features(
    prepared,
    split: str,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    flips: bool = False,
    batch_size: int = 128,
    progress: bool = False,
) -> torch.Tensor:
    """Frozen-backbone, grid-pooled features $\\phi(I)$ of every image of ``split``, computed once.

    Returns (N_I, D) float32, or (2, N_I, D) with ``flips`` (row 1: the left-right flipped image).
    Loaded from :func:`feature_cache_path` when present; otherwise computed (backbone in eval
    mode) and saved atomically.
    """
    path = feature_cache_path(prepared, split, cfg, flips)
    cached = atomic.load_torch_cache(path)  # None when absent, or damaged (then recomputed below)
    if cached is not None:
        return cached
    encoder = (
        models.ImageEncoder(
            models.build_backbone(cfg.backbone, cfg.weights_path, cfg.pretrained, cfg.backbone_blocks), cfg.pool_grid
        )
        .to(device)
        .eval()
    )
    pixels = prepared.image_cache(split).images  # (N_I, H, W, 3) uint8
    views = (False, True) if flips else (False,)
    out = torch.empty(len(views), len(pixels), encoder.output_dim)
    from tqdm.auto import tqdm

    starts = range(0, len(pixels), batch_size)
    for start in tqdm(starts, desc=f"features {prepared.name}/{split}", disable=not progress, leave=False):
        batch = image_ops.normalise(np.asarray(pixels[start : start + batch_size]), encoder.normalisation).to(device)
        for view, flipped in enumerate(views):
            out[view, start : start + batch_size] = encoder(batch.flip(-1) if flipped else batch).float().cpu()
    result = out if flips else out[0]
    atomic.torch_save(path, result)
    return result
