"""The derivation notebooks' toys (cmp_utils.toy): data shapes, determinism, the training loops learn,
and every measure against a naive computation on a small example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from cmp_utils import losses
from cmp_utils.core import config
from cmp_utils.experiments import toy


def naive_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle in degrees between two vectors, by the dot product of plain Python floats."""
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    cosine = dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def naive_recall_at_1(queries: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor) -> float:
    hits = 0
    for i, query in enumerate(queries):
        angles = [naive_angle(query, item) for item in gallery]
        hits += int(labels[angles.index(min(angles))] == labels[i])
    return hits / len(queries)


# --------------------------------------------------------------------------------------------- notebook 02


def test_toy_start_is_seeded_and_shaped():
    images, texts, labels = toy.toy_start(3)
    assert images.shape == texts.shape == (toy.TOY_POINTS, 2) and images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    again = toy.toy_start(3)
    assert torch.equal(images, again[0]) and torch.equal(texts, again[1])
    assert not torch.equal(images, toy.toy_start(4)[0])


def test_train_toy_lowers_the_loss_and_leaves_the_start_alone():
    images, texts, labels = toy.toy_start(0)
    start = images.clone()
    threads = torch.get_num_threads()
    trained_images, trained_texts, history = toy.train_toy(
        lambda x, z, y: losses.cmpm_loss(x, z, y), images, texts, labels, steps=60
    )
    assert torch.get_num_threads() == threads  # its one thread is given back
    assert torch.equal(images, start)
    assert len(history) == 60 and history[-1] < 0.5 * history[0]
    assert losses.cmpm_loss(trained_images, trained_texts, labels).item() < history[0]
    # determinism: the same start, the same loss curve
    assert toy.train_toy(lambda x, z, y: losses.cmpm_loss(x, z, y), images, texts, labels, steps=60)[2] == history


def test_recall_and_retrieval_summary_against_a_naive_loop():
    generator = torch.Generator().manual_seed(5)
    images, texts = torch.randn(9, 3, generator=generator), torch.randn(9, 3, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert toy.recall_at_1(images, texts, labels) == pytest.approx(naive_recall_at_1(images, texts, labels))
    summary = toy.retrieval_summary(images, texts, labels)
    assert list(summary) == ["recall_at_1_i2t", "recall_at_1_t2i", "mean_image_norm"]
    assert summary["recall_at_1_t2i"] == pytest.approx(naive_recall_at_1(texts, images, labels))
    assert summary["mean_image_norm"] == pytest.approx(sum(math.hypot(*row) for row in images.tolist()) / 9)
    assert toy.recall_at_1(images, images, labels) == 1.0  # every query finds itself


def test_aligned_batch_shapes_labels_and_seed():
    images, texts, labels = toy.aligned_batch(8, torch.Generator().manual_seed(0))
    assert images.shape == texts.shape == (8, 16) and images.dtype == torch.float64
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    again = toy.aligned_batch(8, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((images, texts, labels), again))
    # partly aligned: a pair is closer than two random inputs of different identities, on average
    assert (F.cosine_similarity(images, texts).mean() > F.cosine_similarity(images, texts.roll(2, 0)).mean()).item()


def test_active_negative_fraction_against_a_naive_loop():
    images, texts, labels = toy.aligned_batch(12, torch.Generator().manual_seed(1), dim=4)
    for margin in (0.0, 0.2, 1.0, 3.0):
        inside = total = 0
        for i in range(12):
            positive = math.cos(math.radians(naive_angle(images[i], texts[i])))
            for j in range(12):
                if labels[j] != labels[i]:
                    total += 1
                    inside += margin - positive + math.cos(math.radians(naive_angle(images[i], texts[j]))) > 0
        assert toy.active_negative_fraction(images, texts, labels, margin) == pytest.approx(inside / total)
    assert toy.active_negative_fraction(images, texts, labels, 3.0) == 1.0  # cosines differ by at most 2


def test_ranking_comparison_rows_and_generator_order():
    margins = np.linspace(0.0, 1.0, 3)
    rows = toy.ranking_comparison(
        torch.Generator().manual_seed(0), trials=2, batch_sizes=[4, 8], margins=margins, margin_batch_size=8
    )
    assert [(r["trial"], r["batch_size"], float(r["margin"])) for r in rows] == [
        (0, 4, 0.2),
        (0, 8, 0.0),
        (0, 8, 0.5),
        (0, 8, 1.0),
        (1, 4, 0.2),
        (1, 8, 0.0),
        (1, 8, 0.5),
        (1, 8, 1.0),
    ]
    # the batches are drawn trial by trial, batch size by batch size, from the one generator
    generator = torch.Generator().manual_seed(0)
    batches = [toy.aligned_batch(size, generator) for _ in range(2) for size in (4, 8)]
    images, texts, labels = batches[3]  # trial 1, batch size 8
    row = rows[6]
    assert row["cmpm"] == losses.cmpm_loss(images, texts, labels).item()
    assert row["ranking"] == losses.ranking_loss(images, texts, labels, margin=0.5).item()
    assert row["ranking_hard"] == losses.ranking_loss(images, texts, labels, margin=0.5, hardest=True).item()
    assert row["active_fraction"] == toy.active_negative_fraction(images, texts, labels, 0.5)
    # a wider margin keeps more negatives inside it
    assert rows[1]["active_fraction"] <= rows[2]["active_fraction"] <= rows[3]["active_fraction"]


# --------------------------------------------------------------------------------------------- notebook 03


def test_points_on_a_circle():
    assert_close(toy.on_circle(90), torch.tensor([[0.0, 3.0]], dtype=torch.float64))
    assert_close(toy.on_circle(180, radius=2.0), torch.tensor([[-2.0, 0.0]], dtype=torch.float64))
    angles = torch.tensor([[0.0, math.pi / 2], [math.pi, -math.pi / 2]], dtype=torch.float64)
    points = toy.circle_points(angles)
    assert points.shape == (4, 2)
    assert_close(points, torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]], dtype=torch.float64))


def test_projection_loss_landscape_against_the_losses_pair_by_pair():
    weight = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    angles = torch.linspace(-math.pi, math.pi, 7, dtype=torch.float64)
    images, texts, per_pair = toy.projection_loss_landscape(weight, angles)
    assert images.shape == texts.shape == (49, 2)
    assert set(per_pair) == {"norm-softmax (raw features)", "CMPC (cross-modal projections)"}
    label = torch.tensor([0])
    for index in (0, 9, 23, 48):
        # "xy" indexing: the image angle runs along each row of the grid, the text angle down the rows
        image_angle, text_angle = angles[index % 7], angles[index // 7]
        x = 3 * torch.stack([image_angle.cos(), image_angle.sin()])[None]
        z = 3 * torch.stack([text_angle.cos(), text_angle.sin()])[None]
        assert_close(images[index : index + 1], x)
        assert_close(per_pair["norm-softmax (raw features)"][index], losses.norm_softmax_loss(x, z, label, weight))
        assert_close(per_pair["CMPC (cross-modal projections)"][index], losses.cmpc_loss(x, z, label, weight))
    # the columns of W are used with unit length, as both losses do
    scaled = toy.projection_loss_landscape(weight * torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=torch.float64), angles)[2]
    for name, values in per_pair.items():
        assert_close(scaled[name], values)


def test_prototype_data_shapes_and_seed():
    (train, test) = toy.prototype_data(
        torch.Generator().manual_seed(0), num_classes=3, input_dim=5, train_per_class=4, test_per_class=2
    )
    assert train[0].shape == train[1].shape == (12, 5) and test[0].shape == (6, 5)
    assert train[0].dtype == torch.float32
    assert train[2].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and test[2].tolist() == [0, 0, 1, 1, 2, 2]
    again = toy.prototype_data(
        torch.Generator().manual_seed(0), num_classes=3, input_dim=5, train_per_class=4, test_per_class=2
    )
    assert all(torch.equal(a, b) for a, b in zip(train + test, again[0] + again[1]))
    # without noise every input is its class prototype, the image's and the text's independent
    clean_train, _ = toy.prototype_data(
        torch.Generator().manual_seed(0), num_classes=3, input_dim=5, train_per_class=4, test_per_class=2, noise=0.0
    )
    assert torch.equal(clean_train[0][0], clean_train[0][3]) and not torch.equal(clean_train[0][0], clean_train[1][0])


def test_angle_degrees():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [1.0, 0.0], [-1.0, 0.0]])
    assert_close(toy.angle_degrees(a, b), torch.tensor([90.0, 45.0, 180.0]))
    assert toy.angle_degrees(a[:, None], a[None]).shape == (3, 3)  # broadcasts


def naive_compactness(images: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """:func:`toy.compactness` by plain Python loops over lists of floats."""

    def unit(v):
        norm = math.sqrt(sum(c * c for c in v))
        return [c / norm for c in v]

    def mean_direction(vectors):
        return [sum(c) / len(vectors) for c in zip(*vectors)]

    def angle(a, b):
        return naive_angle(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))

    spreads = {"image": [], "text": [], "joint": []}
    centres = []
    for k in sorted(set(labels.tolist())):
        x = [unit(v) for v, y in zip(images.tolist(), labels.tolist()) if y == k]
        z = [unit(v) for v, y in zip(texts.tolist(), labels.tolist()) if y == k]
        for name, group in (("image", x), ("text", z), ("joint", x + z)):
            centre = mean_direction(group)
            spreads[name].append(sum(angle(v, centre) for v in group) / len(group))
        centres.append(unit(mean_direction(x + z)))
    inter = [angle(a, b) for i, a in enumerate(centres) for j, b in enumerate(centres) if i != j]
    joint = sum(spreads["joint"]) / len(spreads["joint"])
    return dict(
        spread_image_deg=sum(spreads["image"]) / len(spreads["image"]),
        spread_text_deg=sum(spreads["text"]) / len(spreads["text"]),
        spread_joint_deg=joint,
        pair_angle_deg=sum(angle(a, b) for a, b in zip(images.tolist(), texts.tolist())) / len(images),
        inter_class_deg=sum(inter) / len(inter),
        spread_to_inter=joint / (sum(inter) / len(inter)),
        t2i_recall_at_1=naive_recall_at_1(texts, images, labels),
    )


def test_compactness_against_a_naive_loop():
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    images, texts = torch.randn(10, 3, generator=generator), torch.randn(10, 3, generator=generator)
    measured, naive = toy.compactness(images, texts, labels), naive_compactness(images, texts, labels)
    assert list(measured) == list(naive)
    for name, value in naive.items():
        assert measured[name] == pytest.approx(value, rel=1e-4, abs=1e-3), name


def test_compactness_on_hand_cases():
    two = torch.tensor(
        [
            [math.cos(math.radians(30)), math.sin(math.radians(30))],
            [math.cos(math.radians(30)), -math.sin(math.radians(30))],
        ]
    )
    measured = toy.compactness(two, two, torch.tensor([0, 0]))
    assert measured["spread_image_deg"] == pytest.approx(30.0, abs=1e-3)
    assert measured["pair_angle_deg"] == pytest.approx(0.0, abs=1e-2)
    # two classes, each collapsed onto one direction, 90 degrees apart: no spread, inter-class angle 90
    points = torch.tensor([[2.0, 0.0], [5.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    measured = toy.compactness(points, points, torch.tensor([0, 0, 1, 1]))
    assert measured["spread_joint_deg"] == pytest.approx(0.0, abs=1e-2)
    assert measured["inter_class_deg"] == pytest.approx(90.0, abs=1e-3)
    assert measured["t2i_recall_at_1"] == 1.0


def test_train_encoders_learns_and_is_deterministic(one_torch_thread):
    train, test = toy.prototype_data(torch.Generator().manual_seed(0), train_per_class=10, test_per_class=10)
    untrained = toy.train_encoders("CMPM + CMPC", train, 2, 0, run_seed=0)
    image_encoder, text_encoder = toy.train_encoders("CMPM + CMPC", train, 2, 150, run_seed=0)
    again = toy.train_encoders("CMPM + CMPC", train, 2, 150, run_seed=0)
    with torch.no_grad():
        before = toy.compactness(untrained[0](test[0]), untrained[1](test[1]), test[2])
        after = toy.compactness(image_encoder(test[0]), text_encoder(test[1]), test[2])
        assert torch.equal(image_encoder(test[0]), again[0](test[0]))
    assert after["t2i_recall_at_1"] > before["t2i_recall_at_1"] and after["t2i_recall_at_1"] > 0.5
    assert after["spread_joint_deg"] < before["spread_joint_deg"]
    with pytest.raises(ValueError, match="method must be one of"):
        toy.train_encoders("cmpc", train, 2, 1, run_seed=0)


@pytest.mark.parametrize("method", toy.COMPACTNESS_METHODS)
def test_train_encoders_starts_every_method_from_the_same_weights(method, one_torch_thread):
    train, _ = toy.prototype_data(torch.Generator().manual_seed(0), train_per_class=4, test_per_class=1)
    reference = toy.train_encoders("norm-softmax", train, 2, 0, run_seed=7)[0]
    encoder = toy.train_encoders(method, train, 2, 0, run_seed=7)[0]
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), encoder.parameters()))


def test_compactness_runs_rows_kept_embeddings_and_threads():
    threads = torch.get_num_threads()
    rows, kept = toy.compactness_runs([0, 1], [2, 3], steps=3, methods=("norm-softmax", "CMPC"))
    assert torch.get_num_threads() == threads
    assert [(r["seed"], r["dim"], r["method"]) for r in rows] == [
        (seed, dim, method) for seed in (0, 1) for dim in (2, 3) for method in ("norm-softmax", "CMPC")
    ]
    assert all(r["steps"] == 3 and 0 <= r["t2i_recall_at_1"] <= 1 for r in rows)
    assert list(kept) == ["norm-softmax", "CMPC"] and kept["CMPC"][0].shape == (120, 2)
    # a row is the compactness of one train_encoders run, on its seed's held-out pairs
    train, test = toy.prototype_data(torch.Generator().manual_seed(1))
    with config.torch_threads(1):
        image_encoder, text_encoder = toy.train_encoders("CMPC", train, 3, 3, run_seed=1)
        with torch.no_grad():
            assert rows[-1] == {
                "method": "CMPC",
                "dim": 3,
                "seed": 1,
                "steps": 3,
                **toy.compactness(image_encoder(test[0]), text_encoder(test[1]), test[2]),
            }
