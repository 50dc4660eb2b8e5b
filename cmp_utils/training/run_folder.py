"""A run's folder: where it goes, the checks before writing into it, resume, ``params.yaml`` and the
checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..core import atomic, config, numerics
from . import distributed
from .settings import _FIELDS, TrainConfig, _loader_workers
from .step import RunState, _rng_state, _set_rng_state

#: The file under ``checkpoints/`` holding the weights each choice tests (averaged weights, ``{"model": ...}``).
CHECKPOINT_FILES = {"last": "last_averaged.pt", "best_validation": "best.pt"}


def selected_checkpoint(run_dir: str | Path, cfg: "TrainConfig") -> Path:
    """The checkpoint a finished run's test scores come from (:data:`CHECKPOINT_FILES`); ``best.pt``
    for runs written before ``checkpoint_choice`` existed (they tested it)."""
    chosen = Path(run_dir) / "checkpoints" / CHECKPOINT_FILES[cfg.checkpoint_choice]
    return chosen if chosen.is_file() else Path(run_dir) / "checkpoints" / "best.pt"


def default_output_dir(cfg: TrainConfig) -> Path:
    """``<results>/runs/<profile>/<dataset>/<loss+loss>_seed<k>``."""
    return config.results_dir() / "runs" / cfg.profile / cfg.dataset / f"{'+'.join(cfg.losses)}_seed{cfg.seed}"


def git_commit() -> str:
    """The repository's HEAD commit, or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=config.project_root(), capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _own_run_folder(out_dir: Path):
    """The run folder's lock (:func:`cmp_utils.core.atomic.hold_folder`), taken by the main process only
    (``RANK`` 0 or unset); the other processes of a torchrun job write nothing there."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return atomic.hold_folder(out_dir, purpose="cmp_utils.training run")


# ---------------------------------------------------------------------------------------------
# fit: checks before anything runs
# ---------------------------------------------------------------------------------------------

#: What makes a folder a run folder (a new run refuses to write into one without ``resume``).
RUN_FILES = ("params.yaml", "log.jsonl", "results.json", "checkpoints")

#: Settings ``resume`` may change: where the run writes and reads its data, how it reports, how
#: long it runs, how many threads and loader workers it uses. Any other difference is refused.
RESUMABLE_CHANGES = (
    "resume",
    "epochs",
    "patience",  # e.g. a run early stopping ended, trained on without it (a convergence reference)
    "output_dir",
    "data_dir",
    "cache_dir",
    "device",
    "progress",
    "num_workers",
    "num_threads",
    "eval_batch_size",
    "evaluate_test",
    "note",
)


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
        raise PermissionError(
            f"output_dir {out_dir} cannot be written ({existing} is not a writable folder); pass another --output-dir"
        )
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found and not resume:
        raise FileExistsError(
            f"output_dir {out_dir} already holds a run ({', '.join(found)}): use --resume "
            "(resume=True) to continue it, or another --output-dir for a new run"
        )


def check_resume_settings(cfg: TrainConfig, out_dir: Path) -> None:
    """With ``resume``, refuse settings that differ from the run's ``params.yaml`` (all but
    :data:`RESUMABLE_CHANGES`), naming each differing setting with both values."""
    params_path = out_dir / "params.yaml"
    if not cfg.resume or not params_path.is_file():
        return
    import yaml

    saved = yaml.safe_load(params_path.read_text()) or {}
    current = cfg.to_dict()
    differing = [
        f"{name}: run {saved[name]!r}, now {current[name]!r}"
        for name in sorted(_FIELDS - set(RESUMABLE_CHANGES))
        if name in saved and saved[name] != current[name]
    ]
    if differing:
        raise ValueError(
            f"resume: these settings differ from the run's {params_path}: {'; '.join(differing)}. "
            "Resume with the run's settings, or start a new run in another --output-dir"
        )


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
                f"author (docs/security.md)"
            ) from error
        raise ValueError(
            f"checkpoint {path} is empty or truncated and cannot be read ({type(error).__name__}: {error}). "
            f"Delete {path.name} (resuming then starts the run from scratch) or copy back an intact one; "
            f"to keep the run, restore {path} from a backup"
        ) from error


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


def _write_params(cfg: TrainConfig, out_dir: Path, context: distributed.DistributedContext, prepared) -> None:
    """``params.yaml``: the settings plus what the run found (commit, processes, device, threads, CPU numerics,
    classes)."""
    atomic.write_yaml(
        out_dir / "params.yaml",
        {
            **cfg.to_dict(),
            "output_dir": str(out_dir),
            "git_commit": git_commit(),
            "world_size": context.world_size,
            "device": str(context.device),
            "torch": str(torch.__version__),
            "torch_threads": torch.get_num_threads(),
            "cpu_numerics": numerics.status(),
            "loader_workers": _loader_workers(cfg) if cfg.feature_mode != "cached" else 0,
            "num_classes": prepared.num_classes,
            "vocabulary_size": len(prepared.vocabulary),
        },
    )


def _save_checkpoints(state: RunState, cfg: TrainConfig, out_dir: Path, epoch: int, score: float | None) -> None:
    """``best.pt`` (averaged weights) when ``score`` beats the best so far; ``last.pt`` (everything
    a resume needs) and ``log.jsonl`` after every epoch, each written atomically."""
    checkpoints = out_dir / "checkpoints"
    if score is not None and score > state.best_score:
        state.best_score, state.best_epoch = score, epoch + 1
        atomic.torch_save(
            checkpoints / "best.pt",
            {
                "model": state.eval_model.state_dict(),
                "epoch": epoch + 1,
                "score": score,
                "select_metric": cfg.select_metric,
            },
        )
    atomic.torch_save(
        checkpoints / "last.pt",
        {
            "model": state.model.state_dict(),
            "loss_module": state.loss_module.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "ema": state.ema.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else {},
            "epoch": epoch + 1,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "history": json.dumps(state.history),
            "rng": _rng_state(),
        },
    )
    atomic.write_text(out_dir / "log.jsonl", "".join(json.dumps(line) + "\n" for line in state.history))
