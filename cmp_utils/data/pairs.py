"""From a prepared split to batches: image-caption pairs, their collate function and the identity sampler."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .images import ImageCache, normalise
from .text import Vocabulary, pad_token_ids


# ---------------------------------------------------------------------- pairs and batches
class PairDataset(torch.utils.data.Dataset):
    """One item per caption: its image (normalised), its token ids, its class index.

    Item: ``image`` float32 ``(3, H, W)``; ``token_ids`` long ``(T,)`` = ``[<start>, w_1 .. w_n]``
    (the model input of the released code: ``<end>`` dropped); ``label`` = ``class_index``;
    ``image_index`` = row in the image cache. Pixels come from the memory-mapped cache (no
    decoding per step); training flips left-right with probability 0.5.
    """

    def __init__(
        self, frame: pd.DataFrame, vocabulary: Vocabulary, image_cache: ImageCache, train: bool, backbone: str
    ):
        for column in ("tokens", "class_index", "image_index"):
            if column not in frame.columns:
                raise ValueError(
                    f"PairDataset needs a frame with column {column!r} (use prepare_dataset or add_indices)"
                )
        if len(frame) and int(frame["image_index"].max()) >= len(image_cache):
            raise ValueError(
                f"frame image_index goes up to {int(frame['image_index'].max())} but the cache "
                f"{image_cache.cache_path} holds {len(image_cache)} images: they are of different splits"
            )
        normalise(np.zeros((1, 1, 1, 3), dtype=np.uint8), backbone)  # validates the backbone name early
        self.vocabulary = vocabulary
        self.image_cache = image_cache
        self.train = bool(train)
        self.backbone = backbone
        self.token_ids = [
            torch.tensor(vocabulary.encode(tokens, for_model_input=True), dtype=torch.long)
            for tokens in frame["tokens"]
        ]
        self.labels = frame["class_index"].to_numpy(dtype=np.int64)
        self.image_indices = frame["image_index"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index = int(self.image_indices[index])
        pixels = torch.from_numpy(np.array(self.image_cache.images[image_index]))  # (H, W, 3) uint8, a copy
        image = normalise(pixels, self.backbone)[0]  # (3, H, W) float32
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {
            "image": image,
            "token_ids": self.token_ids[index],
            "label": int(self.labels[index]),
            "image_index": image_index,
        }


def collate_pairs(items: Sequence[dict[str, Any]], pad_id: int = Vocabulary.pad_id) -> dict[str, torch.Tensor]:
    """Stack items: ``images (B, 3, H, W)``, ``token_ids (B, T)`` padded with ``pad_id`` (0),
    ``lengths (B,)``, ``labels (B,)``, ``image_indices (B,)`` (all long but images)."""
    if not items:
        raise ValueError("collate_pairs got an empty batch")
    token_ids, lengths = pad_token_ids([item["token_ids"] for item in items], pad_id)  # (B, T), (B,)
    return {
        "images": torch.stack([item["image"] for item in items]),  # (B, 3, H, W)
        "token_ids": token_ids,
        "lengths": lengths,
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "image_indices": torch.tensor([item["image_index"] for item in items], dtype=torch.long),
    }


class IdentityBatchSampler(torch.utils.data.Sampler):
    """Batches of caption indices holding ``instances_per_label`` captions of each identity.

    Each epoch visits every index once: the indices of each label are shuffled and cut into
    groups of ``instances_per_label`` (a label's last group may be smaller), the groups are
    shuffled and packed into batches of ``batch_size``. CMPM needs positives in a batch
    beyond the diagonal; this makes them frequent. Deterministic for ``(seed, epoch)``; call
    :meth:`set_epoch` each epoch. With ``num_replicas > 1`` each rank gets every
    ``num_replicas``-th batch (same count on every rank).
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        instances_per_label: int = 2,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1 or instances_per_label < 1:
            raise ValueError(f"batch_size={batch_size} and instances_per_label={instances_per_label} must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.instances_per_label = int(instances_per_label)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        order = np.argsort(self.labels, kind="stable")
        boundaries = np.flatnonzero(np.diff(self.labels[order])) + 1
        self._groups_by_label = np.split(order, boundaries) if len(order) else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = []
        for members in self._groups_by_label:
            shuffled = rng.permutation(members)
            groups.extend(
                shuffled[start : start + self.instances_per_label]
                for start in range(0, len(shuffled), self.instances_per_label)
            )
        flat = np.concatenate([groups[i] for i in rng.permutation(len(groups))]) if groups else np.array([], np.int64)
        batches = [flat[start : start + self.batch_size].tolist() for start in range(0, len(flat), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.num_replicas > 1:
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[:usable]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        total = len(self.labels) // self.batch_size if self.drop_last else -(-len(self.labels) // self.batch_size)
        return total // self.num_replicas
