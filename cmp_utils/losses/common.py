"""What every loss shares: the float32-or-wider computation, input checks, the match mask, the true matching
distribution and the projections."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

#: Denominator guard of :func:`torch.nn.functional.normalize` (a zero vector stays zero).
NORM_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Small shared pieces
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _full_precision(reference: torch.Tensor) -> Iterator[None]:
    """Switch autocast off for ``reference``'s device so matmuls stay in float32 here."""
    device_type = reference.device.type
    available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cuda", "cpu"))
    if available(device_type) and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:  # pragma: no cover - exotic devices have no autocast to switch off
        yield


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64 (half / bfloat16 are promoted)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_pair(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor | None, where: str
) -> None:
    """Raise a clear error unless the shapes are ``(n, d)``, ``(n, d)`` and ``(n,)``."""
    if image_embeddings.dim() != 2 or text_embeddings.dim() != 2:
        raise ValueError(
            f"{where}: image_embeddings and text_embeddings must be 2-D (batch, dim); "
            f"got shapes {tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            f"{where}: image_embeddings {tuple(image_embeddings.shape)} and text_embeddings "
            f"{tuple(text_embeddings.shape)} must have the same (batch, dim) shape: row i of each is pair i"
        )
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] != image_embeddings.shape[0]:
            raise ValueError(
                f"{where}: labels must have shape (batch,) = ({image_embeddings.shape[0]},); got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"{where}: labels must be an integer tensor (identity / image ids); got {labels.dtype}")


def _check_weight(weight: torch.Tensor, embedding_dim: int, where: str) -> None:
    if weight.dim() != 2 or weight.shape[0] != embedding_dim:
        raise ValueError(
            f"{where}: weight must have shape (embedding_dim, num_classes) = ({embedding_dim}, C); "
            f"got {tuple(weight.shape)} (transpose it if it is (C, embedding_dim))"
        )


def match_mask(labels: torch.Tensor) -> torch.Tensor:
    """$y_{ij} = [\\text{label}_i = \\text{label}_j]$, shape ``(n, n)``, boolean, diagonal included.

    Labels are person ids (CUHK-PEDES) or image ids (Flickr30K / MSCOCO), so two captions of one
    image, or two images of one person, in a batch are both positives.
    """
    return labels.reshape(-1, 1) == labels.reshape(1, -1)


def true_distribution(labels: torch.Tensor, target: str = "l1", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The true matching distribution $q_{ij}$, shape ``(n, n)``.

    * ``target="l1"`` (paper and released code): $q_{ij} = y_{ij} / \\sum_k y_{ik}$, each row a
      probability distribution over the batch;
    * ``target="l2"`` (several public PyTorch ports -- a deviation): $q_{ij} = y_{ij} / \\lVert y_{i\\cdot} \\rVert_2$,
      which equals the L1 form only when a row has a single positive.
    """
    mask = match_mask(labels).to(dtype)  # (n, n)
    if target == "l1":
        return mask / mask.sum(dim=1, keepdim=True)
    if target == "l2":
        return mask / mask.norm(dim=1, keepdim=True)
    raise ValueError(f"cmpm_loss: target={target!r} is not known; use 'l1' (the original) or 'l2' (public ports)")


def scalar_projection(embeddings: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """$x_i^\\top \\bar z_j$ for every pair: the scalar projection of each row of ``embeddings`` onto
    the direction of each row of ``onto``; shape ``(n, m)``. Positive when the angle is acute."""
    return embeddings @ F.normalize(onto, dim=1, eps=NORM_EPS).t()


def vector_projection(embeddings: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """$\\hat x_i = (x_i^\\top \\bar z_i)\\, \\bar z_i$ for matched rows only; shape ``(n, d)``."""
    direction = F.normalize(onto, dim=1, eps=NORM_EPS)  # (n, d)
    length = (embeddings * direction).sum(dim=1, keepdim=True)  # (n, 1)
    return length * direction
