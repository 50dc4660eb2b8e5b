"""How the benchmarks measure and record: interleaved timing, peak memory, and the rows of a group's CSV with
the machine they were measured on."""

from __future__ import annotations

import datetime as _dt
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from ...core import atomic, numerics

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

    def add(
        self,
        benchmark: str,
        case: str,
        value: float,
        unit: str,
        ratio: float | None = None,
        ratio_to: str = "",
        notes: str = "",
    ) -> dict[str, Any]:
        row = {
            "benchmark": benchmark,
            "case": case,
            "value": float(value),
            "unit": unit,
            "ratio": float("nan") if ratio is None else float(ratio),
            "ratio_to": ratio_to,
            "device": self.device,
            "machine": self.machine,
            "torch": str(torch.__version__),
            "date": self.date,
            "notes": f"{notes}; load average {self.load:.1f} at start".lstrip("; "),
        }
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


def time_interleaved(
    contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2, device: torch.device | None = None
) -> dict[str, list[float]]:
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
