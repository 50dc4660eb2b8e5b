"""The 2-D toy of notebook 02: twelve free image and text points in the plane, trained by Adam on a loss.

Small enough to run in a second, and it exercises what a real run's numbers depend on (tiny matrix
products, softmax, log, Adam's square root), so :mod:`cmp_utils.cpu_probe` fingerprints it too.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core.config import torch_threads

#: Four identities of three points each (image and text sides), as in notebook 02.
TOY_POINTS, TOY_IDENTITY_SIZE = 12, 3

LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def toy_start(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, texts, labels)``: the starting points, each ``(12, 2)``, and their ``(12,)`` identity labels."""
    generator = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(TOY_POINTS) // TOY_IDENTITY_SIZE
    images = torch.randn(TOY_POINTS, 2, generator=generator)  # (12, 2)
    texts = torch.randn(TOY_POINTS, 2, generator=generator)  # (12, 2)
    return images, texts, labels


def train_toy(
    loss_fn: LossFunction,
    images: torch.Tensor,
    texts: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float = 0.05,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Adam (``lr``) on the points themselves for ``steps`` steps, one torch thread (tiny tensors).

    Returns the trained ``(images, texts)``, each ``(12, 2)``, and the loss before each step."""
    from tqdm.auto import tqdm

    images, texts = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([images, texts], lr=lr)
    history: list[float] = []
    with torch_threads(1):
        for _ in tqdm(range(steps), leave=False, disable=not progress):
            optimiser.zero_grad()
            loss = loss_fn(images, texts, labels)
            loss.backward()
            optimiser.step()
            history.append(loss.item())
    return images.detach(), texts.detach(), history
