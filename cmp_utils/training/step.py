"""The run state and the one training step: model, losses, optimiser groups, weight average, global batches
and :func:`train_step`, which :func:`cmp_utils.training.fit` and the benchmarks both call."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import models
from . import distributed
from .settings import TrainConfig

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
            raise ValueError(
                f"ema_scope={self.scope!r} needs a CrossModalModel; a {type(module).__name__} only supports scope='all'"
            )
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
        return {
            "names": list(self.names),
            "shadow": [t.clone() for t in self.shadow],
            "num_updates": self.num_updates,
            "decay": self.decay,
            "warmup": self.warmup,
            "scope": self.scope,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(
                "EMA state does not match the averaged tensors of the model (different architecture or ema_scope?)"
            )
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
        batches = [
            order[s : s + cfg.batch_size].tolist() for s in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)
        ]
    if cfg.max_steps_per_epoch is not None:
        batches = batches[: cfg.max_steps_per_epoch]
    return batches


def local_slice(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's contiguous share of a global batch (the batch size must divide evenly)."""
    if len(batch) % world_size:
        raise ValueError(f"setting batch_size={len(batch)} must be a multiple of the number of processes {world_size}")
    share = len(batch) // world_size
    return list(batch[rank * share : (rank + 1) * share])


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
        return (
            list(self.model.image_embedding.parameters())
            + list(self.model.text_embedding.parameters())
            + list(self.loss_module.parameters())
        )

    def forward(
        self, images: torch.Tensor, token_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        image_features = distributed.all_gather_with_grad(self.model.image_features(images))  # (B, D_img)
        text_features = distributed.all_gather_with_grad(self.model.text_features(token_ids, lengths))  # (B, D_txt)
        global_labels = distributed.all_gather_tensor(labels)  # (B,)
        image_embeddings = self.model.image_embedding(image_features)  # x: (B, d)
        text_embeddings = self.model.text_embedding(text_features)  # z: (B, d)
        loss_dtype = torch.promote_types(
            image_embeddings.dtype, torch.float32
        )  # autocast's bf16/fp16 -> fp32; fp64 stays
        return self.loss_module(image_embeddings.to(loss_dtype), text_embeddings.to(loss_dtype), global_labels)


def backward_global_loss(
    losses: dict[str, torch.Tensor],
    step_module: TrainStep,
    world_size: int,
    scaler: "torch.amp.GradScaler | None" = None,
) -> torch.Tensor:
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


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors / plain types (loadable with ``weights_only=True``)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["gauss"])
    )


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
            raise ValueError(
                f"setting amp='fp16' needs CUDA (a gradient scaler); on {device.type} use amp='bf16' or 'off'"
            )
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
        depthwise = {
            id(module.weight)
            for module in model.image_encoder.backbone.modules()
            if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        }
        decayed += [p for p in model.image_encoder.backbone.parameters() if p.dim() > 1 and id(p) not in depthwise]
    decayed += [model.image_embedding.projection.weight, model.text_embedding.projection.weight]
    decayed_ids = {id(p) for p in decayed}
    others = [p for p in model.parameters() if id(p) not in decayed_ids] + list(loss_module.parameters())
    return [
        {"params": decayed, "weight_decay": cfg.weight_decay, "name": "decayed"},
        {"params": others, "weight_decay": 0.0, "name": "others"},
    ]


def _set_cnn_trainable(model: models.CrossModalModel, trainable: bool) -> None:
    if model.takes_features:
        return
    for parameter in model.image_encoder.backbone.parameters():
        parameter.requires_grad_(trainable)


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


def model_of_settings(
    cfg: TrainConfig, vocabulary_size: int, pad_id: int = 0, feature_dim: int | None = None
) -> models.CrossModalModel:
    """The network of settings ``cfg`` for a vocabulary of ``vocabulary_size`` words (padding id
    ``pad_id``); ``feature_dim`` as :func:`build_run_model`. No prepared data needed (benchmarks)."""
    return models.build_model(
        vocabulary_size,
        cfg.backbone,
        cfg.embedding_dim,
        cfg.word_dim,
        cfg.hidden_size,
        cfg.dropout,
        pad_id,
        cfg.padded_steps,
        cfg.pool_grid,
        cfg.weights_path,
        cfg.pretrained,
        cached_feature_dim=feature_dim,
        word_embedding_init=cfg.word_embedding_init,
        lstm_init=cfg.lstm_init,
        lstm_backward=cfg.lstm_backward,
        joint_embedding=cfg.joint_embedding,
        bn_style=cfg.bn_style,
        ema_scope=cfg.ema_scope,
        backbone_blocks=cfg.backbone_blocks,
        joint_embedding_init=cfg.joint_embedding_init,
        initial_state_init=cfg.initial_state_init,
        lstm_bias=cfg.lstm_bias,
        lstm_input_dropout=cfg.lstm_input_dropout,
        word_embedding_init_rows=cfg.word_embedding_init_rows,
    )


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


def build_run_state(
    cfg: TrainConfig, model: models.CrossModalModel, num_classes: int, device: torch.device, world_size: int = 1
) -> RunState:
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
    loss_module = CrossModalLoss(
        cfg.losses, cfg.embedding_dim, num_classes, scope=cfg.loss_scope, **cfg.loss_options
    ).to(device)
    step_module = TrainStep(model, loss_module)
    autocast, scaler = autocast_and_scaler(cfg, device)
    return RunState(
        model=model,
        loss_module=loss_module,
        step_module=step_module,
        optimizer=new_optimizer(model, loss_module, cfg),
        ema=new_weight_average(model, cfg),
        eval_model=copy.deepcopy(model).eval(),
        autocast=autocast,
        scaler=scaler,
        wrapped=step_module,
    )


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


def train_step(
    state: RunState,
    cfg: TrainConfig,
    images: torch.Tensor,
    token_ids: torch.Tensor,
    lengths: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
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
