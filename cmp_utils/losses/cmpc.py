"""The cross-modal projection classification loss (CMPC) and its classifier weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import NORM_EPS, _check_pair, _check_weight, _compute_dtype, _full_precision, vector_projection

# ---------------------------------------------------------------------------------------------
# Classification losses: CMPC, softmax, norm-softmax
# ---------------------------------------------------------------------------------------------


def _classify_both(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    label_smoothing: float,
) -> torch.Tensor:
    """$\\mathrm{CE}(\\text{image} \\cdot W + b) + \\mathrm{CE}(\\text{text} \\cdot W + b)$, each averaged over the batch."""
    labels = labels.long()
    image_logits = image_features @ weight  # (n, C)
    text_logits = text_features @ weight  # (n, C)
    if bias is not None:
        image_logits, text_logits = image_logits + bias, text_logits + bias
    return F.cross_entropy(image_logits, labels, label_smoothing=label_smoothing) + F.cross_entropy(
        text_logits, labels, label_smoothing=label_smoothing
    )


def cmpc_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-Modal Projection Classification loss, $\\mathcal L_{cmpc} = \\mathcal L_{ipt} + \\mathcal L_{tpi}$.

    A norm-softmax (columns of $W$ L2-normalised, no bias, no scale) applied to cross-modal
    *vector* projections of the matched pair:

    * $\\hat x_i = (x_i^\\top \\bar z_i)\\, \\bar z_i$ -- image $i$ projected onto the direction of its text;
    * $\\hat z_i = (z_i^\\top \\bar x_i)\\, \\bar x_i$ -- text $i$ projected onto its image's direction;
    * $\\mathcal L_{ipt} = -\\frac1n \\sum_i \\log \\dfrac{\\exp(\\bar W_{y_i}^\\top \\hat x_i)}{\\sum_k \\exp(\\bar W_k^\\top \\hat x_i)}$,
      $\\mathcal L_{tpi}$ likewise with $\\hat z_i$; $\\bar W_k = W_k / \\lVert W_k \\rVert$.

    Arguments:
        weight: $W$, ``(d, num_classes)`` (the released code's layout); normalised here.
        label_smoothing: the code's flag (0 by default), same convention as TF and PyTorch.
    """
    _check_pair(image_embeddings, text_embeddings, labels, "cmpc_loss")
    _check_weight(weight, image_embeddings.shape[1], "cmpc_loss")
    dtype = _compute_dtype(image_embeddings, text_embeddings, weight)
    with _full_precision(image_embeddings):
        images, texts = image_embeddings.to(dtype), text_embeddings.to(dtype)  # (n, d)
        unit_weight = F.normalize(weight.to(dtype), dim=0, eps=NORM_EPS)  # (d, C), unit columns
        image_on_text = vector_projection(images, texts)  # (n, d): x_hat
        text_on_image = vector_projection(texts, images)  # (n, d): z_hat
        return _classify_both(image_on_text, text_on_image, labels, unit_weight, None, label_smoothing)


class CMPCClassifier(nn.Module):
    """Owns the CMPC weights $W$ ``(embedding_dim, num_classes)``, Xavier-initialised as in the code.

    ``forward(image_embeddings, text_embeddings, labels)`` returns :func:`cmpc_loss`.
    """

    def __init__(self, embedding_dim: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(
                f"CMPCClassifier: embedding_dim ({embedding_dim}) and num_classes ({num_classes}) must be >= 1"
            )
        self.embedding_dim, self.num_classes, self.label_smoothing = embedding_dim, num_classes, label_smoothing
        self.weight = nn.Parameter(torch.empty(embedding_dim, num_classes))  # (d, C)
        nn.init.xavier_uniform_(self.weight)

    def forward(
        self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return cmpc_loss(image_embeddings, text_embeddings, labels, self.weight, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, label_smoothing={self.label_smoothing}"
