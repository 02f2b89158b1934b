"""Cross-modal retrieval metrics (docs/design.md §4), computed in row chunks, tie-fair.

**Rule.** Ties never help the match: every rank-based metric is its exact expected value when tied scores are
ordered at random, i.e. the match sits uniformly on positions g+1 … g+1+t, with g the gallery items scoring
strictly higher than the match and t the other items scoring exactly equal to it.

Query i's single relevant gallery item is gallery item i. Per query, with ``g_i`` and ``t_i`` as above
(:class:`RankCounts`):

    R@K       = (1/N) Σ_i clip((K − g_i) / (t_i + 1), 0, 1)
    rank_i    = g_i + 1 + t_i / 2                                  (the mid-rank: expected position)
    MedR      = median_i rank_i   (mean of the two middle values when N is even)
    MeanR     = (1/N) Σ_i rank_i
    nDCG@K    = (1/N) Σ_i (1/(t_i + 1)) Σ_{p = g_i+1}^{min(g_i+1+t_i, K)} 1/log2(p + 1)    (one relevant: IDCG = 1)
    tied_match_share = (1/N) Σ_i [t_i > 0]

The nDCG tie average is sklearn's ``ndcg_score(..., ignore_ties=False)`` (McSherry & Najork, ECIR 2008) for one
relevant item. Without ties (t_i = 0) these are the strict-rank formulas (rank_i = 1 + g_i). Collapsed embeddings
(all scores equal) give exactly chance: R@K = K/N, MeanR = MedR = (N+1)/2. Ties are exact equality of the computed
scores; the scan scores in the embeddings' dtype (float64 stays float64), so only float16 / bfloat16 are upcast to
float32.

Only ``chunk_size × N`` similarities exist at a time in the embedding-based functions.

**Scan.** A block of scores is read once per pass in row slices that stay in cache (:data:`_SLICE_BYTES`): the
comparisons with the match score write 0 / 1 into a reused float buffer that is summed in float (exact while
N < 2²⁴), and the same pass keeps the maxima of consecutive groups of :data:`_GROUP` gallery items, which both
detect NaN and narrow the top-k to the members of the k best groups (every top-k score lies in one of them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RankCounts",
    "ranks_in_block",
    "ranks_from_similarity",
    "ranks_from_embeddings",
    "metrics_from_ranks",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "bidirectional_retrieval",
    "RetrievalScan",
    "grouped_ranks_in_block",
    "precision_in_block",
    "scan_retrieval",
    "dot_score_rows",
    "DotScoreRows",
    "positive_sets",
    "class_precision_at_k",
    "precision_summary",
    "text_groups",
    "evaluate_retrieval",
    "TIE_RULE",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
TIE_RULE = (
    "Ties never help the match: each rank metric is its exact expected value under random tie-breaking "
    "(the match is placed uniformly among the items scoring exactly as high as it)."
)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _score_dtype(x: Tensor) -> Tensor:
    """Scores stay in their dtype; float16 / bfloat16 are upcast to float32, integers to float64."""
    if x.dtype in _LOW_PRECISION:
        return x.float()
    return x if x.is_floating_point() else x.double()


# ---------------------------------------------------------------------------------------------------------------
# One pass over a block of scores: counts against per-row thresholds, group maxima, top-k from the best groups.

_SLICE_BYTES = 8 << 20  # rows of a CPU block handled together: they stay in cache while they are compared
_GROUP = 32  # gallery items per group; group j of a row holds the columns j, j + Ng // 32, j + 2 (Ng // 32), …
_SPARSE_SHARE = 4  # rows where more than 1 / 4 of the groups can hold a counted score are compared densely
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """Worker threads for the CPU passes, as many as torch's intra-op threads."""
    n = torch.get_num_threads()
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="retrieval-scan")
    return _POOLS[n]


def _groups(n: int) -> int:
    """Number of groups of a row of ``n`` scores (0: too short to group)."""
    return n // _GROUP


def _count_slice(
    x: np.ndarray,
    targets: np.ndarray,
    strict: Sequence[bool],
    gmax: np.ndarray,
    have_gmax: bool,
    counts: np.ndarray,
    top: tuple[np.ndarray, np.ndarray] | None,
) -> bool:
    """:func:`_count_pass` on one cache-sized slice of rows (numpy, one thread), with the top-k into ``top``
    (values, indices) when given; True if the slice holds a NaN."""
    rows, n = x.shape
    ng = gmax.shape[1]
    full = ng * _GROUP
    grouped = x[:, :full].reshape(rows, _GROUP, ng)
    tail = x[:, full:]
    has_nan = False
    if not have_gmax:
        np.max(grouped, axis=1, out=gmax)  # NaN-propagating
        has_nan = bool(np.isnan(gmax).any() or np.isnan(tail).any())
    for j, is_strict in enumerate(strict):
        above = np.greater if is_strict else np.greater_equal
        t = targets[:, j : j + 1]
        hit = above(gmax, t)  # only groups whose maximum passes can hold a counted score
        per_row = np.count_nonzero(hit, axis=1)
        dense = per_row * _SPARSE_SHARE > ng
        c = np.count_nonzero(above(tail, t), axis=1).astype(np.int64)
        if dense.any():
            d = np.flatnonzero(dense)
            c[d] += np.count_nonzero(above(x[d, :full], t[d]), axis=1)
            hit[d] = False
        r, g = np.nonzero(hit)
        if len(r):
            c += np.bincount(r, weights=np.count_nonzero(above(grouped[r, :, g], t[r]), axis=1), minlength=rows).astype(
                np.int64
            )
        counts[:, j] = c
    if top is not None and not has_nan:
        k = top[0].shape[1]
        cols = np.argpartition(gmax, ng - k, axis=1)[:, ng - k :, None] + ng * np.arange(_GROUP)
        cols = np.concatenate([cols.reshape(rows, -1), np.broadcast_to(np.arange(full, n), (rows, n - full))], axis=1)
        values = np.take_along_axis(x, cols, axis=1)
        pick = np.argpartition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k :]
        values, cols = np.take_along_axis(values, pick, axis=1), np.take_along_axis(cols, pick, axis=1)
        order = np.lexsort((cols, -values), axis=1)  # best first, equal scores by gallery index
        top[0][:] = np.take_along_axis(values, order, axis=1)
        top[1][:] = np.take_along_axis(cols, order, axis=1)
    return has_nan


@dataclass
class _Pass:
    """What :func:`_count_pass` found: ``counts`` ``[b, m]``, group maxima ``[b, Ng // 32]`` (None for rows under
    32 scores), ``has_nan`` (checked only when the maxima were computed) and, when asked for, the top-k."""

    counts: Tensor
    gmax: Tensor | None
    has_nan: bool
    top: tuple[Tensor, Tensor] | None = None


def _count_pass(
    block: Tensor, targets: Tensor, strict: Sequence[bool], gmax: Tensor | None = None, k: int = 0
) -> _Pass:
    """Per row of ``block`` ``[b, Ng]``: ``counts[:, j]`` = number of scores ``> targets[:, j]`` where ``strict[j]``,
    else ``>= targets[:, j]`` (LongTensor); the maxima of the row's groups, computed here unless given; whether the
    block holds a NaN; and with ``k`` > 0 the top-k (see :func:`_topk_rows`) where the CPU pass can take it from
    the groups. On the CPU, slices of rows run on a thread pool and only the groups whose maximum passes a
    threshold are compared."""
    b, n = block.shape
    ng = _groups(n)
    if block.device.type != "cpu" or block.dtype not in (torch.float32, torch.float64) or ng == 0:
        return _Pass(*_count_pass_dense(block, targets, strict, gmax))
    block = block.contiguous()
    x, t = block.numpy(), targets.to(block.dtype).contiguous().numpy()
    have = gmax is not None
    gm = gmax.contiguous().numpy() if have else np.empty((b, ng), dtype=x.dtype)
    counts = np.empty((b, len(strict)), dtype=np.int64)
    with_top = 0 < k and 4 * k * _GROUP <= n
    top = (np.empty((b, k), dtype=x.dtype), np.empty((b, k), dtype=np.int64)) if with_top else None
    step = max(1, _SLICE_BYTES // (n * x.itemsize))
    jobs = [
        _pool().submit(
            _count_slice,
            x[r : r + step],
            t[r : r + step],
            strict,
            gm[r : r + step],
            have,
            counts[r : r + step],
            None if top is None else (top[0][r : r + step], top[1][r : r + step]),
        )
        for r in range(0, b, step)
    ]
    has_nan = any([job.result() for job in jobs])
    return _Pass(
        torch.from_numpy(counts),
        gmax if have else torch.from_numpy(gm),
        has_nan,
        None if top is None else (torch.from_numpy(top[0]), torch.from_numpy(top[1])),
    )


def _count_pass_dense(
    block: Tensor, targets: Tensor, strict: Sequence[bool], gmax: Tensor | None
) -> tuple[Tensor, Tensor | None, bool]:
    """:func:`_count_pass` with whole-block torch comparisons (GPU, other dtypes, short rows)."""
    ng = _groups(block.shape[1])
    counts = torch.stack(
        [
            ((block > targets[:, j : j + 1]) if s else (block >= targets[:, j : j + 1])).sum(dim=1)
            for j, s in enumerate(strict)
        ],
        dim=1,
    )
    if gmax is not None:
        return counts, gmax, False
    gmax = block[:, : ng * _GROUP].unflatten(1, (_GROUP, ng)).amax(dim=1) if ng else None
    tail = block[:, ng * _GROUP :]
    has_nan = (gmax is not None and bool(torch.isnan(gmax).any())) or bool(torch.isnan(tail).any())
    return counts, gmax, has_nan


def _rank_pass(
    block: Tensor, target: Tensor, k: int = 0
) -> tuple[Tensor, Tensor, Tensor | None, tuple[Tensor, Tensor] | None]:
    """``(higher, at_target, group maxima, top-k or None)``: per row the scores ``> target`` and ``== target``
    (``target`` ``[b]``), in one pass that also raises on NaN."""
    p = _count_pass(block, target[:, None].expand(-1, 2), (True, False), k=k)
    if p.has_nan:
        raise ValueError("similarity contains NaN")
    return p.counts[:, 0].to(block.device), (p.counts[:, 1] - p.counts[:, 0]).to(block.device), p.gmax, p.top


def _topk_rows(block: Tensor, k: int, gmax: Tensor | None) -> tuple[Tensor, Tensor]:
    """``block.topk(k, dim=1)`` (values best first, gallery indices), read from the members of the k groups with
    the highest maxima plus the columns after the last group. Exact: fewer than k groups have a maximum above the
    k-th highest group maximum T, so every score above T is a candidate, and the k chosen groups hold k scores
    ≥ T; only which of several items tied at the k-th score are listed may differ from a full ``topk``. Items of
    equal score are listed by ascending gallery index."""
    b, n = block.shape
    if gmax is None or 4 * k * _GROUP > n:
        values, idx = block.topk(k, dim=1)
    else:
        ng = gmax.shape[1]
        best = gmax.to(block.device).topk(k, dim=1).indices
        cols = (best[:, :, None] + ng * torch.arange(_GROUP, device=block.device)).flatten(1)
        if ng * _GROUP < n:
            cols = torch.cat([cols, torch.arange(ng * _GROUP, n, device=block.device).expand(b, -1)], dim=1)
        values, pos = block.gather(1, cols).topk(k, dim=1)
        idx = cols.gather(1, pos)
    idx, by_index = idx.sort(dim=1)
    values, by_score = values.gather(1, by_index).sort(dim=1, descending=True, stable=True)
    return values, idx.gather(1, by_score)


@dataclass(frozen=True)
class _Members:
    """The gallery items of each group: ``keys`` (sorted distinct group ids), ``start`` / ``count`` into ``order``
    (gallery indices sorted by group)."""

    keys: Tensor
    start: Tensor
    count: Tensor
    order: Tensor

    @classmethod
    def of(cls, gallery_group: Tensor) -> _Members:
        order = torch.argsort(gallery_group, stable=True)
        keys, count = torch.unique_consecutive(gallery_group[order], return_counts=True)
        return cls(keys, count.cumsum(0) - count, count, order)

    def to(self, device: torch.device) -> _Members:
        return _Members(self.keys.to(device), self.start.to(device), self.count.to(device), self.order.to(device))

    def pairs(self, query_group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, cols, per_row)``: every (query row, relevant gallery index) pair and each row's number of them."""
        pos = torch.searchsorted(self.keys, query_group).clamp(max=len(self.keys) - 1)
        found = self.keys[pos] == query_group
        per_row = torch.where(found, self.count[pos], 0)
        rows = torch.repeat_interleave(torch.arange(len(query_group), device=per_row.device), per_row)
        first = torch.repeat_interleave(self.start[pos] - (per_row.cumsum(0) - per_row), per_row)
        return rows, self.order[first + torch.arange(len(rows), device=rows.device)], per_row


def _grouped_ranks(
    block: Tensor, query_group: Tensor, gallery_group: Tensor, members: _Members, k: int = 0
) -> tuple[RankCounts, Tensor | None, tuple[Tensor, Tensor] | None]:
    """:func:`grouped_ranks_in_block` from the relevant pairs only (the best relevant score, then one counting
    pass), and the group maxima for :func:`_topk_rows`; dense when the pairs are a large share of the block."""
    b, n = block.shape
    rows, cols, per_row = members.pairs(query_group)
    if len(rows) * 4 > b * n:
        return grouped_ranks_in_block(block, query_group, gallery_group), None, None
    if bool((per_row == 0).any()):
        grouped_ranks_in_block(block, query_group, gallery_group)  # raises, NaN first, as the dense rule does
    values = block[rows, cols]
    best = torch.full((b,), -torch.inf, dtype=block.dtype, device=block.device)
    best = best.scatter_reduce(0, rows, values, "amax", include_self=False)
    relevant_at_best = torch.zeros(b, dtype=torch.long, device=block.device).index_add_(
        0, rows, (values == best[rows]).long()
    )
    higher, at_best, gmax, top = _rank_pass(block, best, k)  # relevant items score <= best: none is above it
    return RankCounts(higher, at_best - relevant_at_best), gmax, top


def _precision_from_topk(
    block: Tensor, values: Tensor, idx: Tensor, q_pos: Tensor, g_pos: Tensor, ks: Sequence[int], gmax: Tensor | None
) -> Tensor:
    """:func:`precision_in_block` from the top list (``values``, ``idx`` ``[b, K]``, K ≥ every k capped at Ng) and
    one pass counting the scores at or above each k-th score; rows whose tie at a k-th score reaches past the
    list are computed densely."""
    n = block.shape[1]
    cut = [min(int(k), n) for k in ks]
    kth = values[:, [c - 1 for c in cut]]
    at_least = _count_pass(block, kth, (False,) * len(cut), gmax).counts.to(block.device)
    shared = (q_pos[:, None, :] & g_pos[idx]).any(dim=2)  # [b, K]: listed item shares a positive label
    out, spill = [], torch.zeros(block.shape[0], dtype=torch.bool, device=block.device)
    for col, kk in enumerate(cut):
        t = kth[:, col : col + 1]
        above, tied = values > t, values == t
        n_above = above.sum(dim=1)
        n_tied = at_least[:, col] - n_above
        spill |= n_tied != tied.sum(dim=1)
        share = (kk - n_above.double()) / n_tied.double()
        hits = (shared & above).sum(dim=1).double() + share * (shared & tied).sum(dim=1).double()
        out.append(hits / kk)
    precision = torch.stack(out, dim=1)
    if bool(spill.any()):
        rows = spill.nonzero()[:, 0]
        dense_shared = (q_pos[rows].float() @ g_pos.float().T) > 0
        precision[rows] = precision_in_block(block[rows], dense_shared, kth[rows], ks)
    return precision


# ---------------------------------------------------------------------------------------------------------------
# Per-query rank counts and the metrics derived from them.


@dataclass(frozen=True)
class RankCounts:
    """Per query: ``higher`` = gallery items scoring strictly above the match, ``tied`` = other items scoring exactly
    equal (both LongTensor ``[N]``). The match's position is uniform on ``higher+1 … higher+1+tied``."""

    higher: Tensor
    tied: Tensor

    def __post_init__(self) -> None:
        if self.higher.shape != self.tied.shape or self.higher.ndim != 1:
            raise ValueError(f"higher {tuple(self.higher.shape)} and tied {tuple(self.tied.shape)} must be equal 1-D")
        if bool((self.higher < 0).any()) or bool((self.tied < 0).any()):
            raise ValueError("higher and tied must be >= 0")

    def __len__(self) -> int:
        return int(self.higher.shape[0])

    @classmethod
    def cat(cls, parts: Sequence[RankCounts]) -> RankCounts:
        return cls(torch.cat([p.higher.cpu() for p in parts]).long(), torch.cat([p.tied.cpu() for p in parts]).long())

    @classmethod
    def from_ranks(cls, ranks: Tensor | np.ndarray) -> RankCounts:
        """Untied 1-based integer ranks (``higher = rank − 1``, ``tied = 0``)."""
        r = _as_tensor(ranks).detach().cpu().flatten()
        fractional = r.is_floating_point() and not bool((r == r.round()).all())
        if r.numel() and (fractional or bool((r < 1).any())):
            raise ValueError("ranks must be 1-based integers (use RankCounts for tied matches)")
        r = r.long()
        return cls(r - 1, torch.zeros_like(r))

    def cpu(self) -> RankCounts:
        return RankCounts(self.higher.cpu().long(), self.tied.cpu().long())

    def mid_rank(self) -> Tensor:
        """Expected 1-based position ``higher + 1 + tied / 2`` (float64)."""
        return self.higher.double() + 1.0 + self.tied.double() / 2.0

    def hit_probability(self, k: int) -> Tensor:
        """P(position ≤ k) = clip((k − higher) / (tied + 1), 0, 1) per query (float64)."""
        return ((k - self.higher.double()) / (self.tied.double() + 1.0)).clamp(0.0, 1.0)

    def expected_gain(self, k: int) -> Tensor:
        """E[1/log2(position + 1) · [position ≤ k]] per query (float64): the tie-averaged nDCG@k."""
        discounts = torch.cat(
            [
                torch.zeros(1, dtype=torch.float64),
                (1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))).cumsum(0),
            ]
        )
        lo = self.higher.clamp(max=k)  # positions ≤ higher are not the match's
        hi = (self.higher + 1 + self.tied).clamp(max=k)  # last possible position, capped at k
        return (discounts[hi] - discounts[lo]) / (self.tied.double() + 1.0)


def _rank_counts(ranks: RankCounts | Tensor | np.ndarray) -> RankCounts:
    return ranks.cpu() if isinstance(ranks, RankCounts) else RankCounts.from_ranks(ranks)


def ranks_in_block(block: Tensor, start: int) -> RankCounts:
    """Rank counts for rows ``start .. start+len(block)-1`` of a square similarity matrix given as ``block``."""
    rows = torch.arange(block.shape[0], device=block.device)
    higher, at_match, _, _ = _rank_pass(block, block[rows, rows + start])
    return RankCounts(higher, at_match - 1)


def ranks_from_similarity(similarity: Tensor | np.ndarray, chunk_size: int = 4096) -> RankCounts:
    """Rank counts of the diagonal match in a ``[N, N]`` matrix (row i's match is column i)."""
    sim = _as_tensor(similarity)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square [N, N], got shape {tuple(sim.shape)}")
    n = sim.shape[0]
    if n < 1:
        raise ValueError("similarity must have N >= 1")
    step = _check_chunk(chunk_size)
    sim = _score_dtype(sim)
    return RankCounts.cat([ranks_in_block(sim[s : s + step], s) for s in range(0, n, step)])


@torch.no_grad()
def ranks_from_embeddings(query: Tensor, gallery: Tensor, chunk_size: int = 4096) -> RankCounts:
    """Rank counts with S = query · galleryᵀ computed one row chunk at a time (memory O(chunk × N))."""
    query, gallery = _as_tensor(query), _as_tensor(gallery)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape != gallery.shape:
        raise ValueError(
            f"query and gallery must both be [N, D] with equal N and D, got "
            f"{tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    n = query.shape[0]
    if n < 1:
        raise ValueError("need N >= 1 queries")
    step = _check_chunk(chunk_size)
    rows = dot_score_rows(query, gallery)
    return RankCounts.cat([ranks_in_block(rows(s, min(s + step, n)), s) for s in range(0, n, step)])


def metrics_from_ranks(
    ranks: RankCounts | Tensor | np.ndarray, ks: Sequence[int] = DEFAULT_KS, ndcg_k: int = 10
) -> dict[str, float]:
    """``R@k`` (fractions), ``MedR``, ``MeanR``, ``nDCG@{ndcg_k}`` and ``tied_match_share`` (see the module doc).

    ``ranks`` is a :class:`RankCounts` or untied 1-based integer ranks."""
    counts = _rank_counts(ranks)
    if len(counts) == 0:
        raise ValueError("no ranks")
    mid = counts.mid_rank()
    out: dict[str, float] = {f"R@{int(k)}": float(counts.hit_probability(int(k)).mean()) for k in ks}
    out["MedR"] = float(np.median(mid.numpy()))
    out["MeanR"] = float(mid.mean())
    out[f"nDCG@{int(ndcg_k)}"] = float(counts.expected_gain(int(ndcg_k)).mean())
    out["tied_match_share"] = float((counts.tied > 0).double().mean())
    return out


def retrieval_metrics(
    similarity: Tensor | np.ndarray, ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 4096
) -> dict[str, float]:
    """Retrieval metrics of a square similarity matrix (row i's match is column i); see module doc."""
    return metrics_from_ranks(ranks_from_similarity(similarity, chunk_size), ks)


def retrieval_metrics_from_embeddings(
    query: Tensor, gallery: Tensor, ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 4096
) -> dict[str, float]:
    """Same as :func:`retrieval_metrics` on S = query · galleryᵀ, never building the N×N matrix."""
    return metrics_from_ranks(ranks_from_embeddings(query, gallery, chunk_size), ks)


def bidirectional_retrieval(
    image_emb: Tensor,
    text_emb: Tensor,
    prefix: str = "",
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Image→text (image queries, text gallery) and text→image metrics as flat keys.

    Keys: ``f"{prefix}i2t/R@1"``, …, ``f"{prefix}i2t/nDCG@10"``, ``f"{prefix}i2t/tied_match_share"`` and the same
    with ``t2i``.
    """
    out: dict[str, float] = {}
    for name, (q, g) in {"i2t": (image_emb, text_emb), "t2i": (text_emb, image_emb)}.items():
        for key, value in retrieval_metrics_from_embeddings(q, g, ks, chunk_size).items():
            out[f"{prefix}{name}/{key}"] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# Scanning a large gallery: grouped ranks, top-k and class-based precision in one pass over row chunks.
#
# With relevance groups (query q is relevant to gallery item j when group_q == group_j; several items may share a
# group, e.g. several images of one de-duplicated report text), a query's relevant items count as one item scored
# by the best of them, b_q = max_{j relevant} S[q, j]:
#
#     higher_q = #{ j not relevant : S[q, j] > b_q },   tied_q = #{ j not relevant : S[q, j] == b_q }
#
# and the metrics above follow (which is the plain definition when every group is a single index). With one
# relevant item (image → de-duplicated text) this is the exact random-tie expectation; with several relevant items
# tied at b_q it is the expectation over a gallery where they are merged into one entry.
#
# Class-based Precision@K: share of the top K gallery items that share at least one positive label with the query
# (labels 1 = positive; 0 / NaN are not positives); queries without any positive label are left out and counted.
# When the K-th score is tied, the tied block at that score fills the remaining K − a slots (a = items strictly
# above) at random, so each tied item counts (K − a) / (size of the tied block): the expected precision.


@dataclass
class RetrievalScan:
    """Result of :func:`scan_retrieval`: ``ranks`` (:class:`RankCounts`, ``[Nq]``), ``topk`` ``[Nq, k]`` gallery
    indices and ``topk_scores`` ``[Nq, k]``, best first, and with labels ``precision`` ``[Nq, len(precision_ks)]``
    (float64 expected P@k per query, NaN for queries without a positive label)."""

    ranks: RankCounts
    topk: Tensor
    topk_scores: Tensor
    precision: Tensor | None = None
    precision_ks: tuple[int, ...] = ()


def grouped_ranks_in_block(block: Tensor, query_group: Tensor, gallery_group: Tensor) -> RankCounts:
    """Rank counts of the best relevant gallery item for each row of ``block`` ``[b, Ng]`` (see the section note)."""
    if torch.isnan(block).any():
        raise ValueError("similarity contains NaN")
    relevant = query_group[:, None] == gallery_group[None, :]
    if not bool(relevant.any(dim=1).all()):
        missing = int((~relevant.any(dim=1)).nonzero()[0, 0])
        raise ValueError(
            f"query {missing} of the block has no relevant gallery item (group {int(query_group[missing])})"
        )
    best = torch.where(relevant, block, torch.full_like(block, -torch.inf)).amax(dim=1)[:, None]
    return RankCounts(((block > best) & ~relevant).sum(dim=1), ((block == best) & ~relevant).sum(dim=1))


def precision_in_block(block: Tensor, shared: Tensor, kth_scores: Tensor, ks: Sequence[int]) -> Tensor:
    """Expected class-based P@k ``[b, len(ks)]`` (float64) of the rows of ``block`` ``[b, Ng]``.

    ``shared`` ``[b, Ng]``: gallery item shares a positive label with the query; ``kth_scores`` ``[b, len(ks)]``:
    the k-th highest score of each row (k capped at Ng). Items tied at the k-th score count fractionally."""
    out = []
    for col, k in enumerate(ks):
        kk = min(int(k), block.shape[1])
        kth = kth_scores[:, col : col + 1]
        above, tied = block > kth, block == kth
        n_above = above.sum(dim=1).double()
        share = (kk - n_above) / tied.sum(dim=1).double()
        hits = (shared & above).sum(dim=1).double() + share * (shared & tied).sum(dim=1).double()
        out.append(hits / kk)
    return torch.stack(out, dim=1)


@torch.no_grad()
def scan_retrieval(
    score_rows: Callable[[int, int], Tensor],
    num_queries: int,
    num_gallery: int,
    query_group: Tensor | None = None,
    gallery_group: Tensor | None = None,
    k: int = 10,
    chunk_size: int = 1024,
    query_labels: Tensor | np.ndarray | None = None,
    gallery_labels: Tensor | np.ndarray | None = None,
    precision_ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalScan:
    """Rank counts and top-``k`` for ``num_queries`` queries, asking ``score_rows(start, stop)`` for one
    ``[rows, Ng]`` block of scores at a time, so memory stays O(chunk_size × Ng) whatever Nq is (100k × 100k
    included). With ``query_labels`` and ``gallery_labels`` also the tie-fair class-based P@k per query.

    Scores are compared in the dtype ``score_rows`` returns (float64 stays float64); float16 / bfloat16 blocks are
    upcast to float32 and integer blocks to float64."""
    step = _check_chunk(chunk_size)
    identity = query_group is None and gallery_group is None
    if query_group is None:
        if num_queries != num_gallery:
            raise ValueError(
                f"without groups query i matches gallery i: need Nq == Ng, got {num_queries} and {num_gallery}"
            )
        query_group = torch.arange(num_queries)
    if gallery_group is None:
        gallery_group = torch.arange(num_gallery)
    if len(query_group) != num_queries or len(gallery_group) != num_gallery:
        raise ValueError(
            f"query_group has {len(query_group)} entries for {num_queries} queries and gallery_group "
            f"{len(gallery_group)} for {num_gallery} gallery items"
        )
    with_labels = query_labels is not None or gallery_labels is not None
    if with_labels:
        if query_labels is None or gallery_labels is None:
            raise ValueError("class-based precision needs both query_labels and gallery_labels")
        qpos, gpos = positive_sets(query_labels), positive_sets(gallery_labels)
        if len(qpos) != num_queries or len(gpos) != num_gallery:
            raise ValueError(
                f"query_labels has {len(qpos)} rows for {num_queries} queries and gallery_labels "
                f"{len(gpos)} rows for {num_gallery} gallery items"
            )
        pks = tuple(int(p) for p in precision_ks)
        k = max(int(k), *pks)
    kk = min(int(k), num_gallery)
    query_group, gallery_group = torch.as_tensor(query_group).long(), torch.as_tensor(gallery_group).long()
    members = None if identity else _Members.of(gallery_group)
    buffer = None  # dot_score_rows writes each block into one reused buffer
    ranks, top, top_scores, precision = [], [], [], []
    for s in range(0, num_queries, step):
        e = min(s + step, num_queries)
        if isinstance(score_rows, DotScoreRows):
            if buffer is None:
                buffer = score_rows.new_buffer(min(step, num_queries))
            block = score_rows(s, e, out=buffer[: e - s])
        else:
            block = _score_dtype(score_rows(s, e))
        if block.shape != (e - s, num_gallery):
            raise ValueError(f"score_rows({s}, {e}) returned {tuple(block.shape)} for {num_gallery} gallery items")
        if identity:  # query i ↔ gallery i: the diagonal, no relevance mask
            rows = torch.arange(e - s, device=block.device)
            higher, at_match, gmax, found = _rank_pass(block, block[rows, rows + s], kk)
            ranks.append(RankCounts(higher.cpu(), (at_match - 1).cpu()))
        else:
            members = members.to(block.device)
            counts, gmax, found = _grouped_ranks(
                block, query_group[s:e].to(block.device), gallery_group.to(block.device), members, kk
            )
            ranks.append(counts.cpu())
        values, idx = found if found is not None else _topk_rows(block, kk, gmax)
        top.append(idx.cpu())
        top_scores.append(values.cpu())
        if with_labels:
            q_block = qpos[s:e].to(block.device)
            p = _precision_from_topk(block, values, idx, q_block, gpos.to(block.device), pks, gmax).cpu()
            p[~q_block.any(dim=1).cpu()] = float("nan")
            precision.append(p)
    return RetrievalScan(
        RankCounts.cat(ranks),
        torch.cat(top),
        torch.cat(top_scores),
        torch.cat(precision) if with_labels else None,
        pks if with_labels else (),
    )


class DotScoreRows:
    """``score_rows`` for cosine / inner-product retrieval: ``rows(start, stop)`` is rows ``start:stop`` of
    ``query @ galleryᵀ`` in the embeddings' dtype (float16 / bfloat16 embeddings are multiplied in float32), written
    into ``out`` when given (:func:`scan_retrieval` reuses one buffer for every block)."""

    def __init__(self, query: Tensor, gallery: Tensor) -> None:
        query, gallery = _score_dtype(_as_tensor(query)), _score_dtype(_as_tensor(gallery))
        if query.dtype != gallery.dtype:
            raise ValueError(f"query ({query.dtype}) and gallery ({gallery.dtype}) embeddings must share a dtype")
        self.query, self.gallery_t = query, gallery.transpose(0, 1)

    def new_buffer(self, rows: int) -> Tensor:
        """An uninitialised ``[rows, Ng]`` block for ``out``."""
        return torch.empty(rows, self.gallery_t.shape[1], dtype=self.query.dtype, device=self.query.device)

    def __call__(self, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        return torch.mm(self.query[start:stop], self.gallery_t, out=out)


def dot_score_rows(query: Tensor, gallery: Tensor) -> DotScoreRows:
    """The :class:`DotScoreRows` of ``query`` and ``gallery``."""
    return DotScoreRows(query, gallery)


def positive_sets(labels: Tensor | np.ndarray) -> Tensor:
    """Bool ``[N, C]``: label == 1 (0 and NaN are not positives)."""
    return _as_tensor(labels).float().nan_to_num(0.0) == 1.0


def precision_summary(precision: Tensor, ks: Sequence[int]) -> dict[str, float]:
    """``P@k`` (mean over queries with a positive label) and ``P_queries`` from a scan's per-query precision."""
    keep = ~torch.isnan(precision[:, 0]) if precision.numel() else torch.zeros(0, dtype=torch.bool)
    out: dict[str, float] = {"P_queries": float(keep.sum())}
    for col, k in enumerate(ks):
        out[f"P@{int(k)}"] = float(precision[keep, col].mean()) if bool(keep.any()) else float("nan")
    return out


def class_precision_at_k(
    similarity: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    gallery_labels: Tensor | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Tie-fair ``P@k`` of a ``[Nq, Ng]`` score matrix = mean over queries with a positive label of the expected
    share of the top k sharing a positive label (see the section note), plus ``P_queries``. A gallery smaller
    than k: precision over all of it."""
    precision, precision_ks = class_precision_per_query(similarity, query_labels, gallery_labels, ks, chunk_size)
    return precision_summary(precision, precision_ks)


def class_precision_per_query(
    similarity: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    gallery_labels: Tensor | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> tuple[Tensor, tuple[int, ...]]:
    """The per-query tie-fair class precision ``[Nq, len(ks)]`` behind :func:`class_precision_at_k` (NaN rows:
    queries without a positive label) and the ks it was computed at."""
    sim = _as_tensor(similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [Nq, Ng], got shape {tuple(sim.shape)}")
    scan = scan_retrieval(
        lambda s, e: sim[s:e],
        sim.shape[0],
        sim.shape[1],
        torch.zeros(sim.shape[0], dtype=torch.long),
        torch.zeros(sim.shape[1], dtype=torch.long),
        k=1,
        chunk_size=chunk_size,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
        precision_ks=ks,
    )
    assert scan.precision is not None
    return scan.precision, scan.precision_ks


def text_groups(texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """De-duplication of report texts: ``(group [N], first [U])`` with ``group[i]`` the id of text i among the
    U distinct texts (after stripping and lower-casing whitespace runs) and ``first[u]`` its first row."""
    ids: dict[str, int] = {}
    group, first = [], []
    for i, text in enumerate(texts):
        key = " ".join(str(text).lower().split())
        if key not in ids:
            ids[key] = len(ids)
            first.append(i)
        group.append(ids[key])
    return torch.tensor(group, dtype=torch.long), torch.tensor(first, dtype=torch.long)


ScoreFn = Callable[[str, Tensor, Tensor], Tensor]


def evaluate_retrieval(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor | np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    prefix: str = "",
    ks: Sequence[int] = DEFAULT_KS,
    precision_ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    score_fn: ScoreFn | None = None,
) -> tuple[dict[str, float], dict[str, RetrievalScan]]:
    """Both directions, both protocols: exact-pair metrics (R@K, MedR, MeanR, nDCG@10, tied_match_share) and, with
    ``labels``, class-based P@K.

    Protocols: the full gallery (keys ``{prefix}i2t/…``, ``{prefix}t2i/…``) and, with ``texts``, de-duplicated
    report texts (``{prefix}dedup/i2t/…``: identical reports are one gallery item; ``{prefix}dedup/t2i/…``: one
    query per distinct report, every image of that text relevant). ``score_fn(direction, query_rows,
    gallery_rows)`` replaces the inner product (e.g. a probabilistic head's match logit): it gets the study indices
    of the block's queries and of the gallery (``direction`` ``"i2t"``: image rows, text rows; ``"t2i"``: text
    rows, image rows) and returns their ``[len(query_rows), len(gallery_rows)]`` scores.
    Returns the flat metrics and the scans (``"i2t"``, ``"t2i"``, ``"dedup/i2t"``, ``"dedup/t2i"``) for figures.
    """
    n = image_emb.shape[0]
    if text_emb.shape[0] != n:
        raise ValueError(f"image_emb has {n} rows, text_emb {text_emb.shape[0]}")
    lab = None if labels is None else _as_tensor(labels).float()
    if lab is not None and len(lab) != n:
        raise ValueError(f"labels has {len(lab)} rows for {n} studies")
    if texts is not None and len(texts) != n:
        raise ValueError(f"texts has {len(texts)} entries for {n} studies")
    every = torch.arange(n)
    protocols: dict[str, tuple[Tensor, Tensor]] = {"": (every, every)}  # name: (group [N], first [U])
    if texts is not None:
        protocols["dedup/"] = text_groups(texts)
    emb = {"i2t": (image_emb, text_emb), "t2i": (text_emb, image_emb)}
    metrics: dict[str, float] = {f"{prefix}num_studies": float(n)}
    scans: dict[str, RetrievalScan] = {}
    for proto, (group, first) in protocols.items():
        u = len(first)
        specs = {  # direction: (query rows, gallery rows, query_group, gallery_group); None = identity groups
            "i2t": (every, first, group, torch.arange(u)),
            "t2i": (first, every, torch.arange(u), group),
        }
        for name, (q_rows, g_rows, qg, gg) in specs.items():
            if proto and u == n:  # no duplicate texts: the de-duplicated protocol is the full one
                scans[proto + name] = scans[name]
            else:
                scans[proto + name] = _scan_direction(
                    emb[name],
                    name,
                    q_rows,
                    g_rows,
                    None if u == n else (qg, gg),
                    lab,
                    ks,
                    precision_ks,
                    chunk_size,
                    score_fn,
                )
            scan = scans[proto + name]
            for key, value in metrics_from_ranks(scan.ranks, ks).items():
                metrics[f"{prefix}{proto}{name}/{key}"] = value
            if scan.precision is not None:
                for key, value in precision_summary(scan.precision, scan.precision_ks).items():
                    metrics[f"{prefix}{proto}{name}/{key}"] = value
        if proto:
            metrics[f"{prefix}num_distinct_reports"] = float(u)
    return metrics, scans


def _scan_direction(
    embeddings: tuple[Tensor, Tensor],
    direction: str,
    q_rows: Tensor,
    g_rows: Tensor,
    groups: tuple[Tensor, Tensor] | None,
    labels: Tensor | None,
    ks: Sequence[int],
    precision_ks: Sequence[int],
    chunk_size: int,
    score_fn: ScoreFn | None,
) -> RetrievalScan:
    q_emb, g_emb = embeddings
    if score_fn is None:
        q_sel, g_sel = q_emb[q_rows.to(q_emb.device)], g_emb[g_rows.to(g_emb.device)]
        rows = dot_score_rows(q_sel, g_sel)
    else:
        rows = lambda s, e: score_fn(direction, q_rows[s:e], g_rows)  # noqa: E731
    qg, gg = groups if groups is not None else (None, None)
    label_kw = (
        {}
        if labels is None
        else {"query_labels": labels[q_rows], "gallery_labels": labels[g_rows], "precision_ks": precision_ks}
    )
    return scan_retrieval(rows, len(q_rows), len(g_rows), qg, gg, k=max(ks), chunk_size=chunk_size, **label_kw)
