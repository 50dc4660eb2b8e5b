"""Each initialiser of the paper profile draws the release's distribution; the fast profiles keep theirs.

The release's distributions (YingZhangDUT/Cross-Modal-Projection-Learning): joint-embedding 1x1
convolutions under the CNN's arg_scope (MobileNet v1: truncated normal, stddev 0.09; ResNet v1:
He variance scaling, truncated normal of stddev sqrt(1.3 x 2 / fan_in)), learned LSTM initial
states and the word-embedding table with TF's Glorot uniform (the table's bound from its 12000
rows), the LSTM's fused kernel Glorot uniform. Each is checked by its bounds and standard
deviation, and against draws of TensorFlow's own initialiser where TF has it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (before TensorFlow: imported after it, torchvision segfaults)

from cmp_utils.data import images
from cmp_utils import models, training

#: std of a normal truncated at +-2 std, relative to the untruncated std
TRUNCATED_STD_RATIO = 0.8796256610342398


def _tf_draw(initializer, shape) -> np.ndarray | None:
    """Values of a TF initialiser (None without TensorFlow)."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return None
    return np.asarray(initializer(tf)(shape, dtype=tf.float32))


def _check_truncated_normal(values: torch.Tensor, stddev: float) -> None:
    assert float(values.abs().max()) <= 2 * stddev + 1e-7
    assert float(values.abs().max()) > 1.9 * stddev  # really truncated at 2 stddev, not narrower
    assert abs(float(values.std()) / (stddev * TRUNCATED_STD_RATIO) - 1) < 0.02


def _check_uniform(values: torch.Tensor, bound: float) -> None:
    assert float(values.abs().max()) <= bound + 1e-7 and float(values.abs().max()) > 0.98 * bound
    assert abs(float(values.std()) / (bound / math.sqrt(3)) - 1) < 0.03


def _model(backbone: str = "mobilenet_v1_tf", **options) -> models.CrossModalModel:
    torch.manual_seed(0)
    return models.build_model(
        500,
        backbone,
        embedding_dim=512,
        word_dim=512,
        hidden_size=512,
        pretrained=False,
        cached_feature_dim=1024,
        **options,
    )


def test_joint_embedding_mobilenet_arg_scope_truncated_normal():
    model = _model()
    for embedding in (model.image_embedding, model.text_embedding):
        _check_truncated_normal(embedding.projection.weight.detach(), 0.09)
    theirs = _tf_draw(lambda tf: tf.compat.v1.truncated_normal_initializer(stddev=0.09), (1024, 512))
    if theirs is not None:
        ours = model.image_embedding.projection.weight.detach()
        assert abs(float(ours.std()) / float(theirs.std()) - 1) < 0.02
        assert abs(float(ours.abs().max()) - float(np.abs(theirs).max())) < 0.005


def test_joint_embedding_resnet_arg_scope_he_scaling():
    stddev = models.release_joint_embedding_stddev("resnet152_slim", 2048)
    assert stddev == pytest.approx(math.sqrt(1.3 * 2.0 / 2048))
    projection = models.JointEmbedding(2048, 512, init_stddev=stddev).projection.weight.detach()
    _check_truncated_normal(projection, stddev)
    # TF's core variance scaling (scale 2, fan in, truncated normal) corrects the truncation by 1/0.8796
    # where slim's used 1.3: the two stddevs agree within 0.3%
    theirs = _tf_draw(
        lambda tf: tf.compat.v1.variance_scaling_initializer(2.0, "fan_in", "truncated_normal"), (2048, 512)
    )
    if theirs is not None:
        assert abs(float(projection.std()) / float(theirs.std()) - 1) < 0.02


def test_fast_profiles_keep_nn_linear_joint_embedding():
    model = _model(joint_embedding_init="pytorch")
    _check_uniform(model.image_embedding.projection.weight.detach(), 1 / math.sqrt(1024))


def test_initial_states_glorot_and_word_table_bound_from_12000_rows():
    model = _model()
    text = model.text_encoder
    for state in (text.initial_hidden, text.initial_cell):
        _check_uniform(state.detach().flatten(), math.sqrt(3 / 512))  # (units,) variable: fan in = fan out = units
    table = text.word_embedding.weight.detach()[1:]  # row 0 = padding, zero
    _check_uniform(table.flatten(), math.sqrt(6 / (12000 + 512)))
    theirs = _tf_draw(lambda tf: tf.compat.v1.glorot_uniform_initializer(), (512,))
    if theirs is not None:
        assert float(np.abs(theirs).max()) <= math.sqrt(3 / 512) + 1e-7


def test_lstm_one_bias_per_gate_and_glorot_kernel():
    text = _model().text_encoder
    for suffix in ("", "_reverse"):
        bias_hh = getattr(text.lstm, f"bias_hh_l0{suffix}")
        assert not bias_hh.requires_grad and float(bias_hh.abs().max()) == 0.0
        kernel = torch.cat(
            [getattr(text.lstm, f"weight_ih_l0{suffix}"), getattr(text.lstm, f"weight_hh_l0{suffix}")], 1
        )
        _check_uniform(kernel.detach().flatten(), math.sqrt(6 / ((512 + 512) + 4 * 512)))
    two = _model(lstm_bias="two").text_encoder
    assert two.lstm.bias_hh_l0.requires_grad


def test_fast_profile_settings_keep_their_earlier_behaviour():
    kept = {
        "joint_embedding_init": "pytorch",
        "initial_state_init": "zeros",
        "lstm_bias": "two",
        "lstm_input_dropout": "shared",
        "word_embedding_init_rows": None,
        "image_resize": "pil_antialias",
        "cuda_tf32": "torch_default",
        "checkpoint_choice": "best_validation",
        "adam_epsilon": "pytorch",
    }
    release = {
        "joint_embedding_init": "release",
        "initial_state_init": "glorot",
        "lstm_bias": "single",
        "lstm_input_dropout": "per_direction",
        "word_embedding_init_rows": 12000,
        "image_resize": "tf1_bilinear",
        "cuda_tf32": "off",
        "checkpoint_choice": "last",
        "adam_epsilon": "tf",
    }
    for profile in ("smoke", "quick"):
        settings = training.make_config(profile, "cuhk_pedes")
        assert {key: getattr(settings, key) for key in kept} == kept
    paper = training.make_config("paper", "cub")
    assert {key: getattr(paper, key) for key in release} == release
    assert paper.backbone == "mobilenet_v1_tf" == training.make_config("paper", "flowers").backbone


def test_zeros_initial_states_and_normal_xavier_bound_stay_available():
    text = _model(initial_state_init="zeros", word_embedding_init_rows=None).text_encoder
    assert float(text.initial_hidden.abs().max()) == 0.0
    _check_uniform(text.word_embedding.weight.detach()[1:].flatten(), math.sqrt(6 / (500 + 512)))


def test_input_dropout_masks_per_direction():
    torch.manual_seed(1)
    text = models.TextEncoder(20, word_dim=64, hidden_size=8, dropout=0.5).train()
    seen = []
    text.run_direction_fused = lambda words, suffix, direction: seen.append(words.clone()) or words[..., :8]
    text.step_outputs(torch.randint(1, 20, (3, 5)), torch.full((3,), 5))
    forward_zeros, backward_zeros = seen[0] == 0, seen[1].flip(1) == 0  # backward input: each row reversed in time
    assert not torch.equal(forward_zeros, backward_zeros)
    shared = models.TextEncoder(20, word_dim=64, hidden_size=8, dropout=0.5, lstm_input_dropout="shared").train()
    seen.clear()
    shared.run_direction_fused = lambda words, suffix, direction: seen.append(words.clone()) or words[..., :8]
    shared.step_outputs(torch.randint(1, 20, (3, 5)), torch.full((3,), 5))
    assert torch.equal(seen[0] == 0, seen[1].flip(1) == 0)


def test_tf1_resize_matches_tensorflow_legacy_bilinear():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 23, 3)).astype(np.uint8)
    ours = images.tf1_resize_bilinear(pixels, (50, 16))
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        pytest.skip("tensorflow is not installed")
    theirs = tf.compat.v1.image.resize_bilinear(
        pixels[None].astype(np.float32), (50, 16), align_corners=False, half_pixel_centers=False
    ).numpy()[0]
    assert np.abs(ours - theirs).max() < 1e-3
    # a shrink without antialiasing differs from PIL's (which averages the footprint)
    from PIL import Image

    pil = np.asarray(Image.fromarray(pixels).resize((16, 50), Image.BILINEAR), dtype=np.float32)
    assert np.abs(pil - theirs).max() > 10
