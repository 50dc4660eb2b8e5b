"""Tests of cmp_utils.evaluation.metrics against brute-force loops, hand-worked cases and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmp_utils.evaluation import metrics

# ---------------------------------------------------------------------------------------
# Brute force, float64, one loop per query and per positive (independent of the library)
# ---------------------------------------------------------------------------------------


def brute_positive_ranks(scores: np.ndarray, query_label: int, gallery_labels: np.ndarray) -> list[int]:
    """1-based ranks of the positives; a negative tied with a positive ranks first."""
    ranks = []
    positives = [g for g in range(len(gallery_labels)) if gallery_labels[g] == query_label]
    for p in positives:
        above = 0
        for g in range(len(gallery_labels)):
            if g == p:
                continue
            if gallery_labels[g] == query_label:  # another positive: strict, ties by index
                above += scores[g] > scores[p] or (scores[g] == scores[p] and g < p)
            else:  # a negative: ties count against the query
                above += scores[g] >= scores[p]
        ranks.append(above + 1)
    return sorted(ranks)


def brute_metrics(similarity: np.ndarray, query_labels, gallery_labels, ks=(1, 5, 10)) -> dict[str, float]:
    firsts, aps, inps = [], [], []
    for q in range(similarity.shape[0]):
        ranks = brute_positive_ranks(similarity[q], query_labels[q], gallery_labels)
        firsts.append(ranks[0])
        aps.append(sum((j + 1) / r for j, r in enumerate(ranks)) / len(ranks))
        inps.append(len(ranks) / ranks[-1])
    out = {f"R@{k}": 100.0 * sum(f <= k for f in firsts) / len(firsts) for k in ks}
    out["medr"] = float(math.floor(np.median(firsts)))
    out["meanr"] = float(np.mean(firsts))
    out["mAP"] = 100.0 * float(np.mean(aps))
    out["mINP"] = 100.0 * float(np.mean(inps))
    return out


def cosine(a: torch.Tensor, b: torch.Tensor, normalise: bool = True) -> np.ndarray:
    """Brute-force similarity in float64, one dot product at a time."""
    if normalise:
        a = torch.nn.functional.normalize(a.double(), dim=1)
        b = torch.nn.functional.normalize(b.double(), dim=1)
    out = np.empty((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = float((a[i].double() * b[j].double()).sum())
    return out


def random_problem(seed: int, n_query=37, n_gallery=53, dim=6, n_labels=9, integer_grid=False):
    """Random embeddings with repeated labels; every query label occurs in the gallery."""
    generator = torch.Generator().manual_seed(seed)
    gallery_labels = torch.arange(n_gallery) % n_labels
    gallery_labels = gallery_labels[torch.randperm(n_gallery, generator=generator)]
    query_labels = torch.randint(0, n_labels, (n_query,), generator=generator)
    if integer_grid:  # few distinct values -> many exactly tied (integer, exact) dot products
        queries = torch.randint(0, 2, (n_query, dim), generator=generator).double() + 1
        gallery = torch.randint(0, 2, (n_gallery, dim), generator=generator).double() + 1
    else:
        queries = torch.randn(n_query, dim, generator=generator, dtype=torch.float64)
        gallery = torch.randn(n_gallery, dim, generator=generator, dtype=torch.float64)
    return queries, gallery, query_labels, gallery_labels


def assert_metrics_close(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-9), key


# ---------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------


def test_hand_worked_single_query():
    # One query of label 0; scores best first 0.9 .. 0.5 with labels [1, 0, 2, 0, 0].
    # Positives sit at ranks r = 2, 4, 5 (P = 3).
    #   R@1 = 0 (rank 1 is label 1), R@2.. = 100; first-hit rank 2 -> medr = meanr = 2
    #   AP  = (1/2 + 2/4 + 3/5) / 3 = 1.6 / 3 = 0.5333.. (the hit itself counted)
    #         (the release's form (0/2 + 1/4 + 2/5) / 3 = 0.2167 would under-estimate it)
    #   INP = P / r_P = 3 / 5 = 0.6
    similarity = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    labels = torch.tensor([1, 0, 2, 0, 0])
    assert metrics.recall_at_k(similarity, torch.tensor([0]), labels, ks=(1, 2, 5)) == {1: 0.0, 2: 100.0, 5: 100.0}

    # The same ranking through embeddings: 2-D unit vectors at decreasing angles.
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    gallery = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    result = metrics.retrieval_metrics(query, gallery, torch.tensor([0]), labels, ks=(1, 2))
    assert result["R@1"] == 0.0 and result["R@2"] == 100.0
    assert result["medr"] == 2.0 and result["meanr"] == 2.0
    assert result["mAP"] == pytest.approx(100 * 1.6 / 3)
    assert result["mINP"] == pytest.approx(60.0)


def test_ties_are_pessimistic_against_negatives_only():
    # Scores all 0.5, labels [1, 0, 2]: the two tied negatives rank before the positive -> r = 3.
    # R@1 = R@2 = 0, R@3 = 100; AP = 1/3; INP = 1/3.
    tied = metrics.recall_at_k(torch.full((1, 3), 0.5), torch.tensor([0]), torch.tensor([1, 0, 2]), ks=(1, 2, 3))
    assert tied == {1: 0.0, 2: 0.0, 3: 100.0}
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    result = metrics.retrieval_metrics(query, gallery, [0], [1, 0, 2], ks=(1, 3))
    assert result["mAP"] == pytest.approx(100 / 3) and result["mINP"] == pytest.approx(100 / 3)
    # Two tied positives only: they take ranks 1 and 2 whatever their order -> R@1 = 100, AP = 1, INP = 1.
    both = metrics.retrieval_metrics(query, gallery[:2], [0], [0, 0], ks=(1,))
    assert both["R@1"] == 100.0 and both["mAP"] == pytest.approx(100.0) and both["mINP"] == pytest.approx(100.0)


def test_medr_meanr_hand_worked():
    # Query 0 (label 0) hits at rank 1, query 1 (label 1) at rank 2 (gallery [0, 1] scores favour item 0).
    # medr = floor(median(1, 2)) = floor(1.5) = 1 (VSE++ convention); meanr = 1.5.
    query = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    result = metrics.retrieval_metrics(query, gallery, [0, 1], [0, 1], ks=(1, 2))
    assert result["medr"] == 1.0 and result["meanr"] == 1.5
    assert result["R@1"] == 50.0 and result["R@2"] == 100.0


def test_minp_hand_worked_two_queries():
    # Gallery labels [0, 1, 2, 0].
    # Query A (label 0), scores [0.9, 0.1, 0.5, 0.3]: best first 0.9 (l0), 0.5 (l2), 0.3 (l0), 0.1 (l1)
    #   -> positives at ranks 1 and 3: INP = 2/3, AP = (1/1 + 2/3) / 2 = 5/6.
    # Query B (label 1), scores [0.2, 0.8, 0.9, 0.1]: best first 0.9 (l2), 0.8 (l1)
    #   -> its single positive at rank 2: INP = 1/2, AP = 1/2.
    # mINP = (2/3 + 1/2) / 2 = 7/12; mAP = (5/6 + 1/2) / 2 = 2/3.
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.9, 0.1]])
    gallery_labels = torch.tensor([0, 1, 2, 0])
    per_query = metrics.query_ranks(
        lambda s, e: iter([(0, 4, similarity[s:e])]), 2, torch.tensor([0, 1]), gallery_labels, chunk_size=2
    )
    assert per_query["first"].tolist() == [1, 2]
    assert per_query["inp"].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert per_query["ap"].tolist() == pytest.approx([5 / 6, 1 / 2])
    summary = metrics.metrics_from_query_ranks(per_query, (1,))
    assert summary["mINP"] == pytest.approx(100 * 7 / 12) and summary["mAP"] == pytest.approx(100 * 2 / 3)


# ---------------------------------------------------------------------------------------
# Against brute force, chunked == unchunked, both counting paths
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("integer_grid", [False, True], ids=["continuous", "many-ties"])
@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_metrics_match_brute_force(seed, integer_grid):
    # With integer embeddings and no normalisation every score is an exact integer, so the
    # many ties are exact whatever the order of floating-point summation.
    queries, gallery, query_labels, gallery_labels = random_problem(seed, integer_grid=integer_grid)
    normalise = not integer_grid
    similarity = cosine(queries, gallery, normalise)
    expected = brute_metrics(similarity, query_labels.tolist(), np.array(gallery_labels.tolist()))
    ours = metrics.retrieval_metrics(queries, gallery, query_labels, gallery_labels, normalise=normalise)
    assert_metrics_close(ours, expected)
    similarity = torch.from_numpy(similarity)
    recall = metrics.recall_at_k(similarity, query_labels, gallery_labels, ks=(1, 5, 10))
    assert recall == {k: pytest.approx(expected[f"R@{k}"]) for k in (1, 5, 10)}


@pytest.mark.parametrize("compare_max", [0, 1000], ids=["sort-path", "compare-path"])
@pytest.mark.parametrize("chunk_size,gallery_chunk_size", [(1, 1), (3, 7), (16, 53), (100, 5), (37, None)])
def test_chunked_equals_unchunked(monkeypatch, chunk_size, gallery_chunk_size, compare_max):
    monkeypatch.setattr(metrics, "_COMPARE_MAX_POSITIVES", compare_max)
    queries, gallery, query_labels, gallery_labels = random_problem(3, integer_grid=True)
    # Exact integer scores (see above): a BLAS may round one dot product differently for
    # different block shapes, which would move exact ties; integers cannot be rounded.
    whole = metrics.retrieval_metrics(
        queries, gallery, query_labels, gallery_labels, chunk_size=10_000, normalise=False
    )
    chunked = metrics.retrieval_metrics(
        queries,
        gallery,
        query_labels,
        gallery_labels,
        chunk_size=chunk_size,
        gallery_chunk_size=gallery_chunk_size,
        normalise=False,
    )
    assert chunked == whole


def test_blocks_stay_within_chunk_bounds(monkeypatch):
    seen_shapes = []
    original = metrics.count_at_least

    def recording(negative_scores, thresholds):
        seen_shapes.append(tuple(negative_scores.shape))
        return original(negative_scores, thresholds)

    monkeypatch.setattr(metrics, "count_at_least", recording)
    queries, gallery, query_labels, gallery_labels = random_problem(4, n_query=40, n_gallery=90)
    metrics.retrieval_metrics(queries, gallery, query_labels, gallery_labels, chunk_size=8, gallery_chunk_size=16)
    assert seen_shapes and all(rows <= 8 and columns <= 16 for rows, columns in seen_shapes)
    # 5 query chunks x ceil(90 / 16) = 6 gallery blocks
    assert len(seen_shapes) == 5 * 6


def test_float32_and_float64_agree():
    queries, gallery, query_labels, gallery_labels = random_problem(5)
    in_64 = metrics.retrieval_metrics(queries, gallery, query_labels, gallery_labels)
    in_32 = metrics.retrieval_metrics(queries.float(), gallery.float(), query_labels, gallery_labels)
    assert in_32 == pytest.approx(in_64)


# ---------------------------------------------------------------------------------------
# The positives' ranks against a loop transcription of their definition (many ties)
# ---------------------------------------------------------------------------------------


def definition_ranks(scores: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> list[list[int]]:
    """$r_j = j + |\\{\\text{negatives } g: s_g \\ge s_j\\}|$, $s_j$ the $j$-th best positive: loops over Python floats."""
    ranks = []
    for q in range(scores.shape[0]):
        row = [float(value) for value in scores[q]]
        is_positive = [int(label) == int(query_labels[q]) for label in gallery_labels]
        positives = sorted((row[g] for g in range(len(row)) if is_positive[g]), reverse=True)
        negatives = [row[g] for g in range(len(row)) if not is_positive[g]]
        ranks.append(
            [j + sum(negative >= positive for negative in negatives) for j, positive in enumerate(positives, 1)]
        )
    return ranks


def tied_problem(seed: int, positives: int | str, dtype: torch.dtype, n_query: int = 11):
    """Scores in quarters from -1 to 1 (exact in every float type, so almost every score is tied), -0.0
    beside 0.0, +-inf on some negatives; classes of ``positives`` gallery items and one of 5 (so the
    queries have different numbers of positives), or one class holding the whole gallery ("all")."""
    generator = torch.Generator().manual_seed(seed)
    if positives == "all":
        gallery_labels = torch.zeros(50, dtype=torch.int64)
        query_labels = torch.zeros(n_query, dtype=torch.int64)
    else:
        gallery_labels = torch.arange(4 * positives + 5) // positives  # classes 0..3 of `positives`, then 5 more
        gallery_labels = gallery_labels.clamp(max=4)[torch.randperm(4 * positives + 5, generator=generator)]
        query_labels = torch.randint(0, 5, (n_query,), generator=generator)
    n_gallery = gallery_labels.numel()
    scores = (torch.randint(-4, 5, (n_query, n_gallery), generator=generator) / 4).to(dtype)  # (Q, G)
    scores[(scores == 0) & (torch.rand(n_query, n_gallery, generator=generator) < 0.5)] = -0.0
    negative = query_labels[:, None] != gallery_labels[None, :]
    infinite = negative & (torch.rand(n_query, n_gallery, generator=generator) < 0.05)
    scores[infinite] = torch.where(torch.rand(n_query, n_gallery, generator=generator) < 0.5, math.inf, -math.inf)[
        infinite
    ].to(dtype)
    return scores, query_labels, gallery_labels


def in_blocks(scores: torch.Tensor, block: int):
    """A ``score_blocks`` callable over a precomputed matrix, ``block`` gallery items at a time."""

    def score_blocks(query_start: int, query_end: int):
        for start in range(0, scores.shape[1], block):
            yield start, min(start + block, scores.shape[1]), scores[query_start:query_end, start : start + block]

    return score_blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("positives", [1, 3, 100, "all"])
@pytest.mark.parametrize("compare_max", [0, 1000], ids=["sort-path", "compare-path"])
def test_positive_ranks_match_their_definition_with_many_ties(monkeypatch, compare_max, positives, dtype):
    monkeypatch.setattr(metrics, "_COMPARE_MAX_POSITIVES", compare_max)  # torch's counting
    monkeypatch.setattr(metrics, "_COMPARE_MAX_POSITIVES_NUMPY", compare_max)  # NumPy's (float32 / float64)
    for seed in range(3):
        scores, query_labels, gallery_labels = tied_problem(seed, positives, dtype)
        n_query, n_gallery = scores.shape
        counts = metrics.positive_counts(query_labels, gallery_labels)
        expected = definition_ranks(scores, query_labels, gallery_labels)
        one_block = metrics.chunk_positive_ranks(
            in_blocks(scores, n_gallery), 0, n_query, query_labels, gallery_labels, counts
        )  # the one-block path
        several = metrics.chunk_positive_ranks(
            in_blocks(scores, 7), 0, n_query, query_labels, gallery_labels, counts
        )  # the two-pass path, block by block
        assert [one_block[q, : counts[q]].tolist() for q in range(n_query)] == expected
        assert one_block.dtype == several.dtype == torch.int64
        assert torch.equal(one_block, several)  # the padding too


@pytest.mark.parametrize("positives", [1, 3, 100, "all"])
def test_query_summaries_are_the_same_bits_in_one_block_and_in_several(positives):
    scores, query_labels, gallery_labels = tied_problem(7, positives, torch.float32, n_query=300)
    scores = scores.clamp(-1, 1)  # finite: the summaries below use every score
    n_query, n_gallery = scores.shape
    whole = metrics.query_ranks(in_blocks(scores, n_gallery), n_query, query_labels, gallery_labels, chunk_size=64)
    blocked = metrics.query_ranks(in_blocks(scores, 13), n_query, query_labels, gallery_labels, chunk_size=64)
    for key in ("first", "ap", "inp"):
        assert torch.equal(whole[key], blocked[key]), key
    # AP and INP as the torch formula of the summary gives them (that of a CUDA device), bit for bit.
    counts = metrics.positive_counts(query_labels, gallery_labels)
    ranks = metrics.chunk_positive_ranks(in_blocks(scores, n_gallery), 0, n_query, query_labels, gallery_labels, counts)
    position = torch.arange(1, ranks.shape[1] + 1)
    precision = position[None, :].to(torch.float64) / ranks.to(torch.float64)
    ap = (precision * (position[None, :] <= counts[:, None])).sum(dim=1) / counts.to(torch.float64)
    assert torch.equal(whole["ap"], ap)
    expected = definition_ranks(scores, query_labels, gallery_labels)
    assert whole["ap"].tolist() == pytest.approx(
        [sum(j / r for j, r in enumerate(row, 1)) / len(row) for row in expected]
    )
    assert whole["inp"].tolist() == pytest.approx([len(row) / row[-1] for row in expected])


@pytest.mark.parametrize("positives", [3, 100], ids=["compare-path", "sort-path"])
def test_ranks_are_the_same_on_one_thread_and_several(positives):  # 3 <= _COMPARE_MAX_POSITIVES_NUMPY < 100
    from cmp_utils.core import config

    scores, query_labels, gallery_labels = tied_problem(11, positives, torch.float32, n_query=256)
    counts = metrics.positive_counts(query_labels, gallery_labels)
    ranks = []
    for threads in (1, 4):  # the rows ranked in 1 range, then in 4 (one a thread)
        with config.torch_threads(threads):
            ranks.append(
                metrics.chunk_positive_ranks(
                    in_blocks(scores, scores.shape[1]), 0, 256, query_labels, gallery_labels, counts
                )
            )
    assert torch.equal(ranks[0], ranks[1])
    expected = definition_ranks(scores, query_labels, gallery_labels)
    assert [ranks[1][q, : counts[q]].tolist() for q in range(256)] == expected


def test_comparison_counts_without_bitwise_count_are_the_same(monkeypatch):
    # NumPy < 2 has no bitwise_count: the comparison path then counts with count_nonzero.
    scores, query_labels, gallery_labels = tied_problem(12, 3, torch.float64, n_query=40)
    counts = metrics.positive_counts(query_labels, gallery_labels)
    whole = in_blocks(scores, scores.shape[1])
    with_words = metrics.chunk_positive_ranks(whole, 0, 40, query_labels, gallery_labels, counts)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert torch.equal(metrics.chunk_positive_ranks(whole, 0, 40, query_labels, gallery_labels, counts), with_words)
    expected = definition_ranks(scores, query_labels, gallery_labels)
    assert [with_words[q, : counts[q]].tolist() for q in range(40)] == expected


def test_non_finite_positives_are_refused_and_infinite_negatives_ranked():
    gallery_labels = torch.tensor([0, 1, 0, 1])
    for block in (4, 2):
        for bad in (math.nan, math.inf, -math.inf):
            scores = torch.tensor([[0.5, 0.2, 0.1, 0.3]])
            scores[0, 2] = bad  # a positive
            with pytest.raises(ValueError, match="finite"):
                metrics.chunk_positive_ranks(
                    in_blocks(scores, block), 0, 1, torch.tensor([0]), gallery_labels, torch.tensor([2])
                )
        scores = torch.tensor([[0.5, math.nan, 0.1, 0.3]])  # a NaN negative
        with pytest.raises(ValueError, match="finite"):
            metrics.chunk_positive_ranks(
                in_blocks(scores, block), 0, 1, torch.tensor([0]), gallery_labels, torch.tensor([2])
            )
        scores = torch.tensor([[0.5, math.inf, 0.1, -math.inf]])  # infinite negatives: above and below
        ranks = metrics.chunk_positive_ranks(
            in_blocks(scores, block), 0, 1, torch.tensor([0]), gallery_labels, torch.tensor([2])
        )
        assert ranks.tolist() == [[2, 3]]


# ---------------------------------------------------------------------------------------
# Cross-checks with torchmetrics
# ---------------------------------------------------------------------------------------


def flattened_for_torchmetrics(similarity: torch.Tensor, query_labels, gallery_labels):
    """torchmetrics' retrieval inputs: one row per (query, gallery) pair, ``indexes`` = query id.

    torchmetrics 1.9 treats a relevant item whose score is <= 0 as irrelevant, so the cosine
    scores are shifted by +2 (all positive, same order) to compare like with like.
    """
    n_query, n_gallery = similarity.shape
    preds = similarity.reshape(-1) + 2.0
    target = (query_labels[:, None] == gallery_labels[None, :]).reshape(-1)
    indexes = torch.arange(n_query)[:, None].expand(n_query, n_gallery).reshape(-1)
    return preds, target, indexes


def test_recall_matches_torchmetrics_hit_rate():
    from torchmetrics.retrieval import RetrievalHitRate

    queries, gallery, query_labels, gallery_labels = random_problem(6, n_query=60, n_gallery=80)
    similarity = torch.from_numpy(cosine(queries, gallery))
    ours = metrics.recall_at_k(similarity, query_labels, gallery_labels, ks=(1, 5, 10))
    preds, target, indexes = flattened_for_torchmetrics(similarity, query_labels, gallery_labels)
    for k in (1, 5, 10):
        theirs = RetrievalHitRate(top_k=k)(preds, target, indexes=indexes)
        assert ours[k] == pytest.approx(100 * float(theirs), abs=1e-4)  # theirs is float32


def test_map_matches_torchmetrics_map():
    # torchmetrics' AP also counts the hit itself (precision at each relevant position), so the
    # definitions agree on tie-free data.
    from torchmetrics.retrieval import RetrievalMAP

    queries, gallery, query_labels, gallery_labels = random_problem(7, n_query=60, n_gallery=80)
    ours = metrics.retrieval_metrics(queries, gallery, query_labels, gallery_labels)
    preds, target, indexes = flattened_for_torchmetrics(
        torch.from_numpy(cosine(queries, gallery)), query_labels, gallery_labels
    )
    theirs = RetrievalMAP()(preds, target, indexes=indexes)
    assert ours["mAP"] == pytest.approx(100 * float(theirs), abs=1e-4)  # theirs is float32


# ---------------------------------------------------------------------------------------
# Bidirectional retrieval and the MSCOCO folds
# ---------------------------------------------------------------------------------------


def test_bidirectional_directions_and_rsum():
    queries, gallery, query_labels, gallery_labels = random_problem(8)
    result = metrics.bidirectional_retrieval(gallery, queries, gallery_labels, query_labels)
    similarity = cosine(gallery, queries)  # images x texts
    assert_metrics_close(
        result["i2t"], brute_metrics(similarity, gallery_labels.tolist(), np.array(query_labels.tolist()))
    )
    assert_metrics_close(
        result["t2i"], brute_metrics(similarity.T, query_labels.tolist(), np.array(gallery_labels.tolist()))
    )
    assert result["rsum"] == pytest.approx(sum(result[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))


def test_coco_folds_hand_worked():
    # 10 images (fewer than 5000 -> fold size 10 // 5 = 2), image i = one-hot(i % 2), two
    # captions per image equal to their image. Within a fold the two images are orthogonal,
    # so 1K is perfect: R@1 = 100 both ways.
    # 5K: a caption of image 0 scores 1 with images 0, 2, 4, 6, 8 (tied): the 4 tied negatives
    # rank first -> r = 5 -> t2i R@1 = 0, R@5 = 100. Image 0 scores 1 with the 10 captions of
    # images 0, 2, .., 8: its own 2 captions take ranks 9 and 10 -> i2t R@1 = R@5 = 0, R@10 = 100.
    images = torch.eye(2)[torch.arange(10) % 2]  # (10, 2)
    image_ids = torch.arange(100, 110)
    texts = images.repeat_interleave(2, dim=0)  # (20, 2)
    text_ids = image_ids.repeat_interleave(2)
    result = metrics.coco_1k_5k(images, texts, image_ids, text_ids)
    assert result["1k"]["fold_size"] == 2 and result["1k"]["n_folds"] == 5
    assert result["1k"]["i2t"]["R@1"] == 100.0 and result["1k"]["t2i"]["R@1"] == 100.0
    assert result["1k"]["rsum"] == 600.0
    assert result["5k"]["t2i"]["R@1"] == 0.0 and result["5k"]["t2i"]["R@5"] == 100.0
    assert result["5k"]["i2t"]["R@5"] == 0.0 and result["5k"]["i2t"]["R@10"] == 100.0


def test_coco_folds_match_manual_split():
    generator = torch.Generator().manual_seed(9)
    images = torch.randn(13, 5, generator=generator)  # 13 // 5 = 2 per fold; the last 3 only in 5K
    image_ids = torch.randperm(1000, generator=generator)[:13]
    caption_image = torch.randint(0, 13, (40,), generator=generator)
    caption_image[:13] = torch.arange(13)  # every image has a caption
    texts = images[caption_image] + 0.8 * torch.randn(40, 5, generator=generator)
    text_ids = image_ids[caption_image]
    result = metrics.coco_1k_5k(images, texts, image_ids, text_ids)
    folds = []
    for fold in range(5):
        fold_ids = image_ids[fold * 2 : fold * 2 + 2]
        keep = torch.isin(text_ids, fold_ids)
        folds.append(
            metrics.bidirectional_retrieval(images[fold * 2 : fold * 2 + 2], texts[keep], fold_ids, text_ids[keep])
        )
    for direction in ("i2t", "t2i"):
        for key in ("R@1", "R@5", "mAP", "meanr"):
            assert result["1k"][direction][key] == pytest.approx(np.mean([f[direction][key] for f in folds]))
    assert result["5k"] == metrics.bidirectional_retrieval(images, texts, image_ids, text_ids)
    assert metrics.coco_1k_5k(images, texts, image_ids, text_ids, fold_size=1)["1k"]["fold_size"] == 1


# ---------------------------------------------------------------------------------------
# CUB / Flowers zero-shot protocol
# ---------------------------------------------------------------------------------------


def brute_zero_shot(images, image_classes, texts, text_classes, ap_at):
    classes = sorted(set(text_classes.tolist()))
    normalised_texts = torch.nn.functional.normalize(texts.double(), dim=1)
    centres = []
    for c in classes:
        members = [normalised_texts[i] for i in range(len(text_classes)) if text_classes[i] == c]
        mean = sum(members) / len(members)
        centres.append(mean / mean.norm())
    centres = torch.stack(centres)
    similarity = torch.nn.functional.normalize(images.double(), dim=1) @ centres.T  # (N, C)
    correct = [classes[int(similarity[i].argmax())] == int(image_classes[i]) for i in range(len(images))]
    precision, standard = [], []
    for column, c in enumerate(classes):
        order = sorted(range(len(images)), key=lambda i: -float(similarity[i, column]))
        relevant = [int(image_classes[i]) == c for i in order]
        precision.append(sum(relevant[:ap_at]) / ap_at)
        hits, total = 0, 0.0
        for position, is_relevant in enumerate(relevant[:ap_at], start=1):
            if is_relevant:
                hits += 1
                total += hits / position
        standard.append(total / min(sum(relevant), ap_at))
    return 100 * np.mean(correct), 100 * np.mean(precision), 100 * np.mean(standard)


@pytest.mark.parametrize("ap_at", [50, 5])
def test_zero_shot_matches_brute_force(ap_at):
    generator = torch.Generator().manual_seed(10)
    n_classes, dim = 6, 8
    prototypes = torch.randn(n_classes, dim, generator=generator)
    image_classes = torch.randint(0, n_classes, (70,), generator=generator) + 200
    images = prototypes[image_classes - 200] + 1.2 * torch.randn(70, dim, generator=generator)
    text_classes = torch.arange(n_classes).repeat(4) + 200
    texts = (
        (prototypes[text_classes - 200] + torch.randn(24, dim, generator=generator))
        * torch.rand(24, 1, generator=generator)
        * 5
    )
    result = metrics.zero_shot_class_metrics(images, image_classes, texts, text_classes, ap_at=ap_at)
    top1, precision, standard = brute_zero_shot(images, image_classes, texts, text_classes, ap_at)
    assert result["top1_accuracy"] == pytest.approx(top1)
    assert result[f"ap@{ap_at}"] == pytest.approx(precision)
    assert result[f"standard_ap@{ap_at}"] == pytest.approx(standard)
    assert result["n_classes"] == n_classes


def test_zero_shot_hand_worked_divides_by_k():
    # Class 0: 2 images, class 1: 1 image; text class means point exactly at their images.
    # top-1: every image's nearest class mean is its own -> 100 %.
    # AP@50 as the reference defines it: class 0 has 2 of its images in the top 50 -> 2/50;
    # class 1 has 1 -> 1/50; mean = 1.5 / 50 = 3 %. The standard AP@50 is 100 % for both.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.05], [2.0, 0.1], [0.0, 3.0]])
    result = metrics.zero_shot_class_metrics(images, [0, 0, 1], texts, [0, 0, 1])
    assert result["top1_accuracy"] == 100.0
    assert result["ap@50"] == pytest.approx(3.0)
    assert result["standard_ap@50"] == pytest.approx(100.0)


def test_class_text_embeddings_average_normalised_texts():
    # Class 7: texts (2, 0) and (0, 5) -> normalised (1, 0), (0, 1) -> mean (.5, .5) -> (1, 1)/sqrt 2.
    classes, centres = metrics.class_text_embeddings(torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0]]), [7, 7, 3])
    assert classes.tolist() == [3, 7]
    torch.testing.assert_close(centres, torch.tensor([[0.0, -1.0], [2**-0.5, 2**-0.5]]))


# ---------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    queries, gallery = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="no gallery item with their label"):
        metrics.retrieval_metrics(queries, gallery, [0, 1, 9], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="dim"):
        metrics.retrieval_metrics(queries, torch.randn(5, 3), [0, 1, 2], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="query_labels"):
        metrics.retrieval_metrics(queries, gallery, [0, 1], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="integer"):
        metrics.retrieval_metrics(queries, gallery, torch.tensor([0.0, 1.0, 2.0]), [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="ks"):
        metrics.recall_at_k(torch.randn(3, 5), [0, 1, 2], [0, 1, 2, 3, 4], ks=(0,))
    with pytest.raises(ValueError, match="finite"):
        metrics.recall_at_k(torch.tensor([[float("nan"), 0.0]]), [0], [0, 1])
    with pytest.raises(ValueError, match="unique"):
        metrics.coco_1k_5k(torch.randn(10, 4), torch.randn(10, 4), [0] * 10, list(range(10)))
    with pytest.raises(ValueError, match="without any text"):
        metrics.zero_shot_class_metrics(torch.randn(3, 4), [0, 1, 2], torch.randn(2, 4), [0, 1])
