"""Cross-modal matching losses: CMPM, CMPC, the baselines they are compared with, and the CMPM
family of text-based person search that came after (SDM, InfoNCE, R-ITC, TAL; notebook 14).

Paper: Ying Zhang and Huchuan Lu, "Deep Cross-Modal Projection Learning for Image-Text
Matching", ECCV 2018. The CMPM and CMPC definitions follow the authors' released TensorFlow
code (``modules.py``) by default; where the paper, the code and the public PyTorch ports
differ, the choice is an argument and the docstring says which is which.

Notation used throughout (a batch of $n$ matched image-text pairs, $d$-dimensional):

* $x_i$ -- ``image_embeddings[i]``, shape ``(n, d)``, *not* normalised;
* $z_j$ -- ``text_embeddings[j]``, shape ``(n, d)``, *not* normalised;
* $\\bar z_j = z_j / \\lVert z_j \\rVert$ -- the L2-normalised text embedding (likewise $\\bar x_j$);
* $y_{ij} = [\\text{label}_i = \\text{label}_j]$ -- the match mask (diagonal included), ``(n, n)``;
* $W$ -- classifier weights of shape ``(d, num_classes)``, one column per identity / image id.

Numerics: every loss computes in at least float32 (float16 / bfloat16 inputs are promoted and
autocast is switched off inside), so it can be called under mixed precision; normalising a
zero vector gives a zero vector (not NaN). The losses see only the tensors they are given:
under DDP the trainer passes all-gathered global-batch features and nothing here depends on
the process.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_NAMES",
    "CMCELoss",
    "CMPCClassifier",
    "CrossModalLoss",
    "LOSS_SCOPES",
    "RITCLoss",
    "cmpc_loss",
    "cmpm_loss",
    "compatibility_distribution",
    "info_nce_loss",
    "parse_loss_scope",
    "ritc_loss",
    "sdm_loss",
    "tal_loss",
    "match_mask",
    "norm_softmax_loss",
    "ranking_loss",
    "scalar_projection",
    "softmax_loss",
    "true_distribution",
    "vector_projection",
]

LOSS_NAMES = ("cmpm", "cmpm_l2", "cmpc", "ranking", "ranking_hard", "softmax", "norm_softmax", "cmce",
              "sdm", "info_nce", "ritc", "tal")

#: Where a loss sees the batch (:func:`parse_loss_scope`): the whole global batch, or ``local:K``.
LOSS_SCOPES = ("global", "local:K")

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


def _check_pair(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor | None,
                where: str) -> None:
    """Raise a clear error unless the shapes are ``(n, d)``, ``(n, d)`` and ``(n,)``."""
    if image_embeddings.dim() != 2 or text_embeddings.dim() != 2:
        raise ValueError(f"{where}: image_embeddings and text_embeddings must be 2-D (batch, dim); "
                         f"got shapes {tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}")
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(f"{where}: image_embeddings {tuple(image_embeddings.shape)} and text_embeddings "
                         f"{tuple(text_embeddings.shape)} must have the same (batch, dim) shape: row i of each is pair i")
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] != image_embeddings.shape[0]:
            raise ValueError(f"{where}: labels must have shape (batch,) = ({image_embeddings.shape[0]},); "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"{where}: labels must be an integer tensor (identity / image ids); got {labels.dtype}")


def _check_weight(weight: torch.Tensor, embedding_dim: int, where: str) -> None:
    if weight.dim() != 2 or weight.shape[0] != embedding_dim:
        raise ValueError(f"{where}: weight must have shape (embedding_dim, num_classes) = ({embedding_dim}, C); "
                         f"got {tuple(weight.shape)} (transpose it if it is (C, embedding_dim))")


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


def compatibility_distribution(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two compatibility distributions of CMPM, each ``(n, n)`` with rows summing to one.

    $p_{ij} = \\mathrm{softmax}_j(x_i^\\top \\bar z_j)$ (image to text) and
    $p^{t2i}_{ij} = \\mathrm{softmax}_j(z_i^\\top \\bar x_j)$ (text to image). No temperature.
    """
    dtype = _compute_dtype(image_embeddings, text_embeddings)
    with _full_precision(image_embeddings):
        images, texts = image_embeddings.to(dtype), text_embeddings.to(dtype)
        return (torch.softmax(scalar_projection(images, texts), dim=1),
                torch.softmax(scalar_projection(texts, images), dim=1))


# ---------------------------------------------------------------------------------------------
# CMPM
# ---------------------------------------------------------------------------------------------


def _cmpm_direction(queries: torch.Tensor, gallery: torch.Tensor, target_q: torch.Tensor, epsilon: float) -> torch.Tensor:
    """$\\frac1n \\sum_i \\sum_j p_{ij} \\log\\big(\\epsilon + p_{ij} / (q_{ij} + \\epsilon)\\big)$ for one direction."""
    logits = scalar_projection(queries, gallery)  # (n, n): x_i . z_bar_j
    p = torch.softmax(logits, dim=1)  # (n, n) compatibility distribution
    kl_terms = p * torch.log(epsilon + p / (target_q + epsilon))  # (n, n)
    return kl_terms.sum(dim=1).mean()


def cmpm_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
              epsilon: float = 1e-8, target: str = "l1", return_directions: bool = False
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


# ---------------------------------------------------------------------------------------------
# Classification losses: CMPC, softmax, norm-softmax
# ---------------------------------------------------------------------------------------------


def _classify_both(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                   weight: torch.Tensor, bias: torch.Tensor | None, label_smoothing: float) -> torch.Tensor:
    """$\\mathrm{CE}(\\text{image} \\cdot W + b) + \\mathrm{CE}(\\text{text} \\cdot W + b)$, each averaged over the batch."""
    labels = labels.long()
    image_logits = image_features @ weight  # (n, C)
    text_logits = text_features @ weight  # (n, C)
    if bias is not None:
        image_logits, text_logits = image_logits + bias, text_logits + bias
    return (F.cross_entropy(image_logits, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(text_logits, labels, label_smoothing=label_smoothing))


def cmpc_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
              weight: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
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


def softmax_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
                 weight: torch.Tensor, bias: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
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
        return _classify_both(image_embeddings.to(dtype), text_embeddings.to(dtype), labels, weight.to(dtype),
                              None if bias is None else bias.to(dtype), label_smoothing)


def norm_softmax_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
                      weight: torch.Tensor, temperature: float = 1.0, label_smoothing: float = 0.0) -> torch.Tensor:
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
        return _classify_both(image_embeddings.to(dtype), text_embeddings.to(dtype), labels, unit_weight, None,
                              label_smoothing)


class CMPCClassifier(nn.Module):
    """Owns the CMPC weights $W$ ``(embedding_dim, num_classes)``, Xavier-initialised as in the code.

    ``forward(image_embeddings, text_embeddings, labels)`` returns :func:`cmpc_loss`.
    """

    def __init__(self, embedding_dim: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(f"CMPCClassifier: embedding_dim ({embedding_dim}) and num_classes ({num_classes}) must be >= 1")
        self.embedding_dim, self.num_classes, self.label_smoothing = embedding_dim, num_classes, label_smoothing
        self.weight = nn.Parameter(torch.empty(embedding_dim, num_classes))  # (d, C)
        nn.init.xavier_uniform_(self.weight)

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cmpc_loss(image_embeddings, text_embeddings, labels, self.weight, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, label_smoothing={self.label_smoothing}"


# ---------------------------------------------------------------------------------------------
# Ranking losses
# ---------------------------------------------------------------------------------------------


def ranking_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
                 margin: float = 0.2, hardest: bool = False) -> torch.Tensor:
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

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_pair(image_embeddings, text_embeddings, labels, "CMCELoss")
        if image_embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"CMCELoss: embeddings have dim {image_embeddings.shape[1]}, the buffers {self.embedding_dim}")
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
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
                f"temperature={self.temperature}, momentum={self.momentum}")


# ---------------------------------------------------------------------------------------------
# The CMPM family of text-based person search: SDM, InfoNCE, R-ITC, TAL
# ---------------------------------------------------------------------------------------------


def _unit_pair(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """$\\bar x$, $\\bar z$: both sides L2-normalised in the compute dtype, each ``(n, d)``."""
    dtype = _compute_dtype(image_embeddings, text_embeddings)
    return (F.normalize(image_embeddings.to(dtype), dim=1, eps=NORM_EPS),
            F.normalize(text_embeddings.to(dtype), dim=1, eps=NORM_EPS))


def _check_temperature(temperature: float | torch.Tensor, where: str) -> None:
    if not isinstance(temperature, torch.Tensor) and temperature <= 0:
        raise ValueError(f"{where}: temperature must be > 0; got {temperature}")


def _matching_kl(logits: torch.Tensor, target_q: torch.Tensor, epsilon: float) -> torch.Tensor:
    """$\\frac1n \\sum_i \\sum_j p_{ij} (\\log p_{ij} - \\log(q_{ij} + \\epsilon))$ with $p = \\mathrm{softmax}_j$(``logits``)."""
    log_p = torch.log_softmax(logits, dim=1)  # (n, m)
    return (log_p.exp() * (log_p - torch.log(target_q + epsilon))).sum(dim=1).mean()


def sdm_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
             temperature: float = 0.02, epsilon: float = 1e-8, return_directions: bool = False
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Similarity Distribution Matching (IRRA: Jiang and Ye, "Cross-Modal Implicit Relation
    Reasoning and Aligning for Text-to-Image Person Retrieval", CVPR 2023).

    CMPM's KL direction with *both* sides L2-normalised and a fixed temperature $\\tau$
    (IRRA: $\\tau = 0.02$, its ``logit_scale`` $= 1/\\tau = 50$):

    * $\\bar x_i$, $\\bar z_j$ -- ``image_embeddings`` / ``text_embeddings`` ``(n, d)``, L2-normalised;
    * $p_{ij} = \\mathrm{softmax}_j(\\bar x_i^\\top \\bar z_j / \\tau)$ (image to text; text to image:
      $\\mathrm{softmax}_j(\\bar z_i^\\top \\bar x_j / \\tau)$), each ``(n, n)``;
    * $q_{ij} = y_{ij} / \\sum_k y_{ik}$ -- the L1 target of :func:`true_distribution` (IRRA's release);
    * $\\mathcal L_{i2t} = \\frac1n \\sum_i \\sum_j p_{ij}\\big(\\log p_{ij} - \\log(q_{ij} + \\epsilon)\\big)$,
      $\\mathcal L_{sdm} = \\mathcal L_{i2t} + \\mathcal L_{t2i}$ (sum of the directions, batch mean).

    Against :func:`cmpm_loss`: CMPM's logit is $x_i^\\top \\bar z_j = \\lVert x_i \\rVert \\cos\\theta_{ij}$,
    so CMPM is SDM with the image side keeping its norm and a per-row temperature
    $\\tau_i = 1 / \\lVert x_i \\rVert$ (learned, through the norm); the $\\epsilon$ sits inside the
    log's ratio in CMPM's code and outside here (a difference of order $\\epsilon$).

    Arguments: ``labels`` ``(n,)`` integer ids; ``temperature`` $\\tau > 0$ (a float or a 0-d tensor);
    ``return_directions`` gives ``(i2t, t2i)``.
    """
    _check_pair(image_embeddings, text_embeddings, labels, "sdm_loss")
    _check_temperature(temperature, "sdm_loss")
    with _full_precision(image_embeddings):
        images, texts = _unit_pair(image_embeddings, text_embeddings)  # (n, d) each
        cosine = images @ texts.t()  # (n, n): cos(theta_ij), image i vs text j
        target_q = true_distribution(labels, "l1", cosine.dtype)  # (n, n)
        i2t = _matching_kl(cosine / temperature, target_q, epsilon)
        t2i = _matching_kl(cosine.t() / temperature, target_q, epsilon)
    if return_directions:
        return i2t, t2i
    return i2t + t2i


def info_nce_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                  temperature: float | torch.Tensor = 0.02) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021; IRRA's ``compute_itc``), pairs only.

    * $s_{ij} = \\bar x_i^\\top \\bar z_j / \\tau$ -- ``(n, n)`` logits of the L2-normalised embeddings;
    * positives are the diagonal only (row $i$ of each tensor is pair $i$): another caption of
      the same image or person in the batch is a *negative*, unlike CMPM / SDM;
    * $\\mathcal L = \\frac12\\big(-\\frac1n \\sum_i \\log \\mathrm{softmax}_j(s_{ij})_{j=i}
      - \\frac1n \\sum_i \\log \\mathrm{softmax}_j(s_{ji})_{j=i}\\big)$ -- the mean of both directions.

    ``temperature`` $\\tau$: IRRA fixes $1/\\tau = 50$; CLIP learns it from $\\tau = 0.07$.
    """
    _check_pair(image_embeddings, text_embeddings, None, "info_nce_loss")
    _check_temperature(temperature, "info_nce_loss")
    with _full_precision(image_embeddings):
        images, texts = _unit_pair(image_embeddings, text_embeddings)  # (n, d) each
        logits = images @ texts.t() / temperature  # (n, n): image i vs text j
        diagonal = torch.arange(len(logits), device=logits.device)  # (n,): pair i is the positive
        return (F.cross_entropy(logits, diagonal) + F.cross_entropy(logits.t(), diagonal)) / 2


def ritc_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
              temperature: float | torch.Tensor = 0.02, epsilon: float = 0.01) -> torch.Tensor:
    """TBPS-CLIP's R-ITC (Cao et al., "An Empirical Study of CLIP for Text-based Person Search",
    AAAI 2024; ``model/tbps_model.py``, the ``ritc`` branch): SDM's KL direction, mean of both.

    * $p_{ij} = \\mathrm{softmax}_j(\\bar x_i^\\top \\bar z_j / \\tau)$, likewise text to image, ``(n, n)``;
    * $q_{ij} = y_{ij} / \\sum_k y_{ik}$ (L1 target), smoothed by $\\epsilon = 0.01$ *inside* the log;
    * $\\mathcal L_{ritc} = \\frac12\\big(KL(p^{i2t} \\Vert q + \\epsilon) + KL(p^{t2i} \\Vert q + \\epsilon)\\big)$
      with $KL(p \\Vert r) = \\frac1n \\sum_i \\sum_j p_{ij}(\\log p_{ij} - \\log r_{ij})$ (``batchmean``).

    So R-ITC $= \\frac12$ :func:`sdm_loss` with $\\epsilon = 0.01$. The temperature is learned in
    TBPS-CLIP (:class:`RITCLoss` owns it); its features are gathered across GPUs (here: the
    trainer's global batch). ``temperature`` may be a 0-d tensor with a gradient.
    """
    _check_pair(image_embeddings, text_embeddings, labels, "ritc_loss")
    _check_temperature(temperature, "ritc_loss")
    i2t, t2i = sdm_loss(image_embeddings, text_embeddings, labels, temperature, epsilon, return_directions=True)
    return (i2t + t2i) / 2


class RITCLoss(nn.Module):
    """R-ITC with its learnable temperature: owns $\\log(1/\\tau)$ as a parameter.

    As TBPS-CLIP (and CLIP): ``log_logit_scale`` starts at $\\log(1/\\tau_0)$ ($\\tau_0 = 0.07$ there),
    the logit scale $1/\\tau = \\exp(\\cdot)$ is capped at ``max_logit_scale`` = 100 in the forward
    pass (the cap does not block the gradient, as TBPS-CLIP sets the capped value on ``.data``).
    ``forward(image_embeddings (n, d), text_embeddings (n, d), labels (n,))`` -> :func:`ritc_loss`.
    """

    def __init__(self, initial_temperature: float = 0.07, epsilon: float = 0.01, max_logit_scale: float = 100.0):
        super().__init__()
        if initial_temperature <= 0 or max_logit_scale <= 0:
            raise ValueError(f"RITCLoss: initial_temperature ({initial_temperature}) and max_logit_scale "
                             f"({max_logit_scale}) must be > 0")
        self.epsilon, self.max_logit_scale = epsilon, max_logit_scale
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / initial_temperature)))  # log(1/tau)

    def logit_scale(self) -> torch.Tensor:
        """$1/\\tau$, capped at ``max_logit_scale`` in value, with the uncapped gradient."""
        scale = self.log_logit_scale.float().exp()
        return scale + (scale.clamp(max=self.max_logit_scale) - scale).detach()

    def temperature(self) -> float:
        """The current $\\tau$ (a number, for logs)."""
        return float(1.0 / self.logit_scale().detach())

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ritc_loss(image_embeddings, text_embeddings, labels, 1.0 / self.logit_scale(), self.epsilon)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature():.4g}, epsilon={self.epsilon}, max_logit_scale={self.max_logit_scale}"


def tal_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor,
             temperature: float = 0.015, margin: float = 0.1, reduction: str = "sum") -> torch.Tensor:
    """Triplet Alignment Loss of RDE (Qin et al., "Noisy-Correspondence Learning for Text-to-Image
    Person Re-identification", CVPR 2024; ``model/objectives.py``, ``compute_TAL_per``).

    With $s_{ij} = \\bar z_i^\\top \\bar x_j$ (text $i$ against image $j$, cosine, ``(n, n)``),
    $P_i = \\{j : y_{ij} = 1\\}$ the positives and $N_i$ the negatives of row $i$:

    * $\\alpha_{ij} = \\dfrac{\\exp(s_{ij}/\\tau)}{\\sum_{k \\in P_i} \\exp(s_{ik}/\\tau)}$ for $j \\in P_i$ (0 elsewhere),
      *detached*: a temperature-weighted mean of the positives stands for "the positive";
    * $\\ell^{t2i}_i = \\big[\\alpha_i^\\top s_i \\cdot (-1) + \\tau \\log \\sum_{k \\in N_i} \\exp(s_{ik}/\\tau) + m\\big]_+$ --
      a triplet hinge whose hardest negative is replaced by its smooth maximum (log-sum-exp at $\\tau$);
    * $\\ell^{i2t}_i$ the same on the columns (image $i$ as the anchor);
    * $\\mathcal L_{tal} = \\sum_i (\\ell^{i2t}_i + \\ell^{t2i}_i)$ -- RDE sums over the batch
      (``reduction="sum"``; ``"mean"`` divides by $n$). RDE's defaults: $\\tau = 0.015$, $m = 0.1$.

    A row without negatives contributes 0. RDE clamps $\\sum \\exp$ at $10^{36}$; the log-sum-exp
    here never overflows instead (equal wherever the clamp cannot act: $|N_i|\\, e^{1/\\tau} < 10^{36}$,
    e.g. any batch under $10^7$ at $\\tau = 0.015$).
    """
    _check_pair(image_embeddings, text_embeddings, labels, "tal_loss")
    _check_temperature(temperature, "tal_loss")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"tal_loss: reduction={reduction!r} must be 'sum' (RDE) or 'mean'")
    with _full_precision(image_embeddings):
        images, texts = _unit_pair(image_embeddings, text_embeddings)  # (n, d) each
        scores = texts @ images.t()  # (n, n): s_ij, text i vs image j
        positive = match_mask(labels)  # (n, n), symmetric

        def hinge(rows: torch.Tensor) -> torch.Tensor:  # rows: (n, n), anchor i against gallery j
            scaled = rows / temperature
            alpha = torch.softmax(scaled.masked_fill(~positive, float("-inf")), dim=1).detach()  # (n, n)
            weighted_positive = (alpha * rows).sum(dim=1)  # (n,)
            has_negative = (~positive).any(dim=1)  # (n,)
            negatives = scaled.masked_fill(positive, float("-inf"))
            negatives = torch.where(has_negative[:, None], negatives, torch.zeros_like(negatives))
            smooth_hardest = temperature * torch.logsumexp(negatives, dim=1)  # (n,)
            return torch.where(has_negative, (margin - weighted_positive + smooth_hardest).clamp_min(0),
                               torch.zeros_like(weighted_positive))

        per_pair = hinge(scores.t()) + hinge(scores)  # (n,): image anchors + text anchors
        return per_pair.sum() if reduction == "sum" else per_pair.mean()


def parse_loss_scope(scope: str) -> int:
    """The number $K$ of sub-batches of a ``loss_scope``: ``"global"`` -> 1, ``"local:K"`` -> K."""
    if scope == "global":
        return 1
    head, _, count = str(scope).partition(":")
    if head == "local" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ValueError(f"loss_scope={scope!r} must be 'global' or 'local:K' with K >= 1 (e.g. 'local:4')")


# ---------------------------------------------------------------------------------------------
# The trainer's entry point
# ---------------------------------------------------------------------------------------------

#: Options :class:`CrossModalLoss` accepts, with their defaults.
DEFAULT_OPTIONS = {
    "epsilon": 1e-8,  # CMPM epsilon
    "margin": 0.2,  # ranking / ranking_hard margin
    "label_smoothing": 0.0,  # cmpc / softmax / norm_softmax
    "softmax_bias": True,  # softmax baseline has a bias
    "norm_softmax_temperature": 1.0,  # norm_softmax temperature (paper: 1)
    "cmce_temperature": 0.04,  # CMCE temperature
    "cmce_momentum": 0.5,  # CMCE buffer momentum
    "sdm_temperature": 0.02,  # SDM tau (IRRA: logit scale 50)
    "sdm_epsilon": 1e-8,  # SDM epsilon (IRRA)
    "info_nce_temperature": 0.02,  # InfoNCE tau (IRRA's ITC: logit scale 50)
    "ritc_temperature": 0.07,  # R-ITC initial tau, learned (TBPS-CLIP: log(1/0.07))
    "ritc_epsilon": 0.01,  # R-ITC target smoothing (TBPS-CLIP ritc_eps)
    "tal_temperature": 0.015,  # TAL tau (RDE --tau)
    "tal_margin": 0.1,  # TAL margin (RDE --margin)
}


class CrossModalLoss(nn.Module):
    """Every loss the trainer may combine, behind one call; it owns their parameters and buffers.

    ``CrossModalLoss(names, embedding_dim, num_classes, **options)`` with ``names`` drawn from
    :data:`LOSS_NAMES`; ``forward(image_embeddings (B, d), text_embeddings (B, d), labels (B,))``
    returns ``{name: scalar}`` (the trainer sums them). Options and defaults: :data:`DEFAULT_OPTIONS`.

    * ``cmpm`` -- :func:`cmpm_loss`, L1 target (original); ``cmpm_l2`` -- the ports' L2 target;
    * ``cmpc`` -- :class:`CMPCClassifier` (owns $W$);
    * ``ranking`` / ``ranking_hard`` -- :func:`ranking_loss`, sum / hardest negative;
    * ``softmax`` / ``norm_softmax`` -- :func:`softmax_loss` / :func:`norm_softmax_loss`, each with
      its own Xavier-initialised $W$ ``(d, C)``, applied to image and text features and summed;
    * ``cmce`` -- :class:`CMCELoss` (owns its buffers);
    * ``sdm`` -- :func:`sdm_loss` (IRRA); ``info_nce`` -- :func:`info_nce_loss` (CLIP);
      ``ritc`` -- :class:`RITCLoss` (TBPS-CLIP, owns its learnable temperature); ``tal`` --
      :func:`tal_loss` (RDE). Their temperatures: the ``*_temperature`` options.

    ``scope`` (the trainer's ``loss_scope``): ``"global"`` computes every loss on the whole batch;
    ``"local:K"`` splits the batch into $K$ contiguous, equal sub-batches (rows
    $[kB/K, (k+1)B/K)$, the slice rank $k$ of $K$ processes holds) and returns the *mean* of each
    loss over them -- what $K$ GPUs computing the loss on their own rows without a feature gather
    give after DDP averages their gradients. CMCE's buffers are then updated once per sub-batch.
    """

    def __init__(self, names: Sequence[str], embedding_dim: int, num_classes: int, scope: str = "global", **options):
        super().__init__()
        self.scope, self.sub_batches = scope, parse_loss_scope(scope)
        self._range_checked = False
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        unknown = [name for name in names if name not in LOSS_NAMES]
        if unknown or not names:
            raise ValueError(f"CrossModalLoss: unknown loss name(s) {unknown or '(none given)'}; choose from {LOSS_NAMES}")
        if len(set(names)) != len(names):
            raise ValueError(f"CrossModalLoss: names {names} repeat a loss")
        bad_options = sorted(set(options) - set(DEFAULT_OPTIONS))
        if bad_options:
            raise ValueError(f"CrossModalLoss: unknown option(s) {bad_options}; known: {sorted(DEFAULT_OPTIONS)}")
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(f"CrossModalLoss: embedding_dim ({embedding_dim}) and num_classes ({num_classes}) must be >= 1")
        self.names, self.embedding_dim, self.num_classes = names, embedding_dim, num_classes
        self.options = {**DEFAULT_OPTIONS, **options}
        if "cmpc" in names:
            self.cmpc = CMPCClassifier(embedding_dim, num_classes, self.options["label_smoothing"])
        if "softmax" in names:
            self.softmax_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(embedding_dim, num_classes)))
            self.softmax_bias = nn.Parameter(torch.zeros(num_classes)) if self.options["softmax_bias"] else None
        if "norm_softmax" in names:
            self.norm_softmax_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(embedding_dim, num_classes)))
        if "cmce" in names:
            self.cmce = CMCELoss(embedding_dim, num_classes, self.options["cmce_temperature"], self.options["cmce_momentum"])
        if "ritc" in names:
            self.ritc = RITCLoss(self.options["ritc_temperature"], self.options["ritc_epsilon"])

    def _check_inputs(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        _check_pair(image_embeddings, text_embeddings, labels, "CrossModalLoss")
        if image_embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"CrossModalLoss: embeddings have dim {image_embeddings.shape[1]}, "
                             f"but the loss was built with embedding_dim={self.embedding_dim}")
        # one host sync a step: cheap next to a training step, and an out-of-range id must fail loudly
        # The range check reads the labels on the host: free on the CPU, a device sync on CUDA, so
        # there it runs only on the first batch (the trainer's labels come from a checked frame).
        check_range = labels.device.type == "cpu" or not self._range_checked
        self._range_checked = True
        if check_range and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"CrossModalLoss: labels must lie in [0, num_classes={self.num_classes}); got range "
                             f"[{int(labels.min())}, {int(labels.max())}] -- map ids to 0-based contiguous class indices")

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: scalar}`` for image_embeddings $x$ ``(B, d)``, text_embeddings $z$ ``(B, d)``, labels ``(B,)``."""
        self._check_inputs(image_embeddings, text_embeddings, labels)
        count = self.sub_batches
        if count == 1:
            return self._losses(image_embeddings, text_embeddings, labels)
        if len(labels) % count:
            raise ValueError(f"CrossModalLoss: loss_scope={self.scope!r} needs a batch that {count} divides; got {len(labels)}")
        parts = [self._losses(*chunk) for chunk in zip(image_embeddings.chunk(count), text_embeddings.chunk(count),
                                                       labels.chunk(count))]  # K x {name: scalar}
        return {name: torch.stack([part[name] for part in parts]).mean() for name in self.names}

    def _losses(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.options
        losses: dict[str, torch.Tensor] = {}
        for name in self.names:
            if name == "cmpm":
                losses[name] = cmpm_loss(image_embeddings, text_embeddings, labels, o["epsilon"], "l1")
            elif name == "cmpm_l2":
                losses[name] = cmpm_loss(image_embeddings, text_embeddings, labels, o["epsilon"], "l2")
            elif name == "cmpc":
                losses[name] = self.cmpc(image_embeddings, text_embeddings, labels)
            elif name in ("ranking", "ranking_hard"):
                losses[name] = ranking_loss(image_embeddings, text_embeddings, labels, o["margin"], name == "ranking_hard")
            elif name == "softmax":
                losses[name] = softmax_loss(image_embeddings, text_embeddings, labels, self.softmax_weight,
                                            self.softmax_bias, o["label_smoothing"])
            elif name == "norm_softmax":
                losses[name] = norm_softmax_loss(image_embeddings, text_embeddings, labels, self.norm_softmax_weight,
                                                 o["norm_softmax_temperature"], o["label_smoothing"])
            elif name == "cmce":
                losses[name] = self.cmce(image_embeddings, text_embeddings, labels)
            elif name == "sdm":
                losses[name] = sdm_loss(image_embeddings, text_embeddings, labels, o["sdm_temperature"], o["sdm_epsilon"])
            elif name == "info_nce":
                losses[name] = info_nce_loss(image_embeddings, text_embeddings, o["info_nce_temperature"])
            elif name == "ritc":
                losses[name] = self.ritc(image_embeddings, text_embeddings, labels)
            elif name == "tal":
                losses[name] = tal_loss(image_embeddings, text_embeddings, labels, o["tal_temperature"], o["tal_margin"])
        return losses

    def extra_repr(self) -> str:
        return (f"names={self.names}, embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
                f"scope={self.scope!r}")
