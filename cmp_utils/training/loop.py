"""Training: one function, :func:`fit`, used by the notebooks and by ``python -m cmp_utils.training``.

Recipe (released scripts; settings per profile in :data:`PROFILE_SETTINGS`):

* Adam, $\\beta = (0.9, 0.999)$, $\\epsilon = 10^{-8}$ placed as TF places it (``adam_epsilon="tf"``,
  :func:`set_tf_adam_epsilon`), one learning rate $2\\cdot10^{-4}$ for every parameter, no decay of it;
* weight decay $4\\cdot10^{-5}$ on the CNN's and the joint-embedding layers' weights only, as
  Adam's (coupled) ``weight_decay`` on their parameter group: it adds $\\lambda\\theta$ to their
  gradient, which is exactly the gradient of TF-slim's L2 regulariser
  $\\lambda\\,\\lVert\\theta\\rVert^2/2$ added to the loss. Batch-norm parameters, biases, word
  embedding, LSTM, loss parameters (CMPC's $W$) and depthwise kernels get none;
* an exponential moving average (EMA) of the weights, decay 0.9999 in the paper, with TF's
  warm-up $\\min(\\text{decay}, (1+n)/(10+n))$ after $n$ updates (``ema_warmup``), over what the
  release averages (``ema_scope="release"``: the CNN and the joint embeddings, their batch-norm
  moving statistics included; the text branch is evaluated live; see :class:`WeightAverage`);
  evaluation (validation, best.pt's metrics, test) uses those averages. Fast profiles use a
  smaller decay (their runs have hundreds of steps, not 10^5);
* Flickr30K / MSCOCO: ``frozen_epochs`` epochs with the CNN frozen at ``lr`` (its batch norm on
  batch statistics, ``frozen_cnn_bn="batch_stats"``, as the release builds it with
  ``is_training=True``), then every layer at ``finetune_lr`` = 2e-5 until ``epochs``; at the
  switch Adam's moments and the EMA (shadows, step count) restart (``stage2_restart``), since the
  release's second stage restores trainable variables only (``configuration.py``); see
  :func:`stage_of` and :func:`_enter_stage`;
* loss = sum of the named losses of :class:`cmp_utils.losses.CrossModalLoss`, on the global batch
  (``loss_scope="global"``) or averaged over K sub-batches of it (``"local:K"``: K GPUs without a gather);
* validation every ``validate_every`` epochs (and the last) on the validation split; ``best.pt``
  is chosen on it (``select_metric``). The test split is only scored at the end, with the weights
  ``checkpoint_choice`` names: ``"last"`` (paper: the release tests its latest checkpoint), with
  ``best.pt``'s test scores reported beside them, or ``"best_validation"`` (fast profiles).
  ``validate_every=0`` skips validation; ``select_split="test"`` selects on the test split (a
  port's optimistic choice);
* precision: fp32 in the paper profile (``amp="off"``, as the release; ``cuda_tf32="off"`` keeps
  cuDNN's convolutions out of TF32 on CUDA, :func:`cmp_utils.core.numerics.set_cuda_tf32`); ``amp="auto"`` = bf16
  autocast on CUDA (fp16 with a gradient scaler where bf16 is unsupported) and fp32 on the CPU;
  ``amp="bf16"`` also autocasts on the CPU. CUDA: channels-last images;
* ``num_threads``: the run's torch threads (1 in smoke / quick, so numbers do not depend on the
  machine; all cores in paper), recorded in ``params.yaml`` as ``torch_threads``; DataLoader
  workers ``num_workers`` (None: min(8, CPU count)).

``fit`` reads as its stages: checks before anything runs (:func:`check_output_dir`,
:func:`check_resume_settings`, :func:`check_batches`), setup (:func:`_prepare_training_data`,
:func:`_build_run_state`), then per epoch the stage switch (:func:`_enter_stage`), one epoch
(:func:`_train_epoch`, one :func:`train_step` per batch: the step the benchmarks time too), evaluation
and selection (:func:`_evaluate_epoch`) and checkpoints
(:func:`_save_checkpoints`), and the final test (:func:`_final_result`).

Frozen cached features (``feature_mode="cached"``, smoke / quick): the frozen ImageNet backbone
runs once per image (and once per flipped image, for the flip augmentation) and its grid-pooled
features are kept on disk under ``config.cache_dir()/features/``; the image branch then only
trains its joint embedding. Batches are sliced from pre-encoded tensors: no DataLoader.

Calibration of the quick recipe (synthetic CUHK-PEDES-like data; CMPM + CMPC, batch 64, lr 3e-3,
one torch thread): the image size, where MobileNetV2 is cut, the pooling grid, the LSTM width
and the epoch count were chosen by comparing test t2i R@1 with the attribute oracle's
(:mod:`cmp_utils.evaluation.ceiling`) and the CPU seconds of one :func:`cmp_utils.experiments.run_method`
call (the feature cache, built once per dataset and shared by every loss and seed, not counted). Quick trains on 1000 train / 100 validation / 300 test identities, upsamples the 64x32
renders to 128x64 and keeps a 64-unit Bi-LSTM. The last stage of the frozen ImageNet MobileNetV2
(1280 channels) limited the recall: the synthetic attributes are colours and part shapes, which
a mid-level map keeps, so person datasets cut after stage 11 (``backbone_blocks``; 64 channels,
an 8x4 map kept whole as an 8x4 grid), which also makes the joint embedding's input 2048-d
instead of 10240-d and the runs cheaper. Scene and class datasets keep the last stage, a 2x2
grid and 3 epochs. The numbers these settings give are the committed results (``results/``,
written by the notebooks); the calibration runs themselves are in this docstring's history
(commit 6573e44).

Multi-process (``torchrun``): ``batch_size`` is the **global** batch. Every process takes its
contiguous slice of each global batch (so N processes see exactly the batches of one), computes
the encoder features of its rows, and all-gathers them (:func:`cmp_utils.training.distributed.all_gather_with_grad`,
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
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import numbers
import os
import random
import subprocess
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core import atomic, config, numerics
from . import distributed
from ..evaluation import evaluate
from ..data import images as image_ops
from .. import models

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

_PAPER_COMMON = dict(feature_mode="end_to_end", lr=2e-4, finetune_lr=2e-5, weight_decay=4e-5, ema_decay=0.9999,
                     embedding_dim=512, word_dim=512, hidden_size=512, dropout=0.3, pool_grid=(1, 1),
                     sampler="random", amp="off", num_workers=None, eval_batch_size=256,  # fp32, as the release
                     padded_steps="zeros")  # the release trains at batch > 1 with padded zeros in the max
_FAST_COMMON = dict(feature_mode="cached", backbone="mobilenet_v2", lr=1e-3, finetune_lr=1e-3, weight_decay=4e-5,
                    sampler="identity", instances_per_label=2, amp="auto", num_workers=0, eval_batch_size=512,
                    num_threads=1,  # one torch thread: the same numbers on any machine
                    # TF's joint-embedding BN momentum (0.0003) leaves the running statistics near their
                    # initial values after a few hundred steps, which costs quick CUHK-PEDES recall (measured in
                    # docs/fidelity.md's audit table), so the fast profiles use PyTorch's.
                    bn_style="pytorch",
                    # The fast profiles keep the settings their committed numbers were measured with; the paper
                    # profile takes the release's (the TrainConfig defaults; docs/fidelity.md, one row each).
                    joint_embedding_init="pytorch", initial_state_init="zeros", lstm_bias="two",
                    lstm_input_dropout="shared", word_embedding_init_rows=None, image_resize="pil_antialias",
                    cuda_tf32="torch_default", checkpoint_choice="best_validation", adam_epsilon="pytorch")

#: Settings per profile and dataset, as plain data. ``paper`` = the released scripts' settings
#: (CUB / Flowers: no script was released; the Flickr30K recipe is assumed and marked so).
PROFILE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        # The CNNs are TF-slim's own networks (TF "SAME" padding; slim's ResNet v1 layout), so that
        # ImageNet weights converted from the slim checkpoints the release starts from
        # (``python -m cmp_utils.tools.convert_tf``) give TF's outputs; ``mobilenet_v1`` / ``resnet152``
        # (PyTorch padding, torchvision's ResNet) remain as options.
        "cuhk_pedes": dict(_PAPER_COMMON, backbone="mobilenet_v1_tf", batch_size=16, epochs=50, frozen_epochs=0,
                           image_size=(224, 224), select_metric="t2i_R@1"),
        "flickr30k": dict(_PAPER_COMMON, backbone="resnet152_slim", batch_size=32, epochs=45, frozen_epochs=15,
                          image_size=(224, 224), select_metric="rsum"),
        "mscoco": dict(_PAPER_COMMON, backbone="resnet152_slim", batch_size=64, epochs=45, frozen_epochs=15,
                       image_size=(224, 224), select_metric="rsum"),
        "cub": dict(_PAPER_COMMON, backbone="mobilenet_v1_tf", batch_size=32, epochs=45, frozen_epochs=15,
                    image_size=(224, 224), select_metric="rsum", note="assumed: no released script"),
        "flowers": dict(_PAPER_COMMON, backbone="mobilenet_v1_tf", batch_size=32, epochs=45, frozen_epochs=15,
                        image_size=(224, 224), select_metric="rsum", note="assumed: no released script"),
        # Published after the paper: its CUHK-PEDES recipe, unchanged (no paper numbers exist for them).
        **{name: dict(_PAPER_COMMON, backbone="mobilenet_v1_tf", batch_size=16, epochs=50, frozen_epochs=0,
                      image_size=(224, 224), select_metric="t2i_R@1",
                      note="assumed: the paper's CUHK-PEDES recipe; the dataset postdates the paper")
           for name in ("icfg_pedes", "rstpreid")},
    },
    # person datasets: the 64 x 32 renders upsampled to 128 x 64 and cut after MobileNetV2's 11th stage (a
    # 64-channel 8 x 4 map at stride 16, kept whole as an 8 x 4 grid, 2048-d), 4 epochs: higher recall than the
    # last stage for less CPU (calibration in the module docstring)
    "quick": {name: dict(_FAST_COMMON, batch_size=64, epochs=4 if name in config.PERSON_DATASETS else 3,
                         frozen_epochs=0, image_size=(128, 64) if name in config.PERSON_DATASETS else None, lr=3e-3,
                         finetune_lr=3e-3, backbone_blocks=11 if name in config.PERSON_DATASETS else None,
                         pool_grid=(8, 4) if name in config.PERSON_DATASETS else (2, 2), embedding_dim=256,
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
    backbone_blocks: int | None = None  # mobilenet_v2 only: keep its first N stages (a mid-level map); None = all
    pool_grid: tuple[int, int] = (1, 1)
    cache_flips: bool = False  # cached mode: also cache left-right flipped images (flip augmentation)
    embedding_dim: int = 512
    word_dim: int = 512
    hidden_size: int = 512
    dropout: float = 0.3
    padded_steps: str = "exclude"
    # recipe options (release default first; the others are public ports' deviations, see docs/fidelity.md)
    word_embedding_init: str = "xavier"  # xavier (release modules.py: Glorot uniform) | normal (nn.Embedding N(0, 1))
    lstm_init: str = "tf"  # tf (BasicLSTMCell: Glorot kernels, forget bias 1.0) | pytorch (nn.LSTM default)
    lstm_backward: str = "time"  # time | batch_reversed (a port: the backward LSTM reverses the batch, not time)
    bn_style: str = "tf"  # joint-embedding BN: tf (slim arg_scope of the backbone) | pytorch (eps 1e-5, momentum 0.1)
    joint_embedding: str = "linear_bn"  # linear_bn (release: 1x1 conv, no bias, + BN) | linear_bias (a port)
    ema_scope: str = "release"  # release (CNN + joint embeddings + their BN statistics) | all (every parameter)
    vocab_case_sensitive: bool = False  # True: a port's vocabulary keeps case ("A" and "a" apart)
    pad_shares_most_frequent: bool = False  # True: a port: padding id = the most frequent word's id
    num_classes_from: str = "all_splits"  # all_splits (release: the dataset's id range) | train (train ids only)
    joint_embedding_init: str = "release"  # release (CNN arg_scope: trunc. normal 0.09 / He) | pytorch (nn.Linear)
    initial_state_init: str = "glorot"  # glorot (release: tf.get_variable default) | zeros
    lstm_bias: str = "single"  # single (TF: one bias per gate, bias_hh frozen at 0) | two (nn.LSTM's two biases)
    lstm_input_dropout: str = "per_direction"  # per_direction (release: a DropoutWrapper each) | shared (one mask)
    word_embedding_init_rows: int | None = 12000  # Xavier bound from the release's 12000-row table | None: len(vocab)
    image_resize: str = "tf1_bilinear"  # tf1_bilinear (release: float, no antialiasing) | pil_antialias (PIL)
    cuda_tf32: str = "off"  # off (fp32 is fp32, as the release) | torch_default (cuDNN convolutions in TF32)
    checkpoint_choice: str = "last"  # last (release: the last epoch is tested) | best_validation (best.pt)
    adam_epsilon: str = "tf"  # tf (TF's epsilon-hat: eps added to the uncorrected sqrt(v)) | pytorch (torch.optim.Adam's)
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
    loss_scope: str = "global"  # global | local:K (the loss on K sub-batches: K GPUs without a feature gather)
    amp: str = "auto"  # auto | bf16 | fp16 | off  (CUDA only)
    channels_last: bool = True
    num_workers: int | None = 0  # DataLoader workers; None = what the machine has, min(8, cpu count)
    eval_batch_size: int = 256
    select_metric: str = "t2i_R@1"
    evaluate_test: bool = True
    deterministic: bool = False
    progress: bool = True
    max_steps_per_epoch: int | None = None  # cut epochs short (tests)
    # run control (release: ``train_models.py`` and ``configuration.py`` of the authors' repository)
    select_split: str = "validation"  # validation | test (selection on the test split: optimistic, a port's choice)
    validate_every: int = 1  # epochs between validations; 0 = none, the last epoch is kept as best.pt
    num_threads: int | None = None  # torch CPU threads of the run; None = torch's default (all cores)
    frozen_cnn_bn: str = "batch_stats"  # stage 1 frozen CNN batch norm: batch_stats (release) | eval
    stage2_restart: bool = True  # stage 2 restarts Adam and the EMA (shadows, step count) as the release does
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        for key, value in plain.items():
            if isinstance(value, tuple):
                plain[key] = list(value)
        return plain


#: ``TrainConfig.checkpoint_choice``: which weights the test split scores. ``"last"`` = the last
#: epoch's (averaged) weights, as the release (its scripts score the latest checkpoint); when
#: validation ran, ``best.pt`` is scored too and reported beside it (``test_best_validation``).
#: ``"best_validation"`` = ``best.pt``, the epoch best on the selection split.
CHECKPOINT_CHOICES = ("last", "best_validation")
#: The file under ``checkpoints/`` holding the weights each choice tests (averaged weights, ``{"model": ...}``).
CHECKPOINT_FILES = {"last": "last_averaged.pt", "best_validation": "best.pt"}


def selected_checkpoint(run_dir: str | Path, cfg: "TrainConfig") -> Path:
    """The checkpoint a finished run's test scores come from (:data:`CHECKPOINT_FILES`); ``best.pt``
    for runs written before ``checkpoint_choice`` existed (they tested it)."""
    chosen = Path(run_dir) / "checkpoints" / CHECKPOINT_FILES[cfg.checkpoint_choice]
    return chosen if chosen.is_file() else Path(run_dir) / "checkpoints" / "best.pt"

#: ``TrainConfig.adam_epsilon``: where Adam's epsilon sits. TF's ``AdamOptimizer`` (the release)
#: computes $\theta \leftarrow \theta - \eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)\; m/(\sqrt v + \epsilon)$,
#: ``torch.optim.Adam`` $\theta \leftarrow \theta - \eta/(1-\beta_1^t)\; m/(\sqrt{v/(1-\beta_2^t)} + \epsilon)$:
#: TF's is PyTorch's with $\epsilon_t = \epsilon/\sqrt{1-\beta_2^t}$ (31.6x larger at step 1, equal
#: after some thousand steps), which matters for gradients near $10^{-7}$. ``"tf"`` sets that
#: $\epsilon_t$ before every step (:func:`set_tf_adam_epsilon`); ``"pytorch"`` keeps PyTorch's.
ADAM_EPSILONS = ("tf", "pytorch")

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(does ``value`` fit the annotation ``hint``, the value in that type): lists become tuples for
    tuple fields, whole numbers become floats for float fields; bools are not numbers here."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            fits, converted = _conform(value, option)
            if fits:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, (bool, np.bool_)), bool(value) if isinstance(value, (bool, np.bool_)) else value
    if hint is int:
        fits = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
        return fits, int(value) if fits else value
    if hint is float:
        fits = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        return fits, float(value) if fits else value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict or origin is dict:
        return isinstance(value, dict), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            return False, value
        items = [_conform(item, item_hint) for item, item_hint in zip(value, item_hints)]
        return all(fits for fits, _ in items), tuple(converted for _, converted in items)
    return True, value  # an annotation this checker does not know: accepted as is


def check_setting(name: str, value: Any) -> Any:
    """``value`` checked against the type of the :class:`TrainConfig` field ``name`` and returned in
    that type; a ``TypeError`` names the setting, the value given and the type expected."""
    if name not in _FIELDS:
        raise ValueError(f"unknown training setting {name!r}; known: {sorted(_FIELDS)}")
    fits, converted = _conform(value, _FIELD_TYPES[name])
    if not fits:
        quoted = " (a quoted value in YAML is text: write it unquoted)" if isinstance(value, str) else ""
        raise TypeError(f"setting {name}={value!r} is a {type(value).__name__}; it must be "
                        f"{_type_name(_FIELD_TYPES[name])}{quoted}")
    return converted


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (the command line's ``--set``) -> (key, value): the value is read as YAML
    (``32``, ``2e-4``, ``false``, ``[224, 224]``, ``{label_smoothing: 0.1}``, ``null``) and checked
    against the field's type; a string field keeps the text as written."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--set {text!r} must look like KEY=VALUE, e.g. --set batch_size=32")
    name, raw = (part.strip() for part in text.split("=", 1))
    if name not in _FIELDS:
        raise ValueError(f"--set {name}: unknown training setting; known: {sorted(_FIELDS)}")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as error:
        raise ValueError(f"--set {name}={raw}: the value is not valid YAML ({error})") from None
    if name == "losses" and isinstance(value, str):
        return name, value  # "cmpm,cmpc": split by make_config
    hint = _FIELD_TYPES[name]
    if not isinstance(value, str) and raw and _conform(raw, hint)[0] and not _conform(value, hint)[0]:
        value = raw  # a string setting written without quotes, e.g. --set note=2018
    if isinstance(value, str) and not _conform(value, hint)[0]:
        try:
            value = float(value) if _conform(float(value), hint)[0] else value  # YAML reads 1e-3 as text
        except ValueError:
            pass
    return name, check_setting(name, value)


def _admits_none(name: str) -> bool:
    return _conform(None, _FIELD_TYPES[name])[0]


def make_config(profile: str = "smoke", dataset: str = "cuhk_pedes", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from ``PROFILE_SETTINGS[profile][dataset]`` plus ``overrides``.

    Every value is checked against the field's type (:func:`check_setting`). ``None`` means "not
    given" for a field that cannot hold ``None``, and ``None`` itself for one that can.
    """
    config.check_profile(profile)
    if dataset not in config.DATASETS:
        raise ValueError(f"parameter dataset={dataset!r} is not known; use one of {', '.join(config.DATASETS)}")
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(_FIELDS)}")
    values = {**PROFILE_SETTINGS[profile][dataset],
              **{k: v for k, v in overrides.items() if v is not None or _admits_none(k)}}
    values.update(profile=profile, dataset=dataset)
    if isinstance(values.get("losses"), str):
        values["losses"] = [name.strip() for name in values["losses"].split(",") if name.strip()]
    values = {key: check_setting(key, value) for key, value in values.items()}
    result = TrainConfig(**values)
    _check_config(result)
    return result


def _check_config(cfg: TrainConfig) -> None:
    from ..losses import LOSS_NAMES

    for name in _FIELDS:
        check_setting(name, getattr(cfg, name))
    bad = [name for name in cfg.losses if name not in LOSS_NAMES]
    if bad or not cfg.losses:
        raise ValueError(f"setting losses={list(cfg.losses)}: unknown {bad}; choose from {LOSS_NAMES}")
    from ..losses import parse_loss_scope

    if cfg.batch_size % parse_loss_scope(cfg.loss_scope):  # also rejects a malformed scope
        raise ValueError(f"setting loss_scope={cfg.loss_scope!r} needs a batch_size that K divides; got {cfg.batch_size}")
    if cfg.feature_mode not in ("end_to_end", "cached"):
        raise ValueError(f"setting feature_mode={cfg.feature_mode!r} must be 'end_to_end' or 'cached'")
    if cfg.sampler not in ("random", "identity"):
        raise ValueError(f"setting sampler={cfg.sampler!r} must be 'random' or 'identity'")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"setting amp={cfg.amp!r} must be auto, bf16, fp16 or off")
    if cfg.backbone not in models.BACKBONES:
        raise ValueError(f"setting backbone={cfg.backbone!r}; use one of {models.BACKBONES}")
    if cfg.backbone_blocks is not None and cfg.backbone != "mobilenet_v2":
        raise ValueError(f"setting backbone_blocks={cfg.backbone_blocks!r} needs backbone='mobilenet_v2' "
                         f"(not {cfg.backbone!r}); set backbone_blocks=None")
    if not 0 <= cfg.frozen_epochs <= cfg.epochs or cfg.epochs < 1:
        raise ValueError(f"settings epochs={cfg.epochs}, frozen_epochs={cfg.frozen_epochs}: need 0 <= frozen <= epochs, epochs >= 1")
    if cfg.batch_size < 2:
        raise ValueError(f"setting batch_size={cfg.batch_size} must be at least 2")
    from ..data.images import IMAGE_RESIZES

    choices = {"select_split": ("validation", "test"), "frozen_cnn_bn": ("batch_stats", "eval"),
               "joint_embedding_init": models.JOINT_EMBEDDING_INITS, "initial_state_init": models.INITIAL_STATE_INITS,
               "lstm_bias": models.LSTM_BIASES, "lstm_input_dropout": models.LSTM_INPUT_DROPOUTS,
               "image_resize": IMAGE_RESIZES, "cuda_tf32": numerics.CUDA_TF32_CHOICES,
               "checkpoint_choice": CHECKPOINT_CHOICES, "adam_epsilon": ADAM_EPSILONS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"setting {name}={getattr(cfg, name)!r} must be one of {allowed}")
    for name, least in (("validate_every", 0), ("num_threads", 1), ("num_workers", 0), ("max_steps_per_epoch", 1)):
        if getattr(cfg, name) is not None and getattr(cfg, name) < least:
            raise ValueError(f"setting {name}={getattr(cfg, name)} must be at least {least}")


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
    """``<cache>/features/<dataset>/<profile>/<backbone>[_b<blocks>]_<HxW>_g<rows>x<cols>_<split>[_flips]_<key>.pt``;
    ``key`` hashes the image cache's fingerprint, the weights, the preparation folder and the CPU
    numerics (:func:`cmp_utils.core.numerics.fingerprint`: features computed unpinned are never reused pinned)."""
    cache = prepared.image_cache(split)
    height, width = cache.size
    weights = config.file_stamp(cfg.weights_path)  # path, size and mtime: replaced weights -> new features
    digest = hashlib.sha256(f"{cache.fingerprint}|{weights}|{cfg.pretrained}|{prepared.prepared_dir}|"
                            f"{numerics.fingerprint()}".encode())
    blocks = "" if cfg.backbone_blocks is None else f"_b{cfg.backbone_blocks}"
    name = (f"{cfg.backbone}{blocks}_{height}x{width}_g{cfg.pool_grid[0]}x{cfg.pool_grid[1]}_{split}"
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
    cached = atomic.load_torch_cache(path)  # None when absent, or damaged (then recomputed below)
    if cached is not None:
        return cached
    encoder = models.ImageEncoder(models.build_backbone(cfg.backbone, cfg.weights_path, cfg.pretrained,
                                                        cfg.backbone_blocks),
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
    """Exponential moving average of chosen tensors of a module (TF ``ExponentialMovingAverage``).

    After update $n$ (1-based): $\\bar\\theta \\leftarrow \\delta\\bar\\theta + (1-\\delta)\\theta$ with
    $\\delta = \\min(\\text{decay}, (1+n)/(10+n))$ when ``warmup`` (TF's ``num_updates=global_step``),
    else ``decay``. ``decay = 0`` means no averaging: the shadow equals the live tensors after
    every update.

    Which tensors (``names``, state-dict names; listed in :meth:`state_dict`):

    * ``scope="release"``: what the release's ``train_models.py`` averages with
      ``tf.train.ExponentialMovingAverage(0.9999, num_updates=global_step)`` over slim's model
      variables: the CNN and the two joint embeddings, **their batch-norm moving mean and
      variance included** (:meth:`cmp_utils.models.CrossModalModel.averaged_tensor_names`). The
      LSTM, the word embedding and the initial states stay live, as does CMPC's $W$ (it lives in
      the loss module, never averaged); the release's ``test_models.py`` restores the shadow
      values of the averaged variables only.
    * ``scope="all"``: every parameter of the module; buffers stay live.
    * ``scope=None``: the module's own ``ema_scope`` attribute (set by
      :func:`cmp_utils.models.build_model`), ``"all"`` for a module without one.

    :meth:`copy_to` writes the averaged tensors, and everything else from the live model, into an
    evaluation copy.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True, scope: str | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"setting ema_decay={decay} must be in [0, 1)")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.scope = scope or getattr(module, "ema_scope", "all")
        if self.scope not in models.EMA_SCOPES:
            raise ValueError(f"setting ema_scope={self.scope!r} must be one of {models.EMA_SCOPES}")
        if hasattr(module, "averaged_tensor_names"):
            self.names = list(module.averaged_tensor_names(self.scope))
        elif self.scope == "all":
            self.names = [name for name, _ in module.named_parameters()]
        else:
            raise ValueError(f"ema_scope={self.scope!r} needs a CrossModalModel; a {type(module).__name__} "
                             "only supports scope='all'")
        self.shadow = [tensor.detach().clone() for tensor in self._tensors(module)]
        self.num_updates = 0

    def _tensors(self, module: nn.Module) -> list[torch.Tensor]:
        """The live tensors of ``module`` named in :attr:`names`, in that order."""
        state = module.state_dict(keep_vars=True)
        missing = [name for name in self.names if name not in state]
        if missing:
            raise ValueError(f"EMA: the module lacks averaged tensors {missing[:3]} (different architecture?)")
        return [state[name].detach() for name in self.names]

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, self._tensors(module), weight)

    @torch.no_grad()
    def copy_to(self, target: nn.Module, live: nn.Module) -> nn.Module:
        """Load the averaged tensors, and every other parameter and buffer of ``live``, into ``target``."""
        averaged = dict(zip(self.names, self.shadow))
        live_state = live.state_dict(keep_vars=True)
        for name, tensor in target.state_dict(keep_vars=True).items():
            tensor.detach().copy_(averaged[name] if name in averaged else live_state[name].detach())
        return target

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shadow": [t.clone() for t in self.shadow], "num_updates": self.num_updates,
                "decay": self.decay, "warmup": self.warmup, "scope": self.scope}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("EMA state does not match the averaged tensors of the model (different architecture "
                             "or ema_scope?)")
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
        from ..data import IdentityBatchSampler

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


class ListBatchSampler(torch.utils.data.Sampler):
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
        loss_dtype = torch.promote_types(image_embeddings.dtype, torch.float32)  # autocast's bf16/fp16 -> fp32; fp64 stays
        return self.loss_module(image_embeddings.to(loss_dtype), text_embeddings.to(loss_dtype), global_labels)


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
    #: test metrics of ``best.pt`` when ``checkpoint_choice="last"`` and validation ran (else empty)
    test_best_validation: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "best_epoch": self.best_epoch,
                "best_validation": self.best_validation, "test": self.test,
                "test_best_validation": self.test_best_validation, "seconds": self.seconds,
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


def autocast_and_scaler(cfg: TrainConfig, device: torch.device):
    """(autocast context, gradient scaler or None) of ``amp``: ``"off"`` fp32 (the release and the
    paper profile); ``"auto"`` bf16 on CUDA (fp16 with a scaler where bf16 is unsupported), fp32
    elsewhere; ``"bf16"`` bf16 autocast on CUDA or, when asked explicitly, on the CPU; ``"fp16"``
    CUDA only."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return torch.autocast(device_type=device.type, enabled=False), None
    if device.type != "cuda":
        if cfg.amp == "fp16":
            raise ValueError(f"setting amp='fp16' needs CUDA (a gradient scaler); on {device.type} use amp='bf16' or 'off'")
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16), None
    dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    if cfg.amp == "auto" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast(device_type="cuda", dtype=dtype), scaler


def param_groups(model: models.CrossModalModel, loss_module: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Two Adam groups: weights of the CNN and of the joint embeddings (decayed), everything else.

    As the release's slim arg_scopes: conv / linear kernels carry the L2 weight decay; batch-norm
    parameters, biases, the text branch and CMPC's $W$ do not, and neither do depthwise kernels
    (``mobilenet_v1_arg_scope(regularize_depthwise=False)``, its default): a convolution with
    ``groups == in_channels > 1`` is depthwise.
    """
    decayed: list[nn.Parameter] = []
    if not model.takes_features:
        depthwise = {id(module.weight) for module in model.image_encoder.backbone.modules()
                     if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels}
        decayed += [p for p in model.image_encoder.backbone.parameters() if p.dim() > 1 and id(p) not in depthwise]
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
    if cfg.backbone in ("mobilenet_v1", "resnet152", *models.TF_EXACT_BACKBONES) and cfg.pretrained \
            and cfg.weights_path is None:
        raise FileNotFoundError(
            f"profile 'paper' trains {cfg.backbone} from ImageNet weights, which cannot be downloaded here: pass "
            f"weights_path=<{cfg.backbone} state dict> (CLI: --set weights_path=FILE; notebooks: -p weights_path FILE; "
            "make reproduce WEIGHTS=FILE or a folder of <backbone>.pth files), or pretrained=false to knowingly "
            "train from random init")
    if cfg.weights_path is not None and not Path(cfg.weights_path).expanduser().is_file():
        raise FileNotFoundError(f"setting weights_path={cfg.weights_path!r} does not exist")


#: Other file names a weights folder may use for a backbone (``<name>.pth``).
WEIGHTS_FILE_ALIASES = {"mobilenet_v1_tf": ("mobilenet_v1",), "resnet152_slim": ("resnet152", "resnet_v1_152")}


def resolve_weights_path(cfg: TrainConfig) -> TrainConfig:
    """``weights_path`` may name a folder holding one ImageNet state dict per backbone,
    ``<backbone>.pth`` (or ``.pt``): each run takes its backbone's file (``make reproduce
    WEIGHTS=<folder>`` gives every notebook the same value; CUHK-PEDES trains MobileNet v1, the
    others ResNet-152). Returns ``cfg`` with the file's path; a file path is kept as it is."""
    if cfg.weights_path is None or not Path(cfg.weights_path).expanduser().is_dir():
        return cfg
    folder = Path(cfg.weights_path).expanduser()
    # The exact TF twins also take the file named after the network they twin (mobilenet_v1.pth).
    names = (cfg.backbone, *WEIGHTS_FILE_ALIASES.get(cfg.backbone, ()))
    for name in names:
        for suffix in (".pth", ".pt"):
            if (folder / f"{name}{suffix}").is_file():
                return dataclasses.replace(cfg, weights_path=str(folder / f"{name}{suffix}"))
    raise FileNotFoundError(f"setting weights_path={cfg.weights_path!r} is a folder without {names[0]}.pth (or "
                            f"{', '.join(n + '.pth' for n in names[1:]) or '.pt'}): put the {cfg.backbone} state dict "
                            "there under that name, or pass the file itself")


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def build_run_model(cfg: TrainConfig, prepared, feature_dim: int | None = None) -> models.CrossModalModel:
    """The network a run with settings ``cfg`` trains on ``prepared`` data (``feature_dim``: the
    cached image features' size in ``feature_mode="cached"``, else ``None``).

    The recipe options (``word_embedding_init``, ``lstm_init``, ``lstm_backward``, ``bn_style``,
    ``joint_embedding``, ``ema_scope``) go to :func:`cmp_utils.models.build_model`. The data-side
    ones (``vocab_case_sensitive``, ``pad_shares_most_frequent``, ``num_classes_from``) shape the
    prepared data: a ``ValueError`` is raised when ``prepared`` was made with other values.
    """
    from ..data import check_prepared_options, recipe_options

    check_prepared_options(prepared, **recipe_options(cfg))
    return model_of_settings(cfg, len(prepared.vocabulary), prepared.vocabulary.pad_id, feature_dim)


def model_of_settings(cfg: TrainConfig, vocabulary_size: int, pad_id: int = 0,
                      feature_dim: int | None = None) -> models.CrossModalModel:
    """The network of settings ``cfg`` for a vocabulary of ``vocabulary_size`` words (padding id
    ``pad_id``); ``feature_dim`` as :func:`build_run_model`. No prepared data needed (benchmarks)."""
    return models.build_model(vocabulary_size, cfg.backbone, cfg.embedding_dim, cfg.word_dim,
                              cfg.hidden_size, cfg.dropout, pad_id, cfg.padded_steps,
                              cfg.pool_grid, cfg.weights_path, cfg.pretrained, cached_feature_dim=feature_dim,
                              word_embedding_init=cfg.word_embedding_init, lstm_init=cfg.lstm_init,
                              lstm_backward=cfg.lstm_backward, joint_embedding=cfg.joint_embedding,
                              bn_style=cfg.bn_style, ema_scope=cfg.ema_scope, backbone_blocks=cfg.backbone_blocks,
                              joint_embedding_init=cfg.joint_embedding_init, initial_state_init=cfg.initial_state_init,
                              lstm_bias=cfg.lstm_bias, lstm_input_dropout=cfg.lstm_input_dropout,
                              word_embedding_init_rows=cfg.word_embedding_init_rows)


def fit(settings: TrainConfig | dict) -> RunResult:
    """Train one model as ``settings`` say; write the run folder; return its :class:`RunResult`.

    Run folder: ``params.yaml`` (settings, git commit, torch threads), ``log.jsonl`` (one line per
    epoch: losses, step time, images/s, validation metrics) and the same scalars as TensorBoard
    events in ``tensorboard/`` (:mod:`cmp_utils.training.tensorboard_log`), ``checkpoints/last.pt`` and
    ``checkpoints/best.pt``, ``results.json``. With ``resume`` the run continues from ``last.pt``
    and ends where an uninterrupted run ends.

    Refused before any data is prepared: an unknown device, a paper run without its weights, an
    output folder that is a file or cannot be written, another run's folder without ``resume``,
    a folder another live process is writing (its ``.writer.lock``: one run owns a folder, so
    its ``results.json``, ``best.pt`` and ``last.pt`` come from that run), and ``resume`` with
    settings that differ from the run's ``params.yaml``. Refused before the
    first step: a batch larger than the training split.
    """
    cfg = resolve_weights_path(as_config(settings))
    config.resolve_device(cfg.device)  # an unknown or unavailable device fails here, by name
    _check_paper_inputs(cfg)
    out_dir = resolve_output_dir(cfg)
    check_output_dir(out_dir, cfg.resume)
    with _own_run_folder(out_dir):
        check_output_dir(out_dir, cfg.resume)  # again under the lock: a writer that just ended left a run
        check_resume_settings(cfg, out_dir)
        return _fit_in_threads(cfg, out_dir)


def _own_run_folder(out_dir: Path):
    """The run folder's lock (:func:`cmp_utils.core.atomic.hold_folder`), taken by the main process only
    (``RANK`` 0 or unset); the other processes of a torchrun job write nothing there."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return atomic.hold_folder(out_dir, purpose="cmp_utils.training run")


def _fit_in_threads(cfg: TrainConfig, out_dir: Path) -> RunResult:
    """:func:`_fit` with the run's torch threads and its process group set up and torn down."""
    with config.torch_threads(cfg.num_threads):
        context = distributed.setup(cfg.device)
        try:
            distributed.barrier()  # every process has checked the folder before rank 0 writes into it
            return _fit(cfg, context, out_dir)
        finally:
            distributed.cleanup()


#: The settings that decide what a run reads before its first step: the prepared dataset (synthetic
#: files, vocabulary, image caches) and, in cached mode, the frozen-backbone features. Runs that
#: agree on them share those files (:func:`prepare_inputs`).
INPUT_FIELDS = ("dataset", "profile", "data_dir", "cache_dir", "data_seed", "image_size", "backbone", "backbone_blocks",
                "weights_path", "pretrained", "pool_grid", "feature_mode", "cache_flips", "vocab_case_sensitive",
                "pad_shares_most_frequent", "num_classes_from", "device", "num_threads")


def input_key(settings: TrainConfig | dict) -> str:
    """The :data:`INPUT_FIELDS` of ``settings`` as one string: equal for runs that read the same caches."""
    cfg = as_config(settings)
    return json.dumps({name: getattr(cfg, name) for name in INPUT_FIELDS}, sort_keys=True, default=str)


def prepare_inputs(settings: TrainConfig | dict) -> None:
    """Build what a run of ``settings`` reads before its first step, and train nothing: the prepared
    dataset and, in cached mode, the feature cache of every split, computed exactly as :func:`fit`
    computes them (the run's thread count and seed). When they exist this only reads them.

    :func:`cmp_utils.experiments.train_jobs` calls it once per :func:`input_key` before it starts
    parallel runs, so that no two workers compute the same cache and no core waits for a whole run.
    """
    cfg = resolve_weights_path(as_config(settings))
    _check_paper_inputs(cfg)
    with config.torch_threads(cfg.num_threads):
        context = distributed.DistributedContext(device=config.resolve_device(cfg.device))
        config.seed_everything(cfg.seed, cfg.deterministic)
        _prepare_training_data(cfg, context, show=False)


# ---------------------------------------------------------------------------------------------
# fit: checks before anything runs
# ---------------------------------------------------------------------------------------------

#: What makes a folder a run folder (a new run refuses to write into one without ``resume``).
RUN_FILES = ("params.yaml", "log.jsonl", "results.json", "checkpoints")

#: Settings ``resume`` may change: where the run writes and reads its data, how it reports, how
#: long it runs, how many threads and loader workers it uses. Any other difference is refused.
RESUMABLE_CHANGES = ("resume", "epochs", "output_dir", "data_dir", "cache_dir", "device", "progress", "num_workers",
                     "num_threads", "eval_batch_size", "evaluate_test", "note")


def resolve_output_dir(cfg: TrainConfig) -> Path:
    """The run folder: ``cfg.output_dir``, else :func:`default_output_dir`."""
    return Path(cfg.output_dir).expanduser() if cfg.output_dir else default_output_dir(cfg)


def check_output_dir(out_dir: Path, resume: bool) -> None:
    """Refuse an output folder that cannot take the run: a file, a folder this user cannot write,
    or (without ``resume``) a folder that already holds a run (:data:`RUN_FILES`)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output_dir {out_dir} is a file, not a folder; pass another --output-dir")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output_dir {out_dir} cannot be written ({existing} is not a writable folder); "
                              "pass another --output-dir")
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found and not resume:
        raise FileExistsError(f"output_dir {out_dir} already holds a run ({', '.join(found)}): use --resume "
                              "(resume=True) to continue it, or another --output-dir for a new run")


def check_resume_settings(cfg: TrainConfig, out_dir: Path) -> None:
    """With ``resume``, refuse settings that differ from the run's ``params.yaml`` (all but
    :data:`RESUMABLE_CHANGES`), naming each differing setting with both values."""
    params_path = out_dir / "params.yaml"
    if not cfg.resume or not params_path.is_file():
        return
    import yaml

    saved = yaml.safe_load(params_path.read_text()) or {}
    current = cfg.to_dict()
    differing = [f"{name}: run {saved[name]!r}, now {current[name]!r}"
                 for name in sorted(_FIELDS - set(RESUMABLE_CHANGES)) if name in saved and saved[name] != current[name]]
    if differing:
        raise ValueError(f"resume: these settings differ from the run's {params_path}: {'; '.join(differing)}. "
                         "Resume with the run's settings, or start a new run in another --output-dir")


def refused_by_weights_only(error: BaseException) -> bool:
    """Whether ``error`` is torch's weights-only refusal (the file holds objects other than tensors
    and plain containers), not damage."""
    import pickle

    return isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower()


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with an error naming the file and the fix when it is
    empty or truncated (a run killed while a disk was full, a partial copy), or when it holds
    objects a weights-only load refuses (another program's checkpoint, or a crafted file)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError or UnpicklingError here
        if refused_by_weights_only(error):
            detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
            raise ValueError(
                f"checkpoint {path} holds disallowed objects (not only tensors and plain containers: {detail}), so the "
                f"safe weights-only load refused it. cmp_utils never writes such checkpoints: this file comes from "
                f"another program or was crafted, and unpickling it could run code. Do not load it with "
                f"weights_only=False unless you trust its source; retrain, or get the run folder again from its "
                f"author (docs/security.md)") from error
        raise ValueError(
            f"checkpoint {path} is empty or truncated and cannot be read ({type(error).__name__}: {error}). "
            f"Delete {path.name} (resuming then starts the run from scratch) or copy back an intact one; "
            f"to keep the run, restore {path} from a backup") from error


def check_batches(cfg: TrainConfig, num_captions: int, world_size: int, steps: int) -> None:
    """Refuse a run whose epoch would have no step (``batch_size`` above the training split) or
    whose global batch does not split evenly over the processes."""
    if steps == 0:
        raise ValueError(f"setting batch_size={cfg.batch_size} is larger than what the training split of "
                         f"{cfg.dataset} ({num_captions} captions, sampler {cfg.sampler!r}) can fill: an epoch would "
                         "have no step and the run would report an untrained model. Use a smaller batch_size")
    if cfg.batch_size % world_size:
        raise ValueError(f"setting batch_size={cfg.batch_size} must be a multiple of the number of processes "
                         f"{world_size}")


# ---------------------------------------------------------------------------------------------
# fit: setup
# ---------------------------------------------------------------------------------------------


@dataclass
class _TrainingData:
    """What the epochs read: the prepared dataset, the training captions as tensors, the cached
    image features (``feature_mode="cached"``) or the pair dataset (end to end)."""

    prepared: Any
    captions: dict[str, torch.Tensor]  # token_ids (N_T, L), lengths (N_T,), labels (N_T,), image_indices (N_T,)
    labels: np.ndarray  # (N_T,) identity / image / class of each training caption
    features: dict[str, torch.Tensor]  # cached: split -> (N_I, D) frozen-backbone features (train: (views, N_I, D))
    feature_dim: int | None = None
    pairs: Any = None  # data.PairDataset of the training split (end to end)


@dataclass
class RunState:
    """Everything an epoch changes, and what ``last.pt`` holds."""

    model: models.CrossModalModel
    loss_module: nn.Module
    step_module: "TrainStep"
    optimizer: torch.optim.Optimizer
    ema: WeightAverage
    eval_model: models.CrossModalModel  # the averaged weights, for validation and best.pt
    autocast: Any
    scaler: Any
    wrapped: nn.Module  # step_module, or its DistributedDataParallel wrapper
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    cnn_trainable: bool | None = None  # the current stage (None before the first epoch)
    trained_samples: int = 0


def _prepare_training_data(cfg: TrainConfig, context: distributed.DistributedContext, show: bool) -> _TrainingData:
    """Prepare the dataset (image caches, vocabulary) and, in cached mode, the frozen-backbone
    features of every split (rank 0 computes and writes them, the others read)."""
    from .. import data

    prepared = data.prepare_dataset(cfg.dataset, cfg.profile, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir,
                                    seed=cfg.data_seed, image_size=cfg.image_size, **data.recipe_options(cfg))
    captions = evaluate.caption_tensors(prepared.frames["train"], prepared.vocabulary)
    training = _TrainingData(prepared=prepared, captions=captions, labels=captions["labels"].numpy(), features={})
    if cfg.feature_mode != "cached":
        return training
    device = context.device
    if context.is_main:
        training.features["train"] = cached_image_features(prepared, "train", cfg, device, flips=cfg.cache_flips,
                                                           progress=show)
    distributed.barrier()
    if not context.is_main:
        training.features["train"] = cached_image_features(prepared, "train", cfg, device, flips=cfg.cache_flips)
    for split in {prepared.validation_split, prepared.test_split} - {None}:
        if context.is_main:
            training.features[split] = cached_image_features(prepared, split, cfg, device, progress=show)
    training.feature_dim = training.features["train"].shape[-1]
    train_features = training.features["train"].to(device)  # (N_I, D), or (2, N_I, D): plain, flipped
    training.features["train"] = train_features if cfg.cache_flips else train_features.unsqueeze(0)  # (views, N_I, D)
    return training


def new_optimizer(model: models.CrossModalModel, loss_module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over :func:`param_groups` (the release: one learning rate, decay on the CNN and joint embeddings).

    ``adam_epsilon="tf"``: every group also holds ``tf_epsilon`` (the configured epsilon) and
    ``tf_steps`` (steps taken, TF's shared ``beta1_power`` / ``beta2_power`` count), read by
    :func:`set_tf_adam_epsilon`; both travel in the optimizer's state dict (resume)."""
    groups = param_groups(model, loss_module, cfg)
    if cfg.adam_epsilon == "tf":
        groups = [{**group, "tf_epsilon": cfg.eps, "tf_steps": 0} for group in groups]
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def set_tf_adam_epsilon(optimizer: torch.optim.Optimizer) -> None:
    """Before step $t$ of an optimizer made with ``adam_epsilon="tf"``: ``eps`` = $\\epsilon/\\sqrt{1-\\beta_2^t}$
    in every group that holds ``tf_epsilon`` (:data:`ADAM_EPSILONS`), so that ``torch.optim.Adam``
    takes TF's step; groups without it are left alone."""
    for group in optimizer.param_groups:
        if "tf_epsilon" in group:
            group["tf_steps"] += 1
            group["eps"] = group["tf_epsilon"] / math.sqrt(1.0 - group["betas"][1] ** group["tf_steps"])


def new_weight_average(model: models.CrossModalModel, cfg: TrainConfig) -> WeightAverage:
    """The weight average of a run (a fresh one at the start and at the stage-2 restart)."""
    return WeightAverage(model, cfg.ema_decay, cfg.ema_warmup, scope=cfg.ema_scope)


def _build_run_state(cfg: TrainConfig, context: distributed.DistributedContext, training: _TrainingData) -> RunState:
    """Model, losses, optimiser, weight average and precision, seeded again (computing the
    feature cache consumed random numbers)."""
    from .. import data

    prepared = training.prepared
    config.seed_everything(cfg.seed, cfg.deterministic)
    model = build_run_model(cfg, prepared, training.feature_dim)
    state = build_run_state(cfg, model, prepared.num_classes, context.device, context.world_size)
    if cfg.feature_mode != "cached":  # building the dataset draws no random numbers
        training.pairs = data.PairDataset(prepared.frames["train"], prepared.vocabulary, prepared.image_cache("train"),
                                          train=True, backbone=state.model.image_encoder.normalisation)
    return state


def build_run_state(cfg: TrainConfig, model: models.CrossModalModel, num_classes: int, device: torch.device,
                    world_size: int = 1) -> RunState:
    """What :func:`train_step` needs for ``model`` under settings ``cfg``: the model on ``device``
    (SyncBatchNorm for several CUDA processes, channels-last images on CUDA), the losses over
    ``num_classes`` classes, :class:`TrainStep`, Adam with the weight-decay groups
    (:func:`new_optimizer`), the weight average (:func:`new_weight_average`) and the precision
    (``amp``). :func:`fit` and the benchmarks (:mod:`cmp_utils.tools.bench`) both build it here."""
    from ..losses import CrossModalLoss

    if world_size > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if device.type == "cuda" and cfg.channels_last and not model.takes_features:
        model.image_encoder.to(memory_format=torch.channels_last)
    loss_module = CrossModalLoss(cfg.losses, cfg.embedding_dim, num_classes, scope=cfg.loss_scope,
                                 **cfg.loss_options).to(device)
    step_module = TrainStep(model, loss_module)
    autocast, scaler = autocast_and_scaler(cfg, device)
    return RunState(model=model, loss_module=loss_module, step_module=step_module,
                     optimizer=new_optimizer(model, loss_module, cfg), ema=new_weight_average(model, cfg),
                     eval_model=copy.deepcopy(model).eval(), autocast=autocast, scaler=scaler, wrapped=step_module)


def _restore_last_checkpoint(state: RunState, checkpoints: Path, device: torch.device, is_main: bool) -> None:
    """``resume``: load weights, optimiser, average, scaler, history and random states from ``last.pt``."""
    path = checkpoints / "last.pt"
    if not path.is_file():
        if is_main:
            print(f"resume: no checkpoint at {path}; starting from scratch", file=sys.stderr)
        return
    saved = load_checkpoint(path, device)
    state.model.load_state_dict(saved["model"])
    state.loss_module.load_state_dict(saved["loss_module"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.ema.load_state_dict(saved["ema"])
    if state.scaler is not None and saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    state.start_epoch, state.best_score = int(saved["epoch"]), float(saved["best_score"])
    state.best_epoch, state.history = int(saved["best_epoch"]), json.loads(saved["history"])
    _set_rng_state(saved["rng"])


def _write_params(cfg: TrainConfig, out_dir: Path, context: distributed.DistributedContext,
                  prepared) -> None:
    """``params.yaml``: the settings plus what the run found (commit, processes, device, threads, CPU numerics,
    classes)."""
    atomic.write_yaml(out_dir / "params.yaml", {
        **cfg.to_dict(), "output_dir": str(out_dir), "git_commit": git_commit(), "world_size": context.world_size,
        "device": str(context.device), "torch": str(torch.__version__), "torch_threads": torch.get_num_threads(),
        "cpu_numerics": numerics.status(), "loader_workers": _loader_workers(cfg) if cfg.feature_mode != "cached" else 0,
        "num_classes": prepared.num_classes, "vocabulary_size": len(prepared.vocabulary)})


# ---------------------------------------------------------------------------------------------
# fit: the stage switch
# ---------------------------------------------------------------------------------------------


def stage_of(cfg: TrainConfig, epoch: int) -> tuple[bool, float]:
    """(is the CNN trained, learning rate) in ``epoch`` (0-based) of the two-stage schedule
    (release, ``train_models.py``): the first ``frozen_epochs`` epochs train everything but the
    CNN at ``lr``; then every layer at ``finetune_lr``. Without a frozen stage: all at ``lr``."""
    if cfg.frozen_epochs == 0:
        return True, cfg.lr
    return (False, cfg.lr) if epoch < cfg.frozen_epochs else (True, cfg.finetune_lr)


def _enter_stage(state: RunState, cfg: TrainConfig, epoch: int, context: distributed.DistributedContext) -> float:
    """Set the learning rate and the CNN's trainability of ``epoch``; return the learning rate.

    At the switch to stage 2 (epoch ``frozen_epochs``) with ``stage2_restart`` the release's
    restart is reproduced: its second stage is a new training job that restores the trainable
    variables only (``configuration.py``), so Adam's moments, the EMA shadows and the step count
    (the EMA warm-up) start afresh; the weights carry over. The batch-norm moving statistics
    carry over too (the release also restarts those, but its first stage never loaded the
    ImageNet statistics, while ours starts from them). The switch depends on the epoch only,
    so a run resumed at the boundary restarts exactly as an uninterrupted one.
    """
    cnn_trainable, lr = stage_of(cfg, epoch)
    if cfg.stage2_restart and cfg.frozen_epochs > 0 and epoch == cfg.frozen_epochs:
        state.optimizer = new_optimizer(state.model, state.loss_module, cfg)
        state.ema = new_weight_average(state.model, cfg)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    if cnn_trainable != state.cnn_trainable:
        _set_cnn_trainable(state.model, cnn_trainable)
        state.cnn_trainable = cnn_trainable
        if context.world_size > 1:  # DDP registers the parameters that need gradients: wrap again
            device = context.device
            state.wrapped = nn.parallel.DistributedDataParallel(
                state.step_module, device_ids=[device.index] if device.type == "cuda" else None)
    return lr


def _set_training_mode(state: RunState, cfg: TrainConfig) -> None:
    """Train mode; a frozen CNN's batch norm follows ``frozen_cnn_bn``: ``"batch_stats"`` (release
    stage 1 builds the frozen CNN with ``is_training=True``: batch statistics, moving statistics
    updated) or ``"eval"`` (the stored statistics, frozen)."""
    state.step_module.train()
    if not state.cnn_trainable and not state.model.takes_features and cfg.frozen_cnn_bn == "eval":
        state.model.image_encoder.eval()


# ---------------------------------------------------------------------------------------------
# fit: one epoch
# ---------------------------------------------------------------------------------------------


def _loader_workers(cfg: TrainConfig) -> int:
    """DataLoader worker processes: ``num_workers``, or (None) what the machine has, at most 8."""
    return cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)


def _epoch_batches(cfg: TrainConfig, training: _TrainingData, batches: list[list[int]], epoch: int,
                   context: distributed.DistributedContext):
    """This process's batches of ``epoch`` as ``(images, token_ids, lengths, labels)`` on the CPU:
    slices of the cached features (with the flip drawn per caption) or DataLoader batches."""
    from .. import data

    if cfg.feature_mode != "cached":
        loader = torch.utils.data.DataLoader(training.pairs, batch_sampler=ListBatchSampler(batches),
                                             collate_fn=data.collate_pairs, num_workers=_loader_workers(cfg),
                                             pin_memory=context.device.type == "cuda", persistent_workers=False)
        for batch in loader:
            yield batch["images"], batch["token_ids"], batch["lengths"], batch["labels"]
        return
    captions, train_features = training.captions, training.features["train"]  # (views, N_I, D)
    flip_generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 1000 + context.rank))
    for rows in batches:
        index = torch.as_tensor(rows)
        lengths = captions["lengths"][index]
        token_ids = captions["token_ids"][index, : int(lengths.max())]
        flipped = (torch.rand(len(rows), generator=flip_generator) < 0.5).long() * int(cfg.cache_flips)
        image_rows = captions["image_indices"][index]
        images = train_features[flipped.to(train_features.device), image_rows.to(train_features.device)]  # (b, D)
        yield images, token_ids, lengths, captions["labels"][index]


def train_step(state: RunState, cfg: TrainConfig, images: torch.Tensor, token_ids: torch.Tensor,
               lengths: torch.Tensor, labels: torch.Tensor, device: torch.device,
               world_size: int = 1) -> dict[str, torch.Tensor]:
    """One optimiser step of :func:`fit` on one batch (this process's rows, on any device): inputs to
    ``device`` (channels-last images on CUDA), the losses under ``amp``'s autocast, the global-batch
    backward (:func:`backward_global_loss`), Adam (through the gradient scaler, if any) and the
    weight-average update. Returns ``{loss name: scalar}`` of the global batch. The benchmarks time
    this same function. The release's step (``train_models.py``) groups its batch-norm updates, the
    EMA update and Adam's update in one ``tf.group`` with no order between them; here the EMA reads
    the weights after the update (``tests/training/test_step_equivalence.py`` pins the TF graph to this order)."""
    if device.type == "cuda" and cfg.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    images = images.to(device, non_blocking=True)
    token_ids, labels = token_ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    with state.autocast:
        losses = state.wrapped(images, token_ids, lengths.to(device), labels)
    state.optimizer.zero_grad(set_to_none=True)
    backward_global_loss(losses, state.step_module, world_size, state.scaler)
    set_tf_adam_epsilon(state.optimizer)  # adam_epsilon="tf": TF's epsilon placement; else nothing
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.ema.update(state.model)
    return losses


def _train_epoch(state: RunState, cfg: TrainConfig, training: _TrainingData, epoch: int,
                 context: distributed.DistributedContext, show: bool) -> dict[str, Any]:
    """One pass over the epoch's global batches; returns its log record (losses, time, throughput)."""
    from tqdm.auto import tqdm

    device, world = context.device, context.world_size
    _set_training_mode(state, cfg)
    torch.manual_seed(_epoch_seed(cfg.seed, epoch, context.rank))  # dropout, flips: a function of (seed, epoch, rank)
    batches = [local_slice(b, context.rank, world) for b in global_batches(training.labels, cfg, epoch)]
    loss_sums = {name: torch.zeros((), device=device) for name in cfg.losses}
    started = time.perf_counter()
    bar = tqdm(_epoch_batches(cfg, training, batches, epoch, context), total=len(batches),
               desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False, unit="batch", mininterval=3.0)
    for images, token_ids, lengths, labels in bar:
        losses = train_step(state, cfg, images, token_ids, lengths, labels, device, world)
        for name, value in losses.items():
            loss_sums[name] += value.detach()
        state.trained_samples += len(labels) * world
    seconds = time.perf_counter() - started
    steps = max(1, len(batches))
    epoch_losses = {name: float(value) / steps for name, value in loss_sums.items()}
    images_per_second = len(batches) * cfg.batch_size / max(seconds, 1e-9)
    return {"epoch": epoch + 1, "cnn_trainable": bool(state.cnn_trainable) and not state.model.takes_features,
            "loss": sum(epoch_losses.values()), **{f"loss_{k}": v for k, v in epoch_losses.items()},
            "steps": len(batches), "seconds": seconds, "step_seconds": seconds / steps,
            "images_per_second": images_per_second, "samples_per_second": images_per_second}


# ---------------------------------------------------------------------------------------------
# fit: evaluation, selection, checkpoints
# ---------------------------------------------------------------------------------------------


def selection_split(cfg: TrainConfig, prepared) -> str | None:
    """The split ``best.pt`` is chosen on: the validation split (``select_split="validation"``; None
    when the dataset has none: the last epoch is kept) or the test split (``"test"``, a public
    port's choice: optimistic, its test numbers are selected on themselves)."""
    return prepared.test_split if cfg.select_split == "test" else prepared.validation_split


def validates_in(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` (0-based) is validated: every ``validate_every`` epochs and the last one;
    never with ``validate_every=0`` (the release has no validation loop: the last epoch is kept)."""
    return cfg.validate_every > 0 and ((epoch + 1) % cfg.validate_every == 0 or epoch + 1 == cfg.epochs)


def _evaluate_epoch(state: RunState, cfg: TrainConfig, training: _TrainingData, epoch: int,
                    device: torch.device, record: dict[str, Any]) -> float | None:
    """Score the averaged weights (copied into ``eval_model``) on the selection split when this
    epoch validates; add ``val_<metric>`` to ``record``; return the selection score, the epoch
    number when nothing is validated (the last epoch wins), or None (not validated this epoch)."""
    state.ema.copy_to(state.eval_model, state.model)
    split = selection_split(cfg, training.prepared)
    if cfg.validate_every == 0 or split is None:
        return float(epoch)
    if not validates_in(cfg, epoch):
        return None
    started = time.perf_counter()
    metrics = evaluate.flat_metrics(evaluate.evaluate_split(state.eval_model, training.prepared, split, device,
                                                            cfg.eval_batch_size, training.features.get(split)))
    record.update({f"val_{k}": v for k, v in metrics.items()}, selected_on=split,
                  eval_seconds=time.perf_counter() - started)
    if cfg.select_metric not in metrics:
        raise KeyError(f"setting select_metric={cfg.select_metric!r} is not among the metrics {sorted(metrics)}")
    return metrics[cfg.select_metric]


def _save_checkpoints(state: RunState, cfg: TrainConfig, out_dir: Path, epoch: int, score: float | None) -> None:
    """``best.pt`` (averaged weights) when ``score`` beats the best so far; ``last.pt`` (everything
    a resume needs) and ``log.jsonl`` after every epoch, each written atomically."""
    checkpoints = out_dir / "checkpoints"
    if score is not None and score > state.best_score:
        state.best_score, state.best_epoch = score, epoch + 1
        atomic.torch_save(checkpoints / "best.pt", {"model": state.eval_model.state_dict(), "epoch": epoch + 1,
                                                    "score": score, "select_metric": cfg.select_metric})
    atomic.torch_save(checkpoints / "last.pt", {
        "model": state.model.state_dict(), "loss_module": state.loss_module.state_dict(),
        "optimizer": state.optimizer.state_dict(), "ema": state.ema.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else {},
        "epoch": epoch + 1, "best_score": state.best_score, "best_epoch": state.best_epoch,
        "history": json.dumps(state.history), "rng": _rng_state()})
    atomic.write_text(out_dir / "log.jsonl", "".join(json.dumps(line) + "\n" for line in state.history))


def _final_result(state: RunState, cfg: TrainConfig, training: _TrainingData, out_dir: Path,
                  context: distributed.DistributedContext, total_seconds: float) -> RunResult:
    """Score the test split (rank 0) with the weights ``checkpoint_choice`` names, write ``results.json``.

    ``"last"``: the last epoch's averaged weights (``eval_model`` holds them after the last epoch),
    and ``best.pt`` too when validation chose one (``test_best_validation``); ``"best_validation"``:
    ``best.pt``."""
    test: dict[str, float] = {}
    test_best_validation: dict[str, float] = {}
    best_validation: dict[str, float] = {}
    prepared = training.prepared

    def score_test() -> dict[str, float]:
        return evaluate.flat_metrics(evaluate.evaluate_split(
            state.eval_model, prepared, prepared.test_split, context.device, cfg.eval_batch_size,
            training.features.get(prepared.test_split)))

    if context.is_main:
        best_path = out_dir / "checkpoints" / "best.pt"
        validated = any(key.startswith("val_") for record in state.history for key in record)
        if cfg.checkpoint_choice == "last":
            state.ema.copy_to(state.eval_model, state.model)
            atomic.torch_save(out_dir / "checkpoints" / CHECKPOINT_FILES["last"],
                              {"model": state.eval_model.state_dict(), "epoch": cfg.epochs})
            if cfg.evaluate_test:
                test = score_test()
        if best_path.is_file() and (cfg.checkpoint_choice == "best_validation" or validated):
            state.eval_model.load_state_dict(load_checkpoint(best_path, context.device)["model"])
            if cfg.evaluate_test:
                scores = score_test()
                if cfg.checkpoint_choice == "best_validation":
                    test = scores
                else:
                    test_best_validation = scores
        elif cfg.checkpoint_choice == "best_validation" and cfg.evaluate_test:
            test = score_test()
        best_validation = next(({k[4:]: v for k, v in r.items() if k.startswith("val_")}
                                for r in state.history if r["epoch"] == state.best_epoch), {})
    trained_seconds = sum(r["seconds"] for r in state.history[state.start_epoch:])
    result = RunResult(output_dir=out_dir, history=state.history, best_epoch=state.best_epoch,
                       best_validation=best_validation, test=test, test_best_validation=test_best_validation,
                       seconds=total_seconds,
                       samples_per_second=state.trained_samples / trained_seconds if trained_seconds else 0.0,
                       settings=cfg.to_dict())
    if context.is_main:
        atomic.write_text(out_dir / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# fit: the run
# ---------------------------------------------------------------------------------------------


def _fit(cfg: TrainConfig, context: distributed.DistributedContext, out_dir: Path) -> RunResult:
    """Setup, then per epoch: stage, one epoch, evaluation and selection, checkpoints; then the test."""
    from tqdm.auto import tqdm

    show = cfg.progress and context.is_main
    config.seed_everything(cfg.seed, cfg.deterministic)
    if context.device.type == "cuda":
        numerics.set_cuda_tf32(cfg.cuda_tf32)
    training = _prepare_training_data(cfg, context, show)
    steps = len(global_batches(training.labels, cfg, 0))
    check_batches(cfg, len(training.labels), context.world_size, steps)
    state = _build_run_state(cfg, context, training)
    if cfg.resume:
        _restore_last_checkpoint(state, out_dir / "checkpoints", context.device, context.is_main)
    if context.is_main:
        if cfg.resume:  # the finished part's results no longer describe best.pt / last.pt once training goes on
            (out_dir / "results.json").unlink(missing_ok=True)
        _write_params(cfg, out_dir, context, training.prepared)

    from .tensorboard_log import EpochScalars

    scalars = EpochScalars(out_dir) if context.is_main else None  # <run>/tensorboard/: the epoch records' scalars
    run_start = time.perf_counter()
    epoch_bar = tqdm(total=cfg.epochs, initial=state.start_epoch, desc=f"train {cfg.dataset}/{cfg.profile}",
                     unit="epoch", disable=not show)
    for epoch in range(state.start_epoch, cfg.epochs):
        lr = _enter_stage(state, cfg, epoch, context)
        record = {"lr": lr, **_train_epoch(state, cfg, training, epoch, context, show)}
        record = {"epoch": record.pop("epoch"), **record}
        if context.is_main:
            score = _evaluate_epoch(state, cfg, training, epoch, context.device, record)
            state.history.append(record)
            _save_checkpoints(state, cfg, out_dir, epoch, score)
            scalars.write(record)
            epoch_bar.set_postfix(loss=f"{record['loss']:.3f}", images_per_s=f"{record['images_per_second']:.0f}",
                                  **({"val": f"{record[f'val_{cfg.select_metric}']:.1f}"}
                                     if f"val_{cfg.select_metric}" in record else {}))
        epoch_bar.update(1)
        distributed.barrier()
    epoch_bar.close()
    if scalars is not None:
        scalars.close()
    return _final_result(state, cfg, training, out_dir, context, time.perf_counter() - run_start)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m cmp_utils.training``: one run; settings = the profile's, then ``--config FILE``, then
    the named options, then each ``--set KEY=VALUE`` (any :class:`TrainConfig` field)."""
    parser = argparse.ArgumentParser(
        prog="python -m cmp_utils.training", description="Train a CMPM/CMPC model (torchrun for several processes).",
        epilog="Example: python -m cmp_utils.training --profile paper --data-dir /data/cmp --set weights_path=mnv1.pth "
               "--set epochs=10. Every setting: see cmp_utils.training.TrainConfig.")
    parser.add_argument("--profile", default="smoke", choices=config.PROFILES)
    parser.add_argument("--dataset", default="cuhk_pedes", choices=config.DATASETS)
    parser.add_argument("--config", help="YAML file of setting overrides (keys of TrainConfig)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="one setting (any TrainConfig field; the value is YAML: 32, 2e-4, false, [224, 224]); "
                             "repeatable, applied last")
    parser.add_argument("--output-dir", help="run folder (default <results>/runs/<profile>/<dataset>/<losses>_seed<k>)")
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last.pt")
    parser.add_argument("--losses", help="comma-separated loss names, e.g. cmpm,cmpc")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
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
    try:
        overrides.update(parse_setting(text) for text in args.settings)
        settings = make_config(args.profile, args.dataset, **overrides)
        config.resolve_device(settings.device)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    try:
        result = fit(settings)
    except atomic.FolderLockedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if distributed.is_main_process() and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"output_dir": str(result.output_dir), "best_epoch": result.best_epoch,
                          "test": result.test, "seconds": round(result.seconds, 1)}))
    return 0

