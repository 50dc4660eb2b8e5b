"""Benchmarks of the kernels a run leans on: retrieval metrics, positives per query, image decoding and
caching, the losses, and the vendor-independent CPU kernels."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ...core import config
from .timing import CUHK_TRAIN_IDS, EVAL_GOAL_SECONDS, PAPER_DIM, Rows, measure_peak_memory, median, time_interleaved

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
    from ...evaluation import metrics

    elements = min(chunk_size * n_gallery, metrics.DEFAULT_BLOCK_ELEMENTS)
    return (10 * elements + 32 * chunk_size * (positives + 1)) / 2**20


def bench_evaluation(
    rows: Rows,
    n_queries: int = 5000,
    n_gallery: int = 25000,
    dim: int = 512,
    repeats: int = 3,
    large: tuple[int, int] = (100_000, 500_000),
    large_slice_queries: int | None = 1000,
    chunk_size: int = 256,
    positives_settings: dict[str, Any] | None = None,
) -> None:
    """Retrieval metrics at ``n_queries x n_gallery`` (against the bare matrix product) and at
    ``large`` (measured on ``large_slice_queries`` queries and extrapolated, or whole with ``None``);
    before them :func:`bench_positives_per_query` with ``positives_settings``."""
    from ...evaluation import metrics

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
    rows.add(
        benchmark,
        "retrieval_metrics (R@K, medr, meanr, mAP, mINP)",
        metrics_s,
        "s",
        metrics_s / matmul_s,
        "bare normalise + matmul (Q x G x d)",
        f"{size}; goal <= {EVAL_GOAL_SECONDS} s on 2 cores: {'met' if metrics_s <= EVAL_GOAL_SECONDS else 'NOT met'}",
    )
    rows.add(
        benchmark,
        "retrieval_metrics vs goal",
        metrics_s,
        "s",
        metrics_s / EVAL_GOAL_SECONDS,
        f"goal {EVAL_GOAL_SECONDS} s",
        size,
    )
    rows.add(benchmark, "bare normalise + matmul", matmul_s, "s", 1.0, "bare normalise + matmul (Q x G x d)", size)
    bound = _memory_bound_mib(chunk_size, n_gallery, positives)
    if peak is not None:
        rows.add(
            benchmark,
            "retrieval_metrics peak memory (RSS growth)",
            peak,
            "MiB",
            peak / bound,
            "documented bound: 10 bytes x scores per block",
            f"{size}; bound {bound:.0f} MiB",
        )
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T

    def recall_only() -> None:
        metrics.recall_at_k(similarity, query_labels, gallery_labels, chunk_size=1024)  # noqa: F821 -- bound while timed; deleted after

    recall_s = median(time_interleaved({"recall": recall_only}, repeats, warmup=1)["recall"])
    _, recall_peak = measure_peak_memory(recall_only)
    rows.add(
        benchmark,
        "recall_at_k on a precomputed (Q, G) matrix",
        recall_s,
        "s",
        recall_s / matmul_s,
        "bare normalise + matmul (Q x G x d)",
        f"{size}; the matrix itself ({similarity.numel() * 4 / 2**20:.0f} MiB) is not counted",
    )
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
        return lambda: metrics.retrieval_metrics(
            queries[:n], gallery, query_labels[:n], gallery_labels, chunk_size=chunk_size
        )

    def big_matmul() -> None:
        for start in range(0, measured_queries, chunk_size):
            queries[start : start + chunk_size] @ gallery.T

    samples = time_interleaved({"matmul": big_matmul, "metrics": big_metrics(measured_queries)}, 1, warmup=0)
    metrics_s, matmul_s = samples["metrics"][0], samples["matmul"][0]
    rows.add(
        benchmark,
        f"retrieval_metrics, {measured_queries} queries (measured)",
        metrics_s,
        "s",
        metrics_s / matmul_s,
        "chunked matmul of the same slice (no normalisation)",
        size,
    )
    if measured_queries < big_queries:
        # time = fixed (normalising the gallery, label counts) + per query: fitted on two slices
        small_queries = max(1, measured_queries // 4)
        small_s = time_interleaved({"small": big_metrics(small_queries)}, 1, warmup=0)["small"][0]
        per_query = max(0.0, (metrics_s - small_s) / (measured_queries - small_queries))
        fixed = max(0.0, metrics_s - per_query * measured_queries)
        total = fixed + per_query * big_queries
        matmul_total = matmul_s * big_queries / measured_queries
        rows.add(
            benchmark,
            f"retrieval_metrics, all {big_queries} queries",
            total,
            "s",
            total / matmul_total,
            f"chunked matmul of all queries, extrapolated ({matmul_total:.0f} s)",
            f"EXTRAPOLATED from measured slices of {small_queries} and {measured_queries} queries: fixed "
            f"{fixed:.2f} s + {1e3 * per_query:.2f} ms per query x {big_queries}; `--full` measures it whole",
        )
    else:
        rows.add(
            benchmark,
            f"retrieval_metrics, all {big_queries} queries",
            metrics_s,
            "s",
            metrics_s / matmul_s,
            "chunked matmul of all queries",
            "measured whole",
        )
    _, peak = measure_peak_memory(big_metrics(min(measured_queries, 2 * chunk_size)))
    bound = _memory_bound_mib(chunk_size, big_gallery, positives)
    gallery_mib = gallery.numel() * 4 / 2**20
    if peak is not None:
        rows.add(
            benchmark,
            "retrieval_metrics peak memory (RSS growth)",
            peak,
            "MiB",
            peak / (bound + gallery_mib),
            "bound: 10 bytes x block budget (2^25 scores) + a normalised gallery copy",
            f"{min(measured_queries, 2 * chunk_size)} queries x {big_gallery}; bound {bound:.0f} MiB + gallery "
            f"copy {gallery_mib:.0f} MiB; the bound does not grow with the number of queries",
        )


def bench_positives_per_query(
    rows: Rows,
    n_queries: int = 1000,
    n_gallery: int = 5000,
    dim: int = 512,
    positives: Sequence[int] = (3, 100, 1000),
    repeats: int = 3,
    chunk_size: int = 256,
) -> None:
    """:func:`cmp_utils.evaluation.metrics.retrieval_metrics` at ``n_queries x n_gallery`` with each count of
    ``positives`` per query (class-level protocols: CUB / Flowers-like labels), beside the bare
    normalise + matrix product of the same size. The tie correction is linear in the positives per
    query, so the ratio to the product should stay small (goal: within 2x at 1,000 positives)."""
    from ...evaluation import metrics

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
        rows.add(
            benchmark,
            f"retrieval_metrics, {count} positives per query",
            metrics_s,
            "s",
            metrics_s / matmul_s,
            "bare normalise + matmul (Q x G x d)",
            size,
        )
        rows.add(
            benchmark,
            f"bare normalise + matmul ({count} positives case)",
            matmul_s,
            "s",
            1.0,
            "bare normalise + matmul (Q x G x d)",
            size,
        )


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
        pixels = np.stack(
            [127 + 100 * np.sin(frequency[c, 0] * rows + frequency[c, 1] * cols + phase[c]) for c in range(3)], axis=-1
        )
        pixels += rng.normal(0, 12, size=pixels.shape)
        path = folder / f"photo_{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def bench_data(
    rows: Rows,
    photos: int = 400,
    photo_size: tuple[int, int] = (256, 128),
    cache_size: tuple[int, int] = (224, 224),
    synthetic_images: int = 2000,
    profile: str = "quick",
    dataset: str = "cuhk_pedes",
    workers: int | None = None,
    cache_dir: str | None = None,
) -> None:
    """Images/s decoding into :class:`~cmp_utils.data.images.ImageCache`, and an epoch of image reads
    decoding every file (no cache) against reading the memmapped cache (``PairDataset``'s path)."""
    from ... import data
    from ...data.images import ImageCache, decode_image, normalise

    workers = workers or min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="cmp-bench-data-") as scratch:
        scratch_path = Path(scratch)
        cases = [
            (
                "JPEG photos",
                _write_photos(scratch_path / "photos", photos, photo_size),
                cache_size,
                f"{photos} JPEG files of {photo_size[0]}x{photo_size[1]} resized to {cache_size[0]}x{cache_size[1]}",
            )
        ]
        prepared = data.prepare_dataset(dataset, profile, cache_dir=cache_dir)
        synthetic_paths = data.image_paths_of(prepared.frames["train"])[:synthetic_images]
        cases.append(
            (
                f"{dataset} synthetic PNG",
                synthetic_paths,
                prepared.image_size,
                f"{len(synthetic_paths)} {profile} synthetic PNG files at their native "
                f"{prepared.image_size[0]}x{prepared.image_size[1]} (decode only)",
            )
        )
        for name, paths, size, notes in cases:
            benchmark = f"data/{name.replace(' ', '_')}"
            start = time.perf_counter()
            cache = ImageCache.build(
                paths, size, scratch_path / f"cache_{len(paths)}_{size[0]}.npy", progress=False, workers=workers
            )
            build_s = time.perf_counter() - start
            rows.add(
                benchmark,
                f"build image cache (decode + resize + write), {workers} threads",
                len(paths) / build_s,
                "images/s",
                None,
                "",
                notes + "; files in the OS page cache",
            )
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
            rows.add(
                benchmark,
                "first epoch: decode every file (no cache)",
                decode_rate,
                "images/s",
                1.0,
                "decoding epoch",
                epoch_notes,
            )
            rows.add(
                benchmark,
                "cached epoch: memmap read",
                cached_rate,
                "images/s",
                cached_rate / decode_rate,
                "decoding epoch",
                epoch_notes,
            )
            del cache


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def bench_losses(
    rows: Rows,
    batch_sizes: Sequence[int] = (16, 64, 256),
    dim: int = PAPER_DIM,
    num_classes: int = CUHK_TRAIN_IDS,
    repeats: int = 50,
    device: torch.device | str = "cpu",
) -> None:
    """CMPM and CMPC forward + backward against a plain (batch x dim) @ (dim x batch) product
    (forward + backward) and, for CMPC, against the (batch x dim) @ (dim x classes) classifier product."""
    from ...losses import cmpc_loss, cmpm_loss

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

        samples = time_interleaved(
            {"matmul": matmul, "classifier": classifier_matmul, "cmpm": cmpm, "cmpc": cmpc},
            repeats,
            warmup=5,
            device=device,
        )
        ms = {name: 1e3 * median(values) for name, values in samples.items()}
        notes = f"batch {batch}, dim {dim}, forward + backward, median of {repeats}"
        benchmark = f"losses/batch_{batch}"
        base = f"plain matmul {batch}x{dim} @ {dim}x{batch} (fwd+bwd)"
        rows.add(benchmark, "plain matmul (n x n x d)", ms["matmul"], "ms", 1.0, base, notes)
        rows.add(benchmark, "CMPM", ms["cmpm"], "ms", ms["cmpm"] / ms["matmul"], base, notes)
        rows.add(benchmark, f"CMPC ({num_classes} classes)", ms["cmpc"], "ms", ms["cmpc"] / ms["matmul"], base, notes)
        rows.add(
            benchmark,
            "CMPC vs its classifier matmul",
            ms["cmpc"],
            "ms",
            ms["cmpc"] / ms["classifier"],
            f"matmul {batch}x{dim} @ {dim}x{num_classes} (fwd+bwd) = {ms['classifier']:.3g} ms",
            notes,
        )


def bench_vendor_kernels(rows: Rows, sizes: Sequence[int] = (12 * 2, 256 * 2048, 4_000_000), repeats: int = 5) -> None:
    """Each op of :mod:`cmp_utils.core.vendor_kernels` (what the pinning computes) against oneMKL VML's own
    kernel (``aten::<op>.out``, which the pinning leaves alone) on float32 vectors: the toy's Adam
    moment, the quick joint embedding's weights, and a whole quick model's parameters. One torch thread."""
    from ...core import vendor_kernels

    generator = torch.Generator().manual_seed(0)
    with config.torch_threads(1):
        for size in sizes:
            values = torch.rand(size, generator=generator) + 1e-3  # (size,) positive: every op is defined
            for name in vendor_kernels.REPLACED_OPS:
                replaced, original = vendor_kernels.FLOAT32_KERNELS[name], getattr(torch.ops.aten, name).out
                buffer = torch.empty_like(values)
                samples = time_interleaved(
                    {"vml": lambda: original(values, out=buffer), "replaced": lambda: replaced(values)},
                    repeats,
                    warmup=1,
                )
                vml, ours = median(samples["vml"]), median(samples["replaced"])
                notes = (
                    "float32, one torch thread; VML: aten::<op>.out, the vendor-dependent kernel the pinning replaces"
                )
                rows.add(f"numerics/{name}", f"{size} values: oneMKL VML", 1e6 * vml, "us", notes=notes)
                rows.add(
                    f"numerics/{name}",
                    f"{size} values: vendor-independent",
                    1e6 * ours,
                    "us",
                    ratio=ours / vml if vml else None,
                    ratio_to="oneMKL VML",
                    notes=notes,
                )
