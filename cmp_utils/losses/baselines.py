"""The losses the paper compares CMPM and CMPC with: softmax and normalised softmax classification, the
bidirectional ranking loss (sum or hardest negative) and CMCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cmpc import _classify_both
from .common import NORM_EPS, _check_pair, _check_weight, _compute_dtype, _full_precision, match_mask


def softmax_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Plain softmax (identity classification) baseline on the raw features of both modalities.

    $\\mathrm{CE}(x_i^\\top W + b,\\ y_i) + \\mathrm{CE}(z_i^\\top W + b,\\ y_i)$, means over the batch;
    no projection, $W$ of shape ``(d, num_classes)`` shared by the two modalities. Source: the
    "softmax" baseline of the paper's ablation (Zhang & Lu 2018, Sec. 4); a classifier shared by
    image and text as in the instance loss of Zheng et al. 2017, "Dual-path convolutional
    image-text embeddings with instance loss". ``bias`` is optional ``(num_classes,)``.
    """
    _check_pair(image_embeddings, text_embeddings, labels, "softmax_loss")
    _check_weight(weight, image_embeddings.shape[1], "softmax_loss")
    dtype = _compute_dtype(image_embeddings, text_embeddings, weight)
    with _full_precision(image_embeddings):
        return _classify_both(
            image_embeddings.to(dtype),
            text_embeddings.to(dtype),
            labels,
            weight.to(dtype),
            None if bias is None else bias.to(dtype),
            label_smoothing,
        )


def norm_softmax_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Norm-softmax baseline: columns of $W$ L2-normalised, no bias, raw features, both modalities.

    $\\mathrm{CE}(x_i^\\top \\bar W / \\tau,\\ y_i) + \\mathrm{CE}(z_i^\\top \\bar W / \\tau,\\ y_i)$ -- the
    "norm-softmax" of the paper's ablation and Fig. 3 (Zhang & Lu 2018), i.e. CMPC without the
    cross-modal projection; the features keep their norms (unlike NormFace, Wang et al. 2017,
    which also normalises the features and needs a scale). ``temperature`` $\\tau$ is 1 in the paper
    (pytorch-metric-learning's ``NormalizedSoftmaxLoss`` with unnormalised embeddings and
    ``temperature=1`` is the same function for one modality).
    """
    _check_pair(image_embeddings, text_embeddings, labels, "norm_softmax_loss")
    _check_weight(weight, image_embeddings.shape[1], "norm_softmax_loss")
    if temperature <= 0:
        raise ValueError(f"norm_softmax_loss: temperature must be > 0; got {temperature}")
    dtype = _compute_dtype(image_embeddings, text_embeddings, weight)
    with _full_precision(image_embeddings):
        unit_weight = F.normalize(weight.to(dtype), dim=0, eps=NORM_EPS) / temperature  # (d, C)
        return _classify_both(
            image_embeddings.to(dtype), text_embeddings.to(dtype), labels, unit_weight, None, label_smoothing
        )


# ---------------------------------------------------------------------------------------------
# Ranking losses
# ---------------------------------------------------------------------------------------------


def ranking_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    hardest: bool = False,
) -> torch.Tensor:
    """Bidirectional ranking (triplet) loss on cosine similarity; VSE++ with ``hardest=True``.

    With $s_{ij} = \\bar x_i^\\top \\bar z_j$ and negatives $N_i = \\{j : \\text{label}_j \\ne \\text{label}_i\\}$
    (so another caption of the same image / person is never a negative), the anchor's positive
    being its matched pair $i$:

    * sum form (Kiros et al. 2014, "Unifying visual-semantic embeddings with multimodal neural
      language models"; the "triplet" baseline of Zhang & Lu 2018):
      $\\frac1n \\sum_i \\sum_{j \\in N_i} [\\alpha - s_{ii} + s_{ij}]_+ + [\\alpha - s_{ii} + s_{ji}]_+$;
    * hardest form (Faghri et al. 2018, "VSE++: Improving visual-semantic embeddings with hard
      negatives", BMVC): the inner sums replaced by the maximum over $j \\in N_i$.

    Averaged over the $n$ anchors (VSE++'s code sums over the batch instead: a constant factor $n$).
    A row without any negative contributes 0.
    """
    _check_pair(image_embeddings, text_embeddings, labels, "ranking_loss")
    dtype = _compute_dtype(image_embeddings, text_embeddings)
    with _full_precision(image_embeddings):
        images = F.normalize(image_embeddings.to(dtype), dim=1, eps=NORM_EPS)  # (n, d)
        texts = F.normalize(text_embeddings.to(dtype), dim=1, eps=NORM_EPS)  # (n, d)
        similarity = images @ texts.t()  # (n, n): s_ij, image i vs text j
        positive = similarity.diagonal().unsqueeze(1)  # (n, 1): s_ii
        negative_mask = ~match_mask(labels)  # (n, n), symmetric
        i2t = (margin - positive + similarity).clamp_min(0) * negative_mask  # image anchor i, text j
        t2i = (margin - positive + similarity.t()).clamp_min(0) * negative_mask  # text anchor i, image j
        if hardest:
            i2t, t2i = i2t.amax(dim=1), t2i.amax(dim=1)  # masked entries are 0 = the hinge's floor
        else:
            i2t, t2i = i2t.sum(dim=1), t2i.sum(dim=1)
        return (i2t + t2i).mean()


# ---------------------------------------------------------------------------------------------
# CMCE (Li et al. 2017)
# ---------------------------------------------------------------------------------------------


class CMCELoss(nn.Module):
    """Cross-Modal Cross-Entropy loss with per-identity feature buffers.

    Li, Xiao, Li, Yang and Wang, "Identity-aware textual-visual matching with latent
    co-attention", ICCV 2017 (stage 1). Buffers $V$ (images) and $S$ (texts), each
    ``(num_classes, d)`` of L2-normalised features, stand in for a classifier; with
    $\\bar x_i$, $\\bar z_i$ the normalised batch features and $\\sigma$ the temperature:

    * $P(k \\mid x_i) = \\mathrm{softmax}_k(S_k^\\top \\bar x_i / \\sigma)$ -- image scored against every
      identity's *text* buffer;
    * $P(k \\mid z_i) = \\mathrm{softmax}_k(V_k^\\top \\bar z_i / \\sigma)$ -- text against the *image* buffer;
    * loss $= -\\frac1n \\sum_i \\log P(y_i \\mid x_i) - \\frac1n \\sum_i \\log P(y_i \\mid z_i)$.

    In training mode, after the loss is computed, each identity $k$ seen in the batch updates
    $V_k \\leftarrow \\mathrm{normalise}(m V_k + (1 - m)\\, \\mathrm{mean}\\{\\bar x_i : y_i = k\\})$
    (and $S_k$ from the texts), detached from the graph. Buffers start at zero, so an identity's
    first update sets it to its batch mean direction and unseen identities score 0. ``momentum``
    $m = 0.5$ and ``temperature`` $\\sigma = 0.04$ are our defaults (the paper's update averages old
    and new features); under DDP every process sees the same global batch, so buffers stay equal.
    """

    def __init__(self, embedding_dim: int, num_classes: int, temperature: float = 0.04, momentum: float = 0.5):
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(f"CMCELoss: embedding_dim ({embedding_dim}) and num_classes ({num_classes}) must be >= 1")
        if temperature <= 0:
            raise ValueError(f"CMCELoss: temperature must be > 0; got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"CMCELoss: momentum must be in [0, 1); got {momentum}")
        self.embedding_dim, self.num_classes = embedding_dim, num_classes
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("image_buffer", torch.zeros(num_classes, embedding_dim))  # V: (C, d)
        self.register_buffer("text_buffer", torch.zeros(num_classes, embedding_dim))  # S: (C, d)

    def forward(
        self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        _check_pair(image_embeddings, text_embeddings, labels, "CMCELoss")
        if image_embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"CMCELoss: embeddings have dim {image_embeddings.shape[1]}, the buffers {self.embedding_dim}"
            )
        dtype = _compute_dtype(image_embeddings, text_embeddings)
        with _full_precision(image_embeddings):
            images = F.normalize(image_embeddings.to(dtype), dim=1, eps=NORM_EPS)  # (n, d)
            texts = F.normalize(text_embeddings.to(dtype), dim=1, eps=NORM_EPS)  # (n, d)
            image_logits = images @ self.text_buffer.to(dtype).t() / self.temperature  # (n, C)
            text_logits = texts @ self.image_buffer.to(dtype).t() / self.temperature  # (n, C)
            loss = F.cross_entropy(image_logits, labels.long()) + F.cross_entropy(text_logits, labels.long())
            if self.training:
                self.update_buffers(images.detach(), texts.detach(), labels)
        return loss

    @torch.no_grad()
    def update_buffers(self, unit_images: torch.Tensor, unit_texts: torch.Tensor, labels: torch.Tensor) -> None:
        """Momentum update of the rows of the identities in ``labels`` from normalised features."""
        present, inverse = torch.unique(labels, return_inverse=True)  # (u,), (n,)
        counts = torch.zeros(len(present), device=labels.device, dtype=unit_images.dtype)
        counts.index_add_(0, inverse, torch.ones_like(labels, dtype=unit_images.dtype))
        for name, features in (("image_buffer", unit_images), ("text_buffer", unit_texts)):
            buffer = getattr(self, name)  # (C, d)
            means = torch.zeros(len(present), features.shape[1], device=features.device, dtype=features.dtype)
            means.index_add_(0, inverse, features)
            means /= counts.unsqueeze(1)  # (u, d): batch mean per identity
            updated = self.momentum * buffer[present].to(features.dtype) + (1.0 - self.momentum) * means
            rows = F.normalize(updated, dim=1, eps=NORM_EPS).to(buffer.dtype)
            # out of place: the old buffer may still be needed by this step's backward pass
            setattr(self, name, buffer.index_copy(0, present, rows))

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
            f"temperature={self.temperature}, momentum={self.momentum}"
        )
