"""Encode a split with a trained model and score retrieval on it.

Protocol (released code, minus its quirks): the **gallery holds every image of the split once**
(not once per caption; images with a single caption are kept); every caption is a query.
Embeddings are L2-normalised by the metrics (cosine similarity); a hit is a gallery item with
the query's label (same person for CUHK-PEDES, same image for Flickr30K / MSCOCO).

Text features do not depend on how captions are batched: the model runs in eval mode, where
:class:`cmp_utils.models.TextEncoder` always leaves padded steps out of its max-pool, whatever
``padded_steps`` training used (the release encodes test captions at batch size 1,
``scripts/test_*.sh --batch_size=1``, so its test features never see padding either).

``encode`` returns, for split ``s`` with $N_I$ images and $N_T$ captions:

* ``image_embeddings`` $x$ (N_I, d), row ``i`` = image ``image_index == i`` of the split's cache;
* ``image_labels`` (N_I,) its ``class_index``;
* ``text_embeddings`` $z$ (N_T, d) in frame order; ``text_labels`` (N_T,).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import images as image_ops


def caption_tensors(frame: pd.DataFrame, vocabulary) -> dict[str, torch.Tensor]:
    """Every caption of ``frame`` as model input: ``token_ids`` (N_T, T) padded with 0, ``lengths``,
    ``labels`` (class_index) and ``image_indices``, all long, in frame order."""
    from ..data.text import pad_token_ids

    encoded = [vocabulary.encode(tokens, for_model_input=True) for tokens in frame["tokens"]]
    token_ids, lengths = pad_token_ids(encoded, vocabulary.pad_id)  # (N_T, T), (N_T,)
    return {
        "token_ids": token_ids,
        "lengths": lengths,
        "labels": torch.tensor(frame["class_index"].to_numpy(np.int64)),
        "image_indices": torch.tensor(frame["image_index"].to_numpy(np.int64)),
    }


def sentence_tensors(sentences: Sequence[str], vocabulary) -> dict[str, torch.Tensor]:
    """Free sentences as model input, tokenised and encoded as the captions are
    (:func:`cmp_utils.data.text.tokenize`, then ``vocabulary``): ``token_ids`` (Q, T) and ``lengths`` (Q,)."""
    from ..data.text import pad_token_ids, tokenize

    encoded = [vocabulary.encode(tokenize(sentence), for_model_input=True) for sentence in sentences]
    token_ids, lengths = pad_token_ids(encoded, vocabulary.pad_id)  # (Q, T), (Q,)
    return {"token_ids": token_ids, "lengths": lengths}


def image_labels_of(frame: pd.DataFrame, num_images: int) -> torch.Tensor:
    """(N_I,) class_index of each image of the split's cache, from any of its captions."""
    first = frame.drop_duplicates("image_index").sort_values("image_index")
    if len(first) != num_images or int(first["image_index"].iloc[-1]) != num_images - 1:
        raise ValueError(
            f"the frame names {len(first)} images but the image cache holds {num_images}; "
            "frame and cache come from different splits or preparations"
        )
    return torch.tensor(first["class_index"].to_numpy(np.int64))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module, captions: dict[str, torch.Tensor], device: torch.device | str, batch_size: int = 256
) -> torch.Tensor:
    """Text embeddings (N_T, d) of ``caption_tensors(...)``, batched by length (order restored)."""
    model = _unwrap(model)
    order = torch.argsort(captions["lengths"], descending=True, stable=True)
    outputs = torch.empty(len(order), model.embedding_dim)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        lengths = captions["lengths"][rows]
        token_ids = captions["token_ids"][rows, : int(lengths.max())]
        outputs[rows] = model.embed_texts(token_ids.to(device), lengths.to(device)).float().cpu()
    return outputs


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    pixels: np.ndarray | None,
    device: torch.device | str,
    batch_size: int = 256,
    image_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image embeddings (N_I, d): from uint8 ``pixels`` (N_I, H, W, 3), or from cached
    ``image_features`` (N_I, D) when the model's image branch takes features."""
    model = _unwrap(model)
    if model.takes_features:
        if image_features is None:
            raise ValueError(
                "this model's image branch takes cached features: pass image_features "
                "(see cmp_utils.training.cached_image_features)"
            )
        source, total = image_features, len(image_features)
    else:
        if pixels is None:
            raise ValueError("encode_images needs the split's pixels (image_cache(split).images)")
        source, total = pixels, len(pixels)
    normalisation = getattr(model.image_encoder, "normalisation", "unit")
    outputs = torch.empty(total, model.embedding_dim)
    for start in range(0, total, batch_size):
        if model.takes_features:
            batch = source[start : start + batch_size].to(device)
        else:
            batch = image_ops.normalise(np.asarray(source[start : start + batch_size]), normalisation).to(device)
            if torch.device(device).type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
        outputs[start : start + batch_size] = model.embed_images(batch).float().cpu()
    return outputs


@torch.no_grad()
def encode(
    model: torch.nn.Module,
    prepared,
    split: str,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    image_features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed split ``split`` of ``prepared`` (a :class:`cmp_utils.data.PreparedDataset`) in eval mode.

    Returns ``(image_embeddings (N_I, d), image_labels (N_I,), text_embeddings (N_T, d),
    text_labels (N_T,))`` on the CPU: each image once, each caption once. ``image_features``
    (N_I, D) is required when the model runs on cached features.
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        frame = prepared.frames[split]
        cache = None if model.takes_features else prepared.image_cache(split)
        num_images = len(image_features) if model.takes_features else len(cache)
        image_labels = image_labels_of(frame, num_images)
        image_embeddings = encode_images(
            model, None if cache is None else cache.images, device, batch_size, image_features
        )
        captions = caption_tensors(frame, prepared.vocabulary)
        text_embeddings = encode_texts(model, captions, device, batch_size)
    finally:
        model.train(was_training)
    return image_embeddings, image_labels, text_embeddings, captions["labels"]


def evaluate_split(
    model: torch.nn.Module,
    prepared,
    split: str,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    image_features: torch.Tensor | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, Any]:
    """Bidirectional retrieval on ``split``: ``{"i2t": {...}, "t2i": {...}, "rsum": float}`` with
    R@K for each K of ``ks`` (percent; ``rsum`` sums them), medr, meanr, mAP, mINP per direction (see
    :mod:`cmp_utils.evaluation.metrics`)."""
    from . import metrics

    image_embeddings, image_labels, text_embeddings, text_labels = encode(
        model, prepared, split, device, batch_size, image_features
    )
    return metrics.bidirectional_retrieval(image_embeddings, text_embeddings, image_labels, text_labels, ks)


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``{"i2t": {"R@1": ..}, "t2i": {..}, "rsum": ..}`` -> ``{"i2t_R@1": .., "t2i_R@1": .., "rsum": ..}``."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            for inner, number in value.items():
                if isinstance(number, (int, float)) or (torch.is_tensor(number) and number.numel() == 1):
                    flat[f"{key}_{inner}"] = float(number)
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat
