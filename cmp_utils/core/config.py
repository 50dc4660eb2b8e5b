"""Project paths, device resolution and seeding.

Everything that depends on where the project lives or which machine runs it is
resolved here, from explicit parameters first and environment variables second:

* ``CMP_DATA_DIR``    root of the real datasets (``<data_dir>/<dataset>/...``)
* ``CMP_CACHE_DIR``   generated synthetic data, image caches, feature caches
* ``CMP_RESULTS_DIR`` where notebooks write CSVs, figures and run folders

No module keeps hidden global state: callers pass a device, a seed, a path.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch

PROFILES = ("smoke", "quick", "paper")
# The profiles that run on the embedded synthetic data (the paper profile reads the real datasets).
SYNTHETIC_PROFILES = ("smoke", "quick")
DATASETS = ("cuhk_pedes", "flickr30k", "mscoco", "cub", "flowers", "icfg_pedes", "rstpreid")
# The paper's five datasets (its tables); ICFG-PEDES and RSTPReid came out after it (no paper numbers).
PAPER_DATASETS = DATASETS[:5]
# Text-based person search: identity labels, text-to-image protocol, the CUHK-PEDES recipe.
PERSON_DATASETS = ("cuhk_pedes", "icfg_pedes", "rstpreid")
#: Notebooks of our own checks (the fidelity audit, the CMPM family): ``make reproduce-checks`` runs them;
#: ``make reproduce`` runs every other notebook (the paper's tables), which keeps it within its time.
CHECK_NOTEBOOKS = ("13_fidelity_audit", "14_cmpm_family")


def project_root() -> Path:
    """The repository root (the folder that holds ``pyproject.toml``)."""
    return Path(__file__).resolve().parents[2]


def results_dir(results_dir: str | os.PathLike | None = None) -> Path:
    """Where results go: the argument, else ``$CMP_RESULTS_DIR``, else ``<root>/results``."""
    chosen = results_dir or os.environ.get("CMP_RESULTS_DIR") or project_root() / "results"
    return Path(chosen).expanduser().resolve()


def data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Root of the real datasets: the argument, else ``$CMP_DATA_DIR``, else ``<root>/data``.

    Each dataset lives in its own sub-folder named as in :data:`DATASETS`, laid out
    as it is distributed (see ``README.md``).
    """
    chosen = data_dir or os.environ.get("CMP_DATA_DIR") or project_root() / "data"
    return Path(chosen).expanduser().resolve()


def cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Generated data and caches: the argument, else ``$CMP_CACHE_DIR``, else ``<root>/cache``."""
    chosen = cache_dir or os.environ.get("CMP_CACHE_DIR") or project_root() / "cache"
    return Path(chosen).expanduser().resolve()


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is one of :data:`PROFILES`, else raise a clear error."""
    if profile not in PROFILES:
        raise ValueError(f"parameter profile={profile!r} is not known; use one of {', '.join(PROFILES)}")
    return profile


#: Device names accepted everywhere a ``device`` is given (``cuda:N`` picks GPU N).
VALID_DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into ``cuda`` when a GPU is visible, else ``cpu``; check explicit names."""
    if isinstance(device, torch.device):
        return device
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"parameter device={device!r} is not a device; use one of {', '.join(VALID_DEVICES)}"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"parameter device={device!r} asks for CUDA, but no GPU is visible; use device='auto' or 'cpu'"
        )
    return resolved


def file_stamp(path: str | os.PathLike | None) -> str:
    """``"<path>|<bytes>|<mtime ns>"`` of a file (``"<path>|missing"``, or ``""`` for no path): a cheap
    content key, so a file replaced at the same path gives another key (caches, memoised runs)."""
    if not path:
        return ""
    resolved = Path(path).expanduser()
    try:
        status = resolved.stat()
    except OSError:
        return f"{resolved}|missing"
    return f"{resolved}|{status.st_size}|{status.st_mtime_ns}"


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch CPU threads (``None``: as they are), then give the
    caller's count back. Float sums depend on how work is split between threads, so a run's
    training and scoring use its own ``TrainConfig.num_threads`` wherever they happen."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


# What each real dataset needs under ``<data_dir>/<name>/``, as the datasets are distributed.
# (Annotation files that must exist, and the image folders they point into.)
DATASET_LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "cuhk_pedes": {"files": ("reid_raw.json",), "folders": ("imgs",)},
    "flickr30k": {"files": ("dataset_flickr30k.json",), "folders": ("flickr30k-images",)},
    "mscoco": {"files": ("dataset_coco.json",), "folders": ("train2014", "val2014")},
    "cub": {
        "files": ("cvpr2016_cub/trainvalclasses.txt", "cvpr2016_cub/testclasses.txt"),
        "folders": ("cvpr2016_cub/text_c10", "CUB_200_2011/images"),
    },
    "flowers": {
        "files": ("cvpr2016_flowers/trainvalclasses.txt", "cvpr2016_flowers/testclasses.txt"),
        "folders": ("cvpr2016_flowers/text_c10", "jpg"),
    },
    "icfg_pedes": {"files": ("ICFG-PEDES.json",), "folders": ("imgs",)},
    "rstpreid": {"files": ("data_captions.json",), "folders": ("imgs",)},
}
