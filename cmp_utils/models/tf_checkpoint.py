"""TensorFlow(-slim) checkpoints read and mapped onto this project's PyTorch networks (the library part of
``python -m cmp_utils.tools.convert_tf``).

Kinds (``--kind`` is guessed from the variable names when left out):

* ``mobilenet_v1``: TF-slim's ImageNet ``mobilenet_v1_1.0_224`` -> a state dict of
  :class:`cmp_utils.models.MobileNetV1` for the backbone ``mobilenet_v1_tf`` (the classifier,
  ``MobilenetV1/Logits``, is left out);
* ``resnet_v1_152``: TF-slim's ImageNet ``resnet_v1_152`` -> :class:`cmp_utils.models.ResNetV1Slim`
  for the backbone ``resnet152_slim`` (``resnet_v1_152/logits`` left out);
* ``cmpm_model``: a checkpoint of the authors' training scripts (repository
  YingZhangDUT/Cross-Modal-Projection-Learning, ``modules.py``) -> the whole
  :class:`cmp_utils.models.CrossModalModel` (CNN $f_{img}$, word embedding, Bi-LSTM with its
  learned initial states, both joint embeddings) plus the CMPC weights $W$ (``Wfc``, (d, C)).

The two backbone files hold ``{"state_dict": ..., "backbone": ..., "kind": ...}`` and the
model file ``{"model": ..., "cmpc_weight": ..., "settings": ..., "source_words": ...}``; both are
accepted by ``TrainConfig.weights_path`` (:func:`cmp_utils.models.build_backbone` takes the CNN
out of a whole-model file). :func:`load_converted_model` rebuilds a converted model for scoring.

How TF's tensors map (the layouts are TF's, the targets PyTorch's):

* convolution ``weights`` (kh, kw, in, out) -> (out, in, kh, kw); depthwise ``depthwise_weights``
  (kh, kw, in, 1) -> (in, 1, kh, kw); batch norm ``gamma, beta, moving_mean, moving_variance``
  -> ``weight, bias, running_mean, running_var`` (a batch norm built without ``gamma`` gets ones);
* the joint embedding's 1x1 convolution (1, 1, in, d) -> ``nn.Linear`` weight (d, in);
* ``BasicLSTMCell`` ``kernel`` (input + units, 4·units) in gate order (i, j, f, o) and ``bias``
  -> ``nn.LSTM``'s ``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh`` in order (i, f, g, o), the
  cell's ``forget_bias`` (1.0, added by TF at run time) folded into ``bias_ih``
  (:func:`cmp_utils.models.tf_lstm_kernel_to_torch`);
* the learned initial states ``init_state_0`` (c) and ``init_state_1`` (h) of each direction,
  shape (units,), tiled over the batch by the release -> ``initial_cell`` / ``initial_hidden``
  (2, 1, units), row 0 forward, row 1 backward: the same thing, stored once;
* the release evaluates the exponential moving averages of its model variables (CNN, joint
  embeddings, their batch-norm statistics): for a trained model (``cmpm_model``) ``--ema auto``
  (its default) takes the ``<variable>/ExponentialMovingAverage`` shadow wherever the checkpoint
  has one;
* an ImageNet start (``mobilenet_v1``, ``resnet_v1_152``) is what the release's training restores:
  its trainable variables only (``configuration.py``, ``get_init_fn``: raw weights, never EMA
  shadows, and no batch-norm moving statistics, which start at TF's 0 / 1). So for these kinds
  ``--ema raw`` and ``--bn-statistics reset`` are the defaults; ``--bn-statistics checkpoint``
  (and ``--ema auto``) take the checkpoint's values instead (inference with the ImageNet network).

Text features: the release max-pools the Bi-LSTM outputs over time including padded steps
(zeros) but encodes test captions one at a time, so at test time no padding enters the max;
our eval mode always excludes padded steps, the same result. Word ids: the release numbers its
words by its own ``word_counts.txt`` (most frequent first, unknown = one past the last word);
pass that file as ``--word-counts`` and :func:`load_converted_model` re-indexes the embedding
rows to this project's vocabulary.

Every TF variable taken and every one left out is printed; a variable whose shape does not fit
the network stops the conversion with an error naming it. TensorFlow is needed only here
(``pip install tensorflow-cpu``, part of the ``test`` extra), never by the rest of the package.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import backbones, network, text_branch

KINDS = ("mobilenet_v1", "resnet_v1_152", "cmpm_model")
EMA_CHOICES = ("auto", "raw")
EMA_SUFFIX = "/ExponentialMovingAverage"
BN_STATISTICS_CHOICES = ("reset", "checkpoint")
#: TF's initial batch-norm moving statistics (``moving_mean`` zeros, ``moving_variance`` ones).
RESET_STATISTICS = {"running_mean": 0.0, "running_var": 1.0}
#: (ema, bn_statistics) per kind when not given: a trained model as the release tests it, an
#: ImageNet backbone as the release's training restores it.
KIND_DEFAULTS = {
    "cmpm_model": ("auto", "checkpoint"),
    "mobilenet_v1": ("raw", "reset"),
    "resnet_v1_152": ("raw", "reset"),
}
#: Backbone name (``models.BACKBONES``) whose network reproduces each TF CNN exactly.
EXACT_BACKBONE = {"mobilenet_v1": "mobilenet_v1_tf", "resnet_v1": "resnet152_slim"}
BATCH_NORM_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
LSTM_FORGET_BIAS = 1.0  # tf.contrib.rnn.BasicLSTMCell's default, the release's setting
RELEASE_SPECIAL_WORDS = {"<start>": "<START>", "<end>": "<END>"}  # ours -> the release's (builddata)


class CheckpointMismatch(ValueError):
    """A TF variable is missing or has a shape that does not fit the target network."""


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every variable of the TF checkpoint ``path`` (a prefix like ``model.ckpt-1000`` or its folder).

    Uses ``tf.train.load_checkpoint`` (no graph is built). Raises ``ImportError`` with the
    install command when TensorFlow is missing, ``FileNotFoundError`` naming the path otherwise.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torchvision  # noqa: F401  (importing torchvision after TensorFlow segfaults: TF 2.21, torchvision 0.29)

    try:
        import tensorflow as tf
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading TF checkpoints needs TensorFlow: `.venv/bin/python -m pip install "
            "tensorflow-cpu` (or `pip install -e '.[test]'`)"
        ) from error
    prefix = str(Path(path).expanduser())
    if Path(prefix).is_dir():
        latest = tf.train.latest_checkpoint(prefix)
        if latest is None:
            raise FileNotFoundError(f"checkpoint folder {prefix} holds no TF checkpoint (no `checkpoint` index file)")
        prefix = latest
    if not Path(prefix + ".index").is_file() and not Path(prefix).is_file():
        raise FileNotFoundError(
            f"TF checkpoint {prefix!r} not found: pass the prefix (e.g. "
            "mobilenet_v1_1.0_224.ckpt, without .index/.data-*) or its folder"
        )
    reader = tf.train.load_checkpoint(prefix)
    return {name: np.asarray(reader.get_tensor(name)) for name in sorted(reader.get_variable_to_shape_map())}


def guess_kind(variables: dict[str, np.ndarray]) -> str:
    """``cmpm_model`` when the checkpoint has the release's text branch, else the CNN it holds."""
    names = list(variables)
    if any(name.startswith("BiLSTM/") for name in names):
        return "cmpm_model"
    if any(name.startswith("MobilenetV1/") for name in names):
        return "mobilenet_v1"
    if any(name.startswith("resnet_v1_152/") for name in names):
        return "resnet_v1_152"
    raise CheckpointMismatch(
        f"cannot tell what the checkpoint holds (first variables: {names[:5]}); pass --kind, one of {KINDS}"
    )


# ---------------------------------------------------------------------------------------------
# Tensor layouts
# ---------------------------------------------------------------------------------------------


def conv_weight(value: np.ndarray) -> torch.Tensor:
    """TF conv kernel (kh, kw, in, out) -> PyTorch (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(value.transpose(3, 2, 0, 1)))


def depthwise_weight(value: np.ndarray) -> torch.Tensor:
    """TF depthwise kernel (kh, kw, in, multiplier) -> PyTorch grouped conv (in·multiplier, 1, kh, kw)."""
    kh, kw, channels, multiplier = value.shape
    return torch.from_numpy(np.ascontiguousarray(value.reshape(kh, kw, channels * multiplier).transpose(2, 0, 1)))[
        :, None
    ]


def linear_from_1x1(value: np.ndarray) -> torch.Tensor:
    """TF 1x1 conv kernel (1, 1, in, out) -> ``nn.Linear`` weight (out, in)."""
    if value.ndim != 4 or value.shape[:2] != (1, 1):
        raise CheckpointMismatch(f"expected a 1x1 convolution kernel (1, 1, in, out), got shape {value.shape}")
    return torch.from_numpy(np.ascontiguousarray(value[0, 0].T))


def plain(value: np.ndarray) -> torch.Tensor:
    """Same layout (vectors, embedding tables, CMPC's W)."""
    return torch.from_numpy(np.ascontiguousarray(value))


class Conversion:
    """Fills a target state dict from TF variables, recording what was taken, filled and left out."""

    def __init__(
        self,
        variables: dict[str, np.ndarray],
        target: dict[str, torch.Tensor],
        ema: str = "auto",
        bn_statistics: str = "checkpoint",
    ):
        if ema not in EMA_CHOICES:
            raise ValueError(f"parameter ema={ema!r} must be one of {EMA_CHOICES}")
        if bn_statistics not in BN_STATISTICS_CHOICES:
            raise ValueError(f"parameter bn_statistics={bn_statistics!r} must be one of {BN_STATISTICS_CHOICES}")
        self.variables, self.target, self.ema, self.bn_statistics = variables, target, ema, bn_statistics
        self.state: dict[str, torch.Tensor] = {}
        self.mapped: list[tuple[str, str, tuple[int, ...]]] = []  # (tf name, torch key, shape)
        self.filled: list[tuple[str, str]] = []  # (torch key, why)
        self.used: set[str] = set()

    def _source(self, name: str) -> str:
        shadow = name + EMA_SUFFIX
        if self.ema == "auto" and shadow in self.variables:
            return shadow
        if name not in self.variables:
            close = [n for n in self.variables if n.rsplit("/", 1)[0] == name.rsplit("/", 1)[0]][:4]
            raise CheckpointMismatch(
                f"the checkpoint lacks variable {name!r}"
                + (f" (its scope holds {close})" if close else "")
                + "; is --kind/--scope right for this checkpoint?"
            )
        return name

    def put(self, key: str, value: torch.Tensor, source: str) -> None:
        """Store ``value`` under ``key`` after checking its shape against the target network."""
        if key not in self.target:
            raise KeyError(f"internal: {key!r} is not a tensor of the target network")
        expected = tuple(self.target[key].shape)
        if tuple(value.shape) != expected:
            raise CheckpointMismatch(
                f"variable {source!r} has shape {tuple(value.shape)} after conversion, but "
                f"{key} needs {expected}: the checkpoint does not fit this network"
            )
        self.state[key] = value.to(self.target[key].dtype).contiguous()

    def take(self, name: str, key: str, layout: Callable[[np.ndarray], torch.Tensor] = plain) -> None:
        """Map TF variable ``name`` (or its EMA shadow) to ``key`` through ``layout``."""
        source = self._source(name)
        raw = self.variables[source]
        try:
            value = layout(raw)
        except CheckpointMismatch as error:
            raise CheckpointMismatch(f"variable {source!r}: {error}") from None
        except (ValueError, IndexError) as error:
            raise CheckpointMismatch(f"variable {source!r} of shape {raw.shape} does not fit {key}: {error}") from None
        self.put(key, value, source)
        self.used.add(source)
        self.used.add(name)  # the raw variable is accounted for when its shadow is used
        self.mapped.append((source, key, tuple(raw.shape)))

    def batch_norm(self, tf_scope: str, torch_prefix: str) -> None:
        """``<tf_scope>/{gamma,beta,moving_mean,moving_variance}`` -> ``<torch_prefix>.{weight,...}``."""
        for torch_name, tf_name in BATCH_NORM_NAMES.items():
            name = f"{tf_scope}/{tf_name}"
            if tf_name == "gamma" and name not in self.variables and name + EMA_SUFFIX not in self.variables:
                key = f"{torch_prefix}.{torch_name}"
                self.put(key, torch.ones_like(self.target[key]), name)
                self.filled.append((key, f"ones: TF batch norm {tf_scope} has no gamma (scale=False)"))
                continue
            if self.bn_statistics == "reset" and torch_name in RESET_STATISTICS:
                key = f"{torch_prefix}.{torch_name}"
                self.put(key, torch.full_like(self.target[key], RESET_STATISTICS[torch_name]), name)
                self.filled.append(
                    (
                        key,
                        f"{RESET_STATISTICS[torch_name]:g}: moving statistics start as TF's "
                        "(the release restores trainable variables only)",
                    )
                )
                continue
            self.take(name, f"{torch_prefix}.{torch_name}")
        tracked = f"{torch_prefix}.num_batches_tracked"
        if tracked in self.target:
            self.state[tracked] = torch.zeros_like(self.target[tracked])

    def finish(self) -> dict[str, torch.Tensor]:
        """The filled state dict; raises when a target tensor was not filled (a bug in a mapping)."""
        missing = [key for key in self.target if key not in self.state]
        if missing:
            raise CheckpointMismatch(f"no TF variable was mapped to {missing[:5]} ({len(missing)} tensors)")
        return {key: self.state[key] for key in self.target}

    def left_out(self) -> list[str]:
        """TF variables not taken (classifier, optimiser slots, global step, unused EMA shadows ...)."""
        return [name for name in self.variables if name not in self.used]

    def report(self, out=None) -> None:
        """Print every mapped tensor, every filled one and every variable left out (to ``out``, default stdout)."""
        out = out or sys.stdout
        for source, key, shape in self.mapped:
            print(f"mapped    {source} {list(shape)} -> {key}", file=out)
        for key, why in self.filled:
            print(f"filled    {key}: {why}", file=out)
        for name in self.left_out():
            print(f"left out  {name} {list(self.variables[name].shape)}", file=out)
        print(
            f"{len(self.mapped)} tensors mapped, {len(self.filled)} filled, {len(self.left_out())} variables left out",
            file=out,
        )


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def map_mobilenet_v1(conversion: Conversion, scope: str = "MobilenetV1", prefix: str = "") -> None:
    """TF-slim ``mobilenet_v1`` (``Conv2d_0``, ``Conv2d_<i>_depthwise``/``_pointwise``) -> :class:`models.MobileNetV1`."""
    conversion.take(f"{scope}/Conv2d_0/weights", f"{prefix}features.0.0.weight", conv_weight)
    conversion.batch_norm(f"{scope}/Conv2d_0/BatchNorm", f"{prefix}features.0.1")
    for index in range(1, len(backbones.MOBILENET_V1_BLOCKS) + 1):
        block = f"{prefix}features.{index}"
        conversion.take(f"{scope}/Conv2d_{index}_depthwise/depthwise_weights", f"{block}.0.0.weight", depthwise_weight)
        conversion.batch_norm(f"{scope}/Conv2d_{index}_depthwise/BatchNorm", f"{block}.0.1")
        conversion.take(f"{scope}/Conv2d_{index}_pointwise/weights", f"{block}.1.0.weight", conv_weight)
        conversion.batch_norm(f"{scope}/Conv2d_{index}_pointwise/BatchNorm", f"{block}.1.1")


def _conv_bn(conversion: Conversion, tf_scope: str, torch_prefix: str) -> None:
    conversion.take(f"{tf_scope}/weights", f"{torch_prefix}.conv.weight", conv_weight)
    conversion.batch_norm(f"{tf_scope}/BatchNorm", f"{torch_prefix}.bn")


def map_resnet_v1(conversion: Conversion, units: Sequence[int], scope: str = "resnet_v1_152", prefix: str = "") -> None:
    """TF-slim ``resnet_v1`` (``conv1``, ``block<b>/unit_<u>/bottleneck_v1/...``) -> :class:`models.ResNetV1Slim`."""
    _conv_bn(conversion, f"{scope}/conv1", f"{prefix}conv1")
    for block_index, count in enumerate(units):
        for unit_index in range(count):
            tf_unit = f"{scope}/block{block_index + 1}/unit_{unit_index + 1}/bottleneck_v1"
            torch_unit = f"{prefix}blocks.{block_index}.{unit_index}"
            for layer in ("conv1", "conv2", "conv3"):
                _conv_bn(conversion, f"{tf_unit}/{layer}", f"{torch_unit}.{layer}")
            if f"{torch_unit}.shortcut.conv.weight" in conversion.target:
                _conv_bn(conversion, f"{tf_unit}/shortcut", f"{torch_unit}.shortcut")


def resnet_units(variables: dict[str, np.ndarray], scope: str) -> tuple[int, ...]:
    """Units per block of the ResNet v1 under ``scope`` in the checkpoint (e.g. (3, 8, 36, 3))."""
    pattern = re.compile(re.escape(scope) + r"/block(\d)/unit_(\d+)/")
    counts: dict[int, int] = {}
    for name in variables:
        match = pattern.match(name)
        if match:
            block, unit = int(match.group(1)), int(match.group(2))
            counts[block] = max(counts.get(block, 0), unit)
    if sorted(counts) != [1, 2, 3, 4]:
        raise CheckpointMismatch(f"no ResNet v1 blocks block1..block4 under scope {scope!r} in the checkpoint")
    return tuple(counts[block] for block in (1, 2, 3, 4))


def convert_backbone(
    variables: dict[str, np.ndarray],
    kind: str,
    scope: str | None = None,
    ema: str = "raw",
    units: Sequence[int] | None = None,
    bn_statistics: str = "reset",
) -> tuple[dict[str, torch.Tensor], Conversion, nn.Module]:
    """Convert TF-slim ImageNet weights of ``kind`` (``mobilenet_v1`` / ``resnet_v1_152``).

    Defaults are the release's ImageNet start: raw trainable weights (``ema="raw"``) and batch-norm
    moving statistics at 0 / 1 (``bn_statistics="reset"``); ``bn_statistics="checkpoint"`` takes the
    checkpoint's statistics (the ImageNet network's own outputs). ``units``: ResNet layout (default:
    the 152-layer one; the checkpoint must hold every unit).
    Returns ``(state_dict, conversion record, the target module loaded with it)``.
    """
    if kind == "mobilenet_v1":
        module: nn.Module = backbones.MobileNetV1(tf_same_padding=True)
        conversion = Conversion(variables, module.state_dict(), ema, bn_statistics)
        map_mobilenet_v1(conversion, scope or "MobilenetV1")
    elif kind == "resnet_v1_152":
        units = tuple(units or backbones.RESNET_V1_152_UNITS)
        module = backbones.ResNetV1Slim(units)
        conversion = Conversion(variables, module.state_dict(), ema, bn_statistics)
        map_resnet_v1(conversion, units, scope or "resnet_v1_152")
    else:
        raise ValueError(f"parameter kind={kind!r} is not a backbone kind; use mobilenet_v1 or resnet_v1_152")
    state = conversion.finish()
    module.load_state_dict(state)
    return state, conversion, module


# ---------------------------------------------------------------------------------------------
# The authors' whole model
# ---------------------------------------------------------------------------------------------

LSTM_SCOPE = "BiLSTM/bidirectional_lstm"
DIRECTIONS = (("fw", "forward", ""), ("bw", "backward", "_reverse"))  # TF cell scope, state scope, nn.LSTM suffix


def _lstm_variable(variables: dict[str, np.ndarray], cell: str, kind: str) -> str:
    """The name of a BasicLSTMCell's kernel/bias (TF >= 1.2: kernel/bias; TF 1.0-1.1: weights/biases)."""
    base = f"{LSTM_SCOPE}/bidirectional_rnn/{cell}/basic_lstm_cell"
    names = [f"{base}/{kind}"] + ([f"{base}/weights"] if kind == "kernel" else [f"{base}/biases"])
    for name in names:
        if name in variables:
            return name
    raise CheckpointMismatch(
        f"the checkpoint lacks the Bi-LSTM variable {names[0]!r}; is it a checkpoint of the "
        "authors' CMPM/CMPC training scripts?"
    )


def model_settings(variables: dict[str, np.ndarray], scope: str | None = None) -> dict[str, Any]:
    """Network sizes and backbone of a release checkpoint, read from its variable shapes.

    Returns the :func:`cmp_utils.training.make_config` settings that build the matching network
    (``backbone``, ``embedding_dim``, ``word_dim``, ``hidden_size``, ``joint_embedding``,
    ``bn_style``, ``pool_grid``) plus ``vocab_size``, ``num_classes`` (None without CMPC), ``units``.
    """
    if "BiLSTM/token_embedding_weights" not in variables:
        raise CheckpointMismatch(
            "the checkpoint lacks 'BiLSTM/token_embedding_weights': it is not a checkpoint of "
            "the authors' training scripts (pass --kind mobilenet_v1/resnet_v1_152 for CNNs)"
        )
    vocab_size, word_dim = variables["BiLSTM/token_embedding_weights"].shape
    kernel = variables[_lstm_variable(variables, "fw", "kernel")]
    hidden_size = kernel.shape[1] // 4
    image_joint = variables.get("joint_embedding/image_joint_embedding/weights")
    if image_joint is None:
        raise CheckpointMismatch("the checkpoint lacks 'joint_embedding/image_joint_embedding/weights'")
    embedding_dim = image_joint.shape[-1]
    wfc = variables.get("Wfc")
    if scope is None:
        scope = next(
            (s for s in ("MobilenetV1", "resnet_v1_152") if any(n.startswith(s + "/") for n in variables)), None
        )
        if scope is None:
            raise CheckpointMismatch("no CNN scope MobilenetV1/ or resnet_v1_152/ in the checkpoint; pass --scope")
    backbone = "mobilenet_v1_tf" if scope.lower().startswith("mobilenet") else "resnet152_slim"
    return {
        "backbone": backbone,
        "scope": scope,
        "embedding_dim": int(embedding_dim),
        "word_dim": int(word_dim),
        "hidden_size": int(hidden_size),
        "vocab_size": int(vocab_size),
        "num_classes": None if wfc is None else int(wfc.shape[1]),
        "joint_embedding": "linear_bn",
        "bn_style": "tf",
        "pool_grid": (1, 1),
        "units": resnet_units(variables, scope) if backbone == "resnet152_slim" else None,
    }


def build_target_model(settings: dict[str, Any]) -> network.CrossModalModel:
    """The :class:`models.CrossModalModel` that a converted release checkpoint fills (random init)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no weights_path": the weights come from the checkpoint
        model = network.build_model(
            settings["vocab_size"],
            settings["backbone"],
            settings["embedding_dim"],
            settings["word_dim"],
            settings["hidden_size"],
            pad_id=0,
            pool_grid=tuple(settings.get("pool_grid", (1, 1))),
            pretrained=False,
            joint_embedding=settings["joint_embedding"],
            bn_style=settings["bn_style"],
        )
    units = settings.get("units")
    if settings["backbone"] == "resnet152_slim" and units and tuple(units) != backbones.RESNET_V1_152_UNITS:
        model.image_encoder = network.ImageEncoder(backbones.ResNetV1Slim(units), model.image_encoder.grid)
    return model.eval()


def _joint_embedding(conversion: Conversion, name: str, prefix: str) -> None:
    conversion.take(f"joint_embedding/{name}/weights", f"{prefix}.projection.weight", linear_from_1x1)
    conversion.batch_norm(f"joint_embedding/{name}/BatchNorm", f"{prefix}.batch_norm")


def convert_cmpm_model(variables: dict[str, np.ndarray], scope: str | None = None, ema: str = "auto") -> dict[str, Any]:
    """Convert a checkpoint of the authors' training scripts into ``{"model", "cmpc_weight", "settings"}``.

    ``model`` is a :class:`models.CrossModalModel` state dict, ``cmpc_weight`` the CMPC matrix
    $W$ (d, C) (None when the run trained without CMPC), ``settings`` as :func:`model_settings`.
    The record of the conversion is under ``"conversion"`` (not saved).
    """
    settings = model_settings(variables, scope)
    model = build_target_model(settings)
    conversion = Conversion(variables, model.state_dict(), ema)
    backbone_prefix = "image_encoder.backbone."
    if settings["backbone"] == "mobilenet_v1_tf":
        map_mobilenet_v1(conversion, settings["scope"], backbone_prefix)
    else:
        map_resnet_v1(conversion, settings["units"], settings["scope"], backbone_prefix)
    conversion.take("BiLSTM/token_embedding_weights", "text_encoder.word_embedding.weight")
    word_dim, hidden = settings["word_dim"], settings["hidden_size"]
    for row, (cell, state_scope, suffix) in enumerate(DIRECTIONS):
        kernel_name, bias_name = _lstm_variable(variables, cell, "kernel"), _lstm_variable(variables, cell, "bias")
        kernel, bias = variables[kernel_name], variables[bias_name]
        if kernel.shape != (word_dim + hidden, 4 * hidden) or bias.shape != (4 * hidden,):
            raise CheckpointMismatch(
                f"variable {kernel_name!r} {kernel.shape} / {bias_name!r} {bias.shape} do not fit "
                f"an LSTM of {hidden} units on {word_dim}-d words"
            )
        mapped = text_branch.tf_lstm_kernel_to_torch(
            torch.from_numpy(kernel), torch.from_numpy(bias), word_dim, LSTM_FORGET_BIAS
        )
        for torch_name, value in mapped.items():
            conversion.put(f"text_encoder.lstm.{torch_name}_l0{suffix}", value, kernel_name)
        conversion.used.update({kernel_name, bias_name})
        conversion.mapped.append(
            (
                kernel_name,
                f"text_encoder.lstm.weight_ih_l0{suffix} + weight_hh_l0{suffix} (gates i,j,f,o -> i,f,g,o)",
                tuple(kernel.shape),
            )
        )
        conversion.mapped.append(
            (
                bias_name,
                f"text_encoder.lstm.bias_ih_l0{suffix} (+ forget_bias {LSTM_FORGET_BIAS}), bias_hh_l0{suffix} = 0",
                tuple(bias.shape),
            )
        )
    _map_initial_states(conversion, hidden)
    _joint_embedding(conversion, "image_joint_embedding", "image_embedding")
    _joint_embedding(conversion, "text_joint_embedding", "text_embedding")
    cmpc_weight = None
    if settings["num_classes"] is not None:
        wfc = variables["Wfc"]
        if wfc.shape[0] != settings["embedding_dim"]:
            raise CheckpointMismatch(
                f"variable 'Wfc' has shape {wfc.shape}; its first dimension must be the joint "
                f"embedding size {settings['embedding_dim']}"
            )
        cmpc_weight = plain(wfc).float()
        conversion.used.add("Wfc")
        conversion.mapped.append(("Wfc", "cmpc_weight (CMPCClassifier.weight, (d, C))", tuple(wfc.shape)))
    state = conversion.finish()
    model.load_state_dict(state)
    return {"model": state, "cmpc_weight": cmpc_weight, "settings": settings, "conversion": conversion}


def _map_initial_states(conversion: Conversion, hidden: int) -> None:
    """``<direction>/init_state_0`` (c) and ``init_state_1`` (h), (units,) each -> (2, 1, units) rows."""
    cells = torch.zeros(2, 1, hidden)
    hiddens = torch.zeros(2, 1, hidden)
    for row, (_, state_scope, _) in enumerate(DIRECTIONS):
        for index, target in ((0, cells), (1, hiddens)):
            name = f"{LSTM_SCOPE}/{state_scope}/init_state_{index}"
            source = conversion._source(name)
            value = conversion.variables[source]
            if value.shape != (hidden,):
                raise CheckpointMismatch(f"variable {source!r} has shape {value.shape}, expected ({hidden},)")
            target[row, 0] = plain(value)
            conversion.used.update({name, source})
            key = "initial_cell" if index == 0 else "initial_hidden"
            conversion.mapped.append((source, f"text_encoder.{key}[{row}]", value.shape))
    conversion.put("text_encoder.initial_cell", cells, f"{LSTM_SCOPE}/*/init_state_0")
    conversion.put("text_encoder.initial_hidden", hiddens, f"{LSTM_SCOPE}/*/init_state_1")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def read_word_counts(path: str | os.PathLike) -> list[str]:
    """The release's ``word_counts.txt`` (two header lines, then ``word count`` a line) -> words by id."""
    lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    words = [
        line.rsplit(" ", 1)[0]
        for line in lines
        if line.strip() and not line.startswith(("Total words:", "Words in vocabulary:"))
    ]
    if not words:
        raise ValueError(f"--word-counts {path}: no `word count` lines found (expected the release's word_counts.txt)")
    return words


# ---------------------------------------------------------------------------------------------
# Using a converted model
# ---------------------------------------------------------------------------------------------


def remap_word_embedding(table: torch.Tensor, source_words: Sequence[str], vocabulary) -> tuple[torch.Tensor, dict]:
    """Re-index the release's embedding rows (``source_words`` order, unknown = ``len(source_words)``)
    to ``vocabulary``'s ids (:class:`cmp_utils.data.text.Vocabulary`).

    ``<start>``/``<end>`` take the release's ``<START>``/``<END>`` rows, ``<unk>`` and words the
    release does not know take its unknown row, ``<pad>`` gets zeros (never read in eval mode).
    Returns ``(table (len(vocabulary), word_dim), {"known": n, "unknown": [words]})``.
    """
    from ..data import text

    source_index = {word: row for row, word in enumerate(source_words)}
    unknown_row = len(source_words)
    remapped = torch.zeros(len(vocabulary), table.shape[1], dtype=table.dtype)
    missing: list[str] = []
    for our_id, word in enumerate(vocabulary.itos):
        if word == text.PAD:
            continue
        if word == text.UNKNOWN:
            remapped[our_id] = table[unknown_row]
            continue
        row = source_index.get(RELEASE_SPECIAL_WORDS.get(word, word))
        if row is None:
            missing.append(word)
            row = unknown_row
        remapped[our_id] = table[row]
    return remapped, {"known": len(vocabulary) - len(missing) - 2, "unknown": missing}


def load_converted_model(path: str | os.PathLike, vocabulary=None) -> network.CrossModalModel:
    """Rebuild a converted ``cmpm_model`` file as a :class:`models.CrossModalModel` in eval mode.

    ``vocabulary``: the prepared data's :class:`cmp_utils.data.text.Vocabulary`. With the release's
    word list in the file (``--word-counts``) the embedding is re-indexed to it; without, the
    checkpoint's ids are taken as this vocabulary's ids, so their counts must agree.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluate_checkpoint={str(path)!r} does not exist; make it with "
            "`python -m cmp_utils.tools.convert_tf CHECKPOINT OUT.pt --kind cmpm_model`"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("kind") != "cmpm_model":
        raise ValueError(
            f"{path} is not a converted cmpm_model file (kind={saved.get('kind') if isinstance(saved, dict) else None!r}); "
            "convert the authors' checkpoint with --kind cmpm_model"
        )
    settings = dict(saved["settings"])
    state = dict(saved["model"])
    table_key = "text_encoder.word_embedding.weight"
    if saved.get("source_words") and vocabulary is not None:
        state[table_key], coverage = remap_word_embedding(state[table_key], saved["source_words"], vocabulary)
        settings["vocab_size"] = len(vocabulary)
        if coverage["unknown"]:
            print(
                f"{len(coverage['unknown'])} words of this vocabulary are unknown to the checkpoint's "
                f"(e.g. {coverage['unknown'][:5]}); they take its unknown-word row"
            )
    elif vocabulary is not None and len(vocabulary) != settings["vocab_size"]:
        raise ValueError(
            f"{path}: the checkpoint's word embedding has {settings['vocab_size']} rows but the data's "
            f"vocabulary has {len(vocabulary)} words; convert again with --word-counts <the release's "
            "word_counts.txt> so that words can be matched"
        )
    model = build_target_model(settings)
    model.load_state_dict(state)
    return model.eval()
