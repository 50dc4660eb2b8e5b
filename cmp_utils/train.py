"""Training: one function, :func:`fit`, used by the notebooks and by ``python -m cmp_utils.train``.

Recipe (released scripts; settings per profile in :data:`PROFILE_SETTINGS`):

* Adam, $\\beta = (0.9, 0.999)$, $\\epsilon = 10^{-8}$, one learning rate $2\\cdot10^{-4}$ for every
  parameter, no decay of it;
* weight decay $4\\cdot10^{-5}$ on the CNN's and the joint-embedding layers' weights only, as
  Adam's (coupled) ``weight_decay`` on their parameter group: it adds $\\lambda\\theta$ to their
  gradient, which is exactly the gradient of TF-slim's L2 regulariser
  $\\lambda\\,\\lVert\\theta\\rVert^2/2$ added to the loss. Batch-norm parameters, biases, word
  embedding, LSTM and loss parameters (CMPC's $W$) get none;
* an exponential moving average (EMA) of the weights, decay 0.9999 in the paper, with TF's
  warm-up $\\min(\\text{decay}, (1+n)/(10+n))$ after $n$ updates (``ema_warmup``); evaluation
  (validation, best.pt's metrics, test) uses the averaged weights with the live batch-norm
  statistics. Fast profiles use a smaller decay (their runs have hundreds of steps, not 10^5);
* Flickr30K / MSCOCO: ``frozen_epochs`` epochs with the CNN frozen (in eval mode) at ``lr``,
  then every layer at ``finetune_lr`` = 2e-5 until ``epochs``;
* loss = sum of the named losses of :class:`cmp_utils.losses.CrossModalLoss`;
* validation each epoch on the validation split; ``best.pt`` is chosen on it (``select_metric``),
  the test split is only scored at the end, with the best weights;
* CUDA: autocast (bf16, or fp16 with a gradient scaler) and channels-last images.

Frozen cached features (``feature_mode="cached"``, smoke / quick): the frozen ImageNet backbone
runs once per image (and once per flipped image, for the flip augmentation) and its grid-pooled
features are kept on disk under ``config.cache_dir()/features/``; the image branch then only
trains its joint embedding. Batches are sliced from pre-encoded tensors: no DataLoader.

Choice of the quick image encoder (measured on synthetic CUHK-PEDES "quick": 6,011 train images /
12,022 captions, validation gallery 908 images, test gallery 3,006 images; batch 64, 3 epochs,
CMPM + CMPC, one CPU thread on a loaded 2-core machine, CPU seconds per run):

| image branch | text LSTM | lr | val t2i R@1 by epoch | test t2i R@1 / R@10 | CPU s |
|---|---|---|---|---|---|
| cached MobileNetV2, grid 2x1 | 128 | 1e-3 | 11.8, 17.5, 20.1 | 9.8 / 37.3 | not measured |
| cached MobileNetV2, grid 2x1 | 64 | 1e-3 | 6.9, 12.1, 16.0 | 6.1 / 28.8 | 42 |
| cached MobileNetV2, global 1x1 | 64 | 1e-3 | 6.7, 12.2, 15.7 | 6.3 / 28.1 | 39 |
| cached MobileNetV2, grid 2x1 | 64 | 3e-3 | 9.7, 15.8, 17.9 | 8.3 / 34.5 | 46 |
| cached MobileNetV2, grid 2x1 | 128 | 3e-3 | 13.3, 18.3, 18.7 | 7.6 / 33.0 | 68 |
| same as row 4, 5 epochs | 64 | 3e-3 | 9.7, 15.8, 17.9, 20.6, 27.0 | 12.5 / 46.2 | 70 |
| small CNN end to end | 64 | 1e-3 | (about 0.35 CPU s per step, 6.5x the cached step: over a minute per epoch) | | |

Quick therefore uses cached ImageNet MobileNetV2 features on a 2x1 grid (the synthetic 64x32
images give a 2x1 final map: top and bottom halves), a 64-unit Bi-LSTM and lr 3e-3. The feature
cache (about a minute of CPU once per dataset, shared by every loss and seed) is not counted.

Multi-process (``torchrun``): ``batch_size`` is the **global** batch. Every process takes its
contiguous slice of each global batch (so N processes see exactly the batches of one), computes
the encoder features of its rows, and all-gathers them (:func:`cmp_utils.distributed.all_gather_with_grad`,
local gradients kept). The joint embeddings (with their batch norm) and the losses then run on
the global batch in every process, identically. Gradients: the loss is multiplied by the world
size before ``backward``, so DDP's averaging of the encoder gradients (each process holding
the part that flows through its own rows) gives their sum, the full-batch gradient; the "head"
parameters (joint embeddings, loss parameters), whose gradient every process computes in full,
are divided back by the world size. The backbone's own batch norms use per-process statistics
on the CPU (SyncBatchNorm is CUDA-only) and SyncBatchNorm on CUDA.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import atomic, config, distributed, evaluate
from . import images as image_ops
from . import models

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

_PAPER_COMMON = dict(feature_mode="end_to_end", lr=2e-4, finetune_lr=2e-5, weight_decay=4e-5, ema_decay=0.9999,
                     embedding_dim=512, word_dim=512, hidden_size=512, dropout=0.3, pool_grid=(1, 1),
                     sampler="random", amp="auto", num_workers=8, eval_batch_size=256)
_FAST_COMMON = dict(feature_mode="cached", backbone="mobilenet_v2", lr=1e-3, finetune_lr=1e-3, weight_decay=4e-5,
                    sampler="identity", instances_per_label=2, amp="auto", num_workers=0, eval_batch_size=512)

#: Settings per profile and dataset, as plain data. ``paper`` = the released scripts' settings
#: (CUB / Flowers: no script was released; the Flickr30K recipe is assumed and marked so).
PROFILE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "cuhk_pedes": dict(_PAPER_COMMON, backbone="mobilenet_v1", batch_size=16, epochs=50, frozen_epochs=0,
                           image_size=(224, 224), select_metric="t2i_R@1"),
        "flickr30k": dict(_PAPER_COMMON, backbone="resnet152", batch_size=32, epochs=45, frozen_epochs=15,
                          image_size=(224, 224), select_metric="rsum"),
        "mscoco": dict(_PAPER_COMMON, backbone="resnet152", batch_size=64, epochs=45, frozen_epochs=15,
                       image_size=(224, 224), select_metric="rsum"),
        "cub": dict(_PAPER_COMMON, backbone="resnet152", batch_size=32, epochs=45, frozen_epochs=15,
                    image_size=(224, 224), select_metric="rsum", note="assumed: no released script"),
        "flowers": dict(_PAPER_COMMON, backbone="resnet152", batch_size=32, epochs=45, frozen_epochs=15,
                        image_size=(224, 224), select_metric="rsum", note="assumed: no released script"),
        # Published after the paper: its CUHK-PEDES recipe, unchanged (no paper numbers exist for them).
        **{name: dict(_PAPER_COMMON, backbone="mobilenet_v1", batch_size=16, epochs=50, frozen_epochs=0,
                      image_size=(224, 224), select_metric="t2i_R@1",
                      note="assumed: the paper's CUHK-PEDES recipe; the dataset postdates the paper")
           for name in ("icfg_pedes", "rstpreid")},
    },
    "quick": {name: dict(_FAST_COMMON, batch_size=64, epochs=3, frozen_epochs=0, image_size=None, lr=3e-3,
                         finetune_lr=3e-3, pool_grid=(2, 1) if name in config.PERSON_DATASETS else (2, 2), embedding_dim=256,
                         word_dim=64, hidden_size=64, dropout=0.3,
                         ema_decay=0.99, select_metric="t2i_R@1" if name in config.PERSON_DATASETS else "rsum")
              for name in config.DATASETS},
    "smoke": {name: dict(_FAST_COMMON, batch_size=32, epochs=2, frozen_epochs=0, image_size=None,
                         pool_grid=(2, 1) if name in config.PERSON_DATASETS else (2, 2), embedding_dim=64, word_dim=32, hidden_size=32, dropout=0.3,
                         ema_decay=0.9, select_metric="t2i_R@1" if name in config.PERSON_DATASETS else "rsum")
              for name in config.DATASETS},
}


@dataclass
class TrainConfig:
    """Every setting of one training run (``params.yaml`` holds these plus the git commit)."""

    dataset: str = "cuhk_pedes"
    profile: str = "smoke"
    losses: tuple[str, ...] = ("cmpm", "cmpc")
    seed: int = 0
    device: str = "auto"
    output_dir: str | None = None  # None: <results>/runs/<profile>/<dataset>/<losses>_seed<k>
    data_dir: str | None = None
    cache_dir: str | None = None
    data_seed: int = 0  # seed of the synthetic data (independent of the training seed)
    resume: bool = False
    # model
    backbone: str = "mobilenet_v1"
    weights_path: str | None = None
    pretrained: bool = True
    image_size: tuple[int, int] | None = None  # None: the prepared data's default
    feature_mode: str = "end_to_end"  # end_to_end | cached
    pool_grid: tuple[int, int] = (1, 1)
    cache_flips: bool = False  # cached mode: also cache left-right flipped images (flip augmentation)
    embedding_dim: int = 512
    word_dim: int = 512
    hidden_size: int = 512
    dropout: float = 0.3
    padded_steps: str = "exclude"
    # optimisation
    batch_size: int = 16  # global batch (all processes together)
    epochs: int = 50
    frozen_epochs: int = 0
    lr: float = 2e-4
    finetune_lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 4e-5
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    sampler: str = "random"  # random | identity
    instances_per_label: int = 2
    loss_options: dict = field(default_factory=dict)
    amp: str = "auto"  # auto | bf16 | fp16 | off  (CUDA only)
    channels_last: bool = True
    num_workers: int = 0
    eval_batch_size: int = 256
    select_metric: str = "t2i_R@1"
    evaluate_test: bool = True
    deterministic: bool = False
    progress: bool = True
    max_steps_per_epoch: int | None = None  # cut epochs short (tests)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        for key, value in plain.items():
            if isinstance(value, tuple):
                plain[key] = list(value)
        return plain


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_TUPLE_FIELDS = ("losses", "image_size", "pool_grid", "betas")


def make_config(profile: str = "smoke", dataset: str = "cuhk_pedes", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from ``PROFILE_SETTINGS[profile][dataset]`` plus ``overrides``."""
    config.check_profile(profile)
    if dataset not in config.DATASETS:
        raise ValueError(f"parameter dataset={dataset!r} is not known; use one of {', '.join(config.DATASETS)}")
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(_FIELDS)}")
    values = {**PROFILE_SETTINGS[profile][dataset], **{k: v for k, v in overrides.items() if v is not None or k in
                                                       ("output_dir", "weights_path", "image_size")}}
    values.update(profile=profile, dataset=dataset)
    if isinstance(values.get("losses"), str):
        values["losses"] = [name.strip() for name in values["losses"].split(",") if name.strip()]
    for key in _TUPLE_FIELDS:
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    result = TrainConfig(**values)
    _check_config(result)
    return result


def _check_config(cfg: TrainConfig) -> None:
    from .losses import LOSS_NAMES

    bad = [name for name in cfg.losses if name not in LOSS_NAMES]
    if bad or not cfg.losses:
        raise ValueError(f"setting losses={list(cfg.losses)}: unknown {bad}; choose from {LOSS_NAMES}")
    if cfg.feature_mode not in ("end_to_end", "cached"):
        raise ValueError(f"setting feature_mode={cfg.feature_mode!r} must be 'end_to_end' or 'cached'")
    if cfg.sampler not in ("random", "identity"):
        raise ValueError(f"setting sampler={cfg.sampler!r} must be 'random' or 'identity'")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"setting amp={cfg.amp!r} must be auto, bf16, fp16 or off")
    if cfg.backbone not in models.BACKBONES:
        raise ValueError(f"setting backbone={cfg.backbone!r}; use one of {models.BACKBONES}")
    if not 0 <= cfg.frozen_epochs <= cfg.epochs or cfg.epochs < 1:
        raise ValueError(f"settings epochs={cfg.epochs}, frozen_epochs={cfg.frozen_epochs}: need 0 <= frozen <= epochs, epochs >= 1")
    if cfg.batch_size < 2:
        raise ValueError(f"setting batch_size={cfg.batch_size} must be at least 2")


def as_config(settings: TrainConfig | dict) -> TrainConfig:
    """Accept a :class:`TrainConfig` or a dict (``profile`` and ``dataset`` keys + overrides)."""
    if isinstance(settings, TrainConfig):
        _check_config(settings)
        return settings
    values = dict(settings)
    return make_config(values.pop("profile", "smoke"), values.pop("dataset", "cuhk_pedes"), **values)


def default_output_dir(cfg: TrainConfig) -> Path:
    """``<results>/runs/<profile>/<dataset>/<loss+loss>_seed<k>``."""
    return config.results_dir() / "runs" / cfg.profile / cfg.dataset / f"{'+'.join(cfg.losses)}_seed{cfg.seed}"


def git_commit() -> str:
    """The repository's HEAD commit, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.project_root(), capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Frozen cached features
# ---------------------------------------------------------------------------------------------


def feature_cache_path(prepared, split: str, cfg: TrainConfig, flips: bool) -> Path:
    """``<cache>/features/<dataset>/<profile>/<backbone>_<HxW>_g<rows>x<cols>_<split>[_flips]_<key>.pt``;
    ``key`` hashes the image cache's fingerprint, the weights and the preparation folder."""
    cache = prepared.image_cache(split)
    height, width = cache.size
    digest = hashlib.sha256(f"{cache.fingerprint}|{cfg.weights_path}|{cfg.pretrained}|{prepared.prepared_dir}".encode())
    name = (f"{cfg.backbone}_{height}x{width}_g{cfg.pool_grid[0]}x{cfg.pool_grid[1]}_{split}"
            f"{'_flips' if flips else ''}_{digest.hexdigest()[:12]}.pt")
    return config.cache_dir(cfg.cache_dir) / "features" / prepared.name / cfg.profile / name


@torch.no_grad()
def cached_image_features(prepared, split: str, cfg: TrainConfig, device: torch.device | str = "cpu",
                          flips: bool = False, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """Frozen-backbone, grid-pooled features $\\phi(I)$ of every image of ``split``, computed once.

    Returns (N_I, D) float32, or (2, N_I, D) with ``flips`` (row 1: the left-right flipped image).
    Loaded from :func:`feature_cache_path` when present; otherwise computed (backbone in eval
    mode) and saved atomically.
    """
    path = feature_cache_path(prepared, split, cfg, flips)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    encoder = models.ImageEncoder(models.build_backbone(cfg.backbone, cfg.weights_path, cfg.pretrained),
                                  cfg.pool_grid).to(device).eval()
    pixels = prepared.image_cache(split).images  # (N_I, H, W, 3) uint8
    views = (False, True) if flips else (False,)
    out = torch.empty(len(views), len(pixels), encoder.output_dim)
    from tqdm.auto import tqdm

    starts = range(0, len(pixels), batch_size)
    for start in tqdm(starts, desc=f"features {prepared.name}/{split}", disable=not progress, leave=False):
        batch = image_ops.normalise(np.asarray(pixels[start:start + batch_size]), encoder.normalisation).to(device)
        for view, flipped in enumerate(views):
            out[view, start:start + batch_size] = encoder(batch.flip(-1) if flipped else batch).float().cpu()
    result = out if flips else out[0]
    atomic.torch_save(path, result)
    return result


# ---------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------


class WeightAverage:
    """Exponential moving average of a module's parameters (TF ``ExponentialMovingAverage``).

    After update $n$ (1-based): $\\bar\\theta \\leftarrow \\delta\\bar\\theta + (1-\\delta)\\theta$ with
    $\\delta = \\min(\\text{decay}, (1+n)/(10+n))$ when ``warmup`` (TF's ``num_updates``), else ``decay``.
    Buffers (batch-norm statistics) are not averaged: :meth:`copy_to` takes them from the live model.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"setting ema_decay={decay} must be in [0, 1)")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.names = [name for name, _ in module.named_parameters()]
        self.shadow = [p.detach().clone() for _, p in module.named_parameters()]
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        weight = 1.0 - self.current_decay()
        parameters = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(self.shadow, parameters, weight)

    @torch.no_grad()
    def copy_to(self, target: nn.Module, live: nn.Module) -> nn.Module:
        """Load the averaged parameters and ``live``'s buffers into ``target`` (same architecture)."""
        for parameter, averaged in zip(target.parameters(), self.shadow):
            parameter.copy_(averaged)
        for buffer, live_buffer in zip(target.buffers(), live.buffers()):
            buffer.copy_(live_buffer)
        return target

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shadow": [t.clone() for t in self.shadow], "num_updates": self.num_updates,
                "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("EMA state does not match the model's parameters (different architecture?)")
        for mine, saved in zip(self.shadow, state["shadow"]):
            mine.copy_(saved)
        self.num_updates = int(state["num_updates"])


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def global_batches(labels: np.ndarray, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """The epoch's global batches of caption indices (same for any number of processes).

    ``random``: a permutation seeded by ``(seed, epoch)``; ``identity``:
    :class:`cmp_utils.data.IdentityBatchSampler` (``instances_per_label`` captions per id).
    Incomplete last batches are dropped.
    """
    if cfg.sampler == "identity":
        from .data import IdentityBatchSampler

        sampler = IdentityBatchSampler(labels, cfg.batch_size, cfg.instances_per_label, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        batches = list(sampler)
    else:
        order = np.random.default_rng([cfg.seed, epoch, 7]).permutation(len(labels))
        batches = [order[s:s + cfg.batch_size].tolist() for s in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    if cfg.max_steps_per_epoch is not None:
        batches = batches[: cfg.max_steps_per_epoch]
    return batches


def local_slice(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's contiguous share of a global batch (the batch size must divide evenly)."""
    if len(batch) % world_size:
        raise ValueError(f"setting batch_size={len(batch)} must be a multiple of the number of processes {world_size}")
    share = len(batch) // world_size
    return list(batch[rank * share:(rank + 1) * share])


class _ListBatchSampler(torch.utils.data.Sampler):
    """Hands a DataLoader a precomputed list of index batches."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# ---------------------------------------------------------------------------------------------
# The training step (what DDP wraps)
# ---------------------------------------------------------------------------------------------


class TrainStep(nn.Module):
    """Model + losses as one module: local encoder features -> global batch -> embeddings -> losses.

    ``forward(images, token_ids, lengths, labels)`` returns ``{loss name: scalar}`` of the
    **global** batch. One process: just the model and the losses.
    """

    def __init__(self, model: models.CrossModalModel, loss_module: nn.Module):
        super().__init__()
        self.model = model
        self.loss_module = loss_module

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradient every process computes in full (joint embeddings, losses)."""
        return (list(self.model.image_embedding.parameters()) + list(self.model.text_embedding.parameters())
                + list(self.loss_module.parameters()))

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor, lengths: torch.Tensor,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        image_features = distributed.all_gather_with_grad(self.model.image_features(images))  # (B, D_img)
        text_features = distributed.all_gather_with_grad(self.model.text_features(token_ids, lengths))  # (B, D_txt)
        global_labels = distributed.all_gather_tensor(labels)  # (B,)
        image_embeddings = self.model.image_embedding(image_features)  # x: (B, d)
        text_embeddings = self.model.text_embedding(text_features)  # z: (B, d)
        return self.loss_module(image_embeddings.float(), text_embeddings.float(), global_labels)


def backward_global_loss(losses: dict[str, torch.Tensor], step_module: TrainStep, world_size: int,
                         scaler: "torch.amp.GradScaler | None" = None) -> torch.Tensor:
    """Back-propagate the summed global-batch loss so that, after DDP's averaging, every gradient
    equals the single-process gradient of the full global batch; returns the (unscaled) total.

    The loss is multiplied by ``world_size``: DDP averages the encoder gradients (each process's
    part flows through its own rows only), so their average times ``world_size`` is their sum.
    The head parameters' gradient is already complete in every process: divided back here.
    """
    total = sum(losses.values())
    scaled = total * world_size
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if world_size > 1:
        for parameter in step_module.head_parameters():
            if parameter.grad is not None:
                parameter.grad.div_(world_size)
    return total


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What :func:`fit` returns (and writes as ``results.json``)."""

    output_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_validation: dict[str, float]
    test: dict[str, float]
    seconds: float
    samples_per_second: float
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "best_epoch": self.best_epoch,
                "best_validation": self.best_validation, "test": self.test, "seconds": self.seconds,
                "samples_per_second": self.samples_per_second, "history": self.history}


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors / plain types (loadable with ``weights_only=True``)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
            "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)}}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["gauss"]))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.default_rng([seed, epoch, rank, 11]).integers(0, 2**62))


def _autocast(cfg: TrainConfig, device: torch.device):
    if device.type != "cuda" or cfg.amp == "off":
        return torch.autocast(device_type=device.type, enabled=False), None
    dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    if cfg.amp == "auto" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast(device_type="cuda", dtype=dtype), scaler


def _param_groups(model: models.CrossModalModel, loss_module: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Two Adam groups: weights of the CNN and of the joint embeddings (decayed), everything else."""
    decayed: list[nn.Parameter] = []
    if not model.takes_features:
        decayed += [p for n, p in model.image_encoder.backbone.named_parameters() if p.dim() > 1]
    decayed += [model.image_embedding.projection.weight, model.text_embedding.projection.weight]
    decayed_ids = {id(p) for p in decayed}
    others = [p for p in model.parameters() if id(p) not in decayed_ids] + list(loss_module.parameters())
    return [{"params": decayed, "weight_decay": cfg.weight_decay, "name": "decayed"},
            {"params": others, "weight_decay": 0.0, "name": "others"}]


def _set_cnn_trainable(model: models.CrossModalModel, trainable: bool) -> None:
    if model.takes_features:
        return
    for parameter in model.image_encoder.backbone.parameters():
        parameter.requires_grad_(trainable)


def _check_paper_inputs(cfg: TrainConfig) -> None:
    """Fail early and clearly when the paper profile lacks what it needs."""
    if cfg.profile != "paper":
        return
    if cfg.backbone in ("mobilenet_v1", "resnet152") and cfg.pretrained and cfg.weights_path is None:
        raise FileNotFoundError(
            f"profile 'paper' trains {cfg.backbone} from ImageNet weights, which cannot be downloaded here: pass "
            f"weights_path=<{cfg.backbone} state dict> (CLI: --config FILE with `weights_path: ...`), or "
            "pretrained: false to knowingly train from random init")
    if cfg.weights_path is not None and not Path(cfg.weights_path).expanduser().is_file():
        raise FileNotFoundError(f"setting weights_path={cfg.weights_path!r} does not exist")


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def build_run_model(cfg: TrainConfig, prepared, feature_dim: int | None = None) -> models.CrossModalModel:
    """The network a run with settings ``cfg`` trains on ``prepared`` data (``feature_dim``: the
    cached image features' size in ``feature_mode="cached"``, else ``None``)."""
    return models.build_model(len(prepared.vocabulary), cfg.backbone, cfg.embedding_dim, cfg.word_dim,
                              cfg.hidden_size, cfg.dropout, prepared.vocabulary.pad_id, cfg.padded_steps,
                              cfg.pool_grid, cfg.weights_path, cfg.pretrained, cached_feature_dim=feature_dim)


def fit(settings: TrainConfig | dict) -> RunResult:
    """Train one model as ``settings`` say; write the run folder; return its :class:`RunResult`.

    Run folder: ``params.yaml`` (settings + git commit), ``log.jsonl`` (one line per epoch),
    ``checkpoints/last.pt`` and ``checkpoints/best.pt``, ``results.json``. With ``resume`` the
    run continues from ``last.pt`` and ends where an uninterrupted run ends.
    """
    cfg = as_config(settings)
    _check_paper_inputs(cfg)
    context = distributed.setup(cfg.device)
    try:
        return _fit(cfg, context)
    finally:
        distributed.cleanup()


def _fit(cfg: TrainConfig, context: distributed.DistributedContext) -> RunResult:
    from tqdm.auto import tqdm

    from . import data
    from .losses import CrossModalLoss

    device, rank, world = context.device, context.rank, context.world_size
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    checkpoints = out_dir / "checkpoints"
    config.seed_everything(cfg.seed, cfg.deterministic)
    show = cfg.progress and context.is_main

    # ---- data
    prepared = data.prepare_dataset(cfg.dataset, cfg.profile, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir,
                                    seed=cfg.data_seed, image_size=cfg.image_size)
    train_frame = prepared.frames["train"]
    val_split = prepared.validation_split
    captions = evaluate.caption_tensors(train_frame, prepared.vocabulary)
    labels_np = captions["labels"].numpy()
    features: dict[str, torch.Tensor] = {}
    if cfg.feature_mode == "cached":
        if context.is_main:  # rank 0 computes and writes, the others read
            features["train"] = cached_image_features(prepared, "train", cfg, device, flips=cfg.cache_flips,
                                                      progress=show)
        distributed.barrier()
        if not context.is_main:
            features["train"] = cached_image_features(prepared, "train", cfg, device, flips=cfg.cache_flips)
        for split in {val_split, prepared.test_split} - {None}:
            if context.is_main:
                features[split] = cached_image_features(prepared, split, cfg, device, progress=show)
        feature_dim = features["train"].shape[-1]
        train_features = features["train"].to(device)  # (N_I, D), or (2, N_I, D): plain, flipped
        if not cfg.cache_flips:
            train_features = train_features.unsqueeze(0)  # (1, N_I, D): no flipped view
    else:
        feature_dim = None

    # ---- model, losses, optimiser (seeded again: computing the feature cache consumed random numbers)
    config.seed_everything(cfg.seed, cfg.deterministic)
    model = build_run_model(cfg, prepared, feature_dim)
    if cfg.feature_mode != "cached":
        pairs = data.PairDataset(train_frame, prepared.vocabulary, prepared.image_cache("train"), train=True,
                                 backbone=model.image_encoder.normalisation)
    if world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if device.type == "cuda" and cfg.channels_last and not model.takes_features:
        model.image_encoder.to(memory_format=torch.channels_last)
    loss_module = CrossModalLoss(cfg.losses, cfg.embedding_dim, prepared.num_classes, **cfg.loss_options).to(device)
    step_module = TrainStep(model, loss_module)
    optimizer = torch.optim.Adam(_param_groups(model, loss_module, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    ema = WeightAverage(model, cfg.ema_decay, cfg.ema_warmup)
    eval_model = copy.deepcopy(model).eval()
    autocast, scaler = _autocast(cfg, device)

    # ---- resume
    history: list[dict[str, Any]] = []
    start_epoch, best_score, best_epoch = 0, -math.inf, -1
    if cfg.resume and (checkpoints / "last.pt").is_file():
        state = torch.load(checkpoints / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        loss_module.load_state_dict(state["loss_module"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_score, best_epoch = int(state["epoch"]), float(state["best_score"]), int(state["best_epoch"])
        history = json.loads(state["history"])
        _set_rng_state(state["rng"])
    elif cfg.resume and context.is_main:
        print(f"resume: no checkpoint at {checkpoints / 'last.pt'}; starting from scratch", file=sys.stderr)
    if context.is_main:
        atomic.write_yaml(out_dir / "params.yaml", {**cfg.to_dict(), "output_dir": str(out_dir),
                                                     "git_commit": git_commit(), "world_size": world,
                                                     "device": str(device), "torch": str(torch.__version__),
                                                     "num_classes": prepared.num_classes,
                                                     "vocabulary_size": len(prepared.vocabulary)})

    wrapped: nn.Module = step_module
    stage_trainable = None
    run_start = time.perf_counter()
    trained_samples = 0
    epoch_bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"train {cfg.dataset}/{cfg.profile}", unit="epoch",
                     disable=not show)

    for epoch in range(start_epoch, cfg.epochs):
        # ---- stage: CNN frozen for the first frozen_epochs, then everything at finetune_lr
        cnn_trainable = epoch >= cfg.frozen_epochs
        lr = cfg.lr if epoch < cfg.frozen_epochs or cfg.frozen_epochs == 0 else cfg.finetune_lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cnn_trainable != stage_trainable:
            _set_cnn_trainable(model, cnn_trainable)
            stage_trainable = cnn_trainable
            if world > 1:
                wrapped = nn.parallel.DistributedDataParallel(
                    step_module, device_ids=[device.index] if device.type == "cuda" else None)
        step_module.train()
        if not cnn_trainable and not model.takes_features:
            model.image_encoder.eval()  # frozen CNN: batch-norm statistics frozen too
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, rank))  # dropout, flips: a function of (seed, epoch, rank)

        batches = [local_slice(b, rank, world) for b in global_batches(labels_np, cfg, epoch)]
        if cfg.feature_mode == "cached":
            flip_generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 1000 + rank))
            iterator = ((rows, None) for rows in batches)
        else:
            loader = torch.utils.data.DataLoader(pairs, batch_sampler=_ListBatchSampler(batches),
                                                 collate_fn=data.collate_pairs, num_workers=cfg.num_workers,
                                                 pin_memory=device.type == "cuda",
                                                 persistent_workers=False)
            iterator = ((None, batch) for batch in loader)
        loss_sums = {name: torch.zeros((), device=device) for name in cfg.losses}
        epoch_start = time.perf_counter()
        bar = tqdm(iterator, total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
                   leave=False, unit="batch", mininterval=3.0)
        for rows, batch in bar:
            if batch is None:  # cached features: slice the pre-encoded tensors
                index = torch.as_tensor(rows)
                lengths = captions["lengths"][index]
                token_ids = captions["token_ids"][index, : int(lengths.max())]
                image_rows = captions["image_indices"][index]
                flipped = (torch.rand(len(rows), generator=flip_generator) < 0.5).long() * int(cfg.cache_flips)
                images = train_features[flipped.to(device), image_rows.to(device)]  # (b, D)
                labels = captions["labels"][index]
            else:
                images, token_ids, lengths, labels = batch["images"], batch["token_ids"], batch["lengths"], batch["labels"]
                if device.type == "cuda" and cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
            images = images.to(device, non_blocking=True)
            token_ids, labels = token_ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            lengths = lengths.to(device)
            with autocast:
                losses = wrapped(images, token_ids, lengths, labels)
            optimizer.zero_grad(set_to_none=True)
            backward_global_loss(losses, step_module, world, scaler)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            ema.update(model)
            for name, value in losses.items():
                loss_sums[name] += value.detach()
            trained_samples += len(labels) * world
        seconds = time.perf_counter() - epoch_start
        steps = max(1, len(batches))
        epoch_losses = {name: float(value) / steps for name, value in loss_sums.items()}

        # ---- validation with the averaged weights (rank 0), best.pt chosen on it
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr,
                                  "cnn_trainable": cnn_trainable and not model.takes_features,
                                  "loss": sum(epoch_losses.values()), **{f"loss_{k}": v for k, v in epoch_losses.items()},
                                  "seconds": seconds, "samples_per_second": steps * cfg.batch_size / max(seconds, 1e-9)}
        if context.is_main:
            ema.copy_to(eval_model, model)
            if val_split is not None:
                val = evaluate.flat_metrics(evaluate.evaluate_split(eval_model, prepared, val_split, device,
                                                                    cfg.eval_batch_size, features.get(val_split)))
                record.update({f"val_{k}": v for k, v in val.items()})
                score = val.get(cfg.select_metric)
                if score is None:
                    raise KeyError(f"setting select_metric={cfg.select_metric!r} is not among the metrics {sorted(val)}")
            else:
                score = float(epoch)  # no validation split: the last epoch is the best
            record["eval_seconds"] = time.perf_counter() - epoch_start - seconds
            history.append(record)
            if score > best_score:
                best_score, best_epoch = score, epoch + 1
                atomic.torch_save(checkpoints / "best.pt", {"model": eval_model.state_dict(), "epoch": epoch + 1,
                                                            "score": score, "select_metric": cfg.select_metric})
            atomic.torch_save(checkpoints / "last.pt", {
                "model": model.state_dict(), "loss_module": loss_module.state_dict(),
                "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch + 1, "best_score": best_score, "best_epoch": best_epoch,
                "history": json.dumps(history), "rng": _rng_state()})
            atomic.write_text(out_dir / "log.jsonl", "".join(json.dumps(line) + "\n" for line in history))
            epoch_bar.set_postfix(loss=f"{record['loss']:.3f}", samples_per_s=f"{record['samples_per_second']:.0f}",
                                  **({"val": f"{record[f'val_{cfg.select_metric}']:.1f}"}
                                     if f"val_{cfg.select_metric}" in record else {}))
        epoch_bar.update(1)
        distributed.barrier()
    epoch_bar.close()

    # ---- final: best weights on the test split
    total_seconds = time.perf_counter() - run_start
    test: dict[str, float] = {}
    best_validation: dict[str, float] = {}
    if context.is_main:
        if (checkpoints / "best.pt").is_file():
            best = torch.load(checkpoints / "best.pt", map_location=device, weights_only=True)
            eval_model.load_state_dict(best["model"])
        if cfg.evaluate_test:
            test = evaluate.flat_metrics(evaluate.evaluate_split(eval_model, prepared, prepared.test_split, device,
                                                                 cfg.eval_batch_size, features.get(prepared.test_split)))
        best_validation = next(({k[4:]: v for k, v in r.items() if k.startswith("val_")}
                                for r in history if r["epoch"] == best_epoch), {})
    trained_seconds = sum(r["seconds"] for r in history[start_epoch:]) if history else 0.0
    result = RunResult(output_dir=out_dir, history=history, best_epoch=best_epoch, best_validation=best_validation,
                       test=test, seconds=total_seconds,
                       samples_per_second=trained_samples / trained_seconds if trained_seconds else 0.0,
                       settings=cfg.to_dict())
    if context.is_main:
        atomic.write_text(out_dir / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmp_utils.train",
                                     description="Train a CMPM/CMPC model (torchrun for several processes).")
    parser.add_argument("--profile", default="smoke", choices=config.PROFILES)
    parser.add_argument("--dataset", default="cuhk_pedes", choices=config.DATASETS)
    parser.add_argument("--config", help="YAML file of setting overrides (keys of TrainConfig)")
    parser.add_argument("--output-dir", help="run folder (default <results>/runs/<profile>/<dataset>/<losses>_seed<k>)")
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last.pt")
    parser.add_argument("--losses", help="comma-separated loss names, e.g. cmpm,cmpc")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            parser.error(f"--config {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            parser.error(f"--config {path} must hold a mapping of settings")
        overrides.update(loaded)
    for key, value in (("output_dir", args.output_dir), ("losses", args.losses), ("seed", args.seed),
                       ("data_dir", args.data_dir), ("epochs", args.epochs)):
        if value is not None:
            overrides[key] = value
    overrides.update(resume=args.resume, device=args.device)
    if args.no_progress:
        overrides["progress"] = False
    result = fit(make_config(args.profile, args.dataset, **overrides))
    if distributed.is_main_process() and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"output_dir": str(result.output_dir), "best_epoch": result.best_epoch,
                          "test": result.test, "seconds": round(result.seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
