"""Benchmarks of training: the quick profile's step and its data pipeline, the paper model's GPU steps and
epoch, and the cost of the pinned CPU numerics."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

from ...core import config
from .kernels import bench_vendor_kernels
from .timing import (
    CUHK_TRAIN_IDS,
    CUHK_TRAIN_IMAGES,
    PAPER_DIM,
    PAPER_VOCABULARY,
    PIPELINE_EFFICIENCY_GOAL,
    Rows,
    _synchronise,
    median,
    time_interleaved,
)

# ---------------------------------------------------------------------------------------------
# Training step
# ---------------------------------------------------------------------------------------------


class RunTrainer:
    """The run state of a :class:`cmp_utils.training.TrainConfig` as :func:`cmp_utils.training.fit` builds it
    (model of every recipe setting, losses, Adam with the weight-decay groups, the weight average
    of ``ema_scope``), one :func:`cmp_utils.training.train_step` per call."""

    def __init__(self, cfg, prepared, feature_dim: int | None, device: torch.device):
        from ... import training

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "random init" warnings of backbones without offline weights
            model = training.build_run_model(cfg, prepared, feature_dim)
        self.state = training.build_run_state(cfg, model, prepared.num_classes, device)
        self.state.step_module.train()
        self.model = self.state.model
        self.cfg, self.device = cfg, device

    def step(self, images: torch.Tensor, token_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        """Forward, losses, backward, Adam, EMA: :func:`cmp_utils.training.train_step`, as fit calls it per batch."""
        from ... import training

        training.train_step(self.state, self.cfg, images, token_ids, lengths, labels, self.device)


def _cached_batch(
    rows: Sequence[int],
    captions: dict[str, torch.Tensor],
    train_features: torch.Tensor,
    flip_generator: torch.Generator,
) -> tuple[torch.Tensor, ...]:
    """One batch of the cached-features mode, sliced exactly as :func:`cmp_utils.training.fit` slices it."""
    index = torch.as_tensor(rows)
    lengths = captions["lengths"][index]  # (b,)
    token_ids = captions["token_ids"][index, : int(lengths.max())]  # (b, T)
    image_rows = captions["image_indices"][index]  # (b,)
    flipped = (torch.rand(len(rows), generator=flip_generator) < 0.5).long()  # (b,)
    images = train_features[flipped, image_rows]  # (b, D): plain or flipped view
    return images, token_ids, lengths, captions["labels"][index]


def _efficiency_rows(
    rows: Rows,
    benchmark: str,
    full: list[float],
    model_only: list[float],
    batch_size: int,
    notes: str,
    goal: float | None = None,
) -> None:
    full_ms, model_ms = 1e3 * median(full), 1e3 * median(model_only)
    efficiency = model_ms / full_ms
    rows.add(benchmark, "full step (pipeline + model)", full_ms, "ms", 1.0, "full step", notes)
    rows.add(benchmark, "model-only step (batch in memory)", model_ms, "ms", efficiency, "full step", notes)
    rows.add(
        benchmark,
        "data loading per step (full - model-only)",
        full_ms - model_ms,
        "ms",
        (full_ms - model_ms) / full_ms,
        "full step",
        notes,
    )
    goal_note = "" if goal is None else f"goal >= {goal}: {'met' if efficiency >= goal else 'NOT met'}; "
    rows.add(
        benchmark,
        "pipeline efficiency (model-only / full)",
        efficiency,
        "ratio",
        efficiency,
        "full step",
        goal_note + notes,
    )
    rows.add(
        benchmark,
        "training throughput (full step)",
        batch_size / (full_ms / 1e3),
        "pairs/s",
        efficiency,
        "model-only throughput",
        notes,
    )


def bench_training_step(
    rows: Rows,
    profile: str = "quick",
    dataset: str = "cuhk_pedes",
    steps: int = 20,
    warmup: int = 3,
    backbones: Sequence[str] = ("small_cnn", "mobilenet_v2"),
    cache_dir: str | None = None,
) -> None:
    """Full training step against the model-only step, for the cached-features path of ``profile``
    and the end-to-end image path with each of ``backbones`` (CPU, one process)."""
    from ... import data, training
    from ...evaluation import evaluate

    device = torch.device("cpu")
    cfg = training.make_config(profile, dataset, device="cpu", cache_dir=cache_dir, progress=False)
    prepared = data.prepare_dataset(
        cfg.dataset,
        cfg.profile,
        data_dir=cfg.data_dir,
        cache_dir=cfg.cache_dir,
        seed=cfg.data_seed,
        image_size=cfg.image_size,
        **data.recipe_options(cfg),
    )
    train_frame = prepared.frames["train"]
    captions = evaluate.caption_tensors(train_frame, prepared.vocabulary)
    labels_np = captions["labels"].numpy()
    height, width = prepared.image_size
    sizes = (
        f"{profile} profile, {dataset} synthetic ({prepared.image_cache('train').__len__()} train images, "
        f"{len(train_frame)} captions), batch {cfg.batch_size}, losses {'+'.join(cfg.losses)}, "
        f"{cfg.sampler} sampler, median of {steps} steps"
    )

    # ---- the quick profile's own path: frozen cached features
    if cfg.feature_mode == "cached":
        torch.manual_seed(0)
        features = training.cached_image_features(prepared, "train", cfg, device, flips=True)  # (2, N_I, D)
        trainer = RunTrainer(cfg, prepared, features.shape[-1], device)
        batches = training.global_batches(labels_np, cfg, epoch=0)
        flip_generator = torch.Generator().manual_seed(0)
        position = {"next": 0}
        held: dict[str, tuple] = {}

        def full_step() -> None:
            rows_of_batch = batches[position["next"] % len(batches)]
            position["next"] += 1
            held["batch"] = _cached_batch(rows_of_batch, captions, features, flip_generator)
            trainer.step(*held["batch"])

        def model_step() -> None:
            trainer.step(*held["batch"])

        samples = time_interleaved({"full": full_step, "model": model_step}, steps, warmup)
        _efficiency_rows(
            rows,
            "training_step/cached_features",
            samples["full"],
            samples["model"],
            cfg.batch_size,
            f"{cfg.backbone} features {features.shape[-1]}-d (grid {cfg.pool_grid}), {sizes}",
            goal=PIPELINE_EFFICIENCY_GOAL,
        )
        steps_per_epoch = len(batches)
        rows.add(
            "training_step/cached_features",
            "epoch estimate (steps x full step)",
            steps_per_epoch * median(samples["full"]),
            "s",
            None,
            "",
            f"{steps_per_epoch} steps per epoch",
        )

    # ---- the end-to-end image path: PairDataset + DataLoader from the memmapped image cache
    for backbone in backbones:
        e2e = training.make_config(
            profile,
            dataset,
            device="cpu",
            cache_dir=cache_dir,
            progress=False,
            feature_mode="end_to_end",
            backbone=backbone,
        )
        torch.manual_seed(0)
        trainer = RunTrainer(e2e, prepared, None, device)
        pairs = data.PairDataset(
            train_frame,
            prepared.vocabulary,
            prepared.image_cache("train"),
            train=True,
            backbone=trainer.model.image_encoder.normalisation,
        )
        batches = training.global_batches(labels_np, e2e, epoch=0)
        loader = torch.utils.data.DataLoader(
            pairs,
            batch_sampler=training.ListBatchSampler(batches),
            collate_fn=data.collate_pairs,
            num_workers=e2e.num_workers,
        )
        iterator = iter(loader)
        held = {}

        def full_step() -> None:
            nonlocal iterator
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                batch = next(iterator)
            held["batch"] = (batch["images"], batch["token_ids"], batch["lengths"], batch["labels"])
            trainer.step(*held["batch"])

        def model_step() -> None:
            trainer.step(*held["batch"])

        samples = time_interleaved({"full": full_step, "model": model_step}, steps, warmup)
        _efficiency_rows(
            rows,
            f"training_step/end_to_end_{backbone}",
            samples["full"],
            samples["model"],
            e2e.batch_size,
            f"{backbone} at {height}x{width}, num_workers={e2e.num_workers}, {sizes}",
        )


# ---------------------------------------------------------------------------------------------
# GPU: the paper model's throughput and a CUHK-PEDES-sized epoch
# ---------------------------------------------------------------------------------------------

GPU_MODES = ("fp32", "bf16", "channels_last", "compile", "bf16+channels_last+compile")


def paper_step_settings(device: torch.device, mode: str, dim: int = PAPER_DIM):
    """The paper profile's CUHK-PEDES settings (MobileNet v1 as TF-slim builds it, Bi-LSTM, CMPM +
    CMPC, Adam with the weight-decay groups, the weight average) in a benchmark ``mode``: bf16
    autocast when ``mode`` names ``bf16`` (else fp32), channels-last when it names
    ``channels_last``; random init (no ImageNet weights needed); ``dim`` for the embedding, word and
    LSTM sizes (the paper's 512)."""
    from ... import training

    return training.make_config(
        "paper",
        "cuhk_pedes",
        device=str(device),
        pretrained=False,
        amp="bf16" if "bf16" in mode else "off",
        channels_last="channels_last" in mode,
        embedding_dim=dim,
        word_dim=dim,
        hidden_size=dim,
    )


class PaperStep:
    """The paper's CUHK-PEDES recipe (:func:`paper_step_settings`) over ``num_classes`` ids, built by
    :func:`cmp_utils.training.build_run_state` and stepped by :func:`cmp_utils.training.train_step`, as fit does;
    ``mode`` naming ``compile`` compiles the CNN (the packed LSTM stays eager)."""

    def __init__(
        self,
        device: torch.device,
        mode: str,
        image_size: int,
        vocabulary: int = PAPER_VOCABULARY,
        num_classes: int = CUHK_TRAIN_IDS,
        dim: int = PAPER_DIM,
    ):
        from ... import training

        self.cfg = paper_step_settings(device, mode, dim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CNN starts from random init here
            model = training.model_of_settings(self.cfg, vocabulary)
        self.state = training.build_run_state(self.cfg, model, num_classes, device)
        self.state.step_module.train()
        if "compile" in mode:  # the CNN, where the time goes; the packed LSTM stays eager
            self.state.model.image_encoder = torch.compile(self.state.model.image_encoder)
        self.device, self.image_size = device, image_size

    def step(self, images: torch.Tensor, token_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        """One :func:`cmp_utils.training.train_step` of the paper recipe."""
        from ... import training

        training.train_step(self.state, self.cfg, images, token_ids, lengths, labels, self.device)


def paper_batch(
    batch: int,
    image_size: int,
    device: torch.device,
    vocabulary: int = PAPER_VOCABULARY,
    num_classes: int = CUHK_TRAIN_IDS,
    caption_length: int = 24,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the paper model: normalised images, token ids (lengths up to
    ``caption_length``, an assumed CUHK-PEDES-like length), lengths and class indices."""
    images = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)  # (B, 3, H, W)
    lengths = torch.randint(caption_length // 2, caption_length + 1, (batch,), generator=generator)  # (B,)
    token_ids = torch.randint(1, vocabulary, (batch, int(lengths.max())), generator=generator)  # (B, T)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)  # (B,)
    return images, token_ids.to(device), lengths.to(device), labels.to(device)


def bench_gpu(
    rows: Rows,
    device: torch.device | str | None = None,
    batch_sizes: Sequence[int] = (16, 64, 256),
    modes: Sequence[str] = GPU_MODES,
    compile_batch_sizes: Sequence[int] = (64,),
    image_size: int = 224,
    steps: int = 20,
    warmup: int = 5,
    epoch_images: int = CUHK_TRAIN_IMAGES,
    epoch_batch: int = 16,
    epoch_mode: str = "bf16+channels_last",
    vocabulary: int = PAPER_VOCABULARY,
    num_classes: int = CUHK_TRAIN_IDS,
    dim: int = PAPER_DIM,
    budget_s: float = 240.0,
) -> None:
    """Paper-model training throughput per batch size and mode (ratio to fp32), and one epoch of
    ``epoch_images`` images from an in-memory uint8 cache (batch ``epoch_batch``, ``epoch_mode``).

    Order: the eager modes at every batch size, the epoch, then the ``compile`` modes (only at
    ``compile_batch_sizes``; the CNN is compiled, the packed LSTM stays eager), each started only
    while less than ``budget_s`` seconds have passed (a skipped one gets a row saying so).
    ``device=None``: CUDA if available, else one row "no CUDA device". An explicit CPU device
    runs the same code (used by the tests at tiny sizes); ``vocabulary``, ``num_classes`` and
    ``dim`` default to the paper's 12000, 11003 and 512.
    """
    if device is None:
        if not torch.cuda.is_available():
            rows.add(
                "gpu",
                "no CUDA device",
                float("nan"),
                "",
                None,
                "",
                "skipped: no CUDA device on this machine; run `python -m cmp_utils.tools.bench --gpu-only "
                "--output-dir DIR` where one is",
            )
            return
        device = torch.device("cuda")
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    notes_base = (
        f"paper recipe: mobilenet_v1_tf {image_size}x{image_size} + Bi-LSTM {dim} (vocabulary {vocabulary}), "
        f"CMPM+CMPC ({num_classes} ids), Adam with weight-decay groups, EMA; train.train_step"
    )
    inputs = {
        batch: paper_batch(batch, image_size, device, vocabulary, num_classes, generator=generator)
        for batch in batch_sizes
    }
    fp32_rate: dict[int, float] = {}

    def measure(batch: int, mode: str) -> None:
        torch.manual_seed(0)
        start = time.perf_counter()
        try:
            runner = PaperStep(device, mode, image_size, vocabulary, num_classes, dim)
            runner.step(*inputs[batch])  # first call: compiles / autotunes
            _synchronise(device)
            first_s = time.perf_counter() - start
            seconds = median(time_interleaved({mode: lambda: runner.step(*inputs[batch])}, steps, warmup, device)[mode])  # noqa: F821
        except Exception as error:  # noqa: BLE001 -- one failing mode must not lose the others
            rows.add(
                f"gpu/batch_{batch}",
                f"train step, {mode}",
                float("nan"),
                "images/s",
                None,
                "",
                f"failed: {type(error).__name__}: {str(error)[:200]}",
            )
            return
        rate = batch / seconds
        if mode == "fp32":
            fp32_rate[batch] = rate
        rows.add(
            f"gpu/batch_{batch}",
            f"train step, {mode}",
            rate,
            "images/s",
            rate / fp32_rate[batch] if batch in fp32_rate else None,
            "fp32 at the same batch",
            f"{notes_base}; median of {steps} steps; first step {first_s:.1f} s (compile / autotune)",
        )
        del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()

    eager = [mode for mode in modes if "compile" not in mode]
    for batch in batch_sizes:
        for mode in sorted(eager, key=lambda m: m != "fp32"):  # fp32 first: the reference
            measure(batch, mode)
    if epoch_images > 0:
        _gpu_epoch(
            rows,
            device,
            image_size,
            epoch_images,
            epoch_batch,
            epoch_mode,
            vocabulary,
            num_classes,
            dim,
            steps,
            generator,
        )
    for batch in [b for b in batch_sizes if b in compile_batch_sizes]:
        for mode in [m for m in modes if "compile" in m]:
            if time.perf_counter() - started > budget_s:
                rows.add(
                    f"gpu/batch_{batch}",
                    f"train step, {mode}",
                    float("nan"),
                    "images/s",
                    None,
                    "",
                    f"skipped: the group's time budget of {budget_s:.0f} s was spent",
                )
                continue
            measure(batch, mode)


def _gpu_epoch(
    rows: Rows,
    device: torch.device,
    image_size: int,
    epoch_images: int,
    epoch_batch: int,
    epoch_mode: str,
    vocabulary: int,
    num_classes: int,
    dim: int,
    steps: int,
    generator: torch.Generator,
) -> None:
    """One epoch over ``epoch_images`` uint8 images held in (pinned) memory, as a cache would hand
    them: gather a batch, copy it to the device, normalise there, train; against the model-only estimate."""
    from ...data.images import normalise

    pinned = device.type == "cuda"
    pool = torch.zeros(epoch_images, image_size, image_size, 3, dtype=torch.uint8, pin_memory=pinned)  # (N, H, W, 3)
    runner = PaperStep(device, epoch_mode, image_size, vocabulary, num_classes, dim)
    scaling = runner.state.model.image_encoder.normalisation
    _, token_ids, lengths, labels = paper_batch(
        epoch_batch, image_size, device, vocabulary, num_classes, generator=generator
    )
    order = torch.randperm(epoch_images, generator=generator)
    n_steps = epoch_images // epoch_batch

    def one_batch(step: int) -> torch.Tensor:
        rows_of_batch = order[step * epoch_batch : (step + 1) * epoch_batch]
        pixels = pool.index_select(0, rows_of_batch)  # (b, H, W, 3) uint8
        if pinned:
            pixels = pixels.pin_memory()
        return normalise(pixels.to(device, non_blocking=True), scaling)  # (b, 3, H, W) on the device

    images = one_batch(0)
    model_only = median(
        time_interleaved({"m": lambda: runner.step(images, token_ids, lengths, labels)}, steps, 3, device)["m"]
    )
    _synchronise(device)
    start = time.perf_counter()
    for step in range(n_steps):
        runner.step(one_batch(step), token_ids, lengths, labels)
    _synchronise(device)
    epoch_s = time.perf_counter() - start
    estimate = n_steps * model_only
    notes = (
        f"{n_steps} steps of batch {epoch_batch} ({n_steps * epoch_batch} of {epoch_images} images), "
        f"{epoch_mode}, uint8 cache in {'pinned ' if pinned else ''}memory, normalised on the device, "
        "one caption per image"
    )
    case = (
        "CUHK-PEDES-sized epoch (34,054 images)"
        if epoch_images == CUHK_TRAIN_IMAGES
        else f"epoch of {epoch_images} images"
    )
    rows.add(
        "gpu/epoch", case, epoch_s, "s", estimate / epoch_s, "model-only estimate (steps x model-only step)", notes
    )
    rows.add(
        "gpu/epoch",
        "epoch throughput",
        n_steps * epoch_batch / epoch_s,
        "images/s",
        estimate / epoch_s,
        "model-only estimate (steps x model-only step)",
        notes,
    )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


# The cost of the pinned CPU numerics: one quick run timed in a process of each mode.
_NUMERICS_RUN = r"""
import json, sys, time
from cmp_utils import training
from cmp_utils.core import numerics
profile, dataset, out = sys.argv[1], sys.argv[2], sys.argv[3]
timings = {}
for index, label in enumerate(("first run (builds the feature cache)", "one run (feature cache built)")):
    start = time.process_time()
    training.fit(training.make_config(profile, dataset, seed=index, output_dir=f"{out}/run{index}", progress=False))
    timings[label] = time.process_time() - start
print(json.dumps({"timings": timings, "numerics": numerics.fingerprint()}))
"""


def bench_numerics(
    rows: Rows,
    profile: str = "quick",
    dataset: str = "cuhk_pedes",
    kernel_sizes: Sequence[int] = (12 * 2, 256 * 2048, 4_000_000),
) -> None:
    """What the pinned CPU numerics (:mod:`cmp_utils.core.numerics`) cost: the same two runs of ``profile``
    (seeds 0 and 1; the first builds the frozen-feature cache, the second reuses it) in a process of
    each mode, each with its own cache, CPU seconds (``time.process_time``, one torch thread as the
    fast profiles train). The synthetic data is made once, before the clocks start. Then
    :func:`bench_vendor_kernels` at ``kernel_sizes``."""
    import json
    import shutil
    import subprocess

    from ... import data
    from ...core import numerics

    with tempfile.TemporaryDirectory(prefix="cmp-bench-numerics-") as scratch:
        scratch = Path(scratch)
        shared = scratch / "data"
        data.dataset_root(dataset, profile, None, shared)  # writes the synthetic dataset once
        measured: dict[str, dict[str, float]] = {}
        for mode in ("native", "pinned"):
            cache = scratch / mode
            shutil.copytree(shared, cache)
            environ = {
                k: v
                for k, v in os.environ.items()
                if k not in (*numerics.PINNED_ENVIRONMENT, "MKL_ENABLE_INSTRUCTIONS")
            }
            environ.update(
                {numerics.MODE_VARIABLE: mode, "CMP_CACHE_DIR": str(cache), "PYTHONPATH": str(config.project_root())}
            )
            completed = subprocess.run(
                [sys.executable, "-c", _NUMERICS_RUN, profile, dataset, str(scratch / f"{mode}_runs")],
                env=environ,
                capture_output=True,
                text=True,
                check=True,
            )
            measured[mode] = json.loads(completed.stdout.strip().splitlines()[-1])["timings"]
    for case in measured["native"]:
        native, pinned = measured["native"][case], measured["pinned"][case]
        notes = f"{profile} {dataset}, seeds 0 and 1, one torch thread, CPU seconds of fit()"
        rows.add("numerics/quick_run", f"{case}: native", native, "s", notes=notes)
        rows.add(
            "numerics/quick_run",
            f"{case}: pinned",
            pinned,
            "s",
            ratio=pinned / native if native else None,
            ratio_to="native (the CPU's fastest kernels)",
            notes=notes,
        )
    bench_vendor_kernels(rows, kernel_sizes)
