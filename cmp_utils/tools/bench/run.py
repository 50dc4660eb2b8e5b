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
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ...core import atomic, config
from .kernels import bench_data, bench_evaluation, bench_losses
from .steps import bench_gpu, bench_numerics, bench_training_step
from .timing import GROUPS, Rows


def group_settings(quick_check: bool, full: bool) -> dict[str, dict[str, Any]]:
    """Arguments of every group: the real sizes, or tiny ones for ``--quick-check``."""
    if quick_check:
        return {
            "training_step": dict(profile="smoke", steps=3, warmup=1, backbones=("small_cnn",)),
            "evaluation": dict(
                n_queries=200,
                n_gallery=1000,
                dim=64,
                repeats=1,
                large=(2000, 10000),
                large_slice_queries=None if full else 200,
                positives_settings=dict(n_queries=100, n_gallery=500, dim=64, positives=(3, 100), repeats=1),
            ),
            "data": dict(photos=16, photo_size=(64, 32), cache_size=(32, 32), synthetic_images=16, profile="smoke"),
            "losses": dict(batch_sizes=(8,), repeats=2, num_classes=100),
            "gpu": dict(
                batch_sizes=(2,),
                modes=("fp32", "bf16"),
                image_size=64,
                steps=2,
                warmup=1,
                epoch_images=8,
                epoch_batch=2,
                vocabulary=100,
                num_classes=50,
                dim=32,
            ),
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


BENCHMARKS: dict[str, Callable[..., None]] = {
    "training_step": bench_training_step,
    "evaluation": bench_evaluation,
    "data": bench_data,
    "losses": bench_losses,
    "gpu": bench_gpu,
    "numerics": bench_numerics,
}


def run(
    output_dir: str | os.PathLike | None = None,
    groups: Iterable[str] = GROUPS,
    quick_check: bool = False,
    full: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Run ``groups`` and write ``<output_dir>/<group>.csv`` for each; returns the paths written."""
    out = Path(output_dir) if output_dir else config.results_dir() / "bench"
    groups = list(groups)
    unknown = [group for group in groups if group not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark group(s) {unknown}; choose from {', '.join(GROUPS)}")
    settings = group_settings(quick_check, full)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if progress and load > 0.75 * (os.cpu_count() or 1):
        print(
            f"bench: warning: load average {load:.1f} on {os.cpu_count()} cores; other work on this machine "
            "slows torch's threads down a lot (every figure records the load in its notes)",
            file=sys.stderr,
        )
    written = {}
    for group in groups:
        start = time.perf_counter()
        rows = Rows("cuda" if group == "gpu" and torch.cuda.is_available() else "cpu", out / f"{group}.csv")
        BENCHMARKS[group](rows, **settings[group])
        written[group] = atomic.write_csv(out / f"{group}.csv", rows.frame(), index=False)
        if progress:
            print(
                f"bench {group}: {len(rows.rows)} rows in {time.perf_counter() - start:.1f} s -> {written[group]}",
                file=sys.stderr,
                flush=True,
            )
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
