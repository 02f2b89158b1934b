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

from collections.abc import Sequence

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


