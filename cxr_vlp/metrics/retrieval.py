"""Cross-modal retrieval metrics (DESIGN.md §4), computed in row chunks, tie-fair.

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
relevant item. Without ties (t_i = 0) these are the strict-rank formulas (rank_i = 1 + g_i). Collapsed embeddings (all scores
equal) give exactly chance: R@K = K/N, MeanR = MedR = (N+1)/2. Ties are exact equality of the computed scores;
the scan scores in the embeddings' dtype (float64 stays float64), so only float16 / bfloat16 are upcast to float32.

Only ``chunk_size × N`` similarities exist at a time in the embedding-based functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        discounts = torch.cat([torch.zeros(1, dtype=torch.float64),
                               (1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))).cumsum(0)])
        lo = self.higher.clamp(max=k)                                   # positions ≤ higher are not the match's
        hi = (self.higher + 1 + self.tied).clamp(max=k)                 # last possible position, capped at k
        return (discounts[hi] - discounts[lo]) / (self.tied.double() + 1.0)


def _rank_counts(ranks: RankCounts | Tensor | np.ndarray) -> RankCounts:
    return ranks.cpu() if isinstance(ranks, RankCounts) else RankCounts.from_ranks(ranks)


def ranks_in_block(block: Tensor, start: int) -> RankCounts:
    """Rank counts for rows ``start .. start+len(block)-1`` of a square similarity matrix given as ``block``."""
    if torch.isnan(block).any():
        raise ValueError("similarity contains NaN")
    rows = torch.arange(block.shape[0], device=block.device)
    match = block[rows, rows + start][:, None]
    return RankCounts((block > match).sum(dim=1), (block == match).sum(dim=1) - 1)


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
        raise ValueError(f"query {missing} of the block has no relevant gallery item "
                         f"(group {int(query_group[missing])})")
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
            raise ValueError(f"without groups query i matches gallery i: need Nq == Ng, got {num_queries} and "
                             f"{num_gallery}")
        query_group = torch.arange(num_queries)
    if gallery_group is None:
        gallery_group = torch.arange(num_gallery)
    if len(query_group) != num_queries or len(gallery_group) != num_gallery:
        raise ValueError(f"query_group has {len(query_group)} entries for {num_queries} queries and gallery_group "
                         f"{len(gallery_group)} for {num_gallery} gallery items")
    with_labels = query_labels is not None or gallery_labels is not None
    if with_labels:
        if query_labels is None or gallery_labels is None:
            raise ValueError("class-based precision needs both query_labels and gallery_labels")
        qpos, gpos = positive_sets(query_labels), positive_sets(gallery_labels)
        if len(qpos) != num_queries or len(gpos) != num_gallery:
            raise ValueError(f"query_labels has {len(qpos)} rows for {num_queries} queries and gallery_labels "
                             f"{len(gpos)} rows for {num_gallery} gallery items")
        pks = tuple(int(p) for p in precision_ks)
        k = max(int(k), *pks)
    kk = min(int(k), num_gallery)
    ranks, top, top_scores, precision = [], [], [], []
    for s in range(0, num_queries, step):
        block = _score_dtype(score_rows(s, min(s + step, num_queries)))
        if block.shape != (min(s + step, num_queries) - s, num_gallery):
            raise ValueError(f"score_rows({s}, {min(s + step, num_queries)}) returned {tuple(block.shape)} for "
                             f"{num_gallery} gallery items")
        if identity:  # query i ↔ gallery i: the diagonal, no relevance mask (less memory per block)
            ranks.append(ranks_in_block(block, s).cpu())
        else:
            qg = query_group[s : s + step].to(block.device)
            ranks.append(grouped_ranks_in_block(block, qg, gallery_group.to(block.device)).cpu())
        values, idx = block.topk(kk, dim=1)
        top.append(idx.cpu())
        top_scores.append(values.cpu())
        if with_labels:
            q_block = qpos[s : s + step].to(block.device)
            shared = (q_block.float() @ gpos.to(block.device).float().T) > 0
            kth = values[:, [min(p, num_gallery) - 1 for p in pks]]
            p = precision_in_block(block, shared, kth, pks).cpu()
            p[~q_block.any(dim=1).cpu()] = float("nan")
            precision.append(p)
    return RetrievalScan(RankCounts.cat(ranks), torch.cat(top), torch.cat(top_scores),
                         torch.cat(precision) if with_labels else None, pks if with_labels else ())


def dot_score_rows(query: Tensor, gallery: Tensor) -> Callable[[int, int], Tensor]:
    """``score_rows`` for cosine / inner-product retrieval: rows ``start:stop`` of ``query @ galleryᵀ``, in the
    embeddings' dtype (float16 / bfloat16 embeddings are multiplied in float32)."""
    query, gallery = _score_dtype(query), _score_dtype(gallery)
    if query.dtype != gallery.dtype:
        raise ValueError(f"query ({query.dtype}) and gallery ({gallery.dtype}) embeddings must share a dtype")
    gallery_t = gallery.transpose(0, 1)
    return lambda start, stop: query[start:stop] @ gallery_t


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
    sim = _as_tensor(similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [Nq, Ng], got shape {tuple(sim.shape)}")
    scan = scan_retrieval(lambda s, e: sim[s:e], sim.shape[0], sim.shape[1],
                          torch.zeros(sim.shape[0], dtype=torch.long), torch.zeros(sim.shape[1], dtype=torch.long),
                          k=1, chunk_size=chunk_size, query_labels=query_labels, gallery_labels=gallery_labels,
                          precision_ks=ks)
    assert scan.precision is not None
    return precision_summary(scan.precision, scan.precision_ks)


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
                scans[proto + name] = _scan_direction(emb[name], name, q_rows, g_rows, None if u == n else (qg, gg),
                                                      lab, ks, precision_ks, chunk_size, score_fn)
            scan = scans[proto + name]
            for key, value in metrics_from_ranks(scan.ranks, ks).items():
                metrics[f"{prefix}{proto}{name}/{key}"] = value
            if scan.precision is not None:
                for key, value in precision_summary(scan.precision, scan.precision_ks).items():
                    metrics[f"{prefix}{proto}{name}/{key}"] = value
        if proto:
            metrics[f"{prefix}num_distinct_reports"] = float(u)
    return metrics, scans


def _scan_direction(embeddings: tuple[Tensor, Tensor], direction: str, q_rows: Tensor, g_rows: Tensor,
                    groups: tuple[Tensor, Tensor] | None, labels: Tensor | None, ks: Sequence[int],
                    precision_ks: Sequence[int], chunk_size: int, score_fn: ScoreFn | None) -> RetrievalScan:
    q_emb, g_emb = embeddings
    if score_fn is None:
        q_sel, g_sel = q_emb[q_rows.to(q_emb.device)], g_emb[g_rows.to(g_emb.device)]
        rows = dot_score_rows(q_sel, g_sel)
    else:
        rows = lambda s, e: score_fn(direction, q_rows[s:e], g_rows)  # noqa: E731
    qg, gg = groups if groups is not None else (None, None)
    label_kw = {} if labels is None else {"query_labels": labels[q_rows], "gallery_labels": labels[g_rows],
                                          "precision_ks": precision_ks}
    return scan_retrieval(rows, len(q_rows), len(g_rows), qg, gg, k=max(ks), chunk_size=chunk_size, **label_kw)
