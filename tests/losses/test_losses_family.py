"""The CMPM family (SDM, InfoNCE, R-ITC, TAL) and the loss scope, against naive loop transcriptions.

Each loss is written out again here element by element from its paper's formula (plain Python
loops over the batch, float64), and once more in the vectorised form of its authors' release
(IRRA's ``compute_sdm`` / ``compute_itc``, TBPS-CLIP's ``ritc`` branch, RDE's ``compute_TAL_per``),
re-transcribed from their formulas, not copied.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from cmp_utils.training import distributed
from cmp_utils import losses, models, training
from cmp_utils.losses import (
    CrossModalLoss,
    RITCLoss,
    cmpm_loss,
    info_nce_loss,
    parse_loss_scope,
    ritc_loss,
    sdm_loss,
    tal_loss,
)


def random_batch(n: int = 8, dim: int = 5, seed: int = 0, classes: int = 4):
    generator = torch.Generator().manual_seed(seed)
    image_embeddings = torch.randn(n, dim, generator=generator, dtype=torch.float64) * 3  # (n, d)
    text_embeddings = torch.randn(n, dim, generator=generator, dtype=torch.float64) * 2  # (n, d)
    labels = torch.randint(0, classes, (n,), generator=generator)  # (n,), repeats: several positives
    return image_embeddings, text_embeddings, labels


def unit(vector):
    norm = math.sqrt(sum(float(v) ** 2 for v in vector))
    return [float(v) / norm for v in vector]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def cosine_table(queries, gallery):
    return [[dot(unit(q), unit(g)) for g in gallery] for q in queries]


def softmax_row(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def naive_kl_direction(similarity, labels, scale, epsilon):
    """(1/n) sum_i sum_j p_ij (log p_ij - log(q_ij + eps)), p = softmax_j(scale * s_ij), q = L1 target."""
    n = len(labels)
    total = 0.0
    for i in range(n):
        p = softmax_row([scale * similarity[i][j] for j in range(n)])
        positives = sum(1 for j in range(n) if labels[j] == labels[i])
        for j in range(n):
            q = (1.0 if labels[j] == labels[i] else 0.0) / positives
            total += p[j] * (math.log(p[j]) - math.log(q + epsilon))
    return total / n


def naive_sdm(images, texts, labels, temperature, epsilon=1e-8):
    labels = [int(v) for v in labels]
    i2t = cosine_table(images, texts)
    t2i = cosine_table(texts, images)
    return naive_kl_direction(i2t, labels, 1 / temperature, epsilon) + naive_kl_direction(
        t2i, labels, 1 / temperature, epsilon
    )


def naive_info_nce(images, texts, temperature):
    n = len(images)
    i2t, t2i = cosine_table(images, texts), cosine_table(texts, images)
    loss_i2t = -sum(math.log(softmax_row([v / temperature for v in i2t[i]])[i]) for i in range(n)) / n
    loss_t2i = -sum(math.log(softmax_row([v / temperature for v in t2i[i]])[i]) for i in range(n)) / n
    return (loss_i2t + loss_t2i) / 2


def naive_tal(images, texts, labels, temperature, margin):
    """sum over anchors of [m - sum_{j in P} alpha_j s_j + tau log sum_{k in N} exp(s_k / tau)]_+, both directions."""
    labels = [int(v) for v in labels]
    n = len(labels)
    total = 0.0
    for table in (cosine_table(texts, images), cosine_table(images, texts)):  # text anchors, image anchors
        for i in range(n):
            positives = [j for j in range(n) if labels[j] == labels[i]]
            negatives = [j for j in range(n) if labels[j] != labels[i]]
            if not negatives:
                continue
            weights = [math.exp(table[i][j] / temperature) for j in positives]
            weighted_positive = sum(w * table[i][j] for w, j in zip(weights, positives)) / sum(weights)
            smooth_hardest = temperature * math.log(sum(math.exp(table[i][k] / temperature) for k in negatives))
            total += max(0.0, margin - weighted_positive + smooth_hardest)
    return total


# --- the releases' vectorised forms, re-transcribed from their formulas ----------------------------


def irra_sdm(image_features, text_features, pid, logit_scale, epsilon=1e-8):
    """IRRA compute_sdm: the target divides by ``labels.sum(dim=1)`` broadcast along the last axis."""
    match = (pid.view(-1, 1) == pid.view(1, -1)).float().to(image_features.dtype)
    image_unit = image_features / image_features.norm(dim=1, keepdim=True)
    text_unit = text_features / text_features.norm(dim=1, keepdim=True)
    text_to_image = logit_scale * (text_unit @ image_unit.t())
    image_to_text = text_to_image.t()
    target = match / match.sum(dim=1)
    loss = 0.0
    for logits in (image_to_text, text_to_image):
        loss = loss + (F.softmax(logits, 1) * (F.log_softmax(logits, 1) - torch.log(target + epsilon))).sum(1).mean()
    return loss


def irra_itc(image_features, text_features, logit_scale):
    diagonal = torch.arange(image_features.shape[0])
    image_unit = image_features / image_features.norm(dim=-1, keepdim=True)
    text_unit = text_features / text_features.norm(dim=-1, keepdim=True)
    per_image = logit_scale * image_unit @ text_unit.t()
    return (F.cross_entropy(per_image, diagonal) + F.cross_entropy(per_image.t(), diagonal)) / 2


def tbps_ritc(image_features, text_features, pid, logit_scale, epsilon=0.01):
    """TBPS-CLIP's ritc branch: kl_div(log(q + eps), log_softmax(logits), log_target=True, batchmean)."""
    image_unit, text_unit = F.normalize(image_features), F.normalize(text_features)
    match = (pid.view(-1, 1) == pid.view(1, -1)).to(image_features.dtype)
    target_log = (match / match.sum(1, keepdim=True) + epsilon).log()
    image_log = F.log_softmax(logit_scale * image_unit @ text_unit.t(), dim=1)
    text_log = F.log_softmax(logit_scale * text_unit @ image_unit.t(), dim=1)
    return 0.5 * (
        F.kl_div(target_log, image_log, log_target=True, reduction="batchmean")
        + F.kl_div(target_log, text_log, log_target=True, reduction="batchmean")
    )


def rde_tal(image_features, text_features, pid, tau, margin):
    """RDE compute_TAL_per summed over the batch (its compute_rbs with every sample kept)."""
    image_unit = image_features / image_features.norm(dim=-1, keepdim=True)
    text_unit = text_features / text_features.norm(dim=-1, keepdim=True)
    scores = text_unit @ image_unit.t()
    match = (pid.view(-1, 1) == pid.view(1, -1)).to(scores.dtype)
    negative = 1 - match
    total = 0.0
    for rows in (scores, scores.t()):
        weights = ((rows / tau).exp() * match / ((rows / tau).exp() * match).sum(1, keepdim=True)).detach()
        total = total + (
            -(weights * rows).sum(1) + tau * ((rows / tau).exp() * negative).sum(1).clamp(max=10e35).log() + margin
        ).clamp(min=0)
    return total.sum()


TEMPERATURES = [0.02, 0.05, 0.3, 1.0]


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_sdm_matches_the_naive_loop_and_irra(temperature):
    images, texts, labels = random_batch(seed=1)
    value = sdm_loss(images, texts, labels, temperature=temperature)
    assert float(value) == pytest.approx(naive_sdm(images, texts, labels, temperature), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(value, irra_sdm(images, texts, labels, 1 / temperature))
    float32 = sdm_loss(images.float(), texts.float(), labels, temperature=temperature)
    torch.testing.assert_close(
        float32, irra_sdm(images.float(), texts.float(), labels, 1 / temperature), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_info_nce_matches_the_naive_loop_and_irra(temperature):
    images, texts, _ = random_batch(seed=2)
    value = info_nce_loss(images, texts, temperature)
    assert float(value) == pytest.approx(naive_info_nce(images, texts, temperature), rel=1e-9)
    torch.testing.assert_close(value, irra_itc(images, texts, 1 / temperature))
    float32 = info_nce_loss(images.float(), texts.float(), temperature)
    torch.testing.assert_close(float32, irra_itc(images.float(), texts.float(), 1 / temperature), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.02, 0.07, 0.5])
def test_ritc_matches_the_naive_loop_and_tbps_clip(temperature):
    images, texts, labels = random_batch(seed=3)
    value = ritc_loss(images, texts, labels, temperature, epsilon=0.01)
    assert float(value) == pytest.approx(naive_sdm(images, texts, labels, temperature, epsilon=0.01) / 2, rel=1e-9)
    torch.testing.assert_close(value, tbps_ritc(images, texts, labels, 1 / temperature))


@pytest.mark.parametrize("temperature, margin", [(0.015, 0.1), (0.05, 0.2), (0.5, 0.0)])
def test_tal_matches_the_naive_loop_and_rde(temperature, margin):
    images, texts, labels = random_batch(seed=4)
    value = tal_loss(images, texts, labels, temperature, margin)
    assert float(value) == pytest.approx(naive_tal(images, texts, labels, temperature, margin), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(value, rde_tal(images, texts, labels, temperature, margin))
    torch.testing.assert_close(
        tal_loss(images, texts, labels, temperature, margin, reduction="mean"), value / len(labels)
    )


def test_tal_gradient_does_not_flow_through_the_positive_weights():
    images, texts, labels = random_batch(seed=5)
    images.requires_grad_(True)
    tal_loss(images, texts, labels).backward()
    mine = images.grad.clone()
    images.grad = None
    rde_tal(images, texts, labels, 0.015, 0.1).backward()
    torch.testing.assert_close(mine, images.grad)


def test_tal_row_without_negatives_contributes_nothing():
    images, texts, _ = random_batch(n=4, seed=6)
    same = torch.zeros(4, dtype=torch.long)
    images.requires_grad_(True)
    value = tal_loss(images, texts, same)
    value.backward()
    assert float(value) == 0.0 and torch.isfinite(images.grad).all()


def test_sdm_becomes_cmpm_when_the_image_keeps_its_norm_and_tau_is_its_inverse():
    """CMPM's logit x_i . z_bar_j = |x_i| cos(theta_ij): with every image of norm c, the image-to-text
    direction of CMPM is SDM's at tau = 1 / c (the two differ only in where epsilon sits)."""
    images, texts, labels = random_batch(seed=7)
    for norm in (0.5, 4.0, 20.0):
        scaled = F.normalize(images, dim=1) * norm  # (n, d): one side keeps a norm c
        cmpm_i2t, _ = cmpm_loss(scaled, texts, labels, epsilon=1e-12, return_directions=True)
        sdm_i2t, _ = sdm_loss(scaled, texts, labels, temperature=1 / norm, epsilon=1e-12, return_directions=True)
        torch.testing.assert_close(cmpm_i2t, sdm_i2t, rtol=1e-6, atol=1e-9)


def test_temperature_may_be_a_learnable_tensor():
    images, texts, labels = random_batch(seed=8)
    module = RITCLoss(initial_temperature=0.07).double()
    assert module.temperature() == pytest.approx(0.07)
    value = module(images, texts, labels)
    torch.testing.assert_close(value, ritc_loss(images, texts, labels, 0.07).to(value.dtype), rtol=1e-5, atol=1e-7)
    value.backward()
    assert module.log_logit_scale.grad is not None and float(module.log_logit_scale.grad) != 0.0
    capped = RITCLoss(initial_temperature=0.001)  # logit scale 1000, capped at 100 in value only
    assert capped.temperature() == pytest.approx(0.01)
    capped(images.float(), texts.float(), labels).backward()
    assert float(capped.log_logit_scale.grad) != 0.0


# --- the loss scope ----------------------------------------------------------------------------


def test_parse_loss_scope():
    assert parse_loss_scope("global") == 1 and parse_loss_scope("local:4") == 4 and parse_loss_scope("local:1") == 1
    for bad in ("local", "local:0", "local:x", "sub:2", "Global"):
        with pytest.raises(ValueError, match="loss_scope"):
            parse_loss_scope(bad)


FAMILY = ("cmpm", "cmpm_l2", "cmpc", "sdm", "info_nce", "ritc", "tal")


def test_local_scope_is_the_mean_of_the_losses_of_contiguous_sub_batches():
    images, texts, labels = random_batch(n=12, seed=9)
    torch.manual_seed(0)
    scoped = CrossModalLoss(FAMILY, 5, 4, scope="local:3").double()
    whole = CrossModalLoss(FAMILY, 5, 4).double()
    whole.load_state_dict(scoped.state_dict())
    values = scoped(images, texts, labels)
    for name, value in values.items():
        expected = (
            sum(
                float(whole(images[k * 4 : (k + 1) * 4], texts[k * 4 : (k + 1) * 4], labels[k * 4 : (k + 1) * 4])[name])
                for k in range(3)
            )
            / 3
        )
        assert float(value) == pytest.approx(expected, rel=1e-12), name
    sdm_parts = [
        naive_sdm(images[k * 4 : (k + 1) * 4], texts[k * 4 : (k + 1) * 4], labels[k * 4 : (k + 1) * 4], 0.02)
        for k in range(3)
    ]
    assert float(values["sdm"]) == pytest.approx(sum(sdm_parts) / 3, rel=1e-9)
    globally = whole(images, texts, labels)
    torch.testing.assert_close(values["cmpc"], globally["cmpc"])  # a per-sample loss: the scope cannot matter
    assert float(values["info_nce"]) < float(globally["info_nce"])  # fewer negatives per row
    single = CrossModalLoss(FAMILY, 5, 4, scope="local:1").double()
    single.load_state_dict(whole.state_dict())
    for name, value in single(images, texts, labels).items():
        torch.testing.assert_close(value, globally[name], msg=name)
    with pytest.raises(ValueError, match="divides"):
        scoped(images[:10], texts[:10], labels[:10])


def test_loss_scope_is_a_training_setting():
    cfg = training.make_config("smoke", "cuhk_pedes", losses=("sdm",), loss_scope="local:4")
    assert cfg.loss_scope == "local:4" and cfg.to_dict()["loss_scope"] == "local:4"
    assert training.parse_setting("loss_scope=local:2") == ("loss_scope", "local:2")
    assert training.make_config("smoke", "cuhk_pedes").loss_scope == "global"
    with pytest.raises(ValueError, match="divides"):
        training.make_config("smoke", "cuhk_pedes", loss_scope="local:3")  # batch 32
    with pytest.raises(ValueError, match="local:K"):
        training.make_config("smoke", "cuhk_pedes", loss_scope="per_gpu")


# --- K processes without a feature gather = local:K in one process (gloo) ----------------------

BATCH, DIM, CLASSES, WORLD = 8, 6, 4, 2


def _scope_inputs():
    generator = torch.Generator().manual_seed(11)
    features = torch.randn(BATCH, 7, generator=generator)  # (B, 7), both branches' input
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 0, 2])  # positives within and across the halves
    return features, labels


class _Heads(torch.nn.Module):
    """Two linear heads: image embeddings x and text embeddings z, (B, DIM) each, plus the losses."""

    def __init__(self, scope: str):
        super().__init__()
        torch.manual_seed(0)
        self.image_head, self.text_head = torch.nn.Linear(7, DIM), torch.nn.Linear(7, DIM)
        self.loss_module = CrossModalLoss(FAMILY, DIM, CLASSES, scope=scope)

    def forward(self, features, labels):
        return self.loss_module(self.image_head(features), self.text_head(features.flip(1)), labels)


def _loss_and_gradients(scope: str, rank: int = 0, world_size: int = 1):
    module = _Heads(scope)
    wrapped = torch.nn.parallel.DistributedDataParallel(module) if world_size > 1 else module
    features, labels = _scope_inputs()
    rows = training.local_slice(list(range(BATCH)), rank, world_size)
    values = wrapped(features[rows], labels[rows])  # no gather: this rank's rows only
    total = sum(values.values())
    total.backward()  # DDP averages the gradients over the ranks
    return float(total.detach()), {name: p.grad.clone() for name, p in module.named_parameters()}


def _gathered_loss_and_gradients(rank: int = 0, world_size: int = 1):
    """The trainer's step (features all-gathered, the family's losses on the global batch)."""
    torch.manual_seed(0)
    model = models.build_model(30, embedding_dim=DIM, word_dim=8, hidden_size=6, dropout=0.0, cached_feature_dim=7)
    step_module = training.TrainStep(model, CrossModalLoss(FAMILY, DIM, CLASSES))
    wrapped = torch.nn.parallel.DistributedDataParallel(step_module) if world_size > 1 else step_module
    features, labels = _scope_inputs()
    token_ids = (torch.arange(BATCH * 5).view(BATCH, 5) % 26) + 4  # (B, 5), no padding
    lengths = torch.full((BATCH,), 5)
    rows = training.local_slice(list(range(BATCH)), rank, world_size)
    total = training.backward_global_loss(
        wrapped(features[rows], token_ids[rows], lengths[rows], labels[rows]), step_module, world_size
    )
    return float(total.detach()), {
        name: p.grad.clone() for name, p in step_module.named_parameters() if p.grad is not None
    }


def _scope_worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'store')}", rank=rank, world_size=world_size
    )
    try:
        assert distributed.world_size() == world_size
        loss, gradients = _loss_and_gradients("global", rank, world_size)
        gathered_loss, gathered_gradients = _gathered_loss_and_gradients(rank, world_size)
        torch.save(
            {
                "loss": loss,
                "gradients": gradients,
                "gathered_loss": gathered_loss,
                "gathered_gradients": gathered_gradients,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        torch.distributed.barrier()
    finally:
        distributed.cleanup()


def test_local_scope_in_one_process_equals_ranks_without_a_gather_and_the_global_scope_gathers(tmp_path):
    reference_loss, reference_gradients = _loss_and_gradients(f"local:{WORLD}")
    global_loss, _ = _loss_and_gradients("global")
    assert reference_loss != pytest.approx(global_loss)  # the scope changes the loss
    mp.spawn(_scope_worker, args=(WORLD, str(tmp_path)), nprocs=WORLD, join=True)
    saved = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    assert sum(part["loss"] for part in saved) / WORLD == pytest.approx(reference_loss, rel=1e-5)
    for part in saved:
        assert set(part["gradients"]) == set(reference_gradients)
        for name, gradient in reference_gradients.items():
            # sums in another order across processes: float32 rounding up to a few 1e-5 of the tensor's largest
            # entry (the learned initial states), so the absolute tolerance scales with the tensor
            torch.testing.assert_close(
                part["gradients"][name],
                gradient,
                rtol=1e-4,
                atol=1e-4 * max(1.0, float(gradient.abs().max())),
                msg=lambda m, name=name, gradient=gradient: f"{name}: {m}",
            )
    # and with the gather (the trainer's global scope), the family's losses on 2 ranks = 1 process
    one_loss, one_gradients = _gathered_loss_and_gradients()
    for part in saved:
        assert part["gathered_loss"] == pytest.approx(one_loss, rel=1e-5)
        assert set(part["gathered_gradients"]) == set(one_gradients)
        for name, gradient in one_gradients.items():
            torch.testing.assert_close(
                part["gathered_gradients"][name],
                gradient,
                rtol=1e-4,
                atol=1e-4 * max(1.0, float(gradient.abs().max())),
                msg=lambda m, name=name, gradient=gradient: f"{name}: {m}",
            )


def test_module_exports_the_family():
    assert set(("sdm", "info_nce", "ritc", "tal")) <= set(losses.LOSS_NAMES)
    for name in ("sdm_loss", "info_nce_loss", "ritc_loss", "tal_loss", "RITCLoss", "parse_loss_scope"):
        assert name in losses.__all__
