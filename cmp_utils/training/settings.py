"""The settings of a run: :class:`TrainConfig`, the profiles (:data:`PROFILE_SETTINGS`), their checks and
:func:`make_config`."""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..core import config, numerics

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

_PAPER_COMMON = dict(
    feature_mode="end_to_end",
    lr=2e-4,
    finetune_lr=2e-5,
    weight_decay=4e-5,
    ema_decay=0.9999,
    embedding_dim=512,
    word_dim=512,
    hidden_size=512,
    dropout=0.3,
    pool_grid=(1, 1),
    sampler="random",
    amp="off",
    num_workers=None,
    eval_batch_size=256,  # fp32, as the release
    padded_steps="zeros",
)  # the release trains at batch > 1 with padded zeros in the max
_FAST_COMMON = dict(
    feature_mode="cached",
    backbone="mobilenet_v2",
    lr=1e-3,
    finetune_lr=1e-3,
    weight_decay=4e-5,
    sampler="identity",
    instances_per_label=2,
    amp="auto",
    num_workers=0,
    eval_batch_size=512,
    num_threads=1,  # one torch thread: the same numbers on any machine
    # TF's joint-embedding BN momentum (0.0003) leaves the running statistics near their
    # initial values after a few hundred steps, which costs quick CUHK-PEDES recall (measured in
    # docs/fidelity.md's audit table), so the fast profiles use PyTorch's.
    bn_style="pytorch",
    # The fast profiles keep the settings their committed numbers were measured with; the paper
    # profile takes the release's (the TrainConfig defaults; docs/fidelity.md, one row each).
    joint_embedding_init="pytorch",
    initial_state_init="zeros",
    lstm_bias="two",
    lstm_input_dropout="shared",
    word_embedding_init_rows=None,
    image_resize="pil_antialias",
    cuda_tf32="torch_default",
    checkpoint_choice="best_validation",
    adam_epsilon="pytorch",
)

#: The quick profile's early stopping: validations in a row without a new best that end a run, and the most
#: epochs a run trains (each notebook's convergence.csv says how many its runs trained).
QUICK_PATIENCE = 3
QUICK_MAX_EPOCHS = 30

#: Settings per profile and dataset, as plain data. ``paper`` = the released scripts' settings
#: (CUB / Flowers: no script was released; the Flickr30K recipe is assumed and marked so).
PROFILE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        # The CNNs are TF-slim's own networks (TF "SAME" padding; slim's ResNet v1 layout), so that
        # ImageNet weights converted from the slim checkpoints the release starts from
        # (``python -m cmp_utils.tools.convert_tf``) give TF's outputs; ``mobilenet_v1`` / ``resnet152``
        # (PyTorch padding, torchvision's ResNet) remain as options.
        "cuhk_pedes": dict(
            _PAPER_COMMON,
            backbone="mobilenet_v1_tf",
            batch_size=16,
            epochs=50,
            frozen_epochs=0,
            image_size=(224, 224),
            select_metric="t2i_R@1",
        ),
        "flickr30k": dict(
            _PAPER_COMMON,
            backbone="resnet152_slim",
            batch_size=32,
            epochs=45,
            frozen_epochs=15,
            image_size=(224, 224),
            select_metric="rsum",
        ),
        "mscoco": dict(
            _PAPER_COMMON,
            backbone="resnet152_slim",
            batch_size=64,
            epochs=45,
            frozen_epochs=15,
            image_size=(224, 224),
            select_metric="rsum",
        ),
        "cub": dict(
            _PAPER_COMMON,
            backbone="mobilenet_v1_tf",
            batch_size=32,
            epochs=45,
            frozen_epochs=15,
            image_size=(224, 224),
            select_metric="rsum",
            note="assumed: no released script",
        ),
        "flowers": dict(
            _PAPER_COMMON,
            backbone="mobilenet_v1_tf",
            batch_size=32,
            epochs=45,
            frozen_epochs=15,
            image_size=(224, 224),
            select_metric="rsum",
            note="assumed: no released script",
        ),
        # Published after the paper: its CUHK-PEDES recipe, unchanged (no paper numbers exist for them).
        **{
            name: dict(
                _PAPER_COMMON,
                backbone="mobilenet_v1_tf",
                batch_size=16,
                epochs=50,
                frozen_epochs=0,
                image_size=(224, 224),
                select_metric="t2i_R@1",
                note="assumed: the paper's CUHK-PEDES recipe; the dataset postdates the paper",
            )
            for name in ("icfg_pedes", "rstpreid")
        },
    },
    # person datasets: the 64 x 32 renders upsampled to 128 x 64 and cut after MobileNetV2's 11th stage (a
    # 64-channel 8 x 4 map at stride 16, kept whole as an 8 x 4 grid, 2048-d): higher recall than the last
    # stage for less CPU (calibration in the module docstring). Every run trains until its validation score
    # has plateaued: it stops after QUICK_PATIENCE validations without a new best, at most QUICK_MAX_EPOCHS
    # epochs (the notebooks check each method against a run 3x as long: cmp_utils.experiments.convergence).
    "quick": {
        name: dict(
            _FAST_COMMON,
            batch_size=64,
            epochs=QUICK_MAX_EPOCHS,
            patience=QUICK_PATIENCE,
            frozen_epochs=0,
            image_size=(128, 64) if name in config.PERSON_DATASETS else None,
            lr=3e-3,
            finetune_lr=3e-3,
            backbone_blocks=11 if name in config.PERSON_DATASETS else None,
            pool_grid=(8, 4) if name in config.PERSON_DATASETS else (2, 2),
            embedding_dim=256,
            word_dim=64,
            hidden_size=64,
            dropout=0.3,
            ema_decay=0.99,
            select_metric="t2i_R@1" if name in config.PERSON_DATASETS else "rsum",
        )
        for name in config.DATASETS
    },
    "smoke": {
        name: dict(
            _FAST_COMMON,
            batch_size=32,
            epochs=2,
            frozen_epochs=0,
            image_size=None,
            pool_grid=(2, 1) if name in config.PERSON_DATASETS else (2, 2),
            embedding_dim=64,
            word_dim=32,
            hidden_size=32,
            dropout=0.3,
            ema_decay=0.9,
            select_metric="t2i_R@1" if name in config.PERSON_DATASETS else "rsum",
        )
        for name in config.DATASETS
    },
}


@dataclass
class TrainConfig:
    """Every setting of one training run (``params.yaml`` holds these plus the git commit)."""

    dataset: str = "cuhk_pedes"
    profile: str = "smoke"
    losses: tuple[str, ...] = ("cmpm", "cmpc")
    seed: int = 0
    device: str = "auto"
    output_dir: str | None = None  # None: <results>/runs/<profile>/<dataset>/<losses>_seed<k>
    data_dir: str | None = None
    cache_dir: str | None = None
    data_seed: int = 0  # seed of the synthetic data (independent of the training seed)
    resume: bool = False
    # model
    backbone: str = "mobilenet_v1"
    weights_path: str | None = None
    pretrained: bool = True
    image_size: tuple[int, int] | None = None  # None: the prepared data's default
    feature_mode: str = "end_to_end"  # end_to_end | cached
    backbone_blocks: int | None = None  # mobilenet_v2 only: keep its first N stages (a mid-level map); None = all
    pool_grid: tuple[int, int] = (1, 1)
    cache_flips: bool = False  # cached mode: also cache left-right flipped images (flip augmentation)
    embedding_dim: int = 512
    word_dim: int = 512
    hidden_size: int = 512
    dropout: float = 0.3
    padded_steps: str = "exclude"
    # recipe options (release default first; the others are public ports' deviations, see docs/fidelity.md)
    word_embedding_init: str = "xavier"  # xavier (release modules.py: Glorot uniform) | normal (nn.Embedding N(0, 1))
    lstm_init: str = "tf"  # tf (BasicLSTMCell: Glorot kernels, forget bias 1.0) | pytorch (nn.LSTM default)
    lstm_backward: str = "time"  # time | batch_reversed (a port: the backward LSTM reverses the batch, not time)
    bn_style: str = "tf"  # joint-embedding BN: tf (slim arg_scope of the backbone) | pytorch (eps 1e-5, momentum 0.1)
    joint_embedding: str = "linear_bn"  # linear_bn (release: 1x1 conv, no bias, + BN) | linear_bias (a port)
    ema_scope: str = "release"  # release (CNN + joint embeddings + their BN statistics) | all (every parameter)
    vocab_case_sensitive: bool = False  # True: a port's vocabulary keeps case ("A" and "a" apart)
    pad_shares_most_frequent: bool = False  # True: a port: padding id = the most frequent word's id
    num_classes_from: str = "all_splits"  # all_splits (release: the dataset's id range) | train (train ids only)
    joint_embedding_init: str = "release"  # release (CNN arg_scope: trunc. normal 0.09 / He) | pytorch (nn.Linear)
    initial_state_init: str = "glorot"  # glorot (release: tf.get_variable default) | zeros
    lstm_bias: str = "single"  # single (TF: one bias per gate, bias_hh frozen at 0) | two (nn.LSTM's two biases)
    lstm_input_dropout: str = "per_direction"  # per_direction (release: a DropoutWrapper each) | shared (one mask)
    word_embedding_init_rows: int | None = 12000  # Xavier bound from the release's 12000-row table | None: len(vocab)
    image_resize: str = "tf1_bilinear"  # tf1_bilinear (release: float, no antialiasing) | pil_antialias (PIL)
    cuda_tf32: str = "off"  # off (fp32 is fp32, as the release) | torch_default (cuDNN convolutions in TF32)
    checkpoint_choice: str = "last"  # last (release: the last epoch is tested) | best_validation (best.pt)
    adam_epsilon: str = (
        "tf"  # tf (TF's epsilon-hat: eps added to the uncorrected sqrt(v)) | pytorch (torch.optim.Adam's)
    )
    # optimisation
    batch_size: int = 16  # global batch (all processes together)
    epochs: int = 50
    frozen_epochs: int = 0
    lr: float = 2e-4
    finetune_lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 4e-5
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    sampler: str = "random"  # random | identity
    instances_per_label: int = 2
    loss_options: dict = field(default_factory=dict)
    loss_scope: str = "global"  # global | local:K (the loss on K sub-batches: K GPUs without a feature gather)
    amp: str = "auto"  # auto | bf16 | fp16 | off  (CUDA only)
    channels_last: bool = True
    num_workers: int | None = 0  # DataLoader workers; None = what the machine has, min(8, cpu count)
    eval_batch_size: int = 256
    select_metric: str = "t2i_R@1"
    evaluate_test: bool = True
    deterministic: bool = False
    progress: bool = True
    max_steps_per_epoch: int | None = None  # cut epochs short (tests)
    # run control (release: ``train_models.py`` and ``configuration.py`` of the authors' repository)
    select_split: str = "validation"  # validation | test (selection on the test split: optimistic, a port's choice)
    validate_every: int = 1  # epochs between validations; 0 = none, the last epoch is kept as best.pt
    # early stopping: training ends once this many validations in a row brought no new best (``epochs`` is then
    # the most it trains); None = every epoch. The same rule for every method of a table.
    patience: int | None = None
    num_threads: int | None = None  # torch CPU threads of the run; None = torch's default (all cores)
    frozen_cnn_bn: str = "batch_stats"  # stage 1 frozen CNN batch norm: batch_stats (release) | eval
    stage2_restart: bool = True  # stage 2 restarts Adam and the EMA (shadows, step count) as the release does
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        for key, value in plain.items():
            if isinstance(value, tuple):
                plain[key] = list(value)
        return plain


#: ``TrainConfig.checkpoint_choice``: which weights the test split scores. ``"last"`` = the last
#: epoch's (averaged) weights, as the release (its scripts score the latest checkpoint); when
#: validation ran, ``best.pt`` is scored too and reported beside it (``test_best_validation``).
#: ``"best_validation"`` = ``best.pt``, the epoch best on the selection split.
CHECKPOINT_CHOICES = ("last", "best_validation")

#: ``TrainConfig.adam_epsilon``: where Adam's epsilon sits. TF's ``AdamOptimizer`` (the release)
#: computes $\theta \leftarrow \theta - \eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)\; m/(\sqrt v + \epsilon)$,
#: ``torch.optim.Adam`` $\theta \leftarrow \theta - \eta/(1-\beta_1^t)\; m/(\sqrt{v/(1-\beta_2^t)} + \epsilon)$:
#: TF's is PyTorch's with $\epsilon_t = \epsilon/\sqrt{1-\beta_2^t}$ (31.6x larger at step 1, equal
#: after some thousand steps), which matters for gradients near $10^{-7}$. ``"tf"`` sets that
#: $\epsilon_t$ before every step (:func:`set_tf_adam_epsilon`); ``"pytorch"`` keeps PyTorch's.
ADAM_EPSILONS = ("tf", "pytorch")

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(does ``value`` fit the annotation ``hint``, the value in that type): lists become tuples for
    tuple fields, whole numbers become floats for float fields; bools are not numbers here."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            fits, converted = _conform(value, option)
            if fits:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, (bool, np.bool_)), bool(value) if isinstance(value, (bool, np.bool_)) else value
    if hint is int:
        fits = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
        return fits, int(value) if fits else value
    if hint is float:
        fits = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        return fits, float(value) if fits else value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict or origin is dict:
        return isinstance(value, dict), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            return False, value
        items = [_conform(item, item_hint) for item, item_hint in zip(value, item_hints)]
        return all(fits for fits, _ in items), tuple(converted for _, converted in items)
    return True, value  # an annotation this checker does not know: accepted as is


def check_setting(name: str, value: Any) -> Any:
    """``value`` checked against the type of the :class:`TrainConfig` field ``name`` and returned in
    that type; a ``TypeError`` names the setting, the value given and the type expected."""
    if name not in _FIELDS:
        raise ValueError(f"unknown training setting {name!r}; known: {sorted(_FIELDS)}")
    fits, converted = _conform(value, _FIELD_TYPES[name])
    if not fits:
        quoted = " (a quoted value in YAML is text: write it unquoted)" if isinstance(value, str) else ""
        raise TypeError(
            f"setting {name}={value!r} is a {type(value).__name__}; it must be {_type_name(_FIELD_TYPES[name])}{quoted}"
        )
    return converted


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (the command line's ``--set``) -> (key, value): the value is read as YAML
    (``32``, ``2e-4``, ``false``, ``[224, 224]``, ``{label_smoothing: 0.1}``, ``null``) and checked
    against the field's type; a string field keeps the text as written."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--set {text!r} must look like KEY=VALUE, e.g. --set batch_size=32")
    name, raw = (part.strip() for part in text.split("=", 1))
    if name not in _FIELDS:
        raise ValueError(f"--set {name}: unknown training setting; known: {sorted(_FIELDS)}")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as error:
        raise ValueError(f"--set {name}={raw}: the value is not valid YAML ({error})") from None
    if name == "losses" and isinstance(value, str):
        return name, value  # "cmpm,cmpc": split by make_config
    hint = _FIELD_TYPES[name]
    if not isinstance(value, str) and raw and _conform(raw, hint)[0] and not _conform(value, hint)[0]:
        value = raw  # a string setting written without quotes, e.g. --set note=2018
    if isinstance(value, str) and not _conform(value, hint)[0]:
        try:
            value = float(value) if _conform(float(value), hint)[0] else value  # YAML reads 1e-3 as text
        except ValueError:
            pass
    return name, check_setting(name, value)


def _admits_none(name: str) -> bool:
    return _conform(None, _FIELD_TYPES[name])[0]


def make_config(profile: str = "smoke", dataset: str = "cuhk_pedes", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from ``PROFILE_SETTINGS[profile][dataset]`` plus ``overrides``.

    Every value is checked against the field's type (:func:`check_setting`). ``None`` means "not
    given" for a field that cannot hold ``None``, and ``None`` itself for one that can.
    """
    config.check_profile(profile)
    if dataset not in config.DATASETS:
        raise ValueError(f"parameter dataset={dataset!r} is not known; use one of {', '.join(config.DATASETS)}")
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(_FIELDS)}")
    values = {
        **PROFILE_SETTINGS[profile][dataset],
        **{k: v for k, v in overrides.items() if v is not None or _admits_none(k)},
    }
    values.update(profile=profile, dataset=dataset)
    if isinstance(values.get("losses"), str):
        values["losses"] = [name.strip() for name in values["losses"].split(",") if name.strip()]
    values = {key: check_setting(key, value) for key, value in values.items()}
    result = TrainConfig(**values)
    _check_config(result)
    return result


def _check_config(cfg: TrainConfig) -> None:
    from ..losses import LOSS_NAMES

    for name in _FIELDS:
        check_setting(name, getattr(cfg, name))
    bad = [name for name in cfg.losses if name not in LOSS_NAMES]
    if bad or not cfg.losses:
        raise ValueError(f"setting losses={list(cfg.losses)}: unknown {bad}; choose from {LOSS_NAMES}")
    from ..losses import parse_loss_scope

    if cfg.batch_size % parse_loss_scope(cfg.loss_scope):  # also rejects a malformed scope
        raise ValueError(
            f"setting loss_scope={cfg.loss_scope!r} needs a batch_size that K divides; got {cfg.batch_size}"
        )
    if cfg.feature_mode not in ("end_to_end", "cached"):
        raise ValueError(f"setting feature_mode={cfg.feature_mode!r} must be 'end_to_end' or 'cached'")
    if cfg.sampler not in ("random", "identity"):
        raise ValueError(f"setting sampler={cfg.sampler!r} must be 'random' or 'identity'")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"setting amp={cfg.amp!r} must be auto, bf16, fp16 or off")
    if cfg.backbone not in models.BACKBONES:
        raise ValueError(f"setting backbone={cfg.backbone!r}; use one of {models.BACKBONES}")
    if cfg.backbone_blocks is not None and cfg.backbone != "mobilenet_v2":
        raise ValueError(
            f"setting backbone_blocks={cfg.backbone_blocks!r} needs backbone='mobilenet_v2' "
            f"(not {cfg.backbone!r}); set backbone_blocks=None"
        )
    if not 0 <= cfg.frozen_epochs <= cfg.epochs or cfg.epochs < 1:
        raise ValueError(
            f"settings epochs={cfg.epochs}, frozen_epochs={cfg.frozen_epochs}: need 0 <= frozen <= epochs, epochs >= 1"
        )
    if cfg.batch_size < 2:
        raise ValueError(f"setting batch_size={cfg.batch_size} must be at least 2")
    from ..data.images import IMAGE_RESIZES

    choices = {
        "select_split": ("validation", "test"),
        "frozen_cnn_bn": ("batch_stats", "eval"),
        "joint_embedding_init": models.JOINT_EMBEDDING_INITS,
        "initial_state_init": models.INITIAL_STATE_INITS,
        "lstm_bias": models.LSTM_BIASES,
        "lstm_input_dropout": models.LSTM_INPUT_DROPOUTS,
        "image_resize": IMAGE_RESIZES,
        "cuda_tf32": numerics.CUDA_TF32_CHOICES,
        "checkpoint_choice": CHECKPOINT_CHOICES,
        "adam_epsilon": ADAM_EPSILONS,
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"setting {name}={getattr(cfg, name)!r} must be one of {allowed}")
    for name, least in (
        ("validate_every", 0),
        ("num_threads", 1),
        ("num_workers", 0),
        ("max_steps_per_epoch", 1),
        ("patience", 1),
    ):
        if getattr(cfg, name) is not None and getattr(cfg, name) < least:
            raise ValueError(f"setting {name}={getattr(cfg, name)} must be at least {least}")
    if cfg.patience is not None and cfg.validate_every == 0:
        raise ValueError(
            f"setting patience={cfg.patience} stops on validation, but validate_every=0 validates nothing: "
            "set validate_every >= 1 or patience=None"
        )


def as_config(settings: TrainConfig | dict) -> TrainConfig:
    """Accept a :class:`TrainConfig` or a dict (``profile`` and ``dataset`` keys + overrides)."""
    if isinstance(settings, TrainConfig):
        _check_config(settings)
        return settings
    values = dict(settings)
    return make_config(values.pop("profile", "smoke"), values.pop("dataset", "cuhk_pedes"), **values)


def _check_paper_inputs(cfg: TrainConfig) -> None:
    """Fail early and clearly when the paper profile lacks what it needs."""
    if cfg.profile != "paper":
        return
    if (
        cfg.backbone in ("mobilenet_v1", "resnet152", *models.TF_EXACT_BACKBONES)
        and cfg.pretrained
        and cfg.weights_path is None
    ):
        raise FileNotFoundError(
            f"profile 'paper' trains {cfg.backbone} from ImageNet weights, which cannot be downloaded here: pass "
            f"weights_path=<{cfg.backbone} state dict> (CLI: --set weights_path=FILE; notebooks: -p weights_path FILE; "
            "make reproduce WEIGHTS=FILE or a folder of <backbone>.pth files), or pretrained=false to knowingly "
            "train from random init"
        )
    if cfg.weights_path is not None and not Path(cfg.weights_path).expanduser().is_file():
        raise FileNotFoundError(f"setting weights_path={cfg.weights_path!r} does not exist")


#: Other file names a weights folder may use for a backbone (``<name>.pth``).
WEIGHTS_FILE_ALIASES = {"mobilenet_v1_tf": ("mobilenet_v1",), "resnet152_slim": ("resnet152", "resnet_v1_152")}


def resolve_weights_path(cfg: TrainConfig) -> TrainConfig:
    """``weights_path`` may name a folder holding one ImageNet state dict per backbone,
    ``<backbone>.pth`` (or ``.pt``): each run takes its backbone's file (``make reproduce
    WEIGHTS=<folder>`` gives every notebook the same value; CUHK-PEDES trains MobileNet v1, the
    others ResNet-152). Returns ``cfg`` with the file's path; a file path is kept as it is."""
    if cfg.weights_path is None or not Path(cfg.weights_path).expanduser().is_dir():
        return cfg
    folder = Path(cfg.weights_path).expanduser()
    # The exact TF twins also take the file named after the network they twin (mobilenet_v1.pth).
    names = (cfg.backbone, *WEIGHTS_FILE_ALIASES.get(cfg.backbone, ()))
    for name in names:
        for suffix in (".pth", ".pt"):
            if (folder / f"{name}{suffix}").is_file():
                return dataclasses.replace(cfg, weights_path=str(folder / f"{name}{suffix}"))
    raise FileNotFoundError(
        f"setting weights_path={cfg.weights_path!r} is a folder without {names[0]}.pth (or "
        f"{', '.join(n + '.pth' for n in names[1:]) or '.pt'}): put the {cfg.backbone} state dict "
        "there under that name, or pass the file itself"
    )


# ---------------------------------------------------------------------------------------------
# fit: one epoch
# ---------------------------------------------------------------------------------------------


def _loader_workers(cfg: TrainConfig) -> int:
    """DataLoader worker processes: ``num_workers``, or (None) what the machine has, at most 8."""
    return cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)
