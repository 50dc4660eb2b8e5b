"""The training loop, :func:`fit`: checks, setup, per epoch the stage switch, one epoch, evaluation and
selection, checkpoints, and the final test."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import atomic, config, numerics
from ..evaluation import evaluate
from . import distributed
from .features import cached_image_features
from .run_folder import (
    CHECKPOINT_FILES,
    _own_run_folder,
    _restore_last_checkpoint,
    _save_checkpoints,
    _write_params,
    check_output_dir,
    check_resume_settings,
    load_checkpoint,
    resolve_output_dir,
)
from .settings import TrainConfig, _check_paper_inputs, _loader_workers, as_config, resolve_weights_path
from .step import (
    ListBatchSampler,
    RunState,
    _epoch_seed,
    _set_cnn_trainable,
    _TrainingData,
    build_run_model,
    build_run_state,
    global_batches,
    local_slice,
    new_optimizer,
    new_weight_average,
    stage_of,
    train_step,
)

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
    #: epochs trained (fewer than ``epochs`` when early stopping ended the run)
    epochs_trained: int = 0
    #: whether ``patience`` validations without a new best ended the run before ``epochs``
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "best_epoch": self.best_epoch,
            "best_validation": self.best_validation,
            "test": self.test,
            "test_best_validation": self.test_best_validation,
            "seconds": self.seconds,
            "samples_per_second": self.samples_per_second,
            "epochs_trained": self.epochs_trained,
            "stopped_early": self.stopped_early,
            "history": self.history,
        }


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
INPUT_FIELDS = (
    "dataset",
    "profile",
    "data_dir",
    "cache_dir",
    "data_seed",
    "image_size",
    "backbone",
    "backbone_blocks",
    "weights_path",
    "pretrained",
    "pool_grid",
    "feature_mode",
    "cache_flips",
    "vocab_case_sensitive",
    "pad_shares_most_frequent",
    "num_classes_from",
    "device",
    "num_threads",
)


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


def check_batches(cfg: TrainConfig, num_captions: int, world_size: int, steps: int) -> None:
    """Refuse a run whose epoch would have no step (``batch_size`` above the training split) or
    whose global batch does not split evenly over the processes."""
    if steps == 0:
        raise ValueError(
            f"setting batch_size={cfg.batch_size} is larger than what the training split of "
            f"{cfg.dataset} ({num_captions} captions, sampler {cfg.sampler!r}) can fill: an epoch would "
            "have no step and the run would report an untrained model. Use a smaller batch_size"
        )
    if cfg.batch_size % world_size:
        raise ValueError(
            f"setting batch_size={cfg.batch_size} must be a multiple of the number of processes {world_size}"
        )


def _prepare_training_data(cfg: TrainConfig, context: distributed.DistributedContext, show: bool) -> _TrainingData:
    """Prepare the dataset (image caches, vocabulary) and, in cached mode, the frozen-backbone
    features of every split (rank 0 computes and writes them, the others read)."""
    from .. import data

    prepared = data.prepare_dataset(
        cfg.dataset,
        cfg.profile,
        data_dir=cfg.data_dir,
        cache_dir=cfg.cache_dir,
        seed=cfg.data_seed,
        image_size=cfg.image_size,
        **data.recipe_options(cfg),
    )
    captions = evaluate.caption_tensors(prepared.frames["train"], prepared.vocabulary)
    training = _TrainingData(prepared=prepared, captions=captions, labels=captions["labels"].numpy(), features={})
    if cfg.feature_mode != "cached":
        return training
    device = context.device
    if context.is_main:
        training.features["train"] = cached_image_features(
            prepared, "train", cfg, device, flips=cfg.cache_flips, progress=show
        )
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


def _build_run_state(cfg: TrainConfig, context: distributed.DistributedContext, training: _TrainingData) -> RunState:
    """Model, losses, optimiser, weight average and precision, seeded again (computing the
    feature cache consumed random numbers)."""
    from .. import data

    prepared = training.prepared
    config.seed_everything(cfg.seed, cfg.deterministic)
    model = build_run_model(cfg, prepared, training.feature_dim)
    state = build_run_state(cfg, model, prepared.num_classes, context.device, context.world_size)
    if cfg.feature_mode != "cached":  # building the dataset draws no random numbers
        training.pairs = data.PairDataset(
            prepared.frames["train"],
            prepared.vocabulary,
            prepared.image_cache("train"),
            train=True,
            backbone=state.model.image_encoder.normalisation,
        )
    return state


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
                state.step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
    return lr


def _set_training_mode(state: RunState, cfg: TrainConfig) -> None:
    """Train mode; a frozen CNN's batch norm follows ``frozen_cnn_bn``: ``"batch_stats"`` (release
    stage 1 builds the frozen CNN with ``is_training=True``: batch statistics, moving statistics
    updated) or ``"eval"`` (the stored statistics, frozen)."""
    state.step_module.train()
    if not state.cnn_trainable and not state.model.takes_features and cfg.frozen_cnn_bn == "eval":
        state.model.image_encoder.eval()


def _epoch_batches(
    cfg: TrainConfig,
    training: _TrainingData,
    batches: list[list[int]],
    epoch: int,
    context: distributed.DistributedContext,
):
    """This process's batches of ``epoch`` as ``(images, token_ids, lengths, labels)`` on the CPU:
    slices of the cached features (with the flip drawn per caption) or DataLoader batches."""
    from .. import data

    if cfg.feature_mode != "cached":
        loader = torch.utils.data.DataLoader(
            training.pairs,
            batch_sampler=ListBatchSampler(batches),
            collate_fn=data.collate_pairs,
            num_workers=_loader_workers(cfg),
            pin_memory=context.device.type == "cuda",
            persistent_workers=False,
        )
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


def _train_epoch(
    state: RunState,
    cfg: TrainConfig,
    training: _TrainingData,
    epoch: int,
    context: distributed.DistributedContext,
    show: bool,
) -> dict[str, Any]:
    """One pass over the epoch's global batches; returns its log record (losses, time, throughput)."""
    from tqdm.auto import tqdm

    device, world = context.device, context.world_size
    _set_training_mode(state, cfg)
    torch.manual_seed(_epoch_seed(cfg.seed, epoch, context.rank))  # dropout, flips: a function of (seed, epoch, rank)
    batches = [local_slice(b, context.rank, world) for b in global_batches(training.labels, cfg, epoch)]
    loss_sums = {name: torch.zeros((), device=device) for name in cfg.losses}
    started = time.perf_counter()
    bar = tqdm(
        _epoch_batches(cfg, training, batches, epoch, context),
        total=len(batches),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not show,
        leave=False,
        unit="batch",
        mininterval=3.0,
    )
    for images, token_ids, lengths, labels in bar:
        losses = train_step(state, cfg, images, token_ids, lengths, labels, device, world)
        for name, value in losses.items():
            loss_sums[name] += value.detach()
        state.trained_samples += len(labels) * world
    seconds = time.perf_counter() - started
    steps = max(1, len(batches))
    epoch_losses = {name: float(value) / steps for name, value in loss_sums.items()}
    images_per_second = len(batches) * cfg.batch_size / max(seconds, 1e-9)
    return {
        "epoch": epoch + 1,
        "cnn_trainable": bool(state.cnn_trainable) and not state.model.takes_features,
        "loss": sum(epoch_losses.values()),
        **{f"loss_{k}": v for k, v in epoch_losses.items()},
        "steps": len(batches),
        "seconds": seconds,
        "step_seconds": seconds / steps,
        "images_per_second": images_per_second,
        "samples_per_second": images_per_second,
    }


# ---------------------------------------------------------------------------------------------
# fit: evaluation, selection, checkpoints
# ---------------------------------------------------------------------------------------------


def selection_split(cfg: TrainConfig, prepared) -> str | None:
    """The split ``best.pt`` is chosen on: the validation split (``select_split="validation"``; None
    when the dataset has none: the last epoch is kept) or the test split (``"test"``, a public
    port's choice: optimistic, its test numbers are selected on themselves)."""
    return prepared.test_split if cfg.select_split == "test" else prepared.validation_split


def validations_since_best(history: list[dict[str, Any]], best_epoch: int, metric: str) -> int:
    """How many validated epochs of ``history`` came after ``best_epoch`` (1-based; the epoch whose
    ``val_<metric>`` ``best.pt`` holds): 0 when the last validation set the best so far."""
    return sum(1 for record in history if record["epoch"] > best_epoch and f"val_{metric}" in record)


def stops_early(cfg: TrainConfig, state: RunState) -> bool:
    """Whether early stopping ends the run now: ``patience`` validations in a row brought no new best
    (the best as :func:`~cmp_utils.training.run_folder.save_checkpoints` keeps it: strictly higher).
    Read off the history, so a resumed run that had stopped stays stopped."""
    if cfg.patience is None or not state.history:
        return False
    return validations_since_best(state.history, state.best_epoch, cfg.select_metric) >= cfg.patience


def validates_in(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` (0-based) is validated: every ``validate_every`` epochs and the last one;
    never with ``validate_every=0`` (the release has no validation loop: the last epoch is kept)."""
    return cfg.validate_every > 0 and ((epoch + 1) % cfg.validate_every == 0 or epoch + 1 == cfg.epochs)


def _evaluate_epoch(
    state: RunState, cfg: TrainConfig, training: _TrainingData, epoch: int, device: torch.device, record: dict[str, Any]
) -> float | None:
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
    metrics = evaluate.flat_metrics(
        evaluate.evaluate_split(
            state.eval_model, training.prepared, split, device, cfg.eval_batch_size, training.features.get(split)
        )
    )
    record.update(
        {f"val_{k}": v for k, v in metrics.items()}, selected_on=split, eval_seconds=time.perf_counter() - started
    )
    if cfg.select_metric not in metrics:
        raise KeyError(f"setting select_metric={cfg.select_metric!r} is not among the metrics {sorted(metrics)}")
    return metrics[cfg.select_metric]


def _final_result(
    state: RunState,
    cfg: TrainConfig,
    training: _TrainingData,
    out_dir: Path,
    context: distributed.DistributedContext,
    total_seconds: float,
) -> RunResult:
    """Score the test split (rank 0) with the weights ``checkpoint_choice`` names, write ``results.json``.

    ``"last"``: the last epoch's averaged weights (``eval_model`` holds them after the last epoch),
    and ``best.pt`` too when validation chose one (``test_best_validation``); ``"best_validation"``:
    ``best.pt``."""
    test: dict[str, float] = {}
    test_best_validation: dict[str, float] = {}
    best_validation: dict[str, float] = {}
    prepared = training.prepared

    def score_test() -> dict[str, float]:
        return evaluate.flat_metrics(
            evaluate.evaluate_split(
                state.eval_model,
                prepared,
                prepared.test_split,
                context.device,
                cfg.eval_batch_size,
                training.features.get(prepared.test_split),
            )
        )

    if context.is_main:
        best_path = out_dir / "checkpoints" / "best.pt"
        validated = any(key.startswith("val_") for record in state.history for key in record)
        if cfg.checkpoint_choice == "last":
            state.ema.copy_to(state.eval_model, state.model)
            atomic.torch_save(
                out_dir / "checkpoints" / CHECKPOINT_FILES["last"],
                {"model": state.eval_model.state_dict(), "epoch": cfg.epochs},
            )
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
        best_validation = next(
            (
                {k[4:]: v for k, v in r.items() if k.startswith("val_")}
                for r in state.history
                if r["epoch"] == state.best_epoch
            ),
            {},
        )
    trained_seconds = sum(r["seconds"] for r in state.history[state.start_epoch :])
    result = RunResult(
        output_dir=out_dir,
        history=state.history,
        best_epoch=state.best_epoch,
        best_validation=best_validation,
        test=test,
        test_best_validation=test_best_validation,
        seconds=total_seconds,
        samples_per_second=state.trained_samples / trained_seconds if trained_seconds else 0.0,
        settings=cfg.to_dict(),
        epochs_trained=len(state.history),
        stopped_early=len(state.history) < cfg.epochs and stops_early(cfg, state),
    )
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
    epoch_bar = tqdm(
        total=cfg.epochs,
        initial=state.start_epoch,
        desc=f"train {cfg.dataset}/{cfg.profile}",
        unit="epoch",
        disable=not show,
    )
    for epoch in range(state.start_epoch, cfg.epochs):
        if distributed.broadcast_flag(context.is_main and stops_early(cfg, state), context.device):
            break  # rank 0 keeps the history: every process stops with it
        lr = _enter_stage(state, cfg, epoch, context)
        record = {"lr": lr, **_train_epoch(state, cfg, training, epoch, context, show)}
        record = {"epoch": record.pop("epoch"), **record}
        if context.is_main:
            score = _evaluate_epoch(state, cfg, training, epoch, context.device, record)
            state.history.append(record)
            _save_checkpoints(state, cfg, out_dir, epoch, score)
            scalars.write(record)
            epoch_bar.set_postfix(
                loss=f"{record['loss']:.3f}",
                images_per_s=f"{record['images_per_second']:.0f}",
                **(
                    {"val": f"{record[f'val_{cfg.select_metric}']:.1f}"} if f"val_{cfg.select_metric}" in record else {}
                ),
            )
        epoch_bar.update(1)
        distributed.barrier()
    epoch_bar.close()
    if scalars is not None:
        scalars.close()
    return _final_result(state, cfg, training, out_dir, context, time.perf_counter() - run_start)
