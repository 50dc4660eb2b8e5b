r"""Retrieval metrics and the evaluation protocols of the paper's five datasets.

Every metric here is computed from one quantity: for each query, the **ranks of its
positives** (gallery items that share the query's label) in the gallery sorted by
similarity, best first.

* a query $q$ with label $y_q$ and a gallery $\{g_1, \dots, g_G\}$ with labels $y_g$;
* scores $s_{qg}$ (cosine similarity of L2-normalised embeddings, or a given matrix);
* positives $\mathcal{P}_q = \{g : y_g = y_q\}$, $P_q = |\mathcal{P}_q|$ of them;
* sorted best first, the positives sit at ranks $r_1 < r_2 < \dots < r_{P_q}$ (1-based).

From those ranks:

* **R@K** (recall@K, in percent): $100 \cdot \frac{1}{Q}\sum_q [r_1 \le K]$, a hit when any of the
  top $K$ gallery items shares the query's label (the released code's definition);
* **medr / meanr**: median / mean of the first-hit rank $r_1$. ``medr`` follows the
  image-text retrieval convention (VSE++, ``floor(median(0-based rank)) + 1``), which is
  $\lfloor \mathrm{median}(r_1) \rfloor$ of the 1-based ranks;
* **mAP** (person-search definition): $AP_q = \frac{1}{P_q}\sum_{j=1}^{P_q} \frac{j}{r_j}$, the
  precision at each positive **including that positive itself** ($j$ positives among the top
  $r_j$). The authors' release leaves the hit itself out ($\frac{j-1}{r_j}$), which
  under-estimates mAP; we do not copy that;
* **mINP** (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
  TPAMI 2021): $INP_q = \frac{P_q}{r_{P_q}}$, positives over the rank of the hardest (last)
  positive.

**Ties.** The metrics only depend on the set of ranks the positives occupy, so the order
among tied positives does not matter. A negative whose score *equals* a positive's score is
ranked before it (pessimistic): a constant similarity can never score a hit by luck, and the
result does not depend on the order of the gallery. With continuous embeddings ties are rare.
One caveat: a matrix-multiply kernel may round the same dot product differently for different
block shapes (by an ulp), so scores that tie exactly in one chunking may not in another; with
exactly representable scores (e.g. integer embeddings) chunked and unchunked results are equal.

**Streaming.** Nothing of size $Q \times G$ is ever held. Queries go in chunks of
``chunk_size`` rows; the gallery in blocks of ``gallery_chunk_size`` columns. For a chunk the
positives' scores are gathered first (one pass over the gallery blocks), sorted best first,
and then, for the $j$-th best positive, the number of negatives scoring at least as high,
$n_j$, is counted block by block: $r_j = j + n_j$. Counting is exact (integer counts over
exact score comparisons, no approximation), either by direct comparison (few positives per
query) or by sorting each block once and a binary search per positive (many positives; on the
CPU NumPy's vectorised sort and ``searchsorted``, elsewhere torch's). The positives' own
scores above each positive are counted the same way, from each row's sorted positives, so the
cost is linear in the positives per query (up to a log), not quadratic. When one block holds
the whole gallery (the usual case), the positives' scores are read with one masked selection,
and the positives scoring at least each positive are read off that row's sorted positives (from
the start of its run of equal scores: no search); on the CPU these steps run in NumPy, the rows'
sorts, searches and comparisons split between torch's threads (same integers either way).
Negatives are counted as (items scoring at least $s_j$) minus (positives scoring at least
$s_j$), both read from the same block, so no masked copy of a block is made.
Peak memory is about ``10 * chunk_size * gallery_chunk_size`` bytes (the score block, a
positive mask, a comparison mask and its uint8 partial sums), or about 22 bytes per element on
the sort path (a sorted copy and its int64 indices), plus ``O(chunk_size * max_positives)``;
with the default block budget of $2^{25}$ score elements that is about 0.35 GB (0.75 GB). When
the whole gallery fits one block the scores of a chunk are computed once; otherwise twice (one
pass to gather the positives' scores, one to count). With ``gallery_chunk_size=None`` the query
chunk shrinks (down to 16 rows) when that lets the whole gallery fit one block.

Everything runs on the device of the inputs (labels are moved there); results are Python
floats in percent (R@K, mAP, mINP, accuracies) or ranks (medr, meanr).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Largest number of score elements (query chunk x gallery block) held at once when
# ``gallery_chunk_size`` is left to ``None``.
DEFAULT_BLOCK_ELEMENTS = 2**25
# Up to this many positives per query, negatives are counted by direct comparison (one pass per
# positive); above it, by sorting each block once and ``torch.searchsorted`` (same exact integers).
# On the CPU one comparison pass costs well under 1/64 of a sort (cmp_utils.tools.bench).
_COMPARE_MAX_POSITIVES = 64

ScoreBlocks = Callable[[int, int], Iterator[tuple[int, int, torch.Tensor]]]


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------


def _as_labels(labels, name: str, length: int, device: torch.device) -> torch.Tensor:
    """Labels as an int64 vector of ``length`` on ``device``, or a clear error."""
    tensor = torch.as_tensor(labels, device=device)
    if tensor.dim() != 1 or tensor.shape[0] != length:
        raise ValueError(f"parameter {name} must be a 1-D tensor of {length} labels, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"parameter {name} must hold integer labels (ids), got dtype {tensor.dtype}")
    return tensor.to(torch.int64)


def _check_embeddings(embeddings: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"parameter {name} must be a 2-D tensor (items, dim), got {shape}")
    if embeddings.shape[0] == 0:
        raise ValueError(f"parameter {name} is empty; pass at least one embedding")
    if not embeddings.is_floating_point():
        raise ValueError(f"parameter {name} must be a floating-point tensor, got {embeddings.dtype}")
    return embeddings


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"parameter ks={ks!r} must be a non-empty list of positive integers, e.g. (1, 5, 10)")
    return ks


def _check_chunk(value: int | None, name: str) -> int | None:
    if value is not None and int(value) < 1:
        raise ValueError(f"parameter {name}={value!r} must be a positive integer (or None)")
    return None if value is None else int(value)


def positive_counts(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """$P_q$: how many gallery items share each query's label. ``(Q,)`` int64.

    Uses the sorted unique gallery labels, so it costs $O((Q + G)\\log G)$, never $Q \\times G$.
    """
    unique_labels, counts = torch.unique(gallery_labels, return_counts=True)  # (U,), (U,)
    slot = torch.searchsorted(unique_labels, query_labels).clamp(max=unique_labels.numel() - 1)  # (Q,)
    found = unique_labels[slot] == query_labels  # (Q,)
    return torch.where(found, counts[slot], torch.zeros_like(slot))


# ---------------------------------------------------------------------------------------
# The core: ranks of every positive, one query chunk at a time
# ---------------------------------------------------------------------------------------


# Columns summed per uint8 partial sum by :func:`_count_true` (the most a uint8 can hold).
_UINT8_GROUP = 255


def _count_true(mask: torch.Tensor) -> torch.Tensor:
    """Row sums of a bool matrix ``(c, B)`` -> ``(c,)`` int64, without a widened copy of it.

    ``mask.sum(dim=1)`` (and ``count_nonzero``) first copies the whole mask as int64, which made
    it several times slower than the comparison itself on the CPU (``cmp_utils.tools.bench``); here
    groups of 255 columns are summed in uint8 (exact: at most 255), then the partial sums in int64.
    """
    flat = mask.view(torch.uint8)  # (c, B), same bytes
    whole = mask.shape[1] // _UINT8_GROUP * _UINT8_GROUP
    counts = flat[:, whole:].sum(dim=1, dtype=torch.int64)  # (c,) the last, partial group
    if whole:
        groups = flat[:, :whole].view(mask.shape[0], -1, _UINT8_GROUP)  # (c, B // 255, 255)
        counts += groups.sum(dim=2, dtype=torch.uint8).sum(dim=1, dtype=torch.int64)
    return counts


def _sorted_rows(values: torch.Tensor) -> torch.Tensor:
    """Each row of ``values`` (c, n) sorted ascending: the same values ``torch.sort`` gives.

    On the CPU, float32 / float64 rows are sorted by NumPy, whose vectorised sort (x86-simd-sort)
    was about 18x faster than ``torch.sort`` on 256 x 5,000 float32 on one core
    (``cmp_utils.tools.bench.kernels.bench_positives_per_query``); elsewhere ``torch.sort``. Only values are
    returned, so the order of equal values (0.0 and -0.0) cannot change any count made from them.
    """
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(values.detach().numpy(), axis=1))
    return torch.sort(values, dim=1).values


def _count_below(ascending: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """For each row, how many entries of ``ascending`` (c, n; rows sorted) are < each threshold (c, P).

    ``torch.searchsorted(side="left")``; on the CPU with float32 / float64 one ``numpy.searchsorted``
    per row, the same integers about 30% faster (``cmp_utils.tools.bench.kernels.bench_positives_per_query``).
    """
    if (
        ascending.device.type != "cpu"
        or ascending.dtype not in (torch.float32, torch.float64)
        or thresholds.dtype != ascending.dtype
    ):
        return torch.searchsorted(ascending, thresholds.contiguous(), side="left")
    sorted_rows, needles = ascending.detach().numpy(), thresholds.detach().numpy()
    below = np.empty(needles.shape, dtype=np.int64)
    for row in range(sorted_rows.shape[0]):
        below[row] = np.searchsorted(sorted_rows[row], needles[row], side="left")
    return torch.from_numpy(below)


def count_at_least(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """For each row, how many ``scores`` (c, B) are >= each threshold (c, P). ``(c, P)`` int64."""
    if thresholds.shape[1] <= _COMPARE_MAX_POSITIVES:
        columns = [_count_true(scores >= thresholds[:, j : j + 1]) for j in range(thresholds.shape[1])]
        return torch.stack(columns, dim=1)
    ascending = _sorted_rows(scores)  # (c, B)
    below = _count_below(ascending, thresholds)  # (c, P): how many < threshold
    return scores.shape[1] - below


def positives_at_least(
    pair_scores: torch.Tensor, rows: torch.Tensor, chunk: int, thresholds: torch.Tensor
) -> torch.Tensor:
    """For each query row, how many of its positives in a block score >= each threshold. ``(c, P)`` int64.

    ``pair_scores`` ``(m,)`` are the block's positive scores, ``rows`` ``(m,)`` their query rows in
    ascending (row-major) order, ``thresholds`` ``(c, P)``. The positives of each row are sorted
    once and every threshold is placed with ``torch.searchsorted``: O(m log m + c P log P),
    linear in the positives per query up to the log (comparing every positive with every
    threshold cost $c P^2$ in time and memory; `make bench` measures both forms).
    The counts are the same integers the direct comparison gives.
    """
    device = thresholds.device
    in_block = torch.bincount(rows, minlength=chunk)  # (c,) positives of each row in this block
    width = int(in_block.max()) if rows.numel() else 0
    if width == 0:
        return torch.zeros_like(thresholds, dtype=torch.int64)
    row_start = torch.cumsum(in_block, dim=0) - in_block  # (c,)
    slot = torch.arange(rows.numel(), device=device) - row_start[rows]  # (m,) position within its row
    padded = torch.full((chunk, width), -math.inf, dtype=pair_scores.dtype, device=device)  # (c, width)
    padded[rows, slot] = pair_scores
    ascending = _sorted_rows(padded)  # the -inf padding first
    below = _count_below(ascending, thresholds)  # (c, P): entries < threshold
    # The padding counts as ">= -inf" only for -inf thresholds (padding columns); cap at the real count.
    return torch.minimum(width - below, in_block[:, None])


def _replayed(first, rest: Iterator) -> Iterator:
    """``first``, then the items of ``rest``: an iterator whose first item was already read."""
    yield first
    yield from rest


def _positives_at_least_sorted(ascending: torch.Tensor) -> torch.Tensor:
    """For rows sorted ascending ``(c, P)``, how many entries of the row are >= each entry. ``(c, P)`` int64.

    The entries from the start of an entry's run of equal values to the end of the row:
    ``P - run_start``, with ``run_start`` the running maximum of the indices where a new value
    begins (``0.0`` and ``-0.0`` are one run, as they compare equal). O(c P): no search.
    """
    width = ascending.shape[1]
    index = torch.arange(width, device=ascending.device).expand_as(ascending)  # (c, P)
    begins = torch.ones_like(ascending, dtype=torch.bool)  # (c, P): a run of equal values begins here
    begins[:, 1:] = ascending[:, 1:] != ascending[:, :-1]
    run_start = torch.where(begins, index, torch.zeros_like(index)).cummax(dim=1).values  # (c, P)
    return width - run_start


def _in_row_ranges(n_rows: int, work: Callable[[int, int], None]) -> None:
    """``work(start, end)`` over ``[0, n_rows)`` split into ranges, one a thread.

    ``torch.get_num_threads()`` threads (the cores the matrix product uses), at least 32 rows a
    thread (starting a thread costs more than ranking fewer); NumPy releases the GIL in its
    sorts, searches and element-wise loops. An exception in a range is raised here.
    """
    n_threads = max(1, min(torch.get_num_threads(), n_rows // 32))
    if n_threads == 1:
        work(0, n_rows)
        return
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, n_rows, n_threads + 1).astype(int)
    with ThreadPoolExecutor(n_threads) as pool:
        for done in [pool.submit(work, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
            done.result()


# Up to this many positives per query, :func:`_ranks_of_rows` counts the items below each positive
# by one NumPy comparison pass per positive; above it, by sorting the row and searching. On the
# CPU one pass cost about 1/9 (G = 5,000) to 1/12 (G = 25,000) of a row sort and search.
_COMPARE_MAX_POSITIVES_NUMPY = 8


def _count_less(scores: np.ndarray, threshold: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """For each row, how many ``scores`` (c, G) are < ``threshold`` (c, 1). ``(c,)`` int64.

    The comparison goes into ``buffer`` (c, >= G) bool, zero beyond column G and a whole number
    of 8-byte words a row; with NumPy >= 2 its rows are counted 8 bytes at a time
    (``bitwise_count`` of each word: a byte holds 0 or 1), faster than ``count_nonzero`` (measured by ``make bench``).
    """
    np.less(scores, threshold, out=buffer[:, : scores.shape[1]])
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(buffer.view(np.uint64)).sum(axis=1, dtype=np.int64)
    return np.count_nonzero(buffer, axis=1)


def _ranks_of_rows(scores: np.ndarray, is_positive: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
    """The ranks ``(c, width)`` of rows ``scores`` ``(c, G)`` with positives ``is_positive`` ``(c, G)``,
    ``counts`` of them (``width`` >= every count; the rest is padding): :func:`_one_block_positive_ranks`
    in NumPy.

    In ascending order of a row's positives, the k-th (0-based) of ``width`` is the ``j = width - k``-th
    best, so ``r_j = j + (G - below_k) - (width - run_start_k) = G - below_k + run_start_k - k``:
    ``below_k`` the items scoring less than it (one comparison pass per positive up to
    ``_COMPARE_MAX_POSITIVES_NUMPY``, else a sort of the row and ``numpy.searchsorted``), ``run_start_k``
    where its run of equal positive scores begins (every positive from there on scores at least
    as high). A padding entry (-inf, sorted first) gets ``j + G - P_q``, as in the two-pass form.
    """
    chunk, n_gallery = scores.shape
    values = scores[is_positive]  # (m,) row by row, each row's in gallery order
    if not np.isfinite(values).all():
        raise ValueError(
            "similarity scores must be finite (no NaN or inf); check the embeddings or the similarity matrix"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # a NaN anywhere makes its row's sum NaN: then look closer
        suspicious = bool(np.isnan(scores.sum(axis=1)).any())
    if suspicious and np.isnan(scores).any():
        raise ValueError(
            "similarity scores must be finite (no NaN or inf); check the embeddings or the similarity matrix"
        )
    padding = width - counts  # (c,) -inf entries before each row's positives
    if not padding.any():
        positive_scores = values.reshape(chunk, width)  # (c, width)
    else:
        row_start = np.cumsum(counts) - counts  # (c,)
        rows = np.repeat(np.arange(chunk), counts)  # (m,)
        positive_scores = np.full((chunk, width), -np.inf, dtype=scores.dtype)
        positive_scores[rows, np.arange(values.size) - row_start[rows]] = values
    ascending = np.sort(positive_scores, axis=1)  # (c, width), the -inf padding first
    ranks = np.empty((chunk, width), dtype=np.int64)  # below_k, then the ranks
    if width <= _COMPARE_MAX_POSITIVES_NUMPY:
        buffer = np.zeros((chunk, -(-n_gallery // 8) * 8), dtype=bool)  # (c, G rounded up to 8)
        for k in range(width):
            ranks[:, k] = _count_less(scores, ascending[:, k : k + 1], buffer)
        del buffer
    else:
        sorted_scores = np.sort(scores, axis=1)  # (c, G)
        for row in range(chunk):
            ranks[row] = np.searchsorted(sorted_scores[row], ascending[row], side="left")
        del sorted_scores
    np.subtract(n_gallery, ranks, out=ranks)  # G - below_k
    begins = np.ones((chunk, width), dtype=bool)  # a run of equal positive scores begins here
    np.not_equal(ascending[:, 1:], ascending[:, :-1], out=begins[:, 1:])  # 0.0 and -0.0: one run
    if not begins.all():  # ties among the positives (or padding): + run_start_k - k, else 0
        index = np.arange(width)  # (width,) = k
        run_start = np.where(begins, index, 0)  # (c, width)
        np.maximum.accumulate(run_start, axis=1, out=run_start)
        run_start -= index
        ranks += run_start
    if padding.any():
        np.add(ranks, padding[:, None], out=ranks, where=np.arange(width)[None, :] < padding[:, None])
    return ranks[:, ::-1]  # best first


def _one_block_positive_ranks_numpy(
    scores: np.ndarray, labels: np.ndarray, gallery_labels: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """:func:`_one_block_positive_ranks` on the CPU for float32 / float64, in NumPy: ``(c, P_max)`` int64.

    The same counts from the same values (NumPy's sort is the one :func:`_sorted_rows` uses;
    counts are exact integers), so the same ranks, padding included. The rows are ranked in
    ranges, one a thread (:func:`_in_row_ranges`; each row on its own, so the split changes no
    integer). NumPy rather than torch: on a CPU shared with other work, torch's two-thread
    kernels on these ``(c, P)`` arrays waited for each other far longer than they computed.
    """
    width = int(counts.max())
    ranks = np.empty((scores.shape[0], width), dtype=np.int64)  # (c, P_max)

    def rank_rows(start: int, end: int) -> None:
        is_positive = labels[start:end, None] == gallery_labels[None, :]  # (end - start, G)
        ranks[start:end] = _ranks_of_rows(scores[start:end], is_positive, counts[start:end], width)

    _in_row_ranges(scores.shape[0], rank_rows)
    return ranks


def _one_block_positive_ranks(
    scores: torch.Tensor, labels: torch.Tensor, gallery_labels: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """:func:`chunk_positive_ranks` when one block ``scores`` ``(c, G)`` holds the whole gallery.

    The same integers as the two-pass form, with less work: the positives' scores are read with
    one masked selection (row-major, the order ``nonzero`` gives), and the positives scoring at
    least each positive are counted from the row's sorted positives themselves
    (:func:`_positives_at_least_sorted`: the same values the block holds, so the same counts as
    comparing against the block), instead of sorting and searching them again. Cost: the count
    of items scoring >= each positive (:func:`count_at_least`) plus O(c P log P).
    """
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(
            _one_block_positive_ranks_numpy(
                scores.detach().numpy(), labels.numpy(), gallery_labels.numpy(), counts.numpy()
            )
        )
    chunk, n_gallery = scores.shape
    max_positives = int(counts.max())
    device = scores.device
    is_positive = labels[:, None] == gallery_labels[None, :]  # (c, G)
    values = torch.masked_select(scores, is_positive)  # (m,) row by row, each row's in gallery order
    if not torch.isfinite(values).all():
        raise ValueError(
            "similarity scores must be finite (no NaN or inf); check the embeddings or the similarity matrix"
        )
    # A NaN anywhere makes its row's sum NaN (so does +inf with -inf: then look closer).
    if torch.isnan(scores.sum(dim=1)).any() and torch.isnan(scores).any():
        raise ValueError(
            "similarity scores must be finite (no NaN or inf); check the embeddings or the similarity matrix"
        )
    if bool((counts == max_positives).all()):
        positive_scores = values.view(chunk, max_positives)  # (c, P_max), no padding
    else:  # pad each row with -inf after its P_q positives
        rows = torch.repeat_interleave(torch.arange(chunk, device=device), counts)  # (m,)
        row_start = torch.cumsum(counts, dim=0) - counts  # (c,)
        slot = torch.arange(values.numel(), device=device) - row_start[rows]  # (m,) position within its row
        positive_scores = torch.full((chunk, max_positives), -math.inf, dtype=scores.dtype, device=device)
        positive_scores[rows, slot] = values
    ascending = _sorted_rows(positive_scores)  # (c, P_max), the -inf padding first
    thresholds = ascending.flip(1)  # best first: column j < P_q holds the (j+1)-th best positive
    at_least = count_at_least(scores, thresholds)  # (c, P_max) items scoring >= each, positives included
    position = torch.arange(1, max_positives + 1, device=device)  # (P_max,) = j
    valid = position[None, :] <= counts[:, None]  # (c, P_max)
    # Padding (-inf) thresholds: every positive of the row counts, as in the two-pass form.
    positives_above = torch.where(valid, _positives_at_least_sorted(ascending).flip(1), counts[:, None])
    return position[None, :] + (at_least - positives_above)  # (c, P_max) = r_j


def chunk_positive_ranks(
    score_blocks: ScoreBlocks,
    query_start: int,
    query_end: int,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    n_positives: torch.Tensor,
) -> torch.Tensor:
    """Ranks $r_1 < \\dots < r_{P_q}$ of the positives of queries ``query_start:query_end``.

    Returns ``(c, P_max)`` int64, ascending along each row; entries ``j >= P_q`` are padding
    (their value is meaningless; mask them with ``j < n_positives``).
    """
    labels = query_labels[query_start:query_end]  # (c,)
    counts = n_positives[query_start:query_end]  # (c,)
    chunk = labels.shape[0]
    max_positives = int(counts.max())
    device = labels.device

    blocks = iter(score_blocks(query_start, query_end))
    first_block = next(blocks)  # (gallery_start, gallery_end, scores)
    if first_block[0] == 0 and first_block[1] == gallery_labels.shape[0]:  # the whole gallery in one block
        return _one_block_positive_ranks(first_block[2], labels, gallery_labels, counts)

    # Pass 1: gather each query's positive scores into (c, P_max), memory O(#positive pairs).
    # When the gallery comes as one block, its scores are kept for pass 2 instead of recomputed.
    positive_scores = None
    filled = torch.zeros(chunk, dtype=torch.int64, device=device)  # (c,) positives seen so far
    n_blocks = 0
    for gallery_start, gallery_end, scores in _replayed(first_block, blocks):  # scores (c, B)
        if positive_scores is None:
            positive_scores = torch.full((chunk, max_positives), -math.inf, dtype=scores.dtype, device=device)
        is_positive = labels[:, None] == gallery_labels[None, gallery_start:gallery_end]  # (c, B)
        rows, columns = is_positive.nonzero(as_tuple=True)  # (m,) each, row-major order
        in_block = torch.bincount(rows, minlength=chunk)  # (c,) positives of each query in this block
        row_start = torch.cumsum(in_block, dim=0) - in_block  # (c,) where each row's pairs begin
        slot = filled[rows] + torch.arange(rows.numel(), device=device) - row_start[rows]  # (m,)
        positive_scores[rows, slot] = scores.reshape(-1)[rows * scores.shape[1] + columns]  # scores[rows, columns]
        filled += in_block
        n_blocks += 1
    position = torch.arange(1, max_positives + 1, device=device)  # (P_max,) = j
    valid = position[None, :] <= counts[:, None]  # (c, P_max)
    if not torch.isfinite(positive_scores[valid]).all():
        raise ValueError(
            "similarity scores must be finite (no NaN or inf); check the embeddings or the similarity matrix"
        )
    # Best first; the -inf padding sorts last, so column j < P_q holds the (j+1)-th best positive.
    positive_scores = _sorted_rows(positive_scores).flip(1)

    # Pass 2: n_j = number of negatives scoring >= the j-th best positive, counted per block as
    # (items scoring >= s_j) - (positives scoring >= s_j); both counts read the same block values,
    # so the difference is exact, and no masked copy of the block is needed.
    negatives_above = torch.zeros(chunk, max_positives, dtype=torch.int64, device=device)  # (c, P_max)
    if n_blocks == 1:  # the loop's last block is the only one: reuse its scores and positive pairs
        blocks = [(gallery_start, gallery_end, scores, (rows, columns))]
    else:
        blocks = ((start, end, block_scores, None) for start, end, block_scores in score_blocks(query_start, query_end))
    del scores, is_positive, rows, columns  # with several blocks, do not hold the last one through pass 2
    for gallery_start, gallery_end, scores, pairs in blocks:
        if pairs is None:
            pairs = (labels[:, None] == gallery_labels[None, gallery_start:gallery_end]).nonzero(as_tuple=True)
        rows, columns = pairs  # (m,) each: the positive (query, gallery item) pairs of this block
        # A NaN anywhere makes its row's sum NaN (so does +inf with -inf: then look closer).
        if torch.isnan(scores.sum(dim=1)).any() and torch.isnan(scores).any():
            raise ValueError(
                "similarity scores must be finite (no NaN or inf); check the embeddings or the similarity matrix"
            )
        at_least = count_at_least(scores, positive_scores)  # (c, P_max), positives included
        pair_scores = scores.reshape(-1)[rows * scores.shape[1] + columns]  # = scores[rows, columns], one flat gather
        negatives_above += at_least - positives_at_least(pair_scores, rows, chunk, positive_scores)
    return position[None, :] + negatives_above  # (c, P_max) = r_j


def _summarise_ranks(ranks: torch.Tensor, n_positives: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-query first-hit rank, AP and INP from the positives' ranks ``(c, P_max)``."""
    if ranks.device.type == "cpu":  # the (c, P_max) element-wise steps in NumPy (one thread), the same values
        position = np.arange(1, ranks.shape[1] + 1)  # (P_max,) = j
        valid = position[None, :] <= n_positives.numpy()[:, None]  # (c, P_max)
        precision = position[None, :].astype(np.float64) / ranks.numpy().astype(np.float64)  # j / r_j
        if not valid.all():  # = precision * valid, as below (x 1.0 changes nothing)
            precision *= valid
        # the sum stays torch's (its order of addition), on a contiguous (c, P_max) array as below
        average_precision = torch.from_numpy(precision).sum(dim=1) / n_positives.to(torch.float64)  # (c,)
    else:
        position = torch.arange(1, ranks.shape[1] + 1, device=ranks.device)  # (P_max,) = j
        valid = position[None, :] <= n_positives[:, None]  # (c, P_max)
        precision = position[None, :].to(torch.float64) / ranks.to(torch.float64)  # j / r_j
        average_precision = (precision * valid).sum(dim=1) / n_positives.to(torch.float64)  # (c,)
    last_rank = ranks.gather(1, (n_positives - 1)[:, None]).squeeze(1)  # r_{P_q}
    inverse_negative_penalty = n_positives.to(torch.float64) / last_rank.to(torch.float64)  # (c,)
    return {"first": ranks[:, 0], "ap": average_precision, "inp": inverse_negative_penalty}


def query_ranks(
    score_blocks: ScoreBlocks,
    n_queries: int,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    chunk_size: int,
) -> dict[str, torch.Tensor]:
    """First-hit rank ``(Q,)``, AP ``(Q,)`` and INP ``(Q,)`` of every query, chunk by chunk."""
    n_positives = positive_counts(query_labels, gallery_labels)  # (Q,)
    missing = int((n_positives == 0).sum())
    if missing:
        raise ValueError(
            f"{missing} of {n_queries} queries have no gallery item with their label, so their rank is undefined; "
            "drop those queries or add their matches to the gallery (check query_labels / gallery_labels)"
        )
    parts: dict[str, list[torch.Tensor]] = {"first": [], "ap": [], "inp": []}
    for query_start in range(0, n_queries, chunk_size):
        query_end = min(query_start + chunk_size, n_queries)
        ranks = chunk_positive_ranks(score_blocks, query_start, query_end, query_labels, gallery_labels, n_positives)
        for key, value in _summarise_ranks(ranks, n_positives[query_start:query_end]).items():
            parts[key].append(value)
    return {key: torch.cat(values) for key, values in parts.items()}


def metrics_from_query_ranks(per_query: dict[str, torch.Tensor], ks: tuple[int, ...]) -> dict[str, float]:
    """R@k for each of ``ks``, median and mean first-hit rank, mAP and mINP over the queries of :func:`query_ranks`."""
    first = per_query["first"]  # (Q,) 1-based first-hit ranks
    metrics = {f"R@{k}": 100.0 * float((first <= k).to(torch.float64).mean()) for k in ks}
    first_ranks = first.to(torch.float64).cpu().numpy()
    metrics["medr"] = float(math.floor(np.median(first_ranks)))
    metrics["meanr"] = float(first_ranks.mean())
    metrics["mAP"] = 100.0 * float(per_query["ap"].mean())
    metrics["mINP"] = 100.0 * float(per_query["inp"].mean())
    return metrics


# Fewest queries per chunk that :func:`_fitting_chunk_size` goes down to (matrix products of
# fewer rows use the CPU poorly).
_MIN_FITTING_CHUNK = 16


def _fitting_chunk_size(chunk_size: int, gallery_chunk_size: int | None, n_gallery: int) -> int:
    """With ``gallery_chunk_size=None``, fewer queries per chunk when that lets the whole gallery
    fit one block of ``DEFAULT_BLOCK_ELEMENTS`` scores: each score is then computed once instead
    of twice (see the module notes), within the same memory bound."""
    if gallery_chunk_size is not None or chunk_size * n_gallery <= DEFAULT_BLOCK_ELEMENTS:
        return chunk_size
    fitting = DEFAULT_BLOCK_ELEMENTS // n_gallery
    return fitting if fitting >= _MIN_FITTING_CHUNK else chunk_size


def _gallery_block_size(gallery_chunk_size: int | None, chunk_size: int, n_gallery: int) -> int:
    if gallery_chunk_size is None:
        return max(1, min(n_gallery, DEFAULT_BLOCK_ELEMENTS // chunk_size))
    return min(gallery_chunk_size, n_gallery)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def recall_at_k(
    similarity: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Recall@K in percent from a similarity matrix ``(Q, G)`` (higher = more similar).

    A query scores a hit at $K$ when any of its top $K$ gallery items has its label.
    Ties between a positive and a negative rank the negative first (see the module notes).
    Returns ``{k: percent}``.
    """
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2:
        raise ValueError("parameter similarity must be a 2-D tensor (queries, gallery)")
    ks = _check_ks(ks)
    chunk_size = _check_chunk(chunk_size, "chunk_size")
    n_queries, n_gallery = similarity.shape
    query_labels = _as_labels(query_labels, "query_labels", n_queries, similarity.device)
    gallery_labels = _as_labels(gallery_labels, "gallery_labels", n_gallery, similarity.device)

    def score_blocks(query_start: int, query_end: int):
        yield 0, n_gallery, similarity[query_start:query_end]  # (c, G), a view

    per_query = query_ranks(score_blocks, n_queries, query_labels, gallery_labels, chunk_size)
    return {k: 100.0 * float((per_query["first"] <= k).to(torch.float64).mean()) for k in ks}


def retrieval_metrics(
    query_embeddings: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    gallery_chunk_size: int | None = None,
    normalise: bool = True,
) -> dict[str, float]:
    """R@K, medr, meanr, mAP and mINP of queries against a gallery, streamed in chunks.

    * ``query_embeddings`` $(Q, d)$ and ``gallery_embeddings`` $(G, d)$; with ``normalise`` both
      are L2-normalised first, so the score is the cosine similarity $s_{qg}$;
    * ``query_labels`` $(Q,)$, ``gallery_labels`` $(G,)$: integer ids (person ids for
      CUHK-PEDES, image ids for Flickr30K / MSCOCO);
    * ``chunk_size`` queries at a time; ``gallery_chunk_size`` gallery items at a time
      (``None``: as many as keep a block under ``DEFAULT_BLOCK_ELEMENTS`` scores).

    Peak memory is about ``10 * chunk_size * gallery_chunk_size`` bytes (22 when queries have
    more than ``_COMPARE_MAX_POSITIVES`` = 64 positives: the sort path). Every query needs at
    least one positive (else a ``ValueError``). Returns ``{"R@1": ..., "R@5": ..., "R@10": ...,
    "medr", "meanr", "mAP", "mINP", "n_queries", "n_gallery"}``.
    """
    query_embeddings = _check_embeddings(query_embeddings, "query_embeddings")
    gallery_embeddings = _check_embeddings(gallery_embeddings, "gallery_embeddings")
    if query_embeddings.shape[1] != gallery_embeddings.shape[1]:
        raise ValueError(
            f"query_embeddings have dim {query_embeddings.shape[1]} but gallery_embeddings have dim "
            f"{gallery_embeddings.shape[1]}; both must come from the same joint embedding"
        )
    ks = _check_ks(ks)
    chunk_size = _check_chunk(chunk_size, "chunk_size")
    gallery_chunk_size = _check_chunk(gallery_chunk_size, "gallery_chunk_size")
    device = query_embeddings.device
    gallery_embeddings = gallery_embeddings.to(device=device, dtype=query_embeddings.dtype)
    n_queries, n_gallery = query_embeddings.shape[0], gallery_embeddings.shape[0]
    query_labels = _as_labels(query_labels, "query_labels", n_queries, device)
    gallery_labels = _as_labels(gallery_labels, "gallery_labels", n_gallery, device)
    if normalise:
        query_embeddings = F.normalize(query_embeddings, dim=1)  # (Q, d)
        gallery_embeddings = F.normalize(gallery_embeddings, dim=1)  # (G, d)
    chunk_size = _fitting_chunk_size(chunk_size, gallery_chunk_size, n_gallery)
    block = _gallery_block_size(gallery_chunk_size, chunk_size, n_gallery)

    def score_blocks(query_start: int, query_end: int):
        queries = query_embeddings[query_start:query_end]  # (c, d)
        for gallery_start in range(0, n_gallery, block):
            gallery_end = min(gallery_start + block, n_gallery)
            yield gallery_start, gallery_end, queries @ gallery_embeddings[gallery_start:gallery_end].T  # (c, B)

    per_query = query_ranks(score_blocks, n_queries, query_labels, gallery_labels, chunk_size)
    metrics = metrics_from_query_ranks(per_query, ks)
    metrics["n_queries"] = n_queries
    metrics["n_gallery"] = n_gallery
    return metrics


def bidirectional_retrieval(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    gallery_chunk_size: int | None = None,
) -> dict:
    """Image-to-text and text-to-image retrieval with cosine similarity.

    * ``i2t``: every image queries the texts; a hit is a caption with the image's label;
    * ``t2i``: every text queries the images (CUHK-PEDES's headline direction; there the
      gallery must hold every test image once);
    * ``rsum``: the sum of R@K over ``ks`` in both directions (R@1+R@5+R@10, twice).

    Returns ``{"i2t": {...}, "t2i": {...}, "rsum": float}`` with the keys of
    :func:`retrieval_metrics`.
    """
    ks = _check_ks(ks)
    i2t = retrieval_metrics(
        image_embeddings, text_embeddings, image_labels, text_labels, ks, chunk_size, gallery_chunk_size
    )
    t2i = retrieval_metrics(
        text_embeddings, image_embeddings, text_labels, image_labels, ks, chunk_size, gallery_chunk_size
    )
    rsum = sum(i2t[f"R@{k}"] + t2i[f"R@{k}"] for k in ks)
    return {"i2t": i2t, "t2i": t2i, "rsum": rsum}


def per_caption_gallery(
    image_embeddings: torch.Tensor, image_labels: torch.Tensor, caption_image_indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gallery of a port's test loop: each image repeated once per caption of it.

    ``image_embeddings`` $x$ (N_I, d) and ``image_labels`` (N_I,) hold each test image once;
    ``caption_image_indices`` (N_T,) names the image of every caption (the ``image_index`` of the
    split's frame). Returns ``(gallery_embeddings (N_T, d), gallery_labels (N_T,))``: row ``t`` is
    the image of caption ``t``. Scoring text-to-image against it instead of the unique gallery
    (``retrieval_metrics(texts, *per_caption_gallery(...))``) leaves R@1 unchanged (the copies of
    the top image tie with it, positive or not) but lowers R@K for K > 1: every wrong image ranked
    above the first hit now takes as many ranks as it has captions. Evaluation only: the same
    embeddings, no retraining.
    """
    image_embeddings = _check_embeddings(image_embeddings, "image_embeddings")
    n_images = image_embeddings.shape[0]
    image_labels = _as_labels(image_labels, "image_labels", n_images, image_embeddings.device)
    indices = torch.as_tensor(caption_image_indices, device=image_embeddings.device)
    if indices.dim() != 1 or indices.numel() == 0 or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(
            "parameter caption_image_indices must be a non-empty 1-D integer tensor (the image_index "
            f"of each caption), got shape {tuple(indices.shape)} and dtype {indices.dtype}"
        )
    indices = indices.to(torch.int64)
    if int(indices.min()) < 0 or int(indices.max()) >= n_images:
        raise ValueError(
            f"parameter caption_image_indices holds indices outside [0, {n_images}): the captions and "
            "image_embeddings come from different splits"
        )
    return image_embeddings.index_select(0, indices), image_labels.index_select(0, indices)


def _average_results(results: list[dict]) -> dict:
    """Average nested dicts of floats key by key (used for the 1K folds)."""
    averaged: dict = {}
    for key, value in results[0].items():
        if isinstance(value, dict):
            averaged[key] = _average_results([result[key] for result in results])
        else:
            averaged[key] = sum(float(result[key]) for result in results) / len(results)
    return averaged


def coco_1k_5k(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    n_folds: int = 5,
    fold_size: int | None = None,
    chunk_size: int = 256,
) -> dict:
    """MSCOCO's two test protocols: 1K (five folds, averaged) and 5K (all images at once).

    * images are taken in the given order; fold $f$ holds images ``f*fold_size`` to
      ``(f+1)*fold_size - 1`` with **their** captions (the texts whose label is one of the fold's
      image labels);
    * ``fold_size`` defaults to 1,000 (the standard 1K protocol) when there are at least
      ``n_folds * 1000`` images, else to ``n_images // n_folds`` so that small synthetic test
      sets still get five folds; the images past ``n_folds * fold_size`` take part in 5K only;
    * 5K ranks every image and every caption at once (what the released code did).

    ``image_labels`` must be unique (one embedding per image). Returns
    ``{"1k": {"i2t", "t2i", "rsum", "n_folds", "fold_size"}, "5k": {"i2t", "t2i", "rsum"}}``;
    1K values are the means over folds of each metric (rsum included).
    """
    image_embeddings = _check_embeddings(image_embeddings, "image_embeddings")
    device = image_embeddings.device
    n_images = image_embeddings.shape[0]
    image_labels = _as_labels(image_labels, "image_labels", n_images, device)
    text_labels = _as_labels(
        text_labels, "text_labels", _check_embeddings(text_embeddings, "text_embeddings").shape[0], device
    )
    if torch.unique(image_labels).numel() != n_images:
        raise ValueError(
            "image_labels must be unique for the MSCOCO protocols (one embedding per image, label = image id)"
        )
    if n_folds < 1:
        raise ValueError(f"parameter n_folds={n_folds} must be >= 1")
    if fold_size is None:
        fold_size = 1000 if n_images >= n_folds * 1000 else n_images // n_folds
    if fold_size < 1 or fold_size * n_folds > n_images:
        raise ValueError(
            f"coco_1k_5k needs n_folds * fold_size <= number of images; got {n_folds} x {fold_size} for {n_images} images"
        )
    folds = []
    for fold in range(n_folds):
        fold_images = torch.arange(fold * fold_size, (fold + 1) * fold_size, device=device)  # (fold_size,)
        fold_texts = torch.nonzero(torch.isin(text_labels, image_labels[fold_images])).squeeze(1)  # (T_f,)
        folds.append(
            bidirectional_retrieval(
                image_embeddings[fold_images],
                text_embeddings[fold_texts],
                image_labels[fold_images],
                text_labels[fold_texts],
                ks,
                chunk_size,
            )
        )
    one_k = _average_results(folds)
    one_k["n_folds"] = n_folds
    one_k["fold_size"] = fold_size
    five_k = bidirectional_retrieval(image_embeddings, text_embeddings, image_labels, text_labels, ks, chunk_size)
    return {"1k": one_k, "5k": five_k}


def class_text_embeddings(
    text_embeddings: torch.Tensor, text_classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One embedding per class: the mean of its L2-normalised text embeddings, renormalised.

    $\\bar t_c = \\mathrm{normalise}\\big(\\frac{1}{|T_c|}\\sum_{t \\in T_c} t/\\lVert t\\rVert\\big)$.
    Returns ``(classes (C,) sorted, class_embeddings (C, d))``.
    """
    text_embeddings = _check_embeddings(text_embeddings, "text_embeddings")
    text_classes = _as_labels(text_classes, "text_classes", text_embeddings.shape[0], text_embeddings.device)
    classes, slot = torch.unique(text_classes, return_inverse=True)  # (C,), (M,)
    normalised = F.normalize(text_embeddings, dim=1)  # (M, d)
    sums = torch.zeros(classes.numel(), normalised.shape[1], dtype=normalised.dtype, device=normalised.device)
    sums.index_add_(0, slot, normalised)  # (C, d)
    counts = torch.bincount(slot, minlength=classes.numel()).to(normalised.dtype)  # (C,)
    return classes, F.normalize(sums / counts[:, None], dim=1)


def zero_shot_class_metrics(
    image_embeddings: torch.Tensor,
    image_classes: torch.Tensor,
    text_embeddings: torch.Tensor,
    text_classes: torch.Tensor,
    ap_at: int = 50,
) -> dict[str, float]:
    """CUB-200-2011 / Oxford-102 Flowers zero-shot protocol (Reed et al. 2016), class level.

    * class queries $\\bar t_c$ from :func:`class_text_embeddings` (held-out test classes);
    * ``top1_accuracy`` (image to text): percent of images whose most similar class embedding
      is their own class (ties: pessimistic, as everywhere here);
    * ``ap@50`` (text to image), as the reference describes it: each class embedding ranks all
      images; the score is the fraction of the top ``ap_at`` images that belong to the class,
      averaged over classes, in percent. It divides by ``ap_at`` even when a class has fewer than
      ``ap_at`` images (then it cannot reach 100) or the test set has fewer than ``ap_at`` images;
    * ``standard_ap@50``: the usual truncated average precision,
      $\\frac{1}{\\min(P_c, K)}\\sum_{j: r_j \\le K} j / r_j$, reported alongside for comparison.

    Every image class needs at least one text (else a ``ValueError``).
    """
    image_embeddings = _check_embeddings(image_embeddings, "image_embeddings")
    device = image_embeddings.device
    image_classes = _as_labels(image_classes, "image_classes", image_embeddings.shape[0], device)
    text_embeddings = _check_embeddings(text_embeddings, "text_embeddings").to(
        device=device, dtype=image_embeddings.dtype
    )
    if int(ap_at) < 1:
        raise ValueError(f"parameter ap_at={ap_at} must be a positive integer")
    classes, class_embeddings = class_text_embeddings(text_embeddings, text_classes)  # (C,), (C, d)
    missing = ~torch.isin(image_classes, classes)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} images belong to classes without any text; every test class needs captions "
            "(check image_classes / text_classes)"
        )
    images = F.normalize(image_embeddings, dim=1)  # (N, d)
    n_images = images.shape[0]

    # Image -> class: top-1 accuracy = R@1 with the class embeddings as the gallery.
    image_to_class = images @ class_embeddings.T  # (N, C), small: C is the number of test classes
    top1 = recall_at_k(image_to_class, image_classes, classes, ks=(1,))[1]

    # Class -> images: the positives' ranks give both AP@K forms.
    class_to_image = image_to_class.T  # (C, N)
    n_positives = positive_counts(classes, image_classes)  # (C,)
    if (n_positives == 0).any():
        keep = n_positives > 0  # a class with texts but no test image has no query to score
        classes, n_positives = classes[keep], n_positives[keep]
        class_to_image = class_to_image[keep]

    def score_blocks(query_start: int, query_end: int):
        yield 0, n_images, class_to_image[query_start:query_end]  # (c, N)

    ranks = chunk_positive_ranks(score_blocks, 0, classes.numel(), classes, image_classes, n_positives)  # (C, P_max)
    position = torch.arange(1, ranks.shape[1] + 1, device=device)  # (P_max,)
    within = (position[None, :] <= n_positives[:, None]) & (ranks <= ap_at)  # (C, P_max)
    precision_at_k = within.sum(dim=1).to(torch.float64) / ap_at  # (C,)
    truncated_ap = (within * (position[None, :].to(torch.float64) / ranks.to(torch.float64))).sum(dim=1)
    truncated_ap = truncated_ap / n_positives.clamp(max=ap_at).to(torch.float64)
    return {
        "top1_accuracy": top1,
        f"ap@{ap_at}": 100.0 * float(precision_at_k.mean()),
        f"standard_ap@{ap_at}": 100.0 * float(truncated_ap.mean()),
        "n_classes": int(classes.numel()),
        "n_images": n_images,
    }
