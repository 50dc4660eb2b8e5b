"""Tests of cmp_utils.losses: each loss against a naive float64 loop transcription of its formula,
hand-worked 2-D cases, gradcheck, extreme inputs, permutation invariance, the CMCE buffers and the
CrossModalLoss contract. pytorch-metric-learning (a test extra) checks two baselines independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmp_utils import losses
from cmp_utils.losses import (
    LOSS_NAMES,
    CMCELoss,
    CMPCClassifier,
    CrossModalLoss,
    cmpc_loss,
    cmpm_loss,
    norm_softmax_loss,
    ranking_loss,
    softmax_loss,
)

EPS = 1e-8


def random_batch(seed: int, n: int = 10, d: int = 5, num_classes: int = 4, dtype=torch.float64):
    """A batch with repeated labels: every label below appears 2-3 times (several positives a row)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=generator, dtype=dtype) * 2
    texts = torch.randn(n, d, generator=generator, dtype=dtype) * 2
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=generator)]
    weight = torch.randn(d, num_classes, generator=generator, dtype=dtype)
    return images, texts, labels, weight


# ------------------------------------------------------------------------------------------
# naive float64 transcriptions (one scalar at a time)
# ------------------------------------------------------------------------------------------


def dot(a, b):
    return sum(float(u) * float(v) for u, v in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def unit(a):
    length = norm(a)
    return [float(u) / length for u in a]


def naive_cmpm_direction(queries, gallery, labels, target):
    n = len(queries)
    total = 0.0
    for i in range(n):
        logits = [dot(queries[i], unit(gallery[j])) for j in range(n)]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        p = [e / sum(exps) for e in exps]
        matches = [1.0 if labels[i] == labels[j] else 0.0 for j in range(n)]
        scale = sum(matches) if target == "l1" else math.sqrt(sum(m * m for m in matches))
        q = [m / scale for m in matches]
        total += sum(p[j] * math.log(EPS + p[j] / (q[j] + EPS)) for j in range(n))
    return total / n


def naive_cross_entropy(logits, label):
    top = max(logits)
    return -(logits[label] - top - math.log(sum(math.exp(v - top) for v in logits)))


def naive_cmpc(images, texts, labels, weight):
    columns = [unit([weight[r][k] for r in range(len(weight))]) for k in range(len(weight[0]))]
    n, total = len(images), 0.0
    for i in range(n):
        for a, b in ((images[i], texts[i]), (texts[i], images[i])):
            direction = unit(b)
            projected = [dot(a, direction) * u for u in direction]  # (a . b_bar) b_bar
            total += naive_cross_entropy([dot(projected, c) for c in columns], int(labels[i])) / n
    return total


def naive_classification(images, texts, labels, weight, bias=None, normalise_columns=False):
    columns = [[weight[r][k] for r in range(len(weight))] for k in range(len(weight[0]))]
    if normalise_columns:
        columns = [unit(c) for c in columns]
    n, total = len(images), 0.0
    for i in range(n):
        for feature in (images[i], texts[i]):
            logits = [dot(feature, c) + (float(bias[k]) if bias is not None else 0.0) for k, c in enumerate(columns)]
            total += naive_cross_entropy(logits, int(labels[i])) / n
    return total


def naive_ranking(images, texts, labels, margin, hardest):
    n = len(images)
    s = [[dot(unit(images[i]), unit(texts[j])) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        i2t = [max(0.0, margin - s[i][i] + s[i][j]) for j in range(n) if labels[j] != labels[i]]
        t2i = [max(0.0, margin - s[i][i] + s[j][i]) for j in range(n) if labels[j] != labels[i]]
        if hardest:
            total += (max(i2t) if i2t else 0.0) + (max(t2i) if t2i else 0.0)
        else:
            total += sum(i2t) + sum(t2i)
    return total / n


def naive_cmce(images, texts, labels, image_buffer, text_buffer, temperature):
    n, total = len(images), 0.0
    for i in range(n):
        image_logits = [dot(unit(images[i]), row) / temperature for row in text_buffer]
        text_logits = [dot(unit(texts[i]), row) / temperature for row in image_buffer]
        total += (
            naive_cross_entropy(image_logits, int(labels[i])) + naive_cross_entropy(text_logits, int(labels[i]))
        ) / n
    return total


def as_lists(t):
    return t.tolist()


# ------------------------------------------------------------------------------------------
# against the naive transcriptions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", ["l1", "l2"])
def test_cmpm_matches_naive_loops(seed, target):
    images, texts, labels, _ = random_batch(seed)
    i2t, t2i = cmpm_loss(images, texts, labels, target=target, return_directions=True)
    x, z, y = as_lists(images), as_lists(texts), labels.tolist()
    assert i2t.item() == pytest.approx(naive_cmpm_direction(x, z, y, target), rel=1e-10)
    assert t2i.item() == pytest.approx(naive_cmpm_direction(z, x, y, target), rel=1e-10)
    assert cmpm_loss(images, texts, labels, target=target).item() == pytest.approx((i2t + t2i).item(), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_cmpc_matches_naive_loops(seed):
    images, texts, labels, weight = random_batch(seed)
    expected = naive_cmpc(as_lists(images), as_lists(texts), labels.tolist(), as_lists(weight))
    assert cmpc_loss(images, texts, labels, weight).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_and_norm_softmax_match_naive_loops(seed):
    images, texts, labels, weight = random_batch(seed)
    bias = torch.linspace(-1, 1, weight.shape[1], dtype=torch.float64)
    x, z, y, w = as_lists(images), as_lists(texts), labels.tolist(), as_lists(weight)
    assert softmax_loss(images, texts, labels, weight).item() == pytest.approx(
        naive_classification(x, z, y, w), rel=1e-10
    )
    assert softmax_loss(images, texts, labels, weight, bias).item() == pytest.approx(
        naive_classification(x, z, y, w, bias=bias), rel=1e-10
    )
    assert norm_softmax_loss(images, texts, labels, weight).item() == pytest.approx(
        naive_classification(x, z, y, w, normalise_columns=True), rel=1e-10
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hardest", [False, True])
def test_ranking_matches_naive_loops(seed, hardest):
    images, texts, labels, _ = random_batch(seed)
    expected = naive_ranking(as_lists(images), as_lists(texts), labels.tolist(), 0.3, hardest)
    assert ranking_loss(images, texts, labels, margin=0.3, hardest=hardest).item() == pytest.approx(expected, rel=1e-10)


def test_cmce_matches_naive_loops():
    images, texts, labels, _ = random_batch(3)
    cmce = CMCELoss(5, 4, temperature=0.1).double().eval()
    generator = torch.Generator().manual_seed(7)
    cmce.image_buffer.copy_(F.normalize(torch.randn(4, 5, generator=generator, dtype=torch.float64), dim=1))
    cmce.text_buffer.copy_(F.normalize(torch.randn(4, 5, generator=generator, dtype=torch.float64), dim=1))
    expected = naive_cmce(
        as_lists(images), as_lists(texts), labels.tolist(), as_lists(cmce.image_buffer), as_lists(cmce.text_buffer), 0.1
    )
    assert cmce(images, texts, labels).item() == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------------
# 2-D cases worked by hand
# ------------------------------------------------------------------------------------------


def test_cmpm_two_pairs_by_hand():
    # x1=(1,0), x2=(0,1); z1=(2,0), z2=(0,2); labels differ, so q = identity.
    # i2t logits x_i . z_bar_j = [[1,0],[0,1]]  -> p_i = (e/(e+1), 1/(e+1)) up to order.
    # t2i logits z_i . x_bar_j = [[2,0],[0,2]]  -> p_i = (e^2/(e^2+1), 1/(e^2+1)).
    # per row: a*log(eps + a/(1+eps)) + b*log(eps + b/eps), both rows equal, so the mean is one row.
    def row(a, b):
        return a * math.log(EPS + a / (1 + EPS)) + b * math.log(EPS + b / EPS)

    i2t_expected = row(math.e / (math.e + 1), 1 / (math.e + 1))  # 0.7311*(-0.3133) + 0.2689*17.107 = 4.3710
    t2i_expected = row(math.e**2 / (math.e**2 + 1), 1 / (math.e**2 + 1))  # 0.8808*(-0.1269) + 0.1192*16.294 = 1.8301
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    texts = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    i2t, t2i = cmpm_loss(images, texts, torch.tensor([0, 1]), return_directions=True)
    assert i2t.item() == pytest.approx(i2t_expected, rel=1e-12)
    assert t2i.item() == pytest.approx(t2i_expected, rel=1e-12)
    assert i2t.item() == pytest.approx(4.3710, abs=1e-3) and t2i.item() == pytest.approx(1.8301, abs=1e-3)


def test_cmpm_shared_label_by_hand():
    # Same vectors but both pairs share a label: q = [[1/2,1/2],[1/2,1/2]] (L1) or 1/sqrt(2) (L2).
    # i2t row: a*log(eps + a/(0.5+eps)) + b*log(eps + b/(0.5+eps)), a=e/(e+1), b=1/(e+1)
    a, b = math.e / (math.e + 1), 1 / (math.e + 1)
    l1 = a * math.log(EPS + a / (0.5 + EPS)) + b * math.log(
        EPS + b / (0.5 + EPS)
    )  # = KL(p||uniform) = log2 - H(p) = 0.6931 - 0.5822 = 0.1109
    r = 1 / math.sqrt(2)
    l2 = a * math.log(EPS + a / (r + EPS)) + b * math.log(
        EPS + b / (r + EPS)
    )  # = l1 - log(sqrt 2) = 0.1109 - 0.3466 = -0.2357
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    texts = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([3, 3])
    assert cmpm_loss(images, texts, labels, return_directions=True)[0].item() == pytest.approx(l1, rel=1e-9)
    assert cmpm_loss(images, texts, labels, target="l2", return_directions=True)[0].item() == pytest.approx(
        l2, rel=1e-9
    )
    assert l1 == pytest.approx(0.1109, abs=1e-4) and l2 == pytest.approx(-0.2357, abs=1e-4)


def test_cmpc_one_pair_by_hand():
    # x=(3,0), z=(1,1): z_bar=(1,1)/sqrt2, x_hat=(x.z_bar) z_bar = (3/sqrt2)(1,1)/sqrt2 = (1.5,1.5)
    # W columns (2,0),(0,5) -> unit (1,0),(0,1): logits x_hat = (1.5,1.5) -> CE = log 2
    # z_hat = (z.x_bar) x_bar = 1*(1,0): logits (1,0), label 0 -> CE = log(1 + e^-1)
    images = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    texts = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    weight = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    expected = math.log(2) + math.log(1 + math.exp(-1))  # 0.6931 + 0.3133 = 1.0064
    assert cmpc_loss(images, texts, torch.tensor([0]), weight).item() == pytest.approx(expected, rel=1e-12)
    # norm-softmax on raw features instead: logits x=(3,0) -> log(1+e^-3); z=(1,1) -> log 2
    assert norm_softmax_loss(images, texts, torch.tensor([0]), weight).item() == pytest.approx(
        math.log(1 + math.exp(-3)) + math.log(2), rel=1e-12
    )
    # plain softmax keeps the column norms: logits x W = (6,0), z W = (2,5)
    assert softmax_loss(images, texts, torch.tensor([0]), weight).item() == pytest.approx(
        math.log(1 + math.exp(-6)) + math.log(1 + math.exp(3)), rel=1e-12
    )


def test_ranking_by_hand():
    # x1=(1,0), x2=(0,1); z1=(1,1), z2=(0,1); s = [[1/sqrt2, 0], [1/sqrt2, 1]]; margin 0.2
    # image anchors: [0.2 - 0.7071 + 0]+ = 0 ; [0.2 - 1 + 0.7071]+ = 0
    # text anchors:  text1 vs image2: [0.2 - 0.7071 + 0.7071]+ = 0.2 ; text2 vs image1: [0.2 - 1 + 0]+ = 0
    # mean over the 2 anchors: 0.2 / 2 = 0.1 (sum and hardest agree: one negative each)
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    texts = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    for hardest in (False, True):
        assert ranking_loss(images, texts, torch.tensor([0, 1]), hardest=hardest).item() == pytest.approx(
            0.1, rel=1e-12
        )
    # with one shared label there is no negative at all
    assert ranking_loss(images, texts, torch.tensor([0, 0])).item() == 0.0


# ------------------------------------------------------------------------------------------
# targets, gradients, numerics, invariance
# ------------------------------------------------------------------------------------------


def test_l1_and_l2_targets_differ_with_several_positives_and_agree_with_none():
    images, texts, repeated, _ = random_batch(4)
    assert not torch.allclose(cmpm_loss(images, texts, repeated), cmpm_loss(images, texts, repeated, target="l2"))
    unique = torch.arange(images.shape[0])
    torch.testing.assert_close(cmpm_loss(images, texts, unique), cmpm_loss(images, texts, unique, target="l2"))
    with pytest.raises(ValueError, match="target"):
        cmpm_loss(images, texts, unique, target="l3")


def test_gradcheck_float64():
    images, texts, labels, weight = random_batch(5, n=6, d=3, num_classes=3)
    images.requires_grad_(True), texts.requires_grad_(True), weight.requires_grad_(True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, z: cmpm_loss(x, z, labels), (images, texts))
    assert torch.autograd.gradcheck(lambda x, z: cmpm_loss(x, z, labels, target="l2"), (images, texts))
    assert torch.autograd.gradcheck(lambda x, z, w: cmpc_loss(x, z, labels, w), (images, texts, weight))
    assert torch.autograd.gradcheck(lambda x, z, w, b: softmax_loss(x, z, labels, w, b), (images, texts, weight, bias))
    assert torch.autograd.gradcheck(lambda x, z, w: norm_softmax_loss(x, z, labels, w), (images, texts, weight))
    for hardest in (False, True):
        assert torch.autograd.gradcheck(lambda x, z: ranking_loss(x, z, labels, hardest=hardest), (images, texts))
    cmce = CMCELoss(3, 3, temperature=0.5).double().eval()
    cmce.image_buffer.copy_(F.normalize(torch.randn(3, 3, dtype=torch.float64), dim=1))
    cmce.text_buffer.copy_(F.normalize(torch.randn(3, 3, dtype=torch.float64), dim=1))
    assert torch.autograd.gradcheck(lambda x, z: cmce(x, z, labels), (images, texts))


def extreme_batches():
    images, texts, labels, _ = random_batch(6, n=8, d=6, num_classes=3, dtype=torch.float32)
    zero = images.clone()
    zero[0] = 0.0  # a zero image embedding
    zero_text = texts.clone()
    zero_text[1] = 0.0
    huge = F.normalize(images, dim=1) * 1e4
    huge_text = F.normalize(texts, dim=1) * 1e4
    return {
        "zero": (zero, zero_text, labels),
        "norm_1e4": (huge, huge_text, labels),
        "float16": (images.half(), texts.half(), labels),
        "bfloat16": (images.bfloat16(), texts.bfloat16(), labels),
        "float16_norm_1e4": (huge.half(), huge_text.half(), labels),
    }


@pytest.mark.parametrize("case", ["zero", "norm_1e4", "float16", "bfloat16", "float16_norm_1e4"])
def test_finite_losses_and_gradients_on_extreme_inputs(case):
    images, texts, labels = extreme_batches()[case]
    images, texts = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    module = CrossModalLoss(LOSS_NAMES, embedding_dim=6, num_classes=3)
    for _ in range(2):  # second pass: CMCE buffers are filled
        values = module(images, texts, labels)
        for name, value in values.items():
            assert value.dtype == torch.float32, name
            assert torch.isfinite(value), (case, name, value)
        total = sum(values.values())
        images.grad = texts.grad = None
        total.backward()
        assert torch.isfinite(images.grad).all() and torch.isfinite(texts.grad).all(), case
        assert images.grad.dtype == images.dtype
        for parameter in module.parameters():
            assert torch.isfinite(parameter.grad).all()


def test_half_precision_close_to_float32():
    images, texts, labels, weight = random_batch(8, dtype=torch.float32)
    full = cmpm_loss(images, texts, labels)
    half = cmpm_loss(images.half(), texts.half(), labels)
    torch.testing.assert_close(half, full, rtol=1e-2, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast is switched off inside
        autocast = cmpc_loss(images, texts, labels, weight)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, cmpc_loss(images, texts, labels, weight))


def test_every_loss_is_invariant_to_permuting_the_batch():
    images, texts, labels, _ = random_batch(9, dtype=torch.float64)
    module = CrossModalLoss(LOSS_NAMES, embedding_dim=5, num_classes=4).double()
    module(images, texts, labels)  # fill the CMCE buffers
    module.eval()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    before = module(images, texts, labels)
    after = module(images[order], texts[order], labels[order])
    for name in LOSS_NAMES:
        torch.testing.assert_close(after[name], before[name], msg=name)


def test_cmpm_prefers_matched_embeddings():
    images, texts, labels, _ = random_batch(10)
    matched = images.clone()
    assert cmpm_loss(images, matched * 3, labels) < cmpm_loss(images, texts, labels)


# ------------------------------------------------------------------------------------------
# cross-checks with pytorch-metric-learning (where the definitions really match)
# ------------------------------------------------------------------------------------------


def test_norm_softmax_matches_pytorch_metric_learning():
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import DotProductSimilarity

    images, texts, labels, weight = random_batch(11, dtype=torch.float64)
    reference = pml_losses.NormalizedSoftmaxLoss(
        num_classes=4, embedding_size=5, temperature=1.0, distance=DotProductSimilarity(normalize_embeddings=False)
    )
    reference.W.data = weight.clone()
    expected = reference(images, labels) + reference(texts, labels)
    torch.testing.assert_close(norm_softmax_loss(images, texts, labels, weight), expected)


def test_ranking_sum_matches_pytorch_metric_learning_triplets():
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.reducers import SumReducer

    # pml takes every same-label pair as a positive; with unique labels that is the matched pair only
    images, texts, _, _ = random_batch(12, dtype=torch.float64)
    labels = torch.arange(images.shape[0])
    reference = pml_losses.TripletMarginLoss(margin=0.2, distance=CosineSimilarity(), reducer=SumReducer())
    # (a copy as ref_labels: pml drops the diagonal when ref_labels *is* labels)
    i2t = reference(images, labels, ref_emb=texts, ref_labels=labels.clone())
    t2i = reference(texts, labels, ref_emb=images, ref_labels=labels.clone())
    torch.testing.assert_close(ranking_loss(images, texts, labels, margin=0.2), (i2t + t2i) / len(labels))


# ------------------------------------------------------------------------------------------
# CMCE buffers
# ------------------------------------------------------------------------------------------


def test_cmce_buffer_updates():
    cmce = CMCELoss(embedding_dim=2, num_classes=3, temperature=0.5, momentum=0.5)
    images = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    first = cmce(images, texts, labels)  # zero buffers: every identity scores 0 -> log 3 per modality
    assert first.item() == pytest.approx(2 * math.log(3), rel=1e-6)
    # identity 0: mean of unit images (1,0),(0,1) = (0.5,0.5) -> normalised (0.7071, 0.7071)
    torch.testing.assert_close(cmce.image_buffer[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(cmce.text_buffer[1], torch.tensor([-1.0, 0.0]))
    assert torch.equal(cmce.image_buffer[2], torch.zeros(2))  # unseen identity untouched
    # second update of identity 1 with momentum 0.5: 0.5*(0.7071,0.7071) + 0.5*(1,0) -> normalised
    cmce(torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([1]))
    expected = F.normalize(0.5 * torch.tensor([1.0, 1.0]) / math.sqrt(2) + 0.5 * torch.tensor([1.0, 0.0]), dim=0)
    torch.testing.assert_close(cmce.image_buffer[1], expected)
    torch.testing.assert_close(cmce.text_buffer[1], F.normalize(torch.tensor([-0.5, 0.5]), dim=0))
    # eval mode leaves the buffers alone; gradients never reach them
    cmce.eval()
    snapshot = cmce.image_buffer.clone()
    x = torch.randn(3, 2, requires_grad=True)
    cmce(x, torch.randn(3, 2), labels).backward()
    assert torch.equal(cmce.image_buffer, snapshot) and not cmce.image_buffer.requires_grad
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert set(dict(cmce.named_buffers())) == {"image_buffer", "text_buffer"}
    assert "image_buffer" in cmce.state_dict()


def test_cmce_loss_uses_buffers_before_updating():
    images, texts, labels, _ = random_batch(13, dtype=torch.float32)
    cmce = CMCELoss(5, 4)
    cmce(images, texts, labels)  # fill
    frozen = CMCELoss(5, 4).eval()
    frozen.load_state_dict(cmce.state_dict())
    expected = frozen(images, texts, labels)
    torch.testing.assert_close(cmce(images, texts, labels), expected)  # training call: same value, then update


# ------------------------------------------------------------------------------------------
# the trainer's contract
# ------------------------------------------------------------------------------------------


def test_cross_modal_loss_contract():
    images, texts, labels, _ = random_batch(14, dtype=torch.float32)
    module = CrossModalLoss(["cmpm", "cmpc"], embedding_dim=5, num_classes=4)
    values = module(images, texts, labels)
    assert list(values) == ["cmpm", "cmpc"]
    assert all(v.dim() == 0 for v in values.values())
    torch.testing.assert_close(values["cmpm"], cmpm_loss(images, texts, labels))
    torch.testing.assert_close(values["cmpc"], cmpc_loss(images, texts, labels, module.cmpc.weight))
    assert isinstance(module.cmpc, CMPCClassifier) and module.cmpc.weight.shape == (5, 4)
    assert {name for name, _ in module.named_parameters()} == {"cmpc.weight"}
    everything = CrossModalLoss(LOSS_NAMES, embedding_dim=5, num_classes=4, margin=0.1, cmce_temperature=0.1)
    assert list(everything(images, texts, labels)) == list(LOSS_NAMES)
    assert {name for name, _ in everything.named_parameters()} == {
        "cmpc.weight",
        "softmax_weight",
        "softmax_bias",
        "norm_softmax_weight",
        "ritc.log_logit_scale",
    }
    assert {name for name, _ in everything.named_buffers()} == {"cmce.image_buffer", "cmce.text_buffer"}


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(names=["cmpm", "triplet"]), "cmpm_l2"),  # the message lists LOSS_NAMES
        (dict(names=[]), "choose from"),
        (dict(names=["cmpm"], temperature=2.0), "unknown option"),
    ],
)
def test_cross_modal_loss_rejects_bad_construction(bad, message):
    names = bad.pop("names")
    with pytest.raises(ValueError, match=message):
        CrossModalLoss(names, embedding_dim=5, num_classes=4, **bad)


def test_cross_modal_loss_rejects_bad_inputs():
    images, texts, labels, _ = random_batch(15, dtype=torch.float32)
    module = CrossModalLoss(["cmpm"], embedding_dim=5, num_classes=4)
    with pytest.raises(ValueError, match=r"\[0, num_classes=4\)"):
        module(images, texts, labels + 1)
    with pytest.raises(ValueError, match=r"\[0, num_classes=4\)"):
        module(images, texts, labels - 1)
    with pytest.raises(ValueError, match="integer"):
        module(images, texts, labels.float())
    with pytest.raises(ValueError, match="same"):
        module(images, texts[:-1], labels)
    with pytest.raises(ValueError, match="embedding_dim=6"):
        CrossModalLoss(["cmpm"], embedding_dim=6, num_classes=4)(images, texts, labels)
    with pytest.raises(ValueError, match="embedding_dim, num_classes"):
        cmpc_loss(images, texts, labels, torch.randn(4, 5))


def test_module_exports():
    assert losses.LOSS_NAMES == (
        "cmpm",
        "cmpm_l2",
        "cmpc",
        "ranking",
        "ranking_hard",
        "softmax",
        "norm_softmax",
        "cmce",
        "sdm",
        "info_nce",
        "ritc",
        "tal",
    )
    for name in losses.__all__:
        assert hasattr(losses, name)
