"""Cross-modal retrieval metrics (DESIGN.md §4), computed in row chunks.

Query i's single relevant gallery item is gallery item i. For query i with similarities S[i, :]

    rank_i  = 1 + #{ j : S[i, j] > S[i, i] }             (strictly higher: ties favour the match)
    R@K     = (1/N) Σ_i [rank_i ≤ K]
    MedR    = median_i rank_i   (mean of the two middle ranks when N is even)
    MeanR   = (1/N) Σ_i rank_i
    nDCG@K  = (1/N) Σ_i [rank_i ≤ K] / log2(rank_i + 1)   (one relevant item, so IDCG = 1)

Only ``chunk_size × N`` similarities exist at a time in the embedding-based functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ranks_in_block",
    "ranks_from_similarity",
    "ranks_from_embeddings",
    "metrics_from_ranks",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "bidirectional_retrieval",
    "RetrievalScan",
    "grouped_ranks_in_block",
    "scan_retrieval",
    "dot_score_rows",
    "positive_sets",
    "class_precision_at_k",
    "text_groups",
    "evaluate_retrieval",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def ranks_in_block(block: Tensor, start: int) -> Tensor:
    """Ranks for rows ``start .. start+len(block)-1`` of a similarity matrix given as ``block``."""
    if torch.isnan(block).any():
        raise ValueError("similarity contains NaN")
    rows = torch.arange(block.shape[0], device=block.device)
    match = block[rows, rows + start]
    return 1 + (block > match[:, None]).sum(dim=1)


def ranks_from_similarity(similarity: Tensor | np.ndarray, chunk_size: int = 4096) -> Tensor:
    """Per-query 1-based ranks (LongTensor ``[N]``) of the diagonal match in a ``[N, N]`` matrix."""
    sim = _as_tensor(similarity)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square [N, N], got shape {tuple(sim.shape)}")
    n = sim.shape[0]
    if n < 1:
        raise ValueError("similarity must have N >= 1")
    step = _check_chunk(chunk_size)
    return torch.cat([ranks_in_block(sim[s : s + step], s) for s in range(0, n, step)]).long().cpu()


@torch.no_grad()
def ranks_from_embeddings(query: Tensor, gallery: Tensor, chunk_size: int = 4096) -> Tensor:
    """Ranks with S = query · galleryᵀ computed one row chunk at a time (memory O(chunk × N))."""
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
    gallery_t = gallery.transpose(0, 1)
    out = [ranks_in_block(query[s : s + step] @ gallery_t, s) for s in range(0, n, step)]
    return torch.cat(out).long().cpu()


def metrics_from_ranks(
    ranks: Tensor | np.ndarray, ks: Sequence[int] = DEFAULT_KS, ndcg_k: int = 10
) -> dict[str, float]:
    """``R@k`` for each k (fractions), ``MedR``, ``MeanR`` and ``nDCG@{ndcg_k}`` from 1-based ranks."""
    r = _as_tensor(ranks).detach().cpu().to(torch.float64).flatten()
    if r.numel() == 0:
        raise ValueError("no ranks")
    out: dict[str, float] = {f"R@{int(k)}": float((r <= k).double().mean()) for k in ks}
    out["MedR"] = float(np.median(r.numpy()))
    out["MeanR"] = float(r.mean())
    gains = torch.where(r <= ndcg_k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))
    out[f"nDCG@{int(ndcg_k)}"] = float(gains.mean())
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

    Keys: ``f"{prefix}i2t/R@1"``, …, ``f"{prefix}i2t/nDCG@10"`` and the same with ``t2i``.
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
# group, e.g. identical report texts after de-duplication, or several images of one text):
#
#     rank_q = 1 + #{ j not relevant : S[q, j] > max_{j relevant} S[q, j] }
#
# which is the definition above when every group is a single index (groups = arange(N) on both sides).
# Class-based Precision@K: share of the top K gallery items that share at least one positive label with the query
# (labels 1 = positive; 0 / NaN are not positives); queries without any positive label are left out and counted.


@dataclass
class RetrievalScan:
    """Result of :func:`scan_retrieval`: ``ranks`` ``[Nq]`` (1-based), ``topk`` ``[Nq, k]`` gallery indices and
    ``topk_scores`` ``[Nq, k]``, best first."""

    ranks: Tensor
    topk: Tensor
    topk_scores: Tensor


def grouped_ranks_in_block(block: Tensor, query_group: Tensor, gallery_group: Tensor) -> Tensor:
    """Ranks of the best relevant gallery item for each row of ``block`` ``[b, Ng]`` (see the section note)."""
    if torch.isnan(block).any():
        raise ValueError("similarity contains NaN")
    relevant = query_group[:, None] == gallery_group[None, :]
    if not bool(relevant.any(dim=1).all()):
        missing = int((~relevant.any(dim=1)).nonzero()[0, 0])
        raise ValueError(f"query {missing} of the block has no relevant gallery item (group {int(query_group[missing])})")
    best = torch.where(relevant, block, torch.full_like(block, -torch.inf)).amax(dim=1)
    return 1 + ((block > best[:, None]) & ~relevant).sum(dim=1)


@torch.no_grad()
def scan_retrieval(
    score_rows: Callable[[int, int], Tensor],
    num_queries: int,
    num_gallery: int,
    query_group: Tensor | None = None,
    gallery_group: Tensor | None = None,
    k: int = 10,
    chunk_size: int = 1024,
) -> RetrievalScan:
    """Ranks and top-``k`` for ``num_queries`` queries, asking ``score_rows(start, stop)`` for one ``[rows, Ng]``
    block of scores at a time, so memory stays O(chunk_size × Ng) whatever Nq is (100k × 100k included)."""
    step = _check_chunk(chunk_size)
    identity = query_group is None and gallery_group is None
    if query_group is None:
        if num_queries != num_gallery:
            raise ValueError(f"without groups query i matches gallery i: need Nq == Ng, got {num_queries} and {num_gallery}")
        query_group = torch.arange(num_queries)
    if gallery_group is None:
        gallery_group = torch.arange(num_gallery)
    if len(query_group) != num_queries or len(gallery_group) != num_gallery:
        raise ValueError(f"query_group has {len(query_group)} entries for {num_queries} queries and gallery_group "
                         f"{len(gallery_group)} for {num_gallery} gallery items")
    kk = min(int(k), num_gallery)
    ranks, top, top_scores = [], [], []
    for s in range(0, num_queries, step):
        block = score_rows(s, min(s + step, num_queries)).float()
        if block.shape[1] != num_gallery:
            raise ValueError(f"score_rows returned {tuple(block.shape)} for {num_gallery} gallery items")
        if identity:  # query i ↔ gallery i: the diagonal, no relevance mask (less memory per block)
            ranks.append(ranks_in_block(block, s).cpu())
        else:
            qg = query_group[s : s + step].to(block.device)
            ranks.append(grouped_ranks_in_block(block, qg, gallery_group.to(block.device)).cpu())
        values, idx = block.topk(kk, dim=1)
        top.append(idx.cpu())
        top_scores.append(values.cpu())
    return RetrievalScan(torch.cat(ranks).long(), torch.cat(top), torch.cat(top_scores))


def dot_score_rows(query: Tensor, gallery: Tensor) -> Callable[[int, int], Tensor]:
    """``score_rows`` for cosine / inner-product retrieval: rows ``start:stop`` of ``query @ galleryᵀ``."""
    gallery_t = gallery.transpose(0, 1)
    return lambda start, stop: query[start:stop] @ gallery_t


def positive_sets(labels: Tensor | np.ndarray) -> Tensor:
    """Bool ``[N, C]``: label == 1 (0 and NaN are not positives)."""
    return _as_tensor(labels).float().nan_to_num(0.0) == 1.0


def class_precision_at_k(
    topk: Tensor, query_labels: Tensor | np.ndarray, gallery_labels: Tensor | np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """``P@k`` = mean over queries with a positive label of (1/k)·#{top-k items sharing a positive label}, plus
    ``P_queries`` (how many queries had a positive label). ``topk`` must hold the top max(ks) (or the whole
    gallery when it is smaller)."""
    qpos, gpos = positive_sets(query_labels), positive_sets(gallery_labels)
    if len(qpos) != len(topk):
        raise ValueError(f"query_labels has {len(qpos)} rows for {len(topk)} queries")
    keep = qpos.any(dim=1)
    out: dict[str, float] = {"P_queries": float(keep.sum())}
    if not bool(keep.any()):
        return out | {f"P@{int(k)}": float("nan") for k in ks}
    shared = (gpos[topk[keep]] & qpos[keep][:, None, :]).any(dim=2)  # [Nq', k_max]
    for k in ks:  # a gallery smaller than k: precision over all of it (the scan keeps min(k, Ng) items)
        out[f"P@{int(k)}"] = float(shared[:, : min(int(k), shared.shape[1])].double().mean())
    return out


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


def evaluate_retrieval(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor | np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    dedup: bool = False,
    prefix: str = "",
    ks: Sequence[int] = DEFAULT_KS,
    precision_ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    score_fn: Callable[[str, int, int], Tensor] | None = None,
) -> tuple[dict[str, float], dict[str, RetrievalScan]]:
    """Both directions: exact-pair metrics (R@K, MedR, MeanR, nDCG@10) and, with ``labels``, class-based P@K.

    ``dedup=True`` (needs ``texts``) collapses identical reports into one gallery item for image→text, and into
    one query for text→image (relevant: every image of that text). ``score_fn(direction, start, stop)`` replaces
    the inner product (e.g. a probabilistic head's match logit; it must follow the same row / column layout).
    Returns the flat metrics and the scans (``"i2t"``, ``"t2i"``) for figures.
    """
    n = image_emb.shape[0]
    if text_emb.shape[0] != n:
        raise ValueError(f"image_emb has {n} rows, text_emb {text_emb.shape[0]}")
    if dedup and texts is None:
        raise ValueError("dedup=True needs the report texts")
    lab = None if labels is None else _as_tensor(labels).float()
    if lab is not None and len(lab) != n:
        raise ValueError(f"labels has {len(lab)} rows for {n} studies")
    group, first = text_groups(texts) if dedup else (torch.arange(n), torch.arange(n))
    txt_g = text_emb[first.to(text_emb.device)]
    specs = {  # direction: (queries, gallery, query_group, gallery_group, query rows, gallery rows)
        "i2t": (image_emb, txt_g, group, torch.arange(len(first)), torch.arange(n), first),
        "t2i": (txt_g, image_emb, torch.arange(len(first)), group, first, torch.arange(n)),
    }
    metrics: dict[str, float] = {}
    scans: dict[str, RetrievalScan] = {}
    k_max = max(max(ks), max(precision_ks) if lab is not None else 1)
    for name, (q, g, qg, gg, q_rows, g_rows) in specs.items():
        if score_fn is None:
            rows = dot_score_rows(q, g)
        elif dedup:
            raise ValueError("dedup=True is only supported with inner-product scores")
        else:
            rows = (lambda d: lambda s, e: score_fn(d, s, e))(name)
        scan = scan_retrieval(rows, len(q), len(g), qg, gg, k=k_max, chunk_size=chunk_size)
        scans[name] = scan
        for key, value in metrics_from_ranks(scan.ranks, ks).items():
            metrics[f"{prefix}{name}/{key}"] = value
        if lab is not None:
            for key, value in class_precision_at_k(scan.topk, lab[q_rows], lab[g_rows], precision_ks).items():
                metrics[f"{prefix}{name}/{key}"] = value
    metrics[f"{prefix}num_studies"] = float(n)
    if dedup:
        metrics[f"{prefix}num_distinct_reports"] = float(len(first))
    return metrics, scans
