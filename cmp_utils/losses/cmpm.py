"""The cross-modal projection matching loss (CMPM): KL divergence between the projection compatibility
distribution and the normalised true matching distribution."""

from __future__ import annotations

import torch

from .common import _check_pair, _compute_dtype, _full_precision, scalar_projection, true_distribution


def compatibility_distribution(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two compatibility distributions of CMPM, each ``(n, n)`` with rows summing to one.

    $p_{ij} = \\mathrm{softmax}_j(x_i^\\top \\bar z_j)$ (image to text) and
    $p^{t2i}_{ij} = \\mathrm{softmax}_j(z_i^\\top \\bar x_j)$ (text to image). No temperature.
    """
    dtype = _compute_dtype(image_embeddings, text_embeddings)
    with _full_precision(image_embeddings):
        images, texts = image_embeddings.to(dtype), text_embeddings.to(dtype)
        return (
            torch.softmax(scalar_projection(images, texts), dim=1),
            torch.softmax(scalar_projection(texts, images), dim=1),
        )


# ---------------------------------------------------------------------------------------------
# CMPM
# ---------------------------------------------------------------------------------------------


def _cmpm_direction(
    queries: torch.Tensor, gallery: torch.Tensor, target_q: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """$\\frac1n \\sum_i \\sum_j p_{ij} \\log\\big(\\epsilon + p_{ij} / (q_{ij} + \\epsilon)\\big)$ for one direction."""
    logits = scalar_projection(queries, gallery)  # (n, n): x_i . z_bar_j
    p = torch.softmax(logits, dim=1)  # (n, n) compatibility distribution
    kl_terms = p * torch.log(epsilon + p / (target_q + epsilon))  # (n, n)
    return kl_terms.sum(dim=1).mean()


def cmpm_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float = 1e-8,
    target: str = "l1",
    return_directions: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross-Modal Projection Matching loss, $\\mathcal L_{cmpm} = \\mathcal L_{i2t} + \\mathcal L_{t2i}$.

    As the released code computes it (``modules.py``), for a batch of $n$ pairs:

    * $p_{ij} = \\dfrac{\\exp(x_i^\\top \\bar z_j)}{\\sum_k \\exp(x_i^\\top \\bar z_k)}$ -- raw image
      embedding, L2-normalised text embedding, softmax over the texts of the batch;
    * $q_{ij}$ -- :func:`true_distribution` (``target="l1"``: the match mask with rows L1-normalised);
    * $\\mathcal L_{i2t} = \\frac1n \\sum_i \\sum_j p_{ij} \\log\\Big(\\epsilon + \\dfrac{p_{ij}}{q_{ij} + \\epsilon}\\Big)$,
      the KL divergence $KL(p_i \\Vert q_i)$ with the code's two $\\epsilon$ guards;
    * $\\mathcal L_{t2i}$ swaps the roles: $\\mathrm{softmax}_j(z_i^\\top \\bar x_j)$.

    Arguments:
        image_embeddings: $x$, ``(n, d)``.
        text_embeddings: $z$, ``(n, d)``; row $i$ is matched with image row $i$.
        labels: ``(n,)`` integer ids; equal ids are positives.
        epsilon: the $\\epsilon$ above (``1e-8`` in the code).
        target: ``"l1"`` (original) or ``"l2"`` (the public ports' deviation).
        return_directions: return ``(i2t, t2i)`` instead of their sum.

    Returns a float32 scalar (float64 for float64 inputs).
    """
    _check_pair(image_embeddings, text_embeddings, labels, "cmpm_loss")
    dtype = _compute_dtype(image_embeddings, text_embeddings)
    with _full_precision(image_embeddings):
        images, texts = image_embeddings.to(dtype), text_embeddings.to(dtype)  # (n, d)
        target_q = true_distribution(labels, target, dtype)  # (n, n), symmetric mask
        i2t = _cmpm_direction(images, texts, target_q, epsilon)
        t2i = _cmpm_direction(texts, images, target_q, epsilon)
    if return_directions:
        return i2t, t2i
    return i2t + t2i
