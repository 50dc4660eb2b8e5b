"""One prepared GPU check: ``make gpu-check``, or ``PYTHONPATH=. python3 -m cmp_utils.tools.gpu_check --output-dir results/gpu``.

Needs torch (and numpy, pandas, PyYAML, Pillow, tqdm), not papermill. Three measurements, each a
CSV whose ``gpu`` / ``device`` column names the GPU (``torch.cuda.get_device_name``):

1. ``paper_epoch.csv``: one epoch of the paper profile's CUHK-PEDES recipe (MobileNet v1 at
   224 x 224, batch 16, fp32, Adam, weight average, validation, test) run by
   :func:`cmp_utils.training.fit` on a synthetic set of CUHK-PEDES's size (train 34,054 images /
   68,108 captions / 11,003 identities, validation 3,078 images, test 3,074), written in the
   real layout (``reid_raw.json`` + ``imgs/``) and prepared as real data is (the image cache
   build is timed), with ``pretrained=False`` (no ImageNet weights needed). The epoch is capped
   at ``--epoch-steps`` steps (default 2,000 of its 4,256) so that the whole check fits in
   8 minutes on one H200; ``projected_epoch_seconds`` = measured step time x the full epoch's
   steps. ``--epoch-steps 0`` runs the whole epoch.
2. ``precision.csv``: the same run for ``--precision-steps`` steps in fp32 (``amp="off"``, the
   paper profile) and with bf16 autocast: step time, images/s, and bf16's speed-up.
3. ``bench/gpu.csv``: the GPU group of ``python -m cmp_utils.tools.bench --gpu-only`` (model-only
   steps per batch size and precision, an in-memory epoch), its compile modes given the time
   that is left of ``--budget-s``.

Without CUDA it exits with status 2 and a message saying so. ``--dry-run`` runs every part at
tiny sizes on the CPU (the tests do), so the script is known to work before a GPU is booked.
The synthetic data, its image cache (about 6 GB) and the run folders go to ``--work-dir``
(default ``<output-dir>/work``), deleted at the end unless ``--keep-work``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import atomic, numerics

#: CUHK-PEDES's split sizes (images, identities) and captions per image.
CUHK_SIZES = {"train": (34_054, 11_003), "val": (3_078, 1_000), "test": (3_074, 1_000)}
CAPTIONS_PER_IMAGE = 2
STORED_IMAGE_WH = (64, 128)  # stored JPEGs, about the size of CUHK-PEDES's crops; the cache resizes them


@dataclass(frozen=True)
class CheckSizes:
    """What one check measures: split sizes, cache image size (H, W), step caps, word pool."""

    splits: dict[str, tuple[int, int]]
    image_size: tuple[int, int]
    epoch_steps: int  # 0 = the whole epoch
    precision_steps: int
    words: int


def sizes_for(dry_run: bool, epoch_steps: int, precision_steps: int) -> CheckSizes:
    """The paper-sized check, or (``dry_run``) a tiny one for the CPU."""
    if dry_run:
        return CheckSizes({"train": (64, 32), "val": (16, 8), "test": (16, 8)}, (64, 32), 3, 2, 60)
    return CheckSizes(dict(CUHK_SIZES), (224, 224), epoch_steps, precision_steps, 3000)


def write_synthetic_cuhk(
    root: Path,
    splits: dict[str, tuple[int, int]],
    words: int,
    seed: int = 0,
    image_wh: tuple[int, int] = STORED_IMAGE_WH,
) -> Path:
    """A CUHK-PEDES-shaped dataset under ``root`` (``reid_raw.json`` + ``imgs/``): per split
    ``(images, identities)``, identity ids contiguous from 1 across splits, two captions per
    image of 10-35 words from a pool of ``words`` words, solid-colour JPEGs with a block of the
    identity's second colour. Content is random: this data measures speed, not accuracy."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{k}" for k in range(words)])
    jobs, records, next_id = [], [], 1
    for split, (num_images, num_ids) in splits.items():
        identities = next_id + np.arange(num_images) % num_ids  # every identity gets images in turn
        next_id += num_ids
        for index, person_id in enumerate(identities.tolist()):
            file_path = f"synthetic/{split}/{person_id:05d}_{index}.jpg"
            captions = [
                " ".join(rng.choice(vocabulary, size=int(rng.integers(10, 36)))) + "."
                for _ in range(CAPTIONS_PER_IMAGE)
            ]
            records.append(
                {
                    "split": split,
                    "captions": captions,
                    "file_path": file_path,
                    "id": person_id,
                    "processed_tokens": [caption.rstrip(".").split() for caption in captions],
                }
            )
            jobs.append((root / "imgs" / file_path, person_id))
    width, height = image_wh

    def write(job: tuple[Path, int]) -> None:
        path, person_id = job
        colours = np.random.default_rng([seed, person_id]).integers(0, 256, size=(2, 3), dtype=np.uint8)
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        pixels[:] = colours[0]
        pixels[height // 4 : height // 2] = colours[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)

    for folder in {path.parent for path, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor() as pool:
        list(pool.map(write, jobs, chunksize=256))
    atomic.write_text(root / "reid_raw.json", json.dumps(records))
    return root


def device_label(device: torch.device) -> str:
    """The GPU's name, or ``"<type> (dry run)"`` for a rehearsal on the CPU."""
    return numerics.device_name(device) if device.type == "cuda" else f"{device.type} (dry run)"


def _run_once(settings: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """One :func:`cmp_utils.training.fit` of the paper profile; returns its first epoch's log record
    plus the threads and loader workers it used."""
    import yaml

    from .. import training

    training.fit(training.make_config("paper", "cuhk_pedes", output_dir=str(output_dir), **settings))
    record = json.loads((output_dir / "log.jsonl").read_text().splitlines()[0])
    params = yaml.safe_load((output_dir / "params.yaml").read_text())
    return {**record, "torch_threads": params["torch_threads"], "loader_workers": params["loader_workers"]}


def paper_epoch(device: torch.device, sizes: CheckSizes, work_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the synthetic set, build its image cache (timed), train one (capped) epoch.
    Returns (the CSV row, the settings the later runs share)."""
    from .. import data, training

    batch_size = training.make_config("paper", "cuhk_pedes").batch_size
    started = time.perf_counter()
    data_dir = work_dir / "data"
    write_synthetic_cuhk(data_dir / "cuhk_pedes", sizes.splits, sizes.words)
    written_s = time.perf_counter() - started
    shared = dict(
        data_dir=str(data_dir),
        cache_dir=str(work_dir / "cache"),
        pretrained=False,
        epochs=1,
        image_size=sizes.image_size,
        device=str(device),
        progress=False,
    )
    started = time.perf_counter()
    prepared = data.prepare_dataset(
        "cuhk_pedes", "paper", data_dir=shared["data_dir"], cache_dir=shared["cache_dir"], image_size=sizes.image_size
    )
    cache_s = time.perf_counter() - started
    captions = len(prepared.frames["train"])
    record = _run_once({**shared, "max_steps_per_epoch": sizes.epoch_steps or None}, work_dir / "runs" / "epoch")
    full_steps = captions // batch_size
    row = {
        "gpu": device_label(device),
        "torch": torch.__version__,
        "profile": "paper",
        "dataset": "cuhk_pedes (synthetic, same size)",
        "train_images": sizes.splits["train"][0],
        "train_captions": captions,
        "identities": sizes.splits["train"][1],
        "image_size": f"{sizes.image_size[0]}x{sizes.image_size[1]}",
        "batch_size": batch_size,
        "amp": "off",
        "steps": record["steps"],
        "full_epoch_steps": full_steps,
        "step_seconds": record["step_seconds"],
        "images_per_second": record["images_per_second"],
        "epoch_seconds": record["seconds"],
        "projected_epoch_seconds": record["step_seconds"] * full_steps,
        "validation_seconds": record.get("eval_seconds", float("nan")),
        "data_written_seconds": written_s,
        "image_cache_seconds": cache_s,
        "loader_workers": record["loader_workers"],
        "torch_threads": record["torch_threads"],
        "notes": "pretrained=False; capped epoch" if record["steps"] < full_steps else "pretrained=False; whole epoch",
    }
    return row, shared


def precision_comparison(device: torch.device, sizes: CheckSizes, shared: dict[str, Any], work_dir: Path) -> list[dict]:
    """The same paper run for ``precision_steps`` steps in fp32 and in bf16 autocast."""
    rows = []
    for amp in ("off", "bf16"):
        record = _run_once(
            {
                **shared,
                "amp": amp,
                "max_steps_per_epoch": sizes.precision_steps,
                "validate_every": 0,
                "evaluate_test": False,
            },
            work_dir / "runs" / f"precision_{amp}",
        )
        rows.append(
            {
                "gpu": device_label(device),
                "torch": torch.__version__,
                "amp": "fp32" if amp == "off" else amp,
                "steps": record["steps"],
                "step_seconds": record["step_seconds"],
                "images_per_second": record["images_per_second"],
            }
        )
    for row in rows:
        row["speedup_over_fp32"] = rows[0]["step_seconds"] / row["step_seconds"]
        row["notes"] = (
            "paper profile (MobileNet v1, batch 16) through train.fit; mean step time including the "
            "first (autotuning) steps"
        )
    return rows


def gpu_benchmarks(device: torch.device, dry_run: bool, output_dir: Path, budget_s: float) -> Path:
    """The GPU group of :mod:`cmp_utils.tools.bench` into ``<output_dir>/bench/gpu.csv``."""
    from . import bench

    rows = bench.Rows(device, path=output_dir / "bench" / "gpu.csv")
    settings = bench.group_settings(quick_check=True, full=False)["gpu"] if dry_run else {}
    bench.bench_gpu(rows, device=device, **{**settings, "budget_s": max(0.0, budget_s)})
    return atomic.write_csv(output_dir / "bench" / "gpu.csv", rows.frame())


def run_check(
    output_dir: Path,
    dry_run: bool = False,
    epoch_steps: int = 2000,
    precision_steps: int = 200,
    budget_s: float = 420.0,
    work_dir: Path | None = None,
    keep_work: bool = False,
) -> list[Path]:
    """Every measurement in turn (the paper epoch first: it matters most); returns the CSVs written."""
    import pandas as pd

    started = time.perf_counter()
    device = torch.device("cpu" if dry_run else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sizes = sizes_for(dry_run, epoch_steps, precision_steps)
    work_dir = Path(work_dir) if work_dir else output_dir / "work"
    written = []
    try:
        print(f"gpu_check: paper epoch on {device_label(device)} (data and cache in {work_dir}) ...", flush=True)
        epoch_row, shared = paper_epoch(device, sizes, work_dir)
        written.append(atomic.write_csv(output_dir / "paper_epoch.csv", pd.DataFrame([epoch_row])))
        print(
            f"gpu_check: {epoch_row['steps']} steps, {epoch_row['step_seconds'] * 1000:.1f} ms/step, "
            f"{epoch_row['images_per_second']:.0f} images/s; whole epoch about "
            f"{epoch_row['projected_epoch_seconds']:.0f} s",
            flush=True,
        )
        precision = precision_comparison(device, sizes, shared, work_dir)
        written.append(atomic.write_csv(output_dir / "precision.csv", pd.DataFrame(precision)))
        print(f"gpu_check: bf16 step {precision[1]['speedup_over_fp32']:.2f}x fp32's speed", flush=True)
    finally:
        if not keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    left = budget_s - (time.perf_counter() - started)
    written.append(gpu_benchmarks(device, dry_run, output_dir, left - 120.0))  # compile modes only in what is left
    print(f"gpu_check: done in {time.perf_counter() - started:.0f} s -> {', '.join(map(str, written))}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmp_utils.tools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="results/gpu", help="folder of the CSV files (default results/gpu)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: check that every part runs")
    parser.add_argument(
        "--epoch-steps", type=int, default=2000, help="step cap of the paper epoch (0: the whole epoch)"
    )
    parser.add_argument("--precision-steps", type=int, default=200, help="steps of each fp32 / bf16 run")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds the whole check aims to stay within")
    parser.add_argument("--work-dir", help="synthetic data, image cache, run folders (default <output-dir>/work)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check needs a CUDA GPU and none is visible here (torch.cuda.is_available() is False). Run it on a "
            "GPU machine (`make gpu-check`), or add --dry-run for a tiny rehearsal on the CPU.",
            file=sys.stderr,
        )
        return 2
    if args.epoch_steps < 0 or args.precision_steps < 1:
        parser.error("--epoch-steps must be >= 0 and --precision-steps >= 1")
    run_check(
        Path(args.output_dir),
        args.dry_run,
        args.epoch_steps,
        args.precision_steps,
        args.budget_s,
        Path(args.work_dir) if args.work_dir else None,
        args.keep_work,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
