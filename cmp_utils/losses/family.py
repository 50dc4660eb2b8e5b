"""The CMPM family of text-based person search that came after the paper (notebook 14): SDM, InfoNCE, R-ITC
and TAL."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import NORM_EPS, _check_pair, _compute_dtype, _full_precision, match_mask, true_distribution

# ---------------------------------------------------------------------------------------------
# The CMPM family of text-based person search: SDM, InfoNCE, R-ITC, TAL
# ---------------------------------------------------------------------------------------------


def _unit_pair(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """$\\bar x$, $\\bar z$: both sides L2-normalised in the compute dtype, each ``(n, d)``."""
    dtype = _compute_dtype(image_embeddings, text_embeddings)
    return (
        F.normalize(image_embeddings.to(dtype), dim=1, eps=NORM_EPS),
        F.normalize(text_embeddings.to(dtype), dim=1, eps=NORM_EPS),
    )


def _check_temperature(temperature: float | torch.Tensor, where: str) -> None:
    if not isinstance(temperature, torch.Tensor) and temperature <= 0:
        raise ValueError(f"{where}: temperature must be > 0; got {temperature}")


def _matching_kl(logits: torch.Tensor, target_q: torch.Tensor, epsilon: float) -> torch.Tensor:
    """$\\frac1n \\sum_i \\sum_j p_{ij} (\\log p_{ij} - \\log(q_{ij} + \\epsilon))$ with $p = \\mathrm{softmax}_j$(``logits``)."""
    log_p = torch.log_softmax(logits, dim=1)  # (n, m)
    return (log_p.exp() * (log_p - torch.log(target_q + epsilon))).sum(dim=1).mean()


def sdm_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.02,
    epsilon: float = 1e-8,
    return_directions: bool = False,
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


def info_nce_loss(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, temperature: float | torch.Tensor = 0.02
) -> torch.Tensor:
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


def ritc_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor = 0.02,
    epsilon: float = 0.01,
) -> torch.Tensor:
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
            raise ValueError(
                f"RITCLoss: initial_temperature ({initial_temperature}) and max_logit_scale "
                f"({max_logit_scale}) must be > 0"
            )
        self.epsilon, self.max_logit_scale = epsilon, max_logit_scale
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / initial_temperature)))  # log(1/tau)

    def logit_scale(self) -> torch.Tensor:
        """$1/\\tau$, capped at ``max_logit_scale`` in value, with the uncapped gradient."""
        scale = self.log_logit_scale.float().exp()
        return scale + (scale.clamp(max=self.max_logit_scale) - scale).detach()

    def temperature(self) -> float:
        """The current $\\tau$ (a number, for logs)."""
        return float(1.0 / self.logit_scale().detach())

    def forward(
        self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return ritc_loss(image_embeddings, text_embeddings, labels, 1.0 / self.logit_scale(), self.epsilon)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature():.4g}, epsilon={self.epsilon}, max_logit_scale={self.max_logit_scale}"


def tal_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.015,
    margin: float = 0.1,
    reduction: str = "sum",
) -> torch.Tensor:
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
            return torch.where(
                has_negative,
                (margin - weighted_positive + smooth_hardest).clamp_min(0),
                torch.zeros_like(weighted_positive),
            )

        per_pair = hinge(scores.t()) + hinge(scores)  # (n,): image anchors + text anchors
        return per_pair.sum() if reduction == "sum" else per_pair.mean()
