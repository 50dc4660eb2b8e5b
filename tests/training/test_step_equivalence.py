"""Step for step: our training step against a TF 1 transcription of the release's (``tests/tf_release_step.py``).

The CUHK-PEDES recipe of the paper profile (MobileNet v1 on a small input, Bi-LSTM with learned
initial states, joint embeddings with batch norm, CMPM + CMPC, L2 4e-5, Adam epsilon 1e-8, EMA
0.9999 with TF's warm-up over the CNN and the joint embeddings). TF draws every variable with the
release's initialisers; the checkpoint goes through ``cmp_utils.tools.convert_tf`` into our model, both
train :data:`STEPS` steps on the same batches with dropout off, and after every step

* each loss (CMPM, CMPC) agrees to :data:`LOSS_RTOL` relative;
* every weight, batch-norm statistic, CMPC's W and every EMA shadow, read back from TF through
  the same converter, agrees with ours to :data:`WEIGHT_ATOL` (absolute, float32).

Both run in float64 (TF's graph built in float64, ours ``.double()``; the starting values are
float32 numbers): in float32, TF's and ours differ from a float64 run of the same step by 1e-4
and 3e-4 in the embeddings already at step 1 (MobileNet's batch norms at batch 4 amplify rounding;
measured), so float32 cannot tell a wrong step from rounding at these tolerances, float64 can.
The paper's learning rate 2e-4 and a batch of 8 keep the steps out of the chaotic regime (at
2e-3 and batch 4 the two float64 trajectories separate after three steps); each step moves the
weights by up to 2e-4, and a wrong update shows: TF's epsilon placement in Adam, before
``adam_epsilon="tf"``, put the weights 1.5e-3 apart after one step at 2e-3, and the moving
variance without Bessel's correction 1.4e-4 apart.

Measured (this test, CPU, five steps): losses within 3.9e-7 relative, every weight, statistic and
EMA shadow within 2.5e-7.
"""

from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (before TensorFlow: imported after it, torchvision segfaults)

pytest.importorskip("tensorflow", reason="tensorflow is a test extra (pip install -e '.[test]')")
import tf_release_step as release  # noqa: E402  (tests/ is on sys.path: conftest)

from cmp_utils.models import tf_checkpoint
from cmp_utils import losses, training  # noqa: E402

tf = release.tf
STEPS = 5
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4
LEARNING_RATE = 2e-4
SIZES = {"image_size": (64, 64), "vocab_size": 13, "word_dim": 8, "units": 6, "embedding_dim": 7, "num_classes": 9}
BATCH = 8


def _batches(steps: int) -> list[dict[str, np.ndarray]]:
    """Fixed batches: images in [-1, 1] (MobileNet's input), padded captions (id 0 = padding), repeated labels."""
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(steps):
        lengths = rng.integers(2, 7, BATCH).astype(np.int32)
        lengths[0] = 6  # the longest sets T
        token_ids = rng.integers(1, SIZES["vocab_size"], (BATCH, 6)).astype(np.int32)
        token_ids[np.arange(6)[None, :] >= lengths[:, None]] = 0
        labels = rng.integers(1, SIZES["num_classes"], BATCH).astype(np.int32)
        labels[1] = labels[0]  # a second positive in the CMPM target
        # distinct images (a colour each, plus texture): random noise images all give nearly the same features,
        # and the joint embedding's batch norm would then amplify float32 rounding by the inverse of their spread
        colours = rng.uniform(-0.7, 0.7, (BATCH, 1, 1, 3))
        images = np.clip(colours + rng.uniform(-0.3, 0.3, (BATCH, *SIZES["image_size"], 3)), -1, 1).astype(np.float32)
        batches.append({"images": images, "token_ids": token_ids, "lengths": lengths, "labels": labels})
    return batches


class _TFRun:
    """The TF graph in ``dtype``, initialised as the release initialises it (LSTM biases randomised so
    that the gate mapping is exercised; every value rounded to float32, so that ours starts from
    exactly the same numbers), with the EMA shadows set to the starting values."""

    def __init__(self, dtype: str):
        # The initialisers that take no seed draw one from Python's and NumPy's global generators (Keras's
        # seed generator), not from the graph seed: unseeded, each process started from other weights, and
        # some starts separate the two float64 trajectories past the tolerances (measured: 1 run in 3 failed).
        random.seed(3)
        np.random.seed(3)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(3)
            self.inputs, self.fetches, self.ema = release.build_training_step(
                learning_rate=LEARNING_RATE, dtype=getattr(tf, dtype), **SIZES
            )
            # one thread each side: TF's multi-threaded reductions change their order with the machine's
            # load, and five steps of MobileNet's small-batch batch norms amplify that past the tolerances
            single = tf.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
            self.session = tf.Session(graph=self.graph, config=single)
            self.session.run(tf.global_variables_initializer())
            variables = tf.global_variables()
            values = dict(zip(variables, self.session.run(variables)))
            rng = np.random.default_rng(4)
            for variable, value in values.items():
                if variable.name.endswith("basic_lstm_cell/bias:0"):
                    value = rng.uniform(-0.5, 0.5, variable.shape)
                if np.issubdtype(np.asarray(value).dtype, np.floating):
                    values[variable] = np.asarray(value, np.float32).astype(values[variable].dtype)
            for variable in self.ema["averaged"]:
                values[self.ema["ema"].average(variable)] = values[variable]
            # one run of the initialisers fed with the values: no new graph nodes (each would re-plan the graph)
            self.session.run([v.initializer for v in values], {v.initializer.inputs[1]: x for v, x in values.items()})
        self.dtype = dtype

    def step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        feed = {self.inputs[name]: value for name, value in batch.items()}
        feed[self.inputs["images"]] = batch["images"].astype(self.dtype)
        values = self.session.run(self.fetches, feed)
        return {"cmpm": float(values["cmpm"]), "cmpc": float(values["cmpc"])}

    def converted(self, ema: str) -> dict:
        with self.graph.as_default():
            return tf_checkpoint.convert_cmpm_model(release.variable_values(self.session), ema=ema)


def _our_run(start: dict, dtype: str):
    """Our paper-profile model, losses, Adam and EMA in ``dtype``, filled from the converted TF start; dropout off."""
    settings = start["settings"]
    cfg = training.make_config(
        "paper",
        "cuhk_pedes",
        embedding_dim=settings["embedding_dim"],
        word_dim=settings["word_dim"],
        hidden_size=settings["hidden_size"],
        dropout=0.0,
        batch_size=BATCH,
        lr=LEARNING_RATE,
        pretrained=False,
    )
    model = training.model_of_settings(cfg, settings["vocab_size"], pad_id=0)
    model.load_state_dict(start["model"])
    loss_module = losses.CrossModalLoss(cfg.losses, cfg.embedding_dim, settings["num_classes"])
    with torch.no_grad():
        loss_module.cmpc.weight.copy_(start["cmpc_weight"])
    model.to(getattr(torch, dtype)), loss_module.to(getattr(torch, dtype))
    step_module = training.TrainStep(model, loss_module).train()
    autocast, scaler = training.autocast_and_scaler(cfg, torch.device("cpu"))
    return cfg, training.RunState(
        model=model,
        loss_module=loss_module,
        step_module=step_module,
        optimizer=training.new_optimizer(model, loss_module, cfg),
        ema=training.new_weight_average(model, cfg),
        eval_model=model,
        autocast=autocast,
        scaler=scaler,
        wrapped=step_module,
    )


def _torch_batch(batch: dict[str, np.ndarray], dtype: str) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).contiguous().to(getattr(torch, dtype)),
        torch.from_numpy(batch["token_ids"]).long(),
        torch.from_numpy(batch["lengths"]).long(),
        torch.from_numpy(batch["labels"]).long(),
    )


def _differences(state, tf_run: _TFRun) -> dict[str, float]:
    """Max abs difference of every tensor: weights and statistics, CMPC's W, EMA shadows."""
    raw, averaged = tf_run.converted("raw"), tf_run.converted("auto")
    ours = state.model.state_dict()
    differences = {
        key: float((ours[key].double() - value.double()).abs().max())
        for key, value in raw["model"].items()
        if value.is_floating_point()
    }
    differences["cmpc_weight"] = float(
        (state.loss_module.cmpc.weight.double() - raw["cmpc_weight"].double()).abs().max()
    )
    for name, shadow in zip(state.ema.names, state.ema.shadow):
        differences[f"ema:{name}"] = float((shadow.double() - averaged["model"][name].double()).abs().max())
    return differences


@pytest.fixture(scope="module", params=["float64"])
def trajectory(request):
    """STEPS steps of both in one precision; per step the losses of each and the max differences of every tensor."""
    dtype = request.param
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    tf_run = _TFRun(dtype)
    with contextlib.redirect_stdout(io.StringIO()):
        start = tf_run.converted("raw")
    cfg, state = _our_run(start, dtype)
    steps = []
    for batch in _batches(STEPS):
        theirs = tf_run.step(batch)
        ours = {
            name: float(value)
            for name, value in training.train_step(state, cfg, *_torch_batch(batch, dtype), torch.device("cpu")).items()
        }
        steps.append({"theirs": theirs, "ours": ours, "differences": _differences(state, tf_run)})
    tf_run.session.close()
    return {"cfg": cfg, "state": state, "steps": steps, "start": start}


def test_the_paper_profile_is_what_the_transcription_trains(trajectory):
    cfg = trajectory["cfg"]
    assert (cfg.backbone, cfg.padded_steps, cfg.bn_style, cfg.lstm_bias, cfg.ema_scope) == (
        "mobilenet_v1_tf",
        "zeros",
        "tf",
        "single",
        "release",
    )
    assert (cfg.eps, cfg.weight_decay, cfg.ema_decay, cfg.ema_warmup, tuple(cfg.losses)) == (
        release.ADAM["epsilon"],
        release.WEIGHT_DECAY,
        release.EMA_DECAY,
        True,
        ("cmpm", "cmpc"),
    )
    # what TF averages is what ours averages: the CNN and the joint embeddings with their statistics
    averaged = {
        key
        for key in trajectory["start"]["model"]
        if key.startswith(("image_encoder.", "image_embedding.", "text_embedding."))
        and trajectory["start"]["model"][key].is_floating_point()
    }
    assert set(trajectory["state"].ema.names) == averaged


def test_losses_agree_step_for_step(trajectory):
    for index, step in enumerate(trajectory["steps"]):
        for name in ("cmpm", "cmpc"):
            ours, theirs = step["ours"][name], step["theirs"][name]
            assert abs(ours - theirs) <= LOSS_RTOL * abs(theirs), f"step {index + 1} {name}: ours {ours}, TF {theirs}"


def test_weights_and_ema_shadows_agree_step_for_step(trajectory):
    for index, step in enumerate(trajectory["steps"]):
        worst = max(step["differences"], key=step["differences"].get)
        assert step["differences"][worst] <= WEIGHT_ATOL, (
            f"step {index + 1}: {worst} differs by {step['differences'][worst]:.2e}"
        )
    # the comparison is not vacuous: the weights moved by more than the tolerance and far more than they differ
    moved = trajectory["state"].model.state_dict()
    start = trajectory["start"]["model"]
    movement = max(
        float((moved[k].double() - start[k].double()).abs().max()) for k in start if start[k].is_floating_point()
    )
    worst = max(max(step["differences"].values()) for step in trajectory["steps"])
    assert movement > max(WEIGHT_ATOL, 20 * worst), (movement, worst)
