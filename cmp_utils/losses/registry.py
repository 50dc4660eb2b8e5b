"""The loss names and scopes, and :class:`CrossModalLoss`, which combines the losses of a run by name."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .baselines import CMCELoss, norm_softmax_loss, ranking_loss, softmax_loss
from .cmpc import CMPCClassifier
from .cmpm import cmpm_loss
from .common import _check_pair
from .family import RITCLoss, info_nce_loss, sdm_loss, tal_loss

LOSS_NAMES = (
    "cmpm",
    "cmpm_l2",
    "cmpc",
    "ranking",
    "ranking_hard",
    "softmax",
    "norm_softmax",
    "cmce",
    "sdm",
    "info_nce",
    "ritc",
    "tal",
)

#: Where a loss sees the batch (:func:`parse_loss_scope`): the whole global batch, or ``local:K``.
LOSS_SCOPES = ("global", "local:K")


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
            raise ValueError(
                f"CrossModalLoss: unknown loss name(s) {unknown or '(none given)'}; choose from {LOSS_NAMES}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"CrossModalLoss: names {names} repeat a loss")
        bad_options = sorted(set(options) - set(DEFAULT_OPTIONS))
        if bad_options:
            raise ValueError(f"CrossModalLoss: unknown option(s) {bad_options}; known: {sorted(DEFAULT_OPTIONS)}")
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(
                f"CrossModalLoss: embedding_dim ({embedding_dim}) and num_classes ({num_classes}) must be >= 1"
            )
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
            self.cmce = CMCELoss(
                embedding_dim, num_classes, self.options["cmce_temperature"], self.options["cmce_momentum"]
            )
        if "ritc" in names:
            self.ritc = RITCLoss(self.options["ritc_temperature"], self.options["ritc_epsilon"])

    def _check_inputs(
        self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor
    ) -> None:
        _check_pair(image_embeddings, text_embeddings, labels, "CrossModalLoss")
        if image_embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"CrossModalLoss: embeddings have dim {image_embeddings.shape[1]}, "
                f"but the loss was built with embedding_dim={self.embedding_dim}"
            )
        # one host sync a step: cheap next to a training step, and an out-of-range id must fail loudly
        # The range check reads the labels on the host: free on the CPU, a device sync on CUDA, so
        # there it runs only on the first batch (the trainer's labels come from a checked frame).
        check_range = labels.device.type == "cpu" or not self._range_checked
        self._range_checked = True
        if check_range and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"CrossModalLoss: labels must lie in [0, num_classes={self.num_classes}); got range "
                f"[{int(labels.min())}, {int(labels.max())}] -- map ids to 0-based contiguous class indices"
            )

    def forward(
        self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{name: scalar}`` for image_embeddings $x$ ``(B, d)``, text_embeddings $z$ ``(B, d)``, labels ``(B,)``."""
        self._check_inputs(image_embeddings, text_embeddings, labels)
        count = self.sub_batches
        if count == 1:
            return self._losses(image_embeddings, text_embeddings, labels)
        if len(labels) % count:
            raise ValueError(
                f"CrossModalLoss: loss_scope={self.scope!r} needs a batch that {count} divides; got {len(labels)}"
            )
        parts = [
            self._losses(*chunk)
            for chunk in zip(image_embeddings.chunk(count), text_embeddings.chunk(count), labels.chunk(count))
        ]  # K x {name: scalar}
        return {name: torch.stack([part[name] for part in parts]).mean() for name in self.names}

    def _losses(
        self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
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
                losses[name] = ranking_loss(
                    image_embeddings, text_embeddings, labels, o["margin"], name == "ranking_hard"
                )
            elif name == "softmax":
                losses[name] = softmax_loss(
                    image_embeddings,
                    text_embeddings,
                    labels,
                    self.softmax_weight,
                    self.softmax_bias,
                    o["label_smoothing"],
                )
            elif name == "norm_softmax":
                losses[name] = norm_softmax_loss(
                    image_embeddings,
                    text_embeddings,
                    labels,
                    self.norm_softmax_weight,
                    o["norm_softmax_temperature"],
                    o["label_smoothing"],
                )
            elif name == "cmce":
                losses[name] = self.cmce(image_embeddings, text_embeddings, labels)
            elif name == "sdm":
                losses[name] = sdm_loss(
                    image_embeddings, text_embeddings, labels, o["sdm_temperature"], o["sdm_epsilon"]
                )
            elif name == "info_nce":
                losses[name] = info_nce_loss(image_embeddings, text_embeddings, o["info_nce_temperature"])
            elif name == "ritc":
                losses[name] = self.ritc(image_embeddings, text_embeddings, labels)
            elif name == "tal":
                losses[name] = tal_loss(
                    image_embeddings, text_embeddings, labels, o["tal_temperature"], o["tal_margin"]
                )
        return losses

    def extra_repr(self) -> str:
        return (
            f"names={self.names}, embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
            f"scope={self.scope!r}"
        )
