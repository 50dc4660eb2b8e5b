"""Benchmarks behind ``make bench``: every figure measured side by side and reported as a ratio.

``python -m cmp_utils.tools.bench --output-dir results/bench [--quick-check] [--full] [--gpu-only]``

Each group writes one tidy CSV, ``<output-dir>/<group>.csv``, one row per measured figure:

==========  ===================================================================================
column      meaning
==========  ===================================================================================
benchmark   the group's sub-benchmark, e.g. ``training_step/cached_features``
case        what was measured, e.g. ``full step (pipeline + model)``
value       the figure (a median over repeats unless the notes say otherwise)
unit        ``ms``, ``s``, ``images/s``, ``MiB``, ...
ratio       ``value`` over the reference figure named in ``ratio_to`` (or the named ratio itself)
ratio_to    what ``ratio`` compares with; empty when there is no ratio
device      ``cpu`` or the CUDA device's name
machine     CPU model and core count (torch threads)
torch       ``torch.__version__``
date        UTC time of the run (ISO 8601)
notes       sizes, settings, and ``EXTRAPOLATED`` for figures not measured whole
==========  ===================================================================================

Groups (each a function returning rows; the CLI runs them all):

* :func:`bench_training_step` -- the quick profile's actual training step (cached frozen
  features, batches sliced from pre-encoded tensors, as :func:`cmp_utils.training.fit` does) and
  the end-to-end image path (``PairDataset`` + ``DataLoader`` from the memory-mapped image
  cache, a small CNN / MobileNetV2 at the cache's 64x32). *Pipeline efficiency* = model-only
  step time (batch already in memory) / full step time (the batch produced by the pipeline).
  Both steps include forward, losses, backward, Adam and the EMA update; the difference is
  data loading only. Full and model-only steps alternate on the same batch, so drift in the
  machine's speed hits both alike.
* :func:`bench_evaluation` -- :func:`cmp_utils.evaluation.metrics.retrieval_metrics` (and
  :func:`~cmp_utils.evaluation.metrics.recall_at_k` on a precomputed matrix) at 5K x 25K (MSCOCO 5K test,
  image to text) against a bare matrix product of the same size; 100K x 500K measured on a
  slice of the queries and extrapolated (``--full`` measures it whole); peak memory is the
  growth of the process's resident set (``VmHWM``, reset before each measurement); then
  :func:`bench_positives_per_query`: 1,000 x 5,000 with 3, 100 and 1,000 positives per query.
* :func:`bench_data` -- decoding + resizing into :class:`cmp_utils.data.images.ImageCache`
  (images/s), and an epoch's image reads decoding every file against reading the memmap.
* :func:`bench_losses` -- CMPM and CMPC forward + backward against a plain matrix product of
  the same size (batch x batch x dim); CMPC with 11,003 classes (CUHK-PEDES ids).
* :func:`bench_numerics` -- what the pinned CPU numerics (:mod:`cmp_utils.core.numerics`) cost: the
  CPU seconds of the same quick runs (the first builds the frozen-feature cache) in a native and
  a pinned process, and their ratio.
* :func:`bench_gpu` -- the paper model (MobileNet v1 at 224 + Bi-LSTM 512) training steps at
  batch 16 / 64 / 256 in fp32, bf16 autocast, channels-last and ``torch.compile``, and one
  CUHK-PEDES-sized epoch (34,054 images) from an in-memory uint8 cache. Without CUDA it writes
  one row saying so. ``--gpu-only`` runs just this group (a few minutes on one GPU).

Timing: :func:`time_interleaved` -- warm-up calls, then rounds that call every contender once
in turn (CUDA synchronised around each call); the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core import atomic, config, numerics

COLUMNS = ("benchmark", "case", "value", "unit", "ratio", "ratio_to", "device", "machine", "torch", "date", "notes")
GROUPS = ("training_step", "evaluation", "data", "losses", "numerics", "gpu")
#: Goal of the evaluation at 5K x 25K on 2 CPU cores, seconds.
EVAL_GOAL_SECONDS = 2.0
#: Goal of the pipeline efficiency of the quick profile's training step.
PIPELINE_EFFICIENCY_GOAL = 0.9
#: CUHK-PEDES: training images and identities (published split sizes, data.PUBLISHED_SIZES).
CUHK_TRAIN_IMAGES, CUHK_TRAIN_IDS = 34054, 11003
#: The paper's vocabulary table (12000 rows) and text / embedding widths.
PAPER_VOCABULARY, PAPER_DIM = 12000, 512


# ---------------------------------------------------------------------------------------------
# Rows and the machine they were measured on
# ---------------------------------------------------------------------------------------------


class Rows:
    """Collects benchmark rows stamped with the device, machine, torch version and date."""

    def __init__(self, device: torch.device | str = "cpu", path: str | os.PathLike | None = None):
        self.device = numerics.device_name(torch.device(device))
        self.path = None if path is None else Path(path)  # rewritten after every row when given
        self.machine = numerics.cpu_summary()
        self.date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        self.rows: list[dict[str, Any]] = []

    def add(self, benchmark: str, case: str, value: float, unit: str, ratio: float | None = None,
            ratio_to: str = "", notes: str = "") -> dict[str, Any]:
        row = {"benchmark": benchmark, "case": case, "value": float(value), "unit": unit,
               "ratio": float("nan") if ratio is None else float(ratio), "ratio_to": ratio_to,
               "device": self.device, "machine": self.machine, "torch": str(torch.__version__),
               "date": self.date, "notes": f"{notes}; load average {self.load:.1f} at start".lstrip("; ")}
        self.rows.append(row)
        if self.path is not None:  # a run cut short still leaves what it measured
            atomic.write_csv(self.path, self.frame(), index=False)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))


# ---------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------


def _synchronise(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2,
                     device: torch.device | None = None) -> dict[str, list[float]]:
    """Seconds per call of each contender: ``warmup`` untimed rounds, then ``repeats`` rounds that
    call every contender once, in turn. Returns ``{name: [seconds per round]}``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(warmup + repeats):
        for name, function in contenders.items():
            _synchronise(device)
            start = time.perf_counter()
            function()
            _synchronise(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _status_kib(key: str) -> int | None:
    try:
        found = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def measure_peak_memory(function: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``function``; return its result and the growth of the resident set at its peak, MiB.

    Linux only (``/proc/self/status``: ``VmHWM`` reset through ``/proc/self/clear_refs``);
    ``None`` where that is unavailable.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    result = function()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return result, None
    return result, max(0, peak - before) / 1024.0


# ---------------------------------------------------------------------------------------------
# Training step
# ---------------------------------------------------------------------------------------------


class RunTrainer:
    """The run state of a :class:`cmp_utils.training.TrainConfig` as :func:`cmp_utils.training.fit` builds it
    (model of every recipe setting, losses, Adam with the weight-decay groups, the weight average
    of ``ema_scope``), one :func:`cmp_utils.training.train_step` per call."""

    def __init__(self, cfg, prepared, feature_dim: int | None, device: torch.device):
        from .. import training

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "random init" warnings of backbones without offline weights
            model = training.build_run_model(cfg, prepared, feature_dim)
        self.state = training.build_run_state(cfg, model, prepared.num_classes, device)
        self.state.step_module.train()
        self.model = self.state.model
        self.cfg, self.device = cfg, device

    def step(self, images: torch.Tensor, token_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        """Forward, losses, backward, Adam, EMA: :func:`cmp_utils.training.train_step`, as fit calls it per batch."""
        from .. import training

        training.train_step(self.state, self.cfg, images, token_ids, lengths, labels, self.device)


def _cached_batch(rows: Sequence[int], captions: dict[str, torch.Tensor], train_features: torch.Tensor,
                  flip_generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One batch of the cached-features mode, sliced exactly as :func:`cmp_utils.training.fit` slices it."""
    index = torch.as_tensor(rows)
    lengths = captions["lengths"][index]  # (b,)
    token_ids = captions["token_ids"][index, : int(lengths.max())]  # (b, T)
    image_rows = captions["image_indices"][index]  # (b,)
    flipped = (torch.rand(len(rows), generator=flip_generator) < 0.5).long()  # (b,)
    images = train_features[flipped, image_rows]  # (b, D): plain or flipped view
    return images, token_ids, lengths, captions["labels"][index]


def _efficiency_rows(rows: Rows, benchmark: str, full: list[float], model_only: list[float], batch_size: int,
                     notes: str, goal: float | None = None) -> None:
    full_ms, model_ms = 1e3 * median(full), 1e3 * median(model_only)
    efficiency = model_ms / full_ms
    rows.add(benchmark, "full step (pipeline + model)", full_ms, "ms", 1.0, "full step", notes)
    rows.add(benchmark, "model-only step (batch in memory)", model_ms, "ms", efficiency, "full step", notes)
    rows.add(benchmark, "data loading per step (full - model-only)", full_ms - model_ms, "ms",
             (full_ms - model_ms) / full_ms, "full step", notes)
    goal_note = "" if goal is None else f"goal >= {goal}: {'met' if efficiency >= goal else 'NOT met'}; "
    rows.add(benchmark, "pipeline efficiency (model-only / full)", efficiency, "ratio", efficiency,
             "full step", goal_note + notes)
    rows.add(benchmark, "training throughput (full step)", batch_size / (full_ms / 1e3), "pairs/s", efficiency,
             "model-only throughput", notes)


def bench_training_step(rows: Rows, profile: str = "quick", dataset: str = "cuhk_pedes", steps: int = 20,
                        warmup: int = 3, backbones: Sequence[str] = ("small_cnn", "mobilenet_v2"),
                        cache_dir: str | None = None) -> None:
    """Full training step against the model-only step, for the cached-features path of ``profile``
    and the end-to-end image path with each of ``backbones`` (CPU, one process)."""
    from .. import data, training
    from ..evaluation import evaluate

    device = torch.device("cpu")
    cfg = training.make_config(profile, dataset, device="cpu", cache_dir=cache_dir, progress=False)
    prepared = data.prepare_dataset(cfg.dataset, cfg.profile, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir,
                                    seed=cfg.data_seed, image_size=cfg.image_size, **data.recipe_options(cfg))
    train_frame = prepared.frames["train"]
    captions = evaluate.caption_tensors(train_frame, prepared.vocabulary)
    labels_np = captions["labels"].numpy()
    height, width = prepared.image_size
    sizes = (f"{profile} profile, {dataset} synthetic ({prepared.image_cache('train').__len__()} train images, "
             f"{len(train_frame)} captions), batch {cfg.batch_size}, losses {'+'.join(cfg.losses)}, "
             f"{cfg.sampler} sampler, median of {steps} steps")

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
        _efficiency_rows(rows, "training_step/cached_features", samples["full"], samples["model"], cfg.batch_size,
                         f"{cfg.backbone} features {features.shape[-1]}-d (grid {cfg.pool_grid}), {sizes}",
                         goal=PIPELINE_EFFICIENCY_GOAL)
        steps_per_epoch = len(batches)
        rows.add("training_step/cached_features", "epoch estimate (steps x full step)",
                 steps_per_epoch * median(samples["full"]), "s", None, "", f"{steps_per_epoch} steps per epoch")

    # ---- the end-to-end image path: PairDataset + DataLoader from the memmapped image cache
    for backbone in backbones:
        e2e = training.make_config(profile, dataset, device="cpu", cache_dir=cache_dir, progress=False,
                                feature_mode="end_to_end", backbone=backbone)
        torch.manual_seed(0)
        trainer = RunTrainer(e2e, prepared, None, device)
        pairs = data.PairDataset(train_frame, prepared.vocabulary, prepared.image_cache("train"), train=True,
                                 backbone=trainer.model.image_encoder.normalisation)
        batches = training.global_batches(labels_np, e2e, epoch=0)
        loader = torch.utils.data.DataLoader(pairs, batch_sampler=training.ListBatchSampler(batches),
                                             collate_fn=data.collate_pairs, num_workers=e2e.num_workers)
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
        _efficiency_rows(rows, f"training_step/end_to_end_{backbone}", samples["full"], samples["model"],
                         e2e.batch_size, f"{backbone} at {height}x{width}, num_workers={e2e.num_workers}, {sizes}")


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _retrieval_inputs(n_queries: int, n_gallery: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Image-to-text shaped inputs: query q has label q; gallery item g has label g // (G / Q)."""
    generator = torch.Generator().manual_seed(seed)
    per_query = max(1, n_gallery // n_queries)
    queries = torch.randn(n_queries, dim, generator=generator)  # (Q, d)
    gallery = torch.randn(n_gallery, dim, generator=generator)  # (G, d)
    query_labels = torch.arange(n_queries)  # (Q,)
    gallery_labels = (torch.arange(n_gallery) // per_query).clamp(max=n_queries - 1)  # (G,)
    return queries, gallery, query_labels, gallery_labels


def _memory_bound_mib(chunk_size: int, n_gallery: int, positives: int) -> float:
    """The documented bound of :func:`cmp_utils.evaluation.metrics.retrieval_metrics` (compare path): about
    ``10`` bytes per score of a block of at most ``DEFAULT_BLOCK_ELEMENTS`` scores, plus
    ``O(chunk * max_positives)``."""
    from ..evaluation import metrics

    elements = min(chunk_size * n_gallery, metrics.DEFAULT_BLOCK_ELEMENTS)
    return (10 * elements + 32 * chunk_size * (positives + 1)) / 2**20


def bench_evaluation(rows: Rows, n_queries: int = 5000, n_gallery: int = 25000, dim: int = 512, repeats: int = 3,
                     large: tuple[int, int] = (100_000, 500_000), large_slice_queries: int | None = 1000,
                     chunk_size: int = 256, positives_settings: dict[str, Any] | None = None) -> None:
    """Retrieval metrics at ``n_queries x n_gallery`` (against the bare matrix product) and at
    ``large`` (measured on ``large_slice_queries`` queries and extrapolated, or whole with ``None``);
    before them :func:`bench_positives_per_query` with ``positives_settings``."""
    from ..evaluation import metrics

    bench_positives_per_query(rows, **(positives_settings or {}))

    queries, gallery, query_labels, gallery_labels = _retrieval_inputs(n_queries, n_gallery, dim)
    positives = max(1, n_gallery // n_queries)
    size = f"{n_queries} x {n_gallery}, d={dim}, {positives} positives per query, chunk {chunk_size}"
    benchmark = f"evaluation/{n_queries}x{n_gallery}"

    def bare_matmul() -> None:
        torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T

    def full_metrics() -> None:
        metrics.retrieval_metrics(queries, gallery, query_labels, gallery_labels, chunk_size=chunk_size)

    samples = time_interleaved({"matmul": bare_matmul, "metrics": full_metrics}, repeats, warmup=1)
    matmul_s, metrics_s = median(samples["matmul"]), median(samples["metrics"])
    _, peak = measure_peak_memory(full_metrics)
    rows.add(benchmark, "retrieval_metrics (R@K, medr, meanr, mAP, mINP)", metrics_s, "s", metrics_s / matmul_s,
             "bare normalise + matmul (Q x G x d)",
             f"{size}; goal <= {EVAL_GOAL_SECONDS} s on 2 cores: {'met' if metrics_s <= EVAL_GOAL_SECONDS else 'NOT met'}")
    rows.add(benchmark, "retrieval_metrics vs goal", metrics_s, "s", metrics_s / EVAL_GOAL_SECONDS,
             f"goal {EVAL_GOAL_SECONDS} s", size)
    rows.add(benchmark, "bare normalise + matmul", matmul_s, "s", 1.0, "bare normalise + matmul (Q x G x d)", size)
    bound = _memory_bound_mib(chunk_size, n_gallery, positives)
    if peak is not None:
        rows.add(benchmark, "retrieval_metrics peak memory (RSS growth)", peak, "MiB", peak / bound,
                 "documented bound: 10 bytes x scores per block", f"{size}; bound {bound:.0f} MiB")
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T

    def recall_only() -> None:
        metrics.recall_at_k(similarity, query_labels, gallery_labels, chunk_size=1024)  # noqa: F821 -- bound while timed; deleted after

    recall_s = median(time_interleaved({"recall": recall_only}, repeats, warmup=1)["recall"])
    _, recall_peak = measure_peak_memory(recall_only)
    rows.add(benchmark, "recall_at_k on a precomputed (Q, G) matrix", recall_s, "s", recall_s / matmul_s,
             "bare normalise + matmul (Q x G x d)", f"{size}; the matrix itself ({similarity.numel() * 4 / 2**20:.0f} MiB) "
             "is not counted")
    if recall_peak is not None:
        rows.add(benchmark, "recall_at_k peak memory (RSS growth)", recall_peak, "MiB", None, "", "chunk 1024")
    del similarity, queries, gallery

    # ---- the large case: 100K x 500K, chunked (memory bounded), sliced unless measured whole
    big_queries, big_gallery = large
    measured_queries = big_queries if large_slice_queries is None else min(large_slice_queries, big_queries)
    queries, gallery, query_labels, gallery_labels = _retrieval_inputs(big_queries, big_gallery, dim)
    positives = max(1, big_gallery // big_queries)
    benchmark = f"evaluation/{big_queries}x{big_gallery}"
    size = f"{measured_queries} of {big_queries} queries x {big_gallery}, d={dim}, chunk {chunk_size}"

    def big_metrics(n: int) -> Callable[[], None]:
        return lambda: metrics.retrieval_metrics(queries[:n], gallery, query_labels[:n], gallery_labels,
                                                 chunk_size=chunk_size)

    def big_matmul() -> None:
        for start in range(0, measured_queries, chunk_size):
            queries[start:start + chunk_size] @ gallery.T

    samples = time_interleaved({"matmul": big_matmul, "metrics": big_metrics(measured_queries)}, 1, warmup=0)
    metrics_s, matmul_s = samples["metrics"][0], samples["matmul"][0]
    rows.add(benchmark, f"retrieval_metrics, {measured_queries} queries (measured)", metrics_s, "s",
             metrics_s / matmul_s, "chunked matmul of the same slice (no normalisation)", size)
    if measured_queries < big_queries:
        # time = fixed (normalising the gallery, label counts) + per query: fitted on two slices
        small_queries = max(1, measured_queries // 4)
        small_s = time_interleaved({"small": big_metrics(small_queries)}, 1, warmup=0)["small"][0]
        per_query = max(0.0, (metrics_s - small_s) / (measured_queries - small_queries))
        fixed = max(0.0, metrics_s - per_query * measured_queries)
        total = fixed + per_query * big_queries
        matmul_total = matmul_s * big_queries / measured_queries
        rows.add(benchmark, f"retrieval_metrics, all {big_queries} queries", total, "s", total / matmul_total,
                 f"chunked matmul of all queries, extrapolated ({matmul_total:.0f} s)",
                 f"EXTRAPOLATED from measured slices of {small_queries} and {measured_queries} queries: fixed "
                 f"{fixed:.2f} s + {1e3 * per_query:.2f} ms per query x {big_queries}; `--full` measures it whole")
    else:
        rows.add(benchmark, f"retrieval_metrics, all {big_queries} queries", metrics_s, "s", metrics_s / matmul_s,
                 "chunked matmul of all queries", "measured whole")
    _, peak = measure_peak_memory(big_metrics(min(measured_queries, 2 * chunk_size)))
    bound = _memory_bound_mib(chunk_size, big_gallery, positives)
    gallery_mib = gallery.numel() * 4 / 2**20
    if peak is not None:
        rows.add(benchmark, "retrieval_metrics peak memory (RSS growth)", peak, "MiB", peak / (bound + gallery_mib),
                 "bound: 10 bytes x block budget (2^25 scores) + a normalised gallery copy",
                 f"{min(measured_queries, 2 * chunk_size)} queries x {big_gallery}; bound {bound:.0f} MiB + gallery "
                 f"copy {gallery_mib:.0f} MiB; the bound does not grow with the number of queries")


def bench_positives_per_query(rows: Rows, n_queries: int = 1000, n_gallery: int = 5000, dim: int = 512,
                              positives: Sequence[int] = (3, 100, 1000), repeats: int = 3,
                              chunk_size: int = 256) -> None:
    """:func:`cmp_utils.evaluation.metrics.retrieval_metrics` at ``n_queries x n_gallery`` with each count of
    ``positives`` per query (class-level protocols: CUB / Flowers-like labels), beside the bare
    normalise + matrix product of the same size. The tie correction is linear in the positives per
    query, so the ratio to the product should stay small (goal: within 2x at 1,000 positives)."""
    from ..evaluation import metrics

    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(n_queries, dim, generator=generator)  # (Q, d)
    gallery = torch.randn(n_gallery, dim, generator=generator)  # (G, d)

    def bare_matmul() -> None:
        torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T

    for count in positives:
        classes = max(1, n_gallery // count)
        gallery_labels = (torch.arange(n_gallery) // count).clamp(max=classes - 1)  # (G,) `count` items per class
        query_labels = torch.arange(n_queries) % classes  # (Q,)

        def full_metrics() -> None:
            metrics.retrieval_metrics(queries, gallery, query_labels, gallery_labels, chunk_size=chunk_size)

        samples = time_interleaved({"matmul": bare_matmul, "metrics": full_metrics}, repeats, warmup=1)
        matmul_s, metrics_s = median(samples["matmul"]), median(samples["metrics"])
        benchmark = f"evaluation/positives_{n_queries}x{n_gallery}"
        size = f"{n_queries} x {n_gallery}, d={dim}, {count} positives per query, chunk {chunk_size}"
        rows.add(benchmark, f"retrieval_metrics, {count} positives per query", metrics_s, "s", metrics_s / matmul_s,
                 "bare normalise + matmul (Q x G x d)", size)
        rows.add(benchmark, f"bare normalise + matmul ({count} positives case)", matmul_s, "s", 1.0,
                 "bare normalise + matmul (Q x G x d)", size)


# ---------------------------------------------------------------------------------------------
# Data: decoding into the cache, decoding epoch vs memmap epoch
# ---------------------------------------------------------------------------------------------


def _write_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """``count`` JPEG files of ``size = (H, W)`` with smooth colour fields and noise (photo-like)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for index in range(count):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        frequency = rng.uniform(0.01, 0.08, size=(3, 2))
        pixels = np.stack([127 + 100 * np.sin(frequency[c, 0] * rows + frequency[c, 1] * cols + phase[c])
                           for c in range(3)], axis=-1)
        pixels += rng.normal(0, 12, size=pixels.shape)
        path = folder / f"photo_{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def bench_data(rows: Rows, photos: int = 400, photo_size: tuple[int, int] = (256, 128),
               cache_size: tuple[int, int] = (224, 224), synthetic_images: int = 2000, profile: str = "quick",
               dataset: str = "cuhk_pedes", workers: int | None = None, cache_dir: str | None = None) -> None:
    """Images/s decoding into :class:`~cmp_utils.data.images.ImageCache`, and an epoch of image reads
    decoding every file (no cache) against reading the memmapped cache (``PairDataset``'s path)."""
    from .. import data
    from ..data.images import ImageCache, decode_image, normalise

    workers = workers or min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="cmp-bench-data-") as scratch:
        scratch_path = Path(scratch)
        cases = [("JPEG photos", _write_photos(scratch_path / "photos", photos, photo_size), cache_size,
                  f"{photos} JPEG files of {photo_size[0]}x{photo_size[1]} resized to {cache_size[0]}x{cache_size[1]}")]
        prepared = data.prepare_dataset(dataset, profile, cache_dir=cache_dir)
        synthetic_paths = data.image_paths_of(prepared.frames["train"])[:synthetic_images]
        cases.append((f"{dataset} synthetic PNG", synthetic_paths, prepared.image_size,
                      f"{len(synthetic_paths)} {profile} synthetic PNG files at their native "
                      f"{prepared.image_size[0]}x{prepared.image_size[1]} (decode only)"))
        for name, paths, size, notes in cases:
            benchmark = f"data/{name.replace(' ', '_')}"
            start = time.perf_counter()
            cache = ImageCache.build(paths, size, scratch_path / f"cache_{len(paths)}_{size[0]}.npy", progress=False,
                                     workers=workers)
            build_s = time.perf_counter() - start
            rows.add(benchmark, f"build image cache (decode + resize + write), {workers} threads",
                     len(paths) / build_s, "images/s", None, "", notes + "; files in the OS page cache")
            backbone = "mobilenet"
            subset = paths[: min(len(paths), 200)]

            def decoding_epoch() -> None:  # a pipeline without the cache: open every file each epoch
                for path in subset:
                    normalise(decode_image(path, size), backbone)

            def cached_epoch() -> None:  # PairDataset.__getitem__'s read: copy a memmap row, normalise
                for index in range(len(subset)):
                    normalise(np.array(cache.images[index]), backbone)  # noqa: F821 -- bound while timed; deleted after

            samples = time_interleaved({"decode": decoding_epoch, "cached": cached_epoch}, 3, warmup=1)
            decode_rate = len(subset) / median(samples["decode"])
            cached_rate = len(subset) / median(samples["cached"])
            epoch_notes = f"{len(subset)} images one by one, normalised to float, one thread; {notes}"
            rows.add(benchmark, "first epoch: decode every file (no cache)", decode_rate, "images/s", 1.0,
                     "decoding epoch", epoch_notes)
            rows.add(benchmark, "cached epoch: memmap read", cached_rate, "images/s", cached_rate / decode_rate,
                     "decoding epoch", epoch_notes)
            del cache


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def bench_losses(rows: Rows, batch_sizes: Sequence[int] = (16, 64, 256), dim: int = PAPER_DIM,
                 num_classes: int = CUHK_TRAIN_IDS, repeats: int = 50, device: torch.device | str = "cpu") -> None:
    """CMPM and CMPC forward + backward against a plain (batch x dim) @ (dim x batch) product
    (forward + backward) and, for CMPC, against the (batch x dim) @ (dim x classes) classifier product."""
    from ..losses import cmpc_loss, cmpm_loss

    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    weight = nn.init.xavier_uniform_(torch.empty(dim, num_classes)).to(device).requires_grad_(True)  # (d, C)
    for batch in batch_sizes:
        images = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(True)  # x (n, d)
        texts = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(True)  # z (n, d)
        labels = torch.randint(0, max(1, batch // 2), (batch,), generator=generator).to(device)  # ~2 per id

        def clear() -> None:
            images.grad = texts.grad = weight.grad = None

        def matmul() -> None:
            clear()
            (images @ texts.T).sum().backward()  # (n, n)

        def classifier_matmul() -> None:
            clear()
            (images @ weight).sum().backward()  # (n, C)

        def cmpm() -> None:
            clear()
            cmpm_loss(images, texts, labels).backward()

        def cmpc() -> None:
            clear()
            cmpc_loss(images, texts, labels, weight).backward()

        samples = time_interleaved({"matmul": matmul, "classifier": classifier_matmul, "cmpm": cmpm, "cmpc": cmpc},
                                   repeats, warmup=5, device=device)
        ms = {name: 1e3 * median(values) for name, values in samples.items()}
        notes = f"batch {batch}, dim {dim}, forward + backward, median of {repeats}"
        benchmark = f"losses/batch_{batch}"
        base = f"plain matmul {batch}x{dim} @ {dim}x{batch} (fwd+bwd)"
        rows.add(benchmark, "plain matmul (n x n x d)", ms["matmul"], "ms", 1.0, base, notes)
        rows.add(benchmark, "CMPM", ms["cmpm"], "ms", ms["cmpm"] / ms["matmul"], base, notes)
        rows.add(benchmark, f"CMPC ({num_classes} classes)", ms["cmpc"], "ms", ms["cmpc"] / ms["matmul"], base, notes)
        rows.add(benchmark, "CMPC vs its classifier matmul", ms["cmpc"], "ms", ms["cmpc"] / ms["classifier"],
                 f"matmul {batch}x{dim} @ {dim}x{num_classes} (fwd+bwd) = {ms['classifier']:.3g} ms", notes)


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
    from .. import training

    return training.make_config("paper", "cuhk_pedes", device=str(device), pretrained=False,
                             amp="bf16" if "bf16" in mode else "off", channels_last="channels_last" in mode,
                             embedding_dim=dim, word_dim=dim, hidden_size=dim)


class PaperStep:
    """The paper's CUHK-PEDES recipe (:func:`paper_step_settings`) over ``num_classes`` ids, built by
    :func:`cmp_utils.training.build_run_state` and stepped by :func:`cmp_utils.training.train_step`, as fit does;
    ``mode`` naming ``compile`` compiles the CNN (the packed LSTM stays eager)."""

    def __init__(self, device: torch.device, mode: str, image_size: int, vocabulary: int = PAPER_VOCABULARY,
                 num_classes: int = CUHK_TRAIN_IDS, dim: int = PAPER_DIM):
        from .. import training

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
        from .. import training

        training.train_step(self.state, self.cfg, images, token_ids, lengths, labels, self.device)


def paper_batch(batch: int, image_size: int, device: torch.device, vocabulary: int = PAPER_VOCABULARY,
                 num_classes: int = CUHK_TRAIN_IDS, caption_length: int = 24,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of the paper model: normalised images, token ids (lengths up to
    ``caption_length``, an assumed CUHK-PEDES-like length), lengths and class indices."""
    images = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)  # (B, 3, H, W)
    lengths = torch.randint(caption_length // 2, caption_length + 1, (batch,), generator=generator)  # (B,)
    token_ids = torch.randint(1, vocabulary, (batch, int(lengths.max())), generator=generator)  # (B, T)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)  # (B,)
    return images, token_ids.to(device), lengths.to(device), labels.to(device)


def bench_gpu(rows: Rows, device: torch.device | str | None = None, batch_sizes: Sequence[int] = (16, 64, 256),
              modes: Sequence[str] = GPU_MODES, compile_batch_sizes: Sequence[int] = (64,), image_size: int = 224,
              steps: int = 20, warmup: int = 5, epoch_images: int = CUHK_TRAIN_IMAGES, epoch_batch: int = 16,
              epoch_mode: str = "bf16+channels_last", vocabulary: int = PAPER_VOCABULARY,
              num_classes: int = CUHK_TRAIN_IDS, dim: int = PAPER_DIM, budget_s: float = 240.0) -> None:
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
            rows.add("gpu", "no CUDA device", float("nan"), "", None, "",
                     "skipped: no CUDA device on this machine; run `python -m cmp_utils.tools.bench --gpu-only "
                     "--output-dir DIR` where one is")
            return
        device = torch.device("cuda")
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    notes_base = (f"paper recipe: mobilenet_v1_tf {image_size}x{image_size} + Bi-LSTM {dim} (vocabulary {vocabulary}), "
                  f"CMPM+CMPC ({num_classes} ids), Adam with weight-decay groups, EMA; train.train_step")
    inputs = {batch: paper_batch(batch, image_size, device, vocabulary, num_classes, generator=generator)
              for batch in batch_sizes}
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
            rows.add(f"gpu/batch_{batch}", f"train step, {mode}", float("nan"), "images/s", None, "",
                     f"failed: {type(error).__name__}: {str(error)[:200]}")
            return
        rate = batch / seconds
        if mode == "fp32":
            fp32_rate[batch] = rate
        rows.add(f"gpu/batch_{batch}", f"train step, {mode}", rate, "images/s",
                 rate / fp32_rate[batch] if batch in fp32_rate else None, "fp32 at the same batch",
                 f"{notes_base}; median of {steps} steps; first step {first_s:.1f} s (compile / autotune)")
        del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()

    eager = [mode for mode in modes if "compile" not in mode]
    for batch in batch_sizes:
        for mode in sorted(eager, key=lambda m: m != "fp32"):  # fp32 first: the reference
            measure(batch, mode)
    if epoch_images > 0:
        _gpu_epoch(rows, device, image_size, epoch_images, epoch_batch, epoch_mode, vocabulary, num_classes, dim,
                   steps, generator)
    for batch in [b for b in batch_sizes if b in compile_batch_sizes]:
        for mode in [m for m in modes if "compile" in m]:
            if time.perf_counter() - started > budget_s:
                rows.add(f"gpu/batch_{batch}", f"train step, {mode}", float("nan"), "images/s", None, "",
                         f"skipped: the group's time budget of {budget_s:.0f} s was spent")
                continue
            measure(batch, mode)


def _gpu_epoch(rows: Rows, device: torch.device, image_size: int, epoch_images: int, epoch_batch: int,
               epoch_mode: str, vocabulary: int, num_classes: int, dim: int, steps: int,
               generator: torch.Generator) -> None:
    """One epoch over ``epoch_images`` uint8 images held in (pinned) memory, as a cache would hand
    them: gather a batch, copy it to the device, normalise there, train; against the model-only estimate."""
    from ..data.images import normalise

    pinned = device.type == "cuda"
    pool = torch.zeros(epoch_images, image_size, image_size, 3, dtype=torch.uint8, pin_memory=pinned)  # (N, H, W, 3)
    runner = PaperStep(device, epoch_mode, image_size, vocabulary, num_classes, dim)
    scaling = runner.state.model.image_encoder.normalisation
    _, token_ids, lengths, labels = paper_batch(epoch_batch, image_size, device, vocabulary, num_classes,
                                                 generator=generator)
    order = torch.randperm(epoch_images, generator=generator)
    n_steps = epoch_images // epoch_batch

    def one_batch(step: int) -> torch.Tensor:
        rows_of_batch = order[step * epoch_batch:(step + 1) * epoch_batch]
        pixels = pool.index_select(0, rows_of_batch)  # (b, H, W, 3) uint8
        if pinned:
            pixels = pixels.pin_memory()
        return normalise(pixels.to(device, non_blocking=True), scaling)  # (b, 3, H, W) on the device

    images = one_batch(0)
    model_only = median(time_interleaved({"m": lambda: runner.step(images, token_ids, lengths, labels)}, steps, 3,
                                         device)["m"])
    _synchronise(device)
    start = time.perf_counter()
    for step in range(n_steps):
        runner.step(one_batch(step), token_ids, lengths, labels)
    _synchronise(device)
    epoch_s = time.perf_counter() - start
    estimate = n_steps * model_only
    notes = (f"{n_steps} steps of batch {epoch_batch} ({n_steps * epoch_batch} of {epoch_images} images), "
             f"{epoch_mode}, uint8 cache in {'pinned ' if pinned else ''}memory, normalised on the device, "
             "one caption per image")
    case = ("CUHK-PEDES-sized epoch (34,054 images)" if epoch_images == CUHK_TRAIN_IMAGES
            else f"epoch of {epoch_images} images")
    rows.add("gpu/epoch", case, epoch_s, "s", estimate / epoch_s, "model-only estimate (steps x model-only step)", notes)
    rows.add("gpu/epoch", "epoch throughput", n_steps * epoch_batch / epoch_s, "images/s", estimate / epoch_s,
             "model-only estimate (steps x model-only step)", notes)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


# The cost of the pinned CPU numerics: one quick run timed in a process of each mode.
_NUMERICS_RUN = r"""
import json, sys, time
from cmp_utils import numerics, train
profile, dataset, out = sys.argv[1], sys.argv[2], sys.argv[3]
timings = {}
for index, label in enumerate(("first run (builds the feature cache)", "one run (feature cache built)")):
    start = time.process_time()
    train.fit(train.make_config(profile, dataset, seed=index, output_dir=f"{out}/run{index}", progress=False))
    timings[label] = time.process_time() - start
print(json.dumps({"timings": timings, "numerics": numerics.fingerprint()}))
"""


def bench_numerics(rows: Rows, profile: str = "quick", dataset: str = "cuhk_pedes",
                   kernel_sizes: Sequence[int] = (12 * 2, 256 * 2048, 4_000_000)) -> None:
    """What the pinned CPU numerics (:mod:`cmp_utils.core.numerics`) cost: the same two runs of ``profile``
    (seeds 0 and 1; the first builds the frozen-feature cache, the second reuses it) in a process of
    each mode, each with its own cache, CPU seconds (``time.process_time``, one torch thread as the
    fast profiles train). The synthetic data is made once, before the clocks start. Then
    :func:`bench_vendor_kernels` at ``kernel_sizes``."""
    import json
    import shutil
    import subprocess

    from .. import data
    from ..core import numerics

    with tempfile.TemporaryDirectory(prefix="cmp-bench-numerics-") as scratch:
        scratch = Path(scratch)
        shared = scratch / "data"
        data.dataset_root(dataset, profile, None, shared)  # writes the synthetic dataset once
        measured: dict[str, dict[str, float]] = {}
        for mode in ("native", "pinned"):
            cache = scratch / mode
            shutil.copytree(shared, cache)
            environ = {k: v for k, v in os.environ.items() if k not in (*numerics.PINNED_ENVIRONMENT, "MKL_ENABLE_INSTRUCTIONS")}
            environ.update({numerics.MODE_VARIABLE: mode, "CMP_CACHE_DIR": str(cache),
                            "PYTHONPATH": str(config.project_root())})
            completed = subprocess.run([sys.executable, "-c", _NUMERICS_RUN, profile, dataset, str(scratch / f"{mode}_runs")],
                                       env=environ, capture_output=True, text=True, check=True)
            measured[mode] = json.loads(completed.stdout.strip().splitlines()[-1])["timings"]
    for case in measured["native"]:
        native, pinned = measured["native"][case], measured["pinned"][case]
        notes = f"{profile} {dataset}, seeds 0 and 1, one torch thread, CPU seconds of fit()"
        rows.add("numerics/quick_run", f"{case}: native", native, "s", notes=notes)
        rows.add("numerics/quick_run", f"{case}: pinned", pinned, "s", ratio=pinned / native if native else None,
                 ratio_to="native (the CPU's fastest kernels)", notes=notes)
    bench_vendor_kernels(rows, kernel_sizes)


def bench_vendor_kernels(rows: Rows, sizes: Sequence[int] = (12 * 2, 256 * 2048, 4_000_000), repeats: int = 5) -> None:
    """Each op of :mod:`cmp_utils.core.vendor_kernels` (what the pinning computes) against oneMKL VML's own
    kernel (``aten::<op>.out``, which the pinning leaves alone) on float32 vectors: the toy's Adam
    moment, the quick joint embedding's weights, and a whole quick model's parameters. One torch thread."""
    from ..core import vendor_kernels

    generator = torch.Generator().manual_seed(0)
    with config.torch_threads(1):
        for size in sizes:
            values = torch.rand(size, generator=generator) + 1e-3  # (size,) positive: every op is defined
            for name in vendor_kernels.REPLACED_OPS:
                replaced, original = vendor_kernels.FLOAT32_KERNELS[name], getattr(torch.ops.aten, name).out
                buffer = torch.empty_like(values)
                samples = time_interleaved({"vml": lambda: original(values, out=buffer),
                                            "replaced": lambda: replaced(values)}, repeats, warmup=1)
                vml, ours = median(samples["vml"]), median(samples["replaced"])
                notes = "float32, one torch thread; VML: aten::<op>.out, the vendor-dependent kernel the pinning replaces"
                rows.add(f"numerics/{name}", f"{size} values: oneMKL VML", 1e6 * vml, "us", notes=notes)
                rows.add(f"numerics/{name}", f"{size} values: vendor-independent", 1e6 * ours, "us",
                         ratio=ours / vml if vml else None, ratio_to="oneMKL VML", notes=notes)


def group_settings(quick_check: bool, full: bool) -> dict[str, dict[str, Any]]:
    """Arguments of every group: the real sizes, or tiny ones for ``--quick-check``."""
    if quick_check:
        return {
            "training_step": dict(profile="smoke", steps=3, warmup=1, backbones=("small_cnn",)),
            "evaluation": dict(n_queries=200, n_gallery=1000, dim=64, repeats=1, large=(2000, 10000),
                               large_slice_queries=None if full else 200,
                               positives_settings=dict(n_queries=100, n_gallery=500, dim=64, positives=(3, 100),
                                                       repeats=1)),
            "data": dict(photos=16, photo_size=(64, 32), cache_size=(32, 32), synthetic_images=16, profile="smoke"),
            "losses": dict(batch_sizes=(8,), repeats=2, num_classes=100),
            "gpu": dict(batch_sizes=(2,), modes=("fp32", "bf16"), image_size=64, steps=2, warmup=1, epoch_images=8,
                        epoch_batch=2, vocabulary=100, num_classes=50, dim=32),
            "numerics": dict(profile="smoke", kernel_sizes=(24, 4096)),
        }
    return {
        "training_step": dict(profile="quick"),
        "evaluation": dict(large_slice_queries=None if full else 1000),
        "data": dict(),
        "losses": dict(),
        "gpu": dict(),
        "numerics": dict(),
    }


BENCHMARKS: dict[str, Callable[..., None]] = {"training_step": bench_training_step, "evaluation": bench_evaluation,
                                              "data": bench_data, "losses": bench_losses, "gpu": bench_gpu,
                                              "numerics": bench_numerics}


def run(output_dir: str | os.PathLike | None = None, groups: Iterable[str] = GROUPS, quick_check: bool = False,
        full: bool = False, progress: bool = True) -> dict[str, Path]:
    """Run ``groups`` and write ``<output_dir>/<group>.csv`` for each; returns the paths written."""
    out = Path(output_dir) if output_dir else config.results_dir() / "bench"
    groups = list(groups)
    unknown = [group for group in groups if group not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark group(s) {unknown}; choose from {', '.join(GROUPS)}")
    settings = group_settings(quick_check, full)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if progress and load > 0.75 * (os.cpu_count() or 1):
        print(f"bench: warning: load average {load:.1f} on {os.cpu_count()} cores; other work on this machine "
              "slows torch's threads down a lot (every figure records the load in its notes)", file=sys.stderr)
    written = {}
    for group in groups:
        start = time.perf_counter()
        rows = Rows("cuda" if group == "gpu" and torch.cuda.is_available() else "cpu", out / f"{group}.csv")
        BENCHMARKS[group](rows, **settings[group])
        written[group] = atomic.write_csv(out / f"{group}.csv", rows.frame(), index=False)
        if progress:
            print(f"bench {group}: {len(rows.rows)} rows in {time.perf_counter() - start:.1f} s -> {written[group]}",
                  file=sys.stderr, flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmp_utils.tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", help="folder of the CSV files (default <results>/bench)")
    parser.add_argument("--quick-check", action="store_true", help="tiny sizes: check that every benchmark runs")
    parser.add_argument("--full", action="store_true", help="measure 100K x 500K whole instead of a slice")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU group (paper model, one epoch)")
    parser.add_argument("--only", help=f"comma-separated groups among {', '.join(GROUPS)}")
    args = parser.parse_args(argv)
    groups = ["gpu"] if args.gpu_only else (args.only.split(",") if args.only else list(GROUPS))
    start = time.perf_counter()
    run(args.output_dir, [g.strip() for g in groups if g.strip()], args.quick_check, args.full)
    print(f"bench: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
