"""The joint embedding and the whole network: pooling the image feature map, the joint-embedding layers,
:class:`CrossModalModel` and :func:`build_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .backbones import build_backbone
from .text_branch import RELEASE_VOCABULARY_ROWS, TextEncoder, _check_choice


def grid_average_pool(feature_map: torch.Tensor, grid: Sequence[int] = (1, 1)) -> torch.Tensor:
    """Average-pool ``feature_map`` (batch, C, h, w) over a (rows, cols) grid and flatten.

    ``grid=(1, 1)`` is the paper's global average pooling; ``(3, 1)`` keeps top/middle/bottom
    of a portrait person image apart. Returns (batch, C·rows·cols), channel-major.
    """
    pooled = nn.functional.adaptive_avg_pool2d(feature_map, tuple(grid))  # (batch, C, rows, cols)
    return pooled.flatten(1)


class ImageEncoder(nn.Module):
    """$\\phi(I)$: backbone feature map, average-pooled (globally or over a grid) into a vector."""

    def __init__(self, backbone: nn.Module, grid: Sequence[int] = (1, 1)):
        super().__init__()
        self.backbone = backbone
        self.grid = tuple(int(g) for g in grid)
        self.output_dim = backbone.out_channels * self.grid[0] * self.grid[1]
        self.normalisation = backbone.normalisation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (batch, 3, H, W), normalised for the backbone -> (batch, output_dim)."""
        return grid_average_pool(self.backbone(images), self.grid)


class CachedFeatureEncoder(nn.Module):
    """Image branch of the frozen-cached-features mode: its input already is $\\phi(I)$.

    The frozen backbone ran once per image (see :func:`cmp_utils.training.cached_image_features`);
    only the joint embedding (and the text branch) train. Forward is the identity.
    """

    takes_features = True

    def __init__(self, feature_dim: int):
        super().__init__()
        self.output_dim = int(feature_dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(batch, feature_dim) -> the same tensor."""
        return image_features


# ---------------------------------------------------------------------------------------------
# Joint embedding and the full model
# ---------------------------------------------------------------------------------------------

JOINT_EMBEDDINGS = ("linear_bn", "linear_bias")
BN_STYLES = ("tf", "pytorch")
JOINT_EMBEDDING_INITS = ("release", "pytorch")
#: Standard deviation of ``mobilenet_v1_arg_scope``'s ``truncated_normal_initializer`` (the release's
#: ``nets/mobilenet_v1.py``), which its joint-embedding 1x1 convolutions take under the CNN's arg_scope.
MOBILENET_V1_INIT_STDDEV = 0.09
#: TF's truncated normal redraws values beyond two standard deviations.
TRUNCATION_STDDEVS = 2.0
#: ``slim.variance_scaling_initializer()`` (``resnet_arg_scope``): factor 2 (He), fan in, truncated
#: normal whose ``stddev`` parameter is sqrt(1.3 * factor / fan_in) (1.3 makes up for the truncation).
RESNET_VARIANCE_SCALING = (2.0, 1.3)


def truncated_normal_(tensor: torch.Tensor, stddev: float) -> torch.Tensor:
    """Fill ``tensor`` as TF's ``truncated_normal_initializer(stddev=stddev)``: N(0, stddev^2) redrawn
    outside +-2 stddev (the drawn values' own std is about 0.88 stddev)."""
    bound = TRUNCATION_STDDEVS * stddev
    return nn.init.trunc_normal_(tensor, mean=0.0, std=stddev, a=-bound, b=bound)


def release_joint_embedding_stddev(backbone: str, input_dim: int) -> float:
    """The ``stddev`` parameter of the truncated normal the release draws a joint-embedding kernel
    (``input_dim`` -> d, a 1x1 conv) from under ``backbone``'s arg_scope: 0.09 for MobileNet v1
    (``mobilenet_v1_arg_scope``, also used for backbones the release never had), He variance
    scaling sqrt(2.6 / input_dim) for ResNet v1 (``resnet_utils.resnet_arg_scope``)."""
    if backbone in ("resnet152", "resnet152_slim"):
        factor, truncation_correction = RESNET_VARIANCE_SCALING
        return (truncation_correction * factor / input_dim) ** 0.5
    return MOBILENET_V1_INIT_STDDEV


#: TF-slim batch norm (epsilon, decay) of the release's backbones' arg_scopes, which also cover the
#: joint-embedding convolutions: MobileNet v1 ``mobilenet_v1_arg_scope`` and ResNet v1
#: ``resnet_arg_scope``. Backbones the release never used take the MobileNet v1 values (its
#: CUHK-PEDES setting). PyTorch's ``momentum`` is ``1 - decay``.
TF_BATCH_NORM = {
    "mobilenet_v1": (1e-3, 0.9997),
    "resnet152": (1e-5, 0.997),
    "mobilenet_v1_tf": (1e-3, 0.9997),
    "resnet152_slim": (1e-5, 0.997),
}
PYTORCH_BATCH_NORM = (1e-5, 0.1)  # nn.BatchNorm default (eps, momentum)


def joint_batch_norm_settings(backbone: str, bn_style: str = "tf") -> tuple[float, float]:
    """``(eps, momentum)`` (PyTorch convention) of the joint-embedding batch norm under ``backbone``."""
    _check_choice("bn_style", bn_style, BN_STYLES)
    if bn_style == "pytorch":
        return PYTORCH_BATCH_NORM
    epsilon, decay = TF_BATCH_NORM.get(backbone, TF_BATCH_NORM["mobilenet_v1"])
    return epsilon, round(1.0 - decay, 10)


class JointEmbedding(nn.Module):
    """Projection into the shared space $d$: ``"linear_bn"`` = linear without bias, then batch norm,
    no activation (release, ``modules.py``: a 1x1 convolution without bias on the pooled 1x1 map
    under the backbone's slim arg_scope, i.e. followed by its batch norm); ``"linear_bias"`` = a
    port's layer: linear with bias, no batch norm (``batch_norm`` is then ``nn.Identity``).

    ``eps`` / ``momentum``: the batch norm's (see :func:`joint_batch_norm_settings`).
    ``init_stddev``: draw the projection (embedding_dim, input_dim) from TF's truncated normal with
    this ``stddev`` (:func:`release_joint_embedding_stddev`, the release); ``None`` keeps
    ``nn.Linear``'s default uniform(+-1/sqrt(input_dim)) (option ``joint_embedding_init="pytorch"``).
    """

    def __init__(
        self,
        input_dim: int,
        embedding_dim: int = 512,
        kind: str = "linear_bn",
        eps: float = 1e-5,
        momentum: float = 0.1,
        init_stddev: float | None = None,
    ):
        super().__init__()
        _check_choice("joint_embedding", kind, JOINT_EMBEDDINGS)
        self.kind = kind
        self.projection = nn.Linear(input_dim, embedding_dim, bias=kind == "linear_bias")
        if init_stddev is not None:
            with torch.no_grad():
                truncated_normal_(self.projection.weight, init_stddev)
        self.batch_norm: nn.Module = (
            nn.BatchNorm1d(embedding_dim, eps=eps, momentum=momentum) if kind == "linear_bn" else nn.Identity()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, input_dim) -> (batch, embedding_dim)."""
        return self.batch_norm(self.projection(features))


EMA_SCOPES = ("release", "all")
#: State-dict prefixes of what the release's EMA averages (``train_models.py``:
#: ``tf.train.ExponentialMovingAverage(0.9999, num_updates=global_step)`` over slim's model
#: variables): the CNN and the two joint embeddings, their batch-norm moving statistics included.
RELEASE_EMA_PREFIXES = ("image_encoder.", "image_embedding.", "text_embedding.")


class CrossModalModel(nn.Module):
    """Image and text branches with their joint embeddings: returns $(x, z)$.

    ``forward(images, token_ids, lengths)`` gives ``(image_embeddings, text_embeddings)``, each
    (batch, embedding_dim). ``images`` are pixel tensors, or cached features when the image
    encoder is a :class:`CachedFeatureEncoder`. The split into ``*_features`` (encoder outputs)
    and ``embed_*`` (joint embedding) lets DDP training gather features across processes and run
    the joint embedding's batch norm on the global batch (see :mod:`cmp_utils.training`).

    ``ema_scope`` records which tensors a weight average of this model covers
    (:meth:`averaged_tensor_names`; :class:`cmp_utils.training.WeightAverage` reads it).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embedding_dim: int = 512,
        joint_embedding: str = "linear_bn",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        ema_scope: str = "release",
        joint_init_backbone: str | None = None,
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        # joint_init_backbone: draw both projections as the release under that backbone's arg_scope; None: nn.Linear's
        image_stddev, text_stddev = (
            (
                release_joint_embedding_stddev(joint_init_backbone, image_encoder.output_dim),
                release_joint_embedding_stddev(joint_init_backbone, text_encoder.output_dim),
            )
            if joint_init_backbone is not None
            else (None, None)
        )
        self.image_embedding = JointEmbedding(
            image_encoder.output_dim, embedding_dim, joint_embedding, bn_eps, bn_momentum, image_stddev
        )
        self.text_embedding = JointEmbedding(
            text_encoder.output_dim, embedding_dim, joint_embedding, bn_eps, bn_momentum, text_stddev
        )
        self.embedding_dim = embedding_dim
        self.ema_scope = _check_choice("ema_scope", ema_scope, EMA_SCOPES)

    def averaged_tensor_names(self, scope: str | None = None) -> list[str]:
        """State-dict names of the tensors a weight average covers under ``scope`` (default ``ema_scope``).

        ``"release"``: every floating-point tensor (parameters and batch-norm running mean /
        variance) of the image encoder and the two joint embeddings; the LSTM, the word
        embedding and the learned initial states stay live, as in the release (its test script
        restores the shadow values of the averaged variables only). ``"all"``: every parameter;
        buffers stay live.
        """
        scope = _check_choice("ema_scope", scope or self.ema_scope, EMA_SCOPES)
        if scope == "all":
            return [name for name, _ in self.named_parameters()]
        return [
            name
            for name, tensor in self.state_dict(keep_vars=True).items()
            if name.startswith(RELEASE_EMA_PREFIXES) and tensor.is_floating_point()
        ]

    @property
    def takes_features(self) -> bool:
        """True when the image branch expects cached features instead of pixels."""
        return bool(getattr(self.image_encoder, "takes_features", False))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """$\\phi(I)$ (batch, image_encoder.output_dim)."""
        return self.image_encoder(images)

    def text_features(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """$\\psi(T)$ (batch, text_encoder.output_dim)."""
        return self.text_encoder(token_ids, lengths)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings $x$ (batch, embedding_dim)."""
        return self.image_embedding(self.image_features(images))

    def embed_texts(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Text embeddings $z$ (batch, embedding_dim)."""
        return self.text_embedding(self.text_features(token_ids, lengths))

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor, lengths: torch.Tensor):
        """-> ``(image_embeddings, text_embeddings)``, each (batch, embedding_dim)."""
        return self.embed_images(images), self.embed_texts(token_ids, lengths)


def build_model(
    vocab_size: int,
    backbone: str = "mobilenet_v1",
    embedding_dim: int = 512,
    word_dim: int = 512,
    hidden_size: int = 512,
    dropout: float = 0.3,
    pad_id: int = 0,
    padded_steps: str = "exclude",
    pool_grid: Sequence[int] = (1, 1),
    weights_path: str | Path | None = None,
    pretrained: bool = True,
    cached_feature_dim: int | None = None,
    *,
    word_embedding_init: str = "xavier",
    lstm_init: str = "tf",
    lstm_backward: str = "time",
    joint_embedding: str = "linear_bn",
    bn_style: str = "tf",
    ema_scope: str = "release",
    backbone_blocks: int | None = None,
    joint_embedding_init: str = "release",
    initial_state_init: str = "glorot",
    lstm_bias: str = "single",
    lstm_input_dropout: str = "per_direction",
    word_embedding_init_rows: int | None = RELEASE_VOCABULARY_ROWS,
) -> CrossModalModel:
    """The full CMP network. With ``cached_feature_dim`` the image branch takes cached features.

    The keyword options default to the release (see :class:`TextEncoder`, :class:`JointEmbedding`,
    :func:`joint_batch_norm_settings`, :meth:`CrossModalModel.averaged_tensor_names`);
    ``joint_embedding_init``: ``"release"`` (:func:`release_joint_embedding_stddev` of ``backbone``)
    | ``"pytorch"`` (``nn.Linear``'s default).
    """
    _check_choice("joint_embedding_init", joint_embedding_init, JOINT_EMBEDDING_INITS)
    bn_eps, bn_momentum = joint_batch_norm_settings(backbone, bn_style)
    if cached_feature_dim is not None:
        image_encoder: nn.Module = CachedFeatureEncoder(cached_feature_dim)
    else:
        image_encoder = ImageEncoder(build_backbone(backbone, weights_path, pretrained, backbone_blocks), pool_grid)
    text_encoder = TextEncoder(
        vocab_size,
        word_dim,
        hidden_size,
        dropout,
        pad_id,
        padded_steps,
        word_embedding_init=word_embedding_init,
        lstm_init=lstm_init,
        lstm_backward=lstm_backward,
        initial_state_init=initial_state_init,
        lstm_bias=lstm_bias,
        lstm_input_dropout=lstm_input_dropout,
        word_embedding_init_rows=word_embedding_init_rows,
    )
    return CrossModalModel(
        image_encoder,
        text_encoder,
        embedding_dim,
        joint_embedding,
        bn_eps,
        bn_momentum,
        ema_scope,
        backbone if joint_embedding_init == "release" else None,
    )
