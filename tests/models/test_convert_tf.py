"""The TF checkpoint converter against TensorFlow itself.

The TF side is written here from the authors' release (``modules.py``, ``nets/mobilenet_v1.py``,
``nets/resnet_v1.py`` of YingZhangDUT/Cross-Modal-Projection-Learning) and TF-slim's variable
names, in ``tf.compat.v1`` graph mode: slim's "SAME" padding, batch norm in inference mode (built
from ``tf.nn.batch_normalization`` because ``tf_slim.batch_norm`` does not import on TF 2.21),
``BasicLSTMCell`` inside ``bidirectional_dynamic_rnn`` with the release's learned initial states.
Every variable, batch-norm statistics included, is random; a checkpoint is saved, converted, and
our network's outputs must equal TF's on the same inputs (max abs difference <= 1e-4, float32).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import torchvision  # noqa: E402,F401  (torchvision imported after TensorFlow segfaults: TF 2.21, torchvision 0.29)

try:  # TensorFlow is a test extra (pip install -e '.[test]'), never a runtime dependency
    import tensorflow as _tf_module  # noqa: F401
except ImportError:  # pragma: no cover
    pytest.skip("tensorflow is not installed (pip install tensorflow-cpu tf-keras)", allow_module_level=True)

from cmp_utils.models import tf_checkpoint
from cmp_utils.tools import convert_tf
from cmp_utils import losses, models  # noqa: E402

tf = _tf_module.compat.v1
TOLERANCE = 1e-4
MOBILENET_EPS, RESNET_EPS = 1e-3, 1e-5


# ---------------------------------------------------------------------------------------------
# TF networks (slim names, inference-mode batch norm, every variable random)
# ---------------------------------------------------------------------------------------------


def _random(shape, low=-1.0, high=1.0):
    return tf.random_uniform_initializer(low, high)


def tf_batch_norm(inputs, scope, eps):
    """slim.batch_norm(is_training=False, scale=True) with random statistics."""
    channels = int(inputs.shape[-1])
    with tf.variable_scope(scope):
        gamma = tf.get_variable("gamma", [channels], initializer=_random(None, 0.5, 1.5))
        beta = tf.get_variable("beta", [channels], initializer=_random(None, -0.2, 0.2))
        mean = tf.get_variable("moving_mean", [channels], initializer=_random(None, -0.2, 0.2))
        variance = tf.get_variable("moving_variance", [channels], initializer=_random(None, 0.5, 1.5))
    return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, eps)


def tf_conv(inputs, depth, kernel, stride, scope, eps, activation=None, padding="SAME", depthwise=False):
    channels = int(inputs.shape[-1])
    glorot = tf.variance_scaling_initializer(2.0, distribution="uniform")  # He: activations keep their scale
    with tf.variable_scope(scope):
        if depthwise:
            weights = tf.get_variable("depthwise_weights", [kernel, kernel, channels, 1], initializer=glorot)
            net = tf.nn.depthwise_conv2d(inputs, weights, [1, stride, stride, 1], padding)
        else:
            weights = tf.get_variable("weights", [kernel, kernel, channels, depth], initializer=glorot)
            net = tf.nn.conv2d(inputs, weights, [1, stride, stride, 1], padding)
        net = tf_batch_norm(net, "BatchNorm", eps)
    return activation(net) if activation else net


def tf_mobilenet_v1(images):
    """slim mobilenet_v1_base up to Conv2d_13_pointwise (padding SAME, ReLU6)."""
    with tf.variable_scope("MobilenetV1"):
        net = tf_conv(images, 32, 3, 2, "Conv2d_0", MOBILENET_EPS, tf.nn.relu6)
        for index, (depth, stride) in enumerate(models.MOBILENET_V1_BLOCKS, start=1):
            net = tf_conv(net, None, 3, stride, f"Conv2d_{index}_depthwise", MOBILENET_EPS, tf.nn.relu6, depthwise=True)
            net = tf_conv(net, depth, 1, 1, f"Conv2d_{index}_pointwise", MOBILENET_EPS, tf.nn.relu6)
    return net


def tf_conv2d_same(inputs, depth, kernel, stride, scope):
    """slim resnet_utils.conv2d_same: SAME at stride 1, explicit symmetric pad + VALID otherwise."""
    if stride == 1:
        return tf_conv(inputs, depth, kernel, 1, scope, RESNET_EPS, tf.nn.relu)
    pad_begin = (kernel - 1) // 2
    pad_end = kernel - 1 - pad_begin
    padded = tf.pad(inputs, [[0, 0], [pad_begin, pad_end], [pad_begin, pad_end], [0, 0]])
    return tf_conv(padded, depth, kernel, stride, scope, RESNET_EPS, tf.nn.relu, padding="VALID")


def tf_resnet_v1(images, units, scope="resnet_v1_152"):
    """slim resnet_v1 with bottleneck_v1 units; blocks 1-3 subsample in their last unit."""
    with tf.variable_scope(scope):
        net = tf_conv2d_same(images, 64, 7, 2, "conv1")
        net = tf.nn.max_pool2d(net, 3, 2, "SAME")
        for block_index, count in enumerate(units):
            bottleneck = 64 * 2**block_index
            depth = 4 * bottleneck
            strides = [1] * (count - 1) + [2 if block_index < 3 else 1]
            for unit_index, stride in enumerate(strides):
                with tf.variable_scope(f"block{block_index + 1}/unit_{unit_index + 1}/bottleneck_v1"):
                    if int(net.shape[-1]) == depth:
                        shortcut = tf.nn.max_pool2d(net, 1, stride, "SAME") if stride > 1 else net
                    else:
                        shortcut = tf_conv(net, depth, 1, stride, "shortcut", RESNET_EPS)
                    residual = tf_conv(net, bottleneck, 1, 1, "conv1", RESNET_EPS, tf.nn.relu)
                    residual = tf_conv2d_same(residual, bottleneck, 3, stride, "conv2")
                    residual = tf_conv(residual, depth, 1, 1, "conv3", RESNET_EPS)
                    net = tf.nn.relu(shortcut + residual)
    return net


def tf_bidirectional_lstm(words, lengths, units):
    """The release's bidirectional_lstm: BasicLSTMCell per direction, learned initial (c, h), max over time."""
    batch = tf.shape(words)[0]
    with tf.variable_scope("bidirectional_lstm"):
        cells, initial = {}, {}
        for direction in ("forward", "backward"):
            with tf.variable_scope(direction):
                cells[direction] = tf.nn.rnn_cell.BasicLSTMCell(units, state_is_tuple=True)
                state = [
                    tf.tile(tf.get_variable(f"init_state_{i}", [units], initializer=_random(None))[None], [batch, 1])
                    for i in range(2)
                ]
                initial[direction] = tf.nn.rnn_cell.LSTMStateTuple(*state)
        (forward, backward), _ = tf.nn.bidirectional_dynamic_rnn(
            cells["forward"],
            cells["backward"],
            words,
            sequence_length=lengths,
            initial_state_fw=initial["forward"],
            initial_state_bw=initial["backward"],
            dtype=tf.float32,
        )
        outputs = tf.concat([forward, backward], axis=2)
    return tf.reduce_max(outputs, axis=1)


def tf_joint_embedding(features, dim, scope, eps):
    """The release's build_joint_embeddings: 1x1 conv without bias + batch norm, no activation."""
    with tf.variable_scope("joint_embedding"):
        net = tf_conv(features[:, None, None, :], dim, 1, 1, scope, eps)
    return tf.squeeze(net, [1, 2])


def _randomise_lstm_biases(session):
    """BasicLSTMCell's bias starts at zero: make it random so the gate mapping is really checked."""
    for variable in tf.global_variables():
        if variable.name.endswith("basic_lstm_cell/bias:0"):
            session.run(variable.assign(np.random.default_rng(1).uniform(-0.5, 0.5, variable.shape).astype(np.float32)))


def _save(session, directory):
    return tf.train.Saver().save(session, str(directory / "model.ckpt"))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def _images(seed, size, count=2):
    return np.random.default_rng(seed).uniform(-1, 1, (count, size[0], size[1], 3)).astype(np.float32)


def _run_backbone_case(tmp_path, build, kind, units=None, size=(64, 64)):
    images = _images(0, size)
    graph = tf.Graph()
    with graph.as_default(), tf.Session() as session:
        inputs = tf.placeholder(tf.float32, [None, size[0], size[1], 3])
        feature_map = build(inputs)
        session.run(tf.global_variables_initializer())
        expected = session.run(feature_map, {inputs: images})
        prefix = _save(session, tmp_path)
    variables = tf_checkpoint.read_checkpoint(prefix)
    state, conversion, module = tf_checkpoint.convert_backbone(variables, kind, units=units, bn_statistics="checkpoint")
    with torch.no_grad():
        ours = module.eval()(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())
    return state, conversion, images, expected


def test_mobilenet_v1_matches_tf_with_same_padding_only(tmp_path):
    state, conversion, images, expected = _run_backbone_case(tmp_path, tf_mobilenet_v1, "mobilenet_v1")
    assert len(conversion.mapped) == 27 * 5  # 27 convolutions, each weights + 4 batch-norm tensors
    # PyTorch's symmetric padding (backbone mobilenet_v1) shifts every stride-2 window by a pixel:
    # already the first layer's output is another one than TF's "SAME" gives.
    exact, symmetric = models.MobileNetV1(tf_same_padding=True), models.MobileNetV1(tf_same_padding=False)
    exact.load_state_dict(state)
    symmetric.load_state_dict(state)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        first_exact, first_symmetric = exact.eval().features[0](pixels), symmetric.eval().features[0](pixels)
    assert first_exact.shape == first_symmetric.shape
    assert (first_exact - first_symmetric).abs().max() > 0.1 * first_exact.abs().max()


def test_resnet_v1_matches_tf_and_loads_as_weights_path(tmp_path):
    units = (1, 1, 1, 1)
    state, conversion, images, expected = _run_backbone_case(
        tmp_path, lambda x: tf_resnet_v1(x, units), "resnet_v1_152", units=units
    )
    shortcut_convs = [key for key in state if ".shortcut.conv.weight" in key]
    assert len(shortcut_convs) == 4  # every block's single unit changes depth
    # slim subsamples in a block's last unit: torchvision's layout (first unit) cannot hold these weights.
    out = tmp_path / "resnet.pt"
    torch.save({"state_dict": state, "kind": "resnet_v1_152", "backbone": "resnet152_slim"}, out)
    shallow = models.ResNetV1Slim(units)
    models.load_backbone_weights(shallow, out, "resnet152_slim")
    assert torch.equal(shallow.conv1.conv.weight, state["conv1.conv.weight"])


def test_shape_mismatch_is_refused_naming_the_variable(tmp_path):
    graph = tf.Graph()
    with graph.as_default(), tf.Session() as session:
        inputs = tf.placeholder(tf.float32, [None, 32, 32, 3])
        tf_mobilenet_v1(inputs)
        with tf.variable_scope("MobilenetV1", reuse=True):
            pass
        session.run(tf.global_variables_initializer())
        prefix = _save(session, tmp_path)
    variables = tf_checkpoint.read_checkpoint(prefix)
    variables["MobilenetV1/Conv2d_3_pointwise/weights"] = np.zeros((1, 1, 128, 99), np.float32)
    with pytest.raises(tf_checkpoint.CheckpointMismatch, match="MobilenetV1/Conv2d_3_pointwise/weights"):
        tf_checkpoint.convert_backbone(variables, "mobilenet_v1")
    del variables["MobilenetV1/Conv2d_3_pointwise/weights"]
    with pytest.raises(
        tf_checkpoint.CheckpointMismatch, match="lacks variable 'MobilenetV1/Conv2d_3_pointwise/weights'"
    ):
        tf_checkpoint.convert_backbone(variables, "mobilenet_v1")
    with pytest.raises(tf_checkpoint.CheckpointMismatch, match="resnet_v1_152/conv1/weights"):
        tf_checkpoint.convert_backbone(variables, "resnet_v1_152")


def build_tf_cmpm_model(image_size, vocab_size, word_dim, hidden, embedding_dim, num_classes):
    """The release's graph at test time: CNN, Bi-LSTM text branch, both joint embeddings, CMPC's Wfc."""
    images = tf.placeholder(tf.float32, [None, image_size[0], image_size[1], 3])
    token_ids = tf.placeholder(tf.int32, [None, None])
    lengths = tf.placeholder(tf.int32, [None])
    labels = tf.placeholder(tf.int32, [None])
    image_features = tf.reduce_mean(tf_mobilenet_v1(images), [1, 2])  # slim's AvgPool_1a over the final map
    with tf.variable_scope("BiLSTM"):
        table = tf.get_variable(
            "token_embedding_weights", [vocab_size, word_dim], initializer=tf.glorot_uniform_initializer()
        )
        text_features = tf_bidirectional_lstm(tf.nn.embedding_lookup(table, token_ids), lengths, hidden)
    image_embeddings = tf_joint_embedding(image_features, embedding_dim, "image_joint_embedding", MOBILENET_EPS)
    text_embeddings = tf_joint_embedding(text_features, embedding_dim, "text_joint_embedding", MOBILENET_EPS)
    weight = tf.get_variable("Wfc", [embedding_dim, num_classes], initializer=tf.glorot_uniform_initializer())
    unit_images = tf.nn.l2_normalize(image_embeddings, axis=-1)
    unit_texts = tf.nn.l2_normalize(text_embeddings, axis=-1)
    similarity = tf.matmul(unit_texts, unit_images, transpose_b=True)
    # CMPC (modules.py cmpc_loss_compute): projections classified by the column-normalised W.
    unit_weight = tf.nn.l2_normalize(weight, axis=0)
    image_on_text = tf.reduce_sum(image_embeddings * unit_texts, 1, keepdims=True) * unit_texts
    text_on_image = tf.reduce_sum(text_embeddings * unit_images, 1, keepdims=True) * unit_images
    one_hot = tf.one_hot(labels, num_classes)
    cmpc = tf.losses.softmax_cross_entropy(
        one_hot, tf.matmul(image_on_text, unit_weight)
    ) + tf.losses.softmax_cross_entropy(one_hot, tf.matmul(text_on_image, unit_weight))
    inputs = {"images": images, "token_ids": token_ids, "lengths": lengths, "labels": labels}
    outputs = {
        "image_features": image_features,
        "text_features": text_features,
        "image_embeddings": image_embeddings,
        "text_embeddings": text_embeddings,
        "similarity": similarity,
        "cmpc": cmpc,
    }
    return inputs, outputs


def save_tf_cmpm_checkpoint(
    directory, image_size=(64, 64), vocab_size=11, word_dim=6, hidden=5, embedding_dim=7, num_classes=4, feeds=None
):
    """Build, randomise and save a release-style checkpoint; returns (prefix, TF outputs per feed)."""
    graph = tf.Graph()
    results = []
    with graph.as_default(), tf.Session() as session:
        tf.set_random_seed(0)
        inputs, outputs = build_tf_cmpm_model(image_size, vocab_size, word_dim, hidden, embedding_dim, num_classes)
        session.run(tf.global_variables_initializer())
        _randomise_lstm_biases(session)
        for feed in feeds or []:
            results.append(session.run(outputs, {inputs[name]: value for name, value in feed.items()}))
        prefix = _save(session, directory)
    return prefix, results


def test_cmpm_model_matches_tf(tmp_path):
    rng = np.random.default_rng(2)
    lengths = np.array([5, 3, 1, 4], np.int32)
    token_ids = rng.integers(0, 11, (4, 5)).astype(np.int32)
    images = _images(3, (64, 64), count=4)
    labels = np.array([0, 2, 1, 3], np.int32)
    # The release encodes test captions one at a time (batch 1): no padded step enters the max.
    single = [
        {
            "images": images[i : i + 1],
            "token_ids": token_ids[i : i + 1, : lengths[i]],
            "lengths": lengths[i : i + 1],
            "labels": labels[i : i + 1],
        }
        for i in range(4)
    ]
    equal_lengths = {"images": images, "token_ids": token_ids, "lengths": np.full(4, 5, np.int32), "labels": labels}
    prefix, results = save_tf_cmpm_checkpoint(tmp_path, feeds=single + [equal_lengths])
    out = tmp_path / "converted.pt"
    printed = io.StringIO()
    saved = convert_tf.convert(prefix, out, out=printed)
    report = printed.getvalue()
    assert saved["kind"] == "cmpm_model" and saved["settings"]["backbone"] == "mobilenet_v1_tf"
    assert "BiLSTM/bidirectional_lstm/bidirectional_rnn/fw/basic_lstm_cell/kernel" in report
    assert "left out  global_step" not in report and "Wfc [7, 4] -> cmpc_weight" in report

    model = tf_checkpoint.load_converted_model(out)
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        image_features = model.image_features(torch_images)
        text_features = model.text_features(torch.from_numpy(token_ids).long(), torch.from_numpy(lengths).long())
        image_embeddings = model.image_embedding(image_features)
        text_embeddings = model.text_embedding(text_features)
    expected_text_features = np.concatenate([r["text_features"] for r in results[:4]])
    expected_text_embeddings = np.concatenate([r["text_embeddings"] for r in results[:4]])
    full = results[4]
    checks = {
        "image features": (image_features, full["image_features"]),
        "image embeddings": (image_embeddings, full["image_embeddings"]),
        "text features": (text_features, expected_text_features),
        "text embeddings": (text_embeddings, expected_text_embeddings),
    }
    for name, (ours, theirs) in checks.items():
        difference = np.abs(ours.numpy() - theirs).max()
        assert difference <= TOLERANCE, f"{name}: max abs difference {difference}"

    # Full batch of equal lengths: similarity matrix and CMPC loss with the converted W.
    with torch.no_grad():
        full_texts = model.embed_texts(torch.from_numpy(token_ids).long(), torch.full((4,), 5))
        unit_images = torch.nn.functional.normalize(image_embeddings, dim=-1)
        similarity = torch.nn.functional.normalize(full_texts, dim=-1) @ unit_images.T
        cmpc = losses.cmpc_loss(image_embeddings, full_texts, torch.from_numpy(labels).long(), saved["cmpc_weight"])
    assert np.abs(similarity.numpy() - full["similarity"]).max() <= TOLERANCE
    assert abs(float(cmpc) - float(full["cmpc"])) <= TOLERANCE


def test_ema_shadows_are_taken_and_word_ids_remapped(tmp_path):
    prefix, _ = save_tf_cmpm_checkpoint(tmp_path)
    variables = tf_checkpoint.read_checkpoint(prefix)
    shadow_name = "joint_embedding/text_joint_embedding/BatchNorm/moving_mean"
    variables[shadow_name + tf_checkpoint.EMA_SUFFIX] = np.full(7, 0.25, np.float32)
    averaged = tf_checkpoint.convert_cmpm_model(variables, ema="auto")
    raw = tf_checkpoint.convert_cmpm_model(variables, ema="raw")
    assert torch.equal(averaged["model"]["text_embedding.batch_norm.running_mean"], torch.full((7,), 0.25))
    assert torch.equal(raw["model"]["text_embedding.batch_norm.running_mean"], torch.from_numpy(variables[shadow_name]))
    assert shadow_name + tf_checkpoint.EMA_SUFFIX in raw["conversion"].left_out()

    from cmp_utils.data.text import Vocabulary

    release_words = ["<START>", "a", "<END>", "woman", "red", "shirt", "bag", "man", "blue", "shoes"]  # 10 + unknown
    table = torch.from_numpy(variables["BiLSTM/token_embedding_weights"])
    vocabulary = Vocabulary(["woman", "a", "skirt"])
    remapped, coverage = tf_checkpoint.remap_word_embedding(table, release_words, vocabulary)
    assert torch.equal(remapped[vocabulary.start_id], table[0]) and torch.equal(remapped[vocabulary.end_id], table[2])
    assert torch.equal(remapped[vocabulary.id_of("woman")], table[3])
    assert torch.equal(remapped[vocabulary.id_of("skirt")], table[10])  # unknown to the release: its unknown row
    assert torch.equal(remapped[vocabulary.unknown_id], table[10]) and coverage["unknown"] == ["skirt"]


def test_cli_refuses_a_mismatch_and_guesses_the_kind(tmp_path, capsys):
    prefix, _ = save_tf_cmpm_checkpoint(tmp_path)
    assert convert_tf.main([prefix, str(tmp_path / "ok.pt")]) == 0
    assert "mapped    BiLSTM/token_embedding_weights [11, 6]" in capsys.readouterr().out
    # A CNN-only conversion of the same checkpoint leaves the text branch out, printed.
    assert (
        convert_tf.main(
            [
                prefix,
                str(tmp_path / "cnn.pt"),
                "--kind",
                "mobilenet_v1",
                "--ema",
                "auto",
                "--bn-statistics",
                "checkpoint",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "left out  BiLSTM/token_embedding_weights" in printed and "left out  Wfc" in printed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = models.build_backbone("mobilenet_v1_tf", tmp_path / "cnn.pt")
        whole = models.build_backbone("mobilenet_v1_tf", tmp_path / "ok.pt")  # a whole-model file gives its CNN
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, whole.state_dict()[key]), key
    assert convert_tf.main([str(tmp_path / "missing"), str(tmp_path / "x.pt")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_notebook_05_scores_a_converted_checkpoint(tmp_path, isolated_dirs):
    """A release-style checkpoint sized for the smoke data, converted and scored by notebook 05 without training."""
    import pandas as pd

    from cmp_utils.core import config
    from cmp_utils import data, experiments, training
    from cmp_utils.evaluation import evaluate
    from cmp_utils.tools.run_notebooks import run_notebooks

    results, _ = isolated_dirs
    settings = training.make_config("smoke", "cuhk_pedes")
    prepared = data.prepare_dataset(
        "cuhk_pedes", "smoke", cache_dir=settings.cache_dir, seed=settings.data_seed, image_size=settings.image_size
    )
    prefix, _ = save_tf_cmpm_checkpoint(
        tmp_path, vocab_size=len(prepared.vocabulary), word_dim=8, hidden=8, embedding_dim=16, num_classes=5
    )
    converted = tmp_path / "converted.pt"
    convert_tf.convert(prefix, converted, out=io.StringIO())
    model = tf_checkpoint.load_converted_model(converted, prepared.vocabulary)
    expected = pd.DataFrame(
        experiments.protocol_metrics(
            "cuhk_pedes", *evaluate.encode(model, prepared, prepared.test_split, "cpu", settings.eval_batch_size)
        )
    )

    runs_before = sorted((config.cache_dir() / "experiment_runs").glob("*"))
    notebook = config.project_root() / "notebooks" / "05_cuhk_pedes.ipynb"
    run_notebooks(
        [notebook],
        "smoke",
        parameters={"evaluate_checkpoint": str(converted), "methods": ["CMPM"]},
        output_dir=tmp_path / "executed",
    )
    scored = pd.read_csv(results / "cuhk_pedes" / "smoke" / "converted_checkpoint.csv")
    assert set(scored["metric"]) == {"R@1", "R@5", "R@10", "mAP", "mINP"}
    merged = scored.merge(expected, on=["table", "direction", "metric"], suffixes=("", "_expected"))
    assert len(merged) == len(expected) == 5
    assert np.allclose(merged["value"], merged["value_expected"], atol=1e-6)
    # nothing was trained: the experiment's table holds the converted model's rows only
    metrics = pd.read_csv(results / "cuhk_pedes" / "smoke" / "metrics.csv")
    assert set(metrics["method"]) == {experiments.CONVERTED_METHOD}
    assert sorted((config.cache_dir() / "experiment_runs").glob("*")) == runs_before
