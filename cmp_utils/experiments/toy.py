"""The toys of the derivation notebooks 02 (CMPM) and 03 (CMPC): their data, training loops and measures.

Notebook 02:

* the **2-D toy**: twelve free image and text points in the plane, trained by Adam on a loss
  (:func:`toy_start`, :func:`train_toy`, scored by :func:`retrieval_summary`). Small enough to run in
  a second, and it exercises what a real run's numbers depend on (tiny matrix products, softmax,
  log, Adam's square root), so :mod:`cmp_utils.cpu_probe` fingerprints it too;
* the **CMPM beside the ranking loss** comparison on random, partly aligned batches
  (:func:`aligned_batch`, :func:`active_negative_fraction`, :func:`ranking_comparison`).

Notebook 03:

* the **loss landscape** of one class-0 pair on a circle, norm-softmax against CMPC
  (:func:`on_circle`, :func:`circle_points`, :func:`projection_loss_landscape`);
* the **compactness toy**: two small MLP encoders trained on synthetic class prototypes with
  norm-softmax, CMPC, softmax and CMPM combinations (:func:`prototype_data`, :func:`toy_encoder`,
  :func:`train_encoders`, :func:`compactness_runs`), measured by :func:`compactness` (angle spreads,
  pair angle, inter-class angle, R@1; README's caveat on CMPC alone rests on it).

Every function is deterministic given its seed or generator: it draws its random numbers in the
order the notebooks always drew them, so the committed results do not move.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..core.config import torch_threads

#: Four identities of three points each (image and text sides), as in notebook 02.
TOY_POINTS, TOY_IDENTITY_SIZE = 12, 3
#: The losses notebook 03's compactness toy trains with, in its table's order.
COMPACTNESS_METHODS = ("norm-softmax", "CMPC", "softmax", "CMPM + norm-softmax", "CMPM + CMPC")

LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ToySplit = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Notebook 02: the 2-D toy
# ---------------------------------------------------------------------------------------------


def toy_start(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, texts, labels)``: the starting points, each ``(12, 2)``, and their ``(12,)`` identity labels."""
    generator = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(TOY_POINTS) // TOY_IDENTITY_SIZE
    images = torch.randn(TOY_POINTS, 2, generator=generator)  # (12, 2)
    texts = torch.randn(TOY_POINTS, 2, generator=generator)  # (12, 2)
    return images, texts, labels


def train_toy(
    loss_fn: LossFunction,
    images: torch.Tensor,
    texts: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float = 0.05,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Adam (``lr``) on the points themselves for ``steps`` steps, one torch thread (tiny tensors).

    Returns the trained ``(images, texts)``, each ``(12, 2)``, and the loss before each step."""
    from tqdm.auto import tqdm

    images, texts = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([images, texts], lr=lr)
    history: list[float] = []
    with torch_threads(1):
        for _ in tqdm(range(steps), leave=False, disable=not progress):
            optimiser.zero_grad()
            loss = loss_fn(images, texts, labels)
            loss.backward()
            optimiser.step()
            history.append(loss.item())
    return images.detach(), texts.detach(), history


def recall_at_1(queries: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor) -> float:
    """R@1 by cosine similarity of ``queries[i]`` against every ``gallery`` row: the share of queries whose
    most similar gallery item (the first one on a tie) has the query's label; ``labels`` serve both sides."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T  # (n, n)
    return (labels[similarity.argmax(dim=1)] == labels).double().mean().item()


def retrieval_summary(images: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """A row of notebook 02's toy table: R@1 image-to-text and text-to-image, and the mean image norm."""
    return dict(
        recall_at_1_i2t=recall_at_1(images, texts, labels),
        recall_at_1_t2i=recall_at_1(texts, images, labels),
        mean_image_norm=images.norm(dim=1).mean().item(),
    )


# ---------------------------------------------------------------------------------------------
# Notebook 02: CMPM beside the ranking loss
# ---------------------------------------------------------------------------------------------


def aligned_batch(
    batch_size: int, generator: torch.Generator, dim: int = 16, noise: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of partly aligned float64 pairs, two per identity: ``(images, texts, labels)``, ``(n, dim)`` twice
    and ``(n,)``. Each identity has a standard normal centre; image and text add ``noise`` times their own normal
    noise to it. Draws the centres, then the image noise, then the text noise from ``generator``."""
    labels = torch.arange(batch_size) // 2  # two pairs per identity
    centres = torch.randn(batch_size // 2, dim, generator=generator, dtype=torch.float64)
    images = centres[labels] + noise * torch.randn(batch_size, dim, generator=generator, dtype=torch.float64)
    texts = centres[labels] + noise * torch.randn(batch_size, dim, generator=generator, dtype=torch.float64)
    return images, texts, labels


def active_negative_fraction(images: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """The share of image-to-text negatives ``(i, j)`` (``labels[j] != labels[i]``) inside the ranking margin,
    ``margin - s_ii + s_ij > 0`` on cosine similarity: those the ranking loss gives a gradient."""
    similarity = F.normalize(images, dim=1) @ F.normalize(texts, dim=1).T  # (n, n)
    negatives = labels[:, None] != labels[None, :]
    active = ((margin - similarity.diagonal()[:, None] + similarity) > 0) & negatives
    return (active.sum() / negatives.sum()).item()


def ranking_comparison(
    generator: torch.Generator,
    trials: int,
    batch_sizes: Sequence[int],
    margins: Sequence[float],
    margin_batch_size: int = 32,
    margin: float = 0.2,
) -> list[dict]:
    """CMPM, the ranking loss (sum and hardest negative) and :func:`active_negative_fraction` on random
    :func:`aligned_batch` es: one row per (trial, batch size, margin). The batch of ``margin_batch_size`` is
    scored at every margin of ``margins``, the others at ``margin`` only; batches are drawn from ``generator``
    trial by trial, batch size by batch size."""
    rows = []
    for trial in range(trials):
        for batch_size in batch_sizes:
            images, texts, labels = aligned_batch(batch_size, generator)
            for value in margins if batch_size == margin_batch_size else [margin]:
                rows.append(
                    dict(
                        trial=trial,
                        batch_size=batch_size,
                        margin=value,
                        cmpm=losses.cmpm_loss(images, texts, labels).item(),
                        ranking=losses.ranking_loss(images, texts, labels, margin=value).item(),
                        ranking_hard=losses.ranking_loss(images, texts, labels, margin=value, hardest=True).item(),
                        active_fraction=active_negative_fraction(images, texts, labels, value),
                    )
                )
    return rows


# ---------------------------------------------------------------------------------------------
# Notebook 03: one pair on a circle
# ---------------------------------------------------------------------------------------------


def on_circle(degrees: float, radius: float = 3.0) -> torch.Tensor:
    """The point at ``degrees`` on the circle of ``radius`` about the origin, ``(1, 2)`` float64."""
    radians = math.radians(degrees)
    return radius * torch.tensor([[math.cos(radians), math.sin(radians)]], dtype=torch.float64)


def circle_points(angles: torch.Tensor, radius: float = 3.0) -> torch.Tensor:
    """The points at ``angles`` (radians, any shape) on the circle of ``radius``, flattened to ``(angles.numel(), 2)``."""
    return radius * torch.stack([angles.cos(), angles.sin()], -1).reshape(-1, 2)


def projection_loss_landscape(
    weight: torch.Tensor, angles: torch.Tensor, radius: float = 3.0, label: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one pair of class ``label`` for every (image angle, text angle) of ``angles`` x ``angles``.

    Image and text lie on the circle of ``radius``; ``weight`` ``(2, C)`` is used with unit columns. Returns the
    image and text points ``(m * m, 2)`` (image angle along the rows of the grid's x axis: ``meshgrid`` with
    ``indexing="xy"``) and the per-pair loss ``(m * m,)``, image plus text, of norm-softmax on the raw points
    (key ``"norm-softmax (raw features)"``) and of CMPC on their cross-modal projections
    (``"CMPC (cross-modal projections)"``); the mean of the latter is :func:`losses.cmpc_loss`."""
    image_angle, text_angle = torch.meshgrid(angles, angles, indexing="xy")  # x-axis: image angle, y-axis: text angle
    images, texts = circle_points(image_angle, radius), circle_points(text_angle, radius)
    labels = torch.full((len(images),), label, dtype=torch.long)
    unit_weight = F.normalize(weight, dim=0)

    def both(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(image_features @ unit_weight, labels, reduction="none") + F.cross_entropy(
            text_features @ unit_weight, labels, reduction="none"
        )

    per_pair = {
        "norm-softmax (raw features)": both(images, texts),
        "CMPC (cross-modal projections)": both(
            losses.vector_projection(images, texts), losses.vector_projection(texts, images)
        ),
    }
    return images, texts, per_pair


# ---------------------------------------------------------------------------------------------
# Notebook 03: the compactness toy
# ---------------------------------------------------------------------------------------------


def prototype_data(
    generator: torch.Generator,
    num_classes: int = 6,
    input_dim: int = 16,
    train_per_class: int = 40,
    test_per_class: int = 20,
    noise: float = 1.0,
) -> tuple[ToySplit, ToySplit]:
    """Two-modality float32 inputs around class prototypes: ``(train, test)``, each ``(images, texts, labels)``
    with ``(n, input_dim)`` inputs and ``(n,)`` labels, classes in blocks (``per_class`` rows each).

    Each class has an image prototype and an independent text prototype (standard normal); an input is its
    prototype plus ``noise`` times standard normal noise. Draws the image prototypes, the text prototypes, then
    per split the image and the text noise, all from ``generator``."""
    image_prototypes = torch.randn(num_classes, input_dim, generator=generator)
    text_prototypes = torch.randn(num_classes, input_dim, generator=generator)

    def draw(per_class: int) -> ToySplit:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        images = image_prototypes[labels] + noise * torch.randn(len(labels), input_dim, generator=generator)
        texts = text_prototypes[labels] + noise * torch.randn(len(labels), input_dim, generator=generator)
        return images, texts, labels

    return draw(train_per_class), draw(test_per_class)


def toy_encoder(input_dim: int, dim: int) -> nn.Sequential:
    """The toy's encoder: ``input_dim -> 32 -> dim``, one ReLU, PyTorch's default initialisation."""
    return nn.Sequential(nn.Linear(input_dim, 32), nn.ReLU(), nn.Linear(32, dim))


def train_encoders(
    method: str, data: ToySplit, dim: int, steps: int, run_seed: int, num_classes: int = 6, batch_size: int = 48
) -> tuple[nn.Sequential, nn.Sequential]:
    """Train an image and a text :func:`toy_encoder` into ``dim`` dimensions with ``method`` (one of
    :data:`COMPACTNESS_METHODS`): Adam, lr 1e-2, ``steps`` random batches of ``batch_size`` pairs of ``data``.

    ``run_seed`` seeds the global torch generator (the encoders' and the CMPC classifier's initialisation)
    and the batch sampler, so every method starts from the same weights and sees the same batches.
    The classifier weights ``(dim, num_classes)`` are trained by every method; a bias only by ``softmax``."""
    if method not in COMPACTNESS_METHODS:
        raise ValueError(f"train_encoders: method must be one of {COMPACTNESS_METHODS}; got {method!r}")
    torch.manual_seed(run_seed)  # same initialisation and batches for every method
    image_encoder, text_encoder = toy_encoder(data[0].shape[1], dim), toy_encoder(data[1].shape[1], dim)
    classifier = losses.CMPCClassifier(dim, num_classes)  # owns a Xavier-initialised W (dim, C)
    bias = nn.Parameter(torch.zeros(num_classes))
    parameters = [*image_encoder.parameters(), *text_encoder.parameters(), classifier.weight] + (
        [bias] if method == "softmax" else []
    )
    optimiser = torch.optim.Adam(parameters, lr=1e-2)
    images, texts, labels = data
    batches = torch.Generator().manual_seed(run_seed)
    for _ in range(steps):
        chosen = torch.randperm(len(labels), generator=batches)[:batch_size]
        x, z, y = image_encoder(images[chosen]), text_encoder(texts[chosen]), labels[chosen]
        if method.endswith("CMPC"):
            loss = classifier(x, z, y)
        elif method.endswith("norm-softmax"):
            loss = losses.norm_softmax_loss(x, z, y, classifier.weight)
        else:
            loss = losses.softmax_loss(x, z, y, classifier.weight, bias)
        if method.startswith("CMPM"):
            loss = loss + losses.cmpm_loss(x, z, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return image_encoder, text_encoder


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The angle in degrees between ``a`` and ``b`` along the last dimension (broadcast), in ``[0, 180]``."""
    return torch.rad2deg(torch.acos((F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).clamp(-1, 1)))


def compactness(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """How tightly the classes of matched embeddings ``(n, d)`` gather, on L2-normalised embeddings.

    * ``spread_image_deg`` / ``spread_text_deg`` / ``spread_joint_deg``: per class, the mean angle between
      each embedding and the class's mean direction (images, texts, or both pooled around one direction),
      averaged over the classes;
    * ``pair_angle_deg``: the mean angle between an image and its own text;
    * ``inter_class_deg``: the mean angle between the pooled class mean directions (distinct pairs);
    * ``spread_to_inter``: joint spread over inter-class angle;
    * ``t2i_recall_at_1``: :func:`recall_at_1` of the texts against the images.
    """
    spreads: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "joint": []}
    centres = []
    for k in labels.unique():
        x, z = F.normalize(image_embeddings[labels == k], dim=1), F.normalize(text_embeddings[labels == k], dim=1)
        for name, group in (("image", x), ("text", z), ("joint", torch.cat([x, z]))):
            mean_direction = group.mean(0, keepdim=True)
            spreads[name].append(angle_degrees(group, mean_direction).mean())
        centres.append(F.normalize(torch.cat([x, z]).mean(0), dim=0))
    stacked = torch.stack(centres)
    pairwise = angle_degrees(stacked[:, None], stacked[None])
    inter = pairwise[~torch.eye(len(stacked), dtype=torch.bool)].mean()
    joint = torch.stack(spreads["joint"]).mean()
    return dict(
        spread_image_deg=torch.stack(spreads["image"]).mean().item(),
        spread_text_deg=torch.stack(spreads["text"]).mean().item(),
        spread_joint_deg=joint.item(),
        pair_angle_deg=angle_degrees(image_embeddings, text_embeddings).mean().item(),
        inter_class_deg=inter.item(),
        spread_to_inter=(joint / inter).item(),
        t2i_recall_at_1=recall_at_1(text_embeddings, image_embeddings, labels),
    )


def compactness_runs(
    seeds: Sequence[int],
    dims: Sequence[int],
    steps: int,
    methods: Sequence[str] = COMPACTNESS_METHODS,
    kept_dim: int = 2,
    progress: bool = False,
) -> tuple[list[dict], dict[str, ToySplit]]:
    """Notebook 03's toy: for every seed, :func:`prototype_data` from a generator seeded with it, then per
    dimension and method :func:`train_encoders` and :func:`compactness` on the held-out pairs; one torch thread
    throughout (tiny matrices run fastest and steadiest on one).

    Returns one row per run (``method``, ``dim``, ``seed``, ``steps`` and the measures) and, per method, the
    held-out ``(images, texts, labels)`` embeddings of the first seed in ``kept_dim`` dimensions."""
    from tqdm.auto import tqdm

    rows, kept = [], {}
    with torch_threads(1):
        for run_seed in tqdm(seeds, desc="seeds", disable=not progress):
            train, test = prototype_data(torch.Generator().manual_seed(run_seed))
            for dim in dims:
                for method in methods:
                    image_encoder, text_encoder = train_encoders(method, train, dim, steps, run_seed)
                    with torch.no_grad():
                        x, z = image_encoder(test[0]), text_encoder(test[1])
                    rows.append(dict(method=method, dim=dim, seed=run_seed, steps=steps, **compactness(x, z, test[2])))
                    if run_seed == seeds[0] and dim == kept_dim:
                        kept[method] = (x, z, test[2])
    return rows, kept
