"""Multi-process training helpers: process group from ``torchrun``'s environment, global batches.

``torchrun --nproc_per_node=N -m cmp_utils.training ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and starts the
process group (NCCL on CUDA, Gloo on CPU). Without them everything runs as one process.

CMPM and CMPC compare every image with every text of the **global** batch. Each process holds
``local_batch`` rows; :func:`all_gather_with_grad` concatenates every process's rows in rank
order and keeps the autograd graph of the local rows only (the other rows are constants here;
their own process back-propagates through them). See :mod:`cmp_utils.training` for how the
gradient of the global loss is reassembled exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` and ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (or another launcher) set ``WORLD_SIZE`` > 1 in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | torch.device = "auto") -> DistributedContext:
    """Start the process group from the environment when launched with several processes.

    ``device``: ``"auto"`` picks ``cuda:<LOCAL_RANK>`` when GPUs are visible, else the CPU.
    Backend: NCCL on CUDA, Gloo on the CPU. A single process gets a context without a group.
    """
    from ..core.config import resolve_device

    resolved = resolve_device(device)
    if not launched_by_torchrun():
        return DistributedContext(device=resolved)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def cleanup() -> None:
    """Destroy the process group if one was started (safe to call always)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (the process that writes files and shows progress)."""
    return rank() == 0


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process (``flag`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    tensor = torch.tensor([int(bool(flag))], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if world_size() > 1:
        dist.barrier()


class _GatherKeepLocalGradient(torch.autograd.Function):
    """all_gather forward; backward hands back only the gradient of this process's own rows."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local.contiguous())
        ctx.local_rows = local.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, global_gradient: torch.Tensor) -> torch.Tensor:
        start = ctx.rank * ctx.local_rows
        return global_gradient[start : start + ctx.local_rows]


def all_gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate ``local`` (rows, ...) of every process in rank order: (world_size·rows, ...).

    Gradients flow back into this process's own rows only: the global loss computed here,
    differentiated through this tensor, gives $\\partial L / \\partial (\\text{local rows})$,
    with every other row held constant. Every process must pass the same number of rows
    (``DistributedSampler(drop_last=True)`` or equal batch sizes). Identity in one process.
    """
    if world_size() == 1:
        return local
    return _GatherKeepLocalGradient.apply(local)


def all_gather_tensor(local: torch.Tensor) -> torch.Tensor:
    """Concatenate ``local`` of every process in rank order, without gradients (e.g. labels)."""
    if world_size() == 1:
        return local
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local.contiguous())
    return torch.cat(gathered, dim=0)
