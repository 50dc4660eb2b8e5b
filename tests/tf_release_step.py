"""A TensorFlow 1 (graph mode) transcription of the release's training step, CUHK-PEDES recipe. Test-only.

Written here from the authors' release (YingZhangDUT/Cross-Modal-Projection-Learning, commit 447d642):
``train_models.py`` (``_tower_loss``, the train op), ``modules.py`` (``build_text_features``,
``bidirectional_lstm`` with its variable initial states, ``build_joint_embeddings``,
``cmpm_loss_compute``, ``cmpc_loss_compute``), ``nets/mobilenet_v1.py`` (the network and its
arg_scope) and ``configuration.py`` (Adam). What the graph holds, with the release's names:

* ``MobilenetV1/Conv2d_*``: MobileNet v1, "SAME" padding, ReLU6, kernels drawn from a truncated
  normal of stddev 0.09, batch norm in training mode (epsilon 1e-3, decay 0.9997, scale and
  centre), L2 regulariser 4e-5 on every kernel but the depthwise ones; global average pooling;
* ``BiLSTM/token_embedding_weights`` (Xavier), ``BiLSTM/bidirectional_lstm/{forward,backward}/
  init_state_{0,1}`` (shape (units,), TF's default Glorot initialiser), ``BasicLSTMCell``
  (forget bias 1.0) in ``bidirectional_dynamic_rnn``, max over every time step (padded ones too);
* ``joint_embedding/{image,text}_joint_embedding``: 1x1 convolution without bias under the
  MobileNet arg_scope (truncated normal 0.09, L2 4e-5) and its batch norm;
* CMPM (the release's label mask from squared label distances, KL with its 1e-8 guards) + CMPC
  (``Wfc`` Xavier, column-normalised, ``tf.losses.softmax_cross_entropy`` on vector projections);
* total loss = CMPM + CMPC + the regularisation losses; ``tf.train.AdamOptimizer(lr, 0.9, 0.999,
  epsilon=1e-8)`` (TF's "epsilon hat" form) over every trainable variable; batch-norm update ops;
  ``tf.train.ExponentialMovingAverage(0.9999, num_updates=global_step)`` over the model variables
  (the CNN and the joint embeddings with their batch-norm statistics).

Two choices of this transcription, both where the release leaves something open:

* the release groups the batch-norm updates, the EMA update and Adam's update in one ``tf.group``
  with no order between them, so whether the EMA reads the weights (and the step count) before or
  after the update is up to TF's scheduler. Here the EMA runs after both, as ours does
  (:func:`cmp_utils.training.train_step`);
* TF-slim's ``batch_norm`` does not import on TF 2.21, so batch norm is written out as slim's
  fused kernel (TF 1.4's default for these 4-D maps) computes it (``_batch_norm``), with slim's
  variable names; written out, it also runs in float64. Dropout is left out (keep probability 1: the test compares
  with ours at dropout 0).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torchvision  # noqa: E402,F401  (imported after TensorFlow it segfaults: TF 2.21, torchvision 0.29)
import tensorflow as _tf_module  # noqa: E402

from cmp_utils import models  # noqa: E402

tf = _tf_module.compat.v1

MOBILENET_STDDEV = 0.09  # mobilenet_v1_arg_scope(stddev=0.09)
MOBILENET_BN = {"epsilon": 1e-3, "decay": 0.9997}
WEIGHT_DECAY = 4e-5
ADAM = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}  # scripts/train_pedes_*.sh: --opt_epsilon=1e-8
EMA_DECAY = 0.9999


def _batch_norm(inputs):
    """slim.batch_norm(is_training=True) of the MobileNet arg_scope, as its fused kernel computes it:
    the output normalised by the batch mean and (biased) variance, the moving statistics updated
    (``assign_moving_average``, decay 0.9997, into ``UPDATE_OPS``) with the batch mean and the
    Bessel-corrected variance n / (n - 1), n = batch x height x width."""
    channels = int(inputs.shape[-1])
    dtype = inputs.dtype
    with tf.variable_scope("BatchNorm"):
        gamma = tf.get_variable("gamma", [channels], dtype, tf.ones_initializer())
        beta = tf.get_variable("beta", [channels], dtype, tf.zeros_initializer())
        moving_mean = tf.get_variable("moving_mean", [channels], dtype, tf.zeros_initializer(), trainable=False)
        moving_variance = tf.get_variable("moving_variance", [channels], dtype, tf.ones_initializer(), trainable=False)
        mean, variance = tf.nn.moments(inputs, [0, 1, 2])
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), dtype)
        decay = MOBILENET_BN["decay"]
        for moving, batch_value in ((moving_mean, mean), (moving_variance, variance * count / (count - 1.0))):
            tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, moving.assign_sub((moving - batch_value) * (1.0 - decay)))
    return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, MOBILENET_BN["epsilon"])


def _conv_bn(inputs, depth, kernel, stride, scope, activation=tf.nn.relu6, depthwise=False):
    """slim.conv2d / separable_conv2d (no bias, batch norm) under ``mobilenet_v1_arg_scope``."""
    channels = int(inputs.shape[-1])
    initializer = tf.truncated_normal_initializer(stddev=MOBILENET_STDDEV)
    with tf.variable_scope(scope):
        if depthwise:  # regularize_depthwise=False: no L2 on depthwise kernels
            weights = tf.get_variable("depthwise_weights", [kernel, kernel, channels, 1], inputs.dtype, initializer)
            net = tf.nn.depthwise_conv2d(inputs, weights, [1, stride, stride, 1], "SAME")
        else:
            weights = tf.get_variable("weights", [kernel, kernel, channels, depth], inputs.dtype, initializer)
            tf.add_to_collection(tf.GraphKeys.REGULARIZATION_LOSSES, WEIGHT_DECAY * tf.nn.l2_loss(weights))
            net = tf.nn.conv2d(inputs, weights, [1, stride, stride, 1], "SAME")
        net = _batch_norm(net)
    return activation(net) if activation is not None else net


def mobilenet_v1_features(images):
    """images (B, H, W, 3) in [-1, 1] -> the average-pooled final map (B, 1, 1, 1024)."""
    with tf.variable_scope("MobilenetV1"):
        net = _conv_bn(images, 32, 3, 2, "Conv2d_0")
        for index, (depth, stride) in enumerate(models.MOBILENET_V1_BLOCKS, start=1):
            net = _conv_bn(net, None, 3, stride, f"Conv2d_{index}_depthwise", depthwise=True)
            net = _conv_bn(net, depth, 1, 1, f"Conv2d_{index}_pointwise")
    return tf.reduce_mean(net, [1, 2], keepdims=True)


def text_features(token_ids, lengths, vocab_size, word_dim, units, dtype):
    """``build_text_features`` + ``bidirectional_lstm``: (B, T) ids -> (B, 1, 1, 2·units)."""
    batch = tf.shape(token_ids)[0]
    with tf.variable_scope("BiLSTM"):
        table = tf.get_variable(
            "token_embedding_weights", [vocab_size, word_dim], dtype, tf.glorot_uniform_initializer()
        )
        words = tf.nn.embedding_lookup(table, token_ids)  # (B, T, word_dim)
        with tf.variable_scope("bidirectional_lstm"):
            cells, initial = {}, {}
            for direction in ("forward", "backward"):
                with tf.variable_scope(direction):
                    cells[direction] = tf.nn.rnn_cell.BasicLSTMCell(units, state_is_tuple=True)
                    # make_variable_state_initializer: tf.get_variable without an initialiser (Glorot), tiled
                    states = [
                        tf.tile(tf.get_variable(f"init_state_{index}", [units], dtype)[None], [batch, 1])
                        for index in range(2)
                    ]
                    initial[direction] = tf.nn.rnn_cell.LSTMStateTuple(*states)  # (c, h)
            (forward, backward), _ = tf.nn.bidirectional_dynamic_rnn(
                cells["forward"],
                cells["backward"],
                words,
                sequence_length=lengths,
                initial_state_fw=initial["forward"],
                initial_state_bw=initial["backward"],
                dtype=dtype,
            )
            states = tf.reduce_max(tf.concat([forward, backward], axis=2), axis=1)  # (B, 2·units)
    return states[:, None, None, :]


def joint_embedding(features, dim, scope):
    """``build_joint_embeddings``: 1x1 conv (no bias, arg_scope init and L2) + batch norm -> (B, dim)."""
    with tf.variable_scope("joint_embedding"):
        net = _conv_bn(features, dim, 1, 1, scope, activation=None)
    return tf.squeeze(net, [1, 2])


def cmpm_losses(text_embeddings, image_embeddings, labels):
    """``cmpm_loss_compute``: (i2t, t2i)."""
    as_column = tf.cast(labels[:, None], tf.float32)  # the release's float32 label distances
    squared = (
        tf.reduce_sum(as_column * as_column, 1, keepdims=True)
        - 2 * tf.matmul(as_column, as_column, transpose_b=True)
        + tf.transpose(tf.reduce_sum(as_column * as_column, 1, keepdims=True))
    )
    mask = tf.cast(tf.less(squared, 0.5), image_embeddings.dtype)
    unit_images = tf.nn.l2_normalize(image_embeddings, axis=-1)
    unit_texts = tf.nn.l2_normalize(text_embeddings, axis=-1)
    image_on_texts = tf.nn.softmax(tf.matmul(image_embeddings, unit_texts, transpose_b=True))
    text_on_images = tf.nn.softmax(tf.matmul(text_embeddings, unit_images, transpose_b=True))
    target = mask / tf.reduce_sum(mask, axis=1, keepdims=True)

    def divergence(prediction):
        return tf.reduce_mean(tf.reduce_sum(prediction * tf.log(1e-8 + prediction / (target + 1e-8)), 1))

    return divergence(image_on_texts), divergence(text_on_images)


def cmpc_losses(text_embeddings, image_embeddings, labels, num_classes):
    """``cmpc_loss_compute``: (ipt, tpi)."""
    dim = int(image_embeddings.shape[-1])
    weight = tf.get_variable("Wfc", [dim, num_classes], image_embeddings.dtype, tf.glorot_uniform_initializer())
    unit_weight = tf.nn.l2_normalize(weight, axis=0)
    unit_images = tf.nn.l2_normalize(image_embeddings, axis=-1)
    unit_texts = tf.nn.l2_normalize(text_embeddings, axis=-1)
    image_on_text = tf.reduce_sum(image_embeddings * unit_texts, 1, keepdims=True) * unit_texts
    text_on_image = tf.reduce_sum(text_embeddings * unit_images, 1, keepdims=True) * unit_images
    one_hot = tf.one_hot(labels, num_classes, dtype=image_embeddings.dtype)
    return (
        tf.losses.softmax_cross_entropy(one_hot, tf.matmul(image_on_text, unit_weight)),
        tf.losses.softmax_cross_entropy(one_hot, tf.matmul(text_on_image, unit_weight)),
    )


def build_training_step(
    image_size, vocab_size, word_dim, units, embedding_dim, num_classes, learning_rate, dtype=tf.float32
):
    """The whole step in ``dtype`` (the release's float32, or float64 for a reference free of rounding).

    Returns (inputs, fetches {"cmpm", "cmpc", "train", "image_embeddings", "text_embeddings"},
    {"ema": the EMA, "averaged": its variables})."""
    inputs = {
        "images": tf.placeholder(dtype, [None, image_size[0], image_size[1], 3]),
        "token_ids": tf.placeholder(tf.int32, [None, None]),
        "lengths": tf.placeholder(tf.int32, [None]),
        "labels": tf.placeholder(tf.int32, [None]),
    }
    image_features = mobilenet_v1_features(inputs["images"])
    texts = text_features(inputs["token_ids"], inputs["lengths"], vocab_size, word_dim, units, dtype)
    image_embeddings = joint_embedding(image_features, embedding_dim, "image_joint_embedding")
    text_embeddings = joint_embedding(texts, embedding_dim, "text_joint_embedding")
    i2t, t2i = cmpm_losses(text_embeddings, image_embeddings, inputs["labels"])
    ipt, tpi = cmpc_losses(text_embeddings, image_embeddings, inputs["labels"], num_classes)
    cmpm, cmpc = i2t + t2i, ipt + tpi
    total = tf.add_n([cmpm + cmpc] + tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES))
    # slim.get_model_variables(): the CNN's and the joint embeddings' variables, batch-norm statistics included
    averaged = [v for v in tf.global_variables() if v.name.startswith(("MobilenetV1/", "joint_embedding/"))]
    global_step = tf.train.get_or_create_global_step()
    optimizer = tf.train.AdamOptimizer(learning_rate, **ADAM)
    gradients = optimizer.compute_gradients(total, var_list=tf.trainable_variables())
    batch_norm_updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    apply = optimizer.apply_gradients(gradients, global_step=global_step)
    ema = tf.train.ExponentialMovingAverage(EMA_DECAY, num_updates=global_step)
    with tf.control_dependencies([apply, *batch_norm_updates]):  # the order ours has (module docstring)
        ema_update = ema.apply(averaged)
    fetches = {
        "cmpm": cmpm,
        "cmpc": cmpc,
        "train": ema_update,
        "image_embeddings": image_embeddings,
        "text_embeddings": text_embeddings,
    }
    return inputs, fetches, {"ema": ema, "averaged": averaged}


def variable_values(session) -> dict[str, np.ndarray]:
    """Every global variable's value by its checkpoint name (what ``convert_tf.read_checkpoint`` returns)."""
    variables = tf.global_variables()
    values = session.run(variables)
    return {variable.name.split(":")[0]: value for variable, value in zip(variables, values)}
