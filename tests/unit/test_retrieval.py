"""Retrieval metrics against brute-force references and hand-checked examples (docs/design.md §4): ties are broken at
random, so every metric is compared with its expectation over all tie orders."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from cxr_vlp.metrics.retrieval import (
    RankCounts,
    bidirectional_retrieval,
    metrics_from_ranks,
    ranks_from_embeddings,
    ranks_from_similarity,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
)

NAMES = ["R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10", "tied_match_share"]


def expected_over_tie_orders(sim: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Every ordering of the gallery (all N! permutations, then a stable sort by descending score, so the
    permutation decides among ties): the match's position per ordering, averaged per query, then over queries."""
    n = sim.shape[0]
    per_query = []
    for i in range(n):
        positions = []
        for perm in itertools.permutations(range(n)):
            order = sorted(perm, key=lambda j: -sim[i, j])
            positions.append(order.index(i) + 1)
        per_query.append(positions)
    out = {f"R@{k}": statistics.fmean(statistics.fmean(p <= k for p in ps) for ps in per_query) for k in ks}
    expected_rank = [statistics.fmean(ps) for ps in per_query]
    out["MedR"] = statistics.median(expected_rank)
    out["MeanR"] = statistics.fmean(expected_rank)
    out["nDCG@10"] = statistics.fmean(
        statistics.fmean(1 / math.log2(p + 1) if p <= 10 else 0.0 for p in ps) for ps in per_query
    )
    out["tied_match_share"] = statistics.fmean(
        any(sim[i, j] == sim[i, i] for j in range(n) if j != i) for i in range(n)
    )
    return out


def strict_rank_metrics(sim: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """The untied formulas: rank_i = 1 + #{j : sim[i, j] > sim[i, i]}, one comparison at a time."""
    n = sim.shape[0]
    ranks = [1 + sum(1 for j in range(n) if sim[i, j] > sim[i, i]) for i in range(n)]
    out = {f"R@{k}": sum(r <= k for r in ranks) / n for k in ks}
    srt = sorted(ranks)
    out["MedR"] = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
    out["MeanR"] = sum(ranks) / n
    out["nDCG@10"] = sum(1 / math.log2(r + 1) if r <= 10 else 0.0 for r in ranks) / n
    out["tied_match_share"] = 0.0
    return out


def _assert_metrics_equal(got: dict[str, float], want: dict[str, float], tol: float = 1e-12) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=tol, rel=0), k


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_integer_scores_equal_the_expectation_over_all_tie_orders(seed: int, chunk_size: int) -> None:
    sim = np.random.default_rng(seed).integers(0, 3, size=(6, 6)).astype(np.float64)  # many ties
    _assert_metrics_equal(retrieval_metrics(sim, chunk_size=chunk_size), expected_over_tie_orders(sim))
    _assert_metrics_equal(retrieval_metrics(sim.T, chunk_size=chunk_size), expected_over_tie_orders(sim.T))


def test_ndcg_equals_sklearn_tie_averaged_ndcg() -> None:
    rng = np.random.default_rng(7)
    for n in (5, 12, 30):
        sim = rng.integers(0, 4, size=(n, n)).astype(np.float64)
        got = retrieval_metrics(sim, chunk_size=7)["nDCG@10"]
        assert got == pytest.approx(ndcg_score(np.eye(n), sim, k=10, ignore_ties=False), abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 33, 50])
@pytest.mark.parametrize("chunk_size", [3, 64])
def test_untied_scores_keep_the_strict_rank_values(n: int, chunk_size: int) -> None:
    sim = np.random.default_rng(n).normal(size=(n, n))  # float64: no ties
    sim[np.arange(n), np.arange(n)] += 1.5
    _assert_metrics_equal(retrieval_metrics(sim, chunk_size=chunk_size), strict_rank_metrics(sim))
    counts = ranks_from_similarity(torch.from_numpy(sim), chunk_size=chunk_size)
    assert counts.tied.sum() == 0
    assert (counts.higher + 1).tolist() == [1 + int((sim[i] > sim[i, i]).sum()) for i in range(n)]


@pytest.mark.parametrize("n", [1, 3, 8, 25])
@pytest.mark.parametrize("chunk_size", [1, 4, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collapsed_embeddings_give_exactly_chance(n: int, chunk_size: int, dtype: torch.dtype) -> None:
    emb = torch.full((n, 16), 0.25, dtype=dtype)  # every pair scores exactly 1
    chance = {f"R@{k}": min(k, n) / n for k in (1, 5, 10)} | {"MedR": (n + 1) / 2, "MeanR": (n + 1) / 2}
    chance["nDCG@10"] = sum(1 / math.log2(p + 1) for p in range(1, min(n, 10) + 1)) / n
    chance["tied_match_share"] = 1.0 if n > 1 else 0.0
    _assert_metrics_equal(retrieval_metrics_from_embeddings(emb, emb, chunk_size=chunk_size), chance)
    out = bidirectional_retrieval(emb, emb.clone(), chunk_size=chunk_size)
    for d in ("i2t", "t2i"):
        _assert_metrics_equal({k: out[f"{d}/{k}"] for k in NAMES}, chance)


def test_hand_checked_example() -> None:
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.0],  # match best                          -> g 0, t 0: position 1
            [0.5, 0.3, 0.3, 0.7],  # 0.5, 0.7 above; one 0.3 tie         -> g 2, t 1: position 3 or 4
            [0.2, 0.2, 0.2, 0.2],  # all tie                             -> g 0, t 3: position 1 … 4
            [0.8, 0.6, 0.9, 0.1],  # three above                         -> g 3, t 0: position 4
        ]
    )
    counts = ranks_from_similarity(sim)
    assert counts.higher.tolist() == [0, 2, 0, 3] and counts.tied.tolist() == [0, 1, 3, 0]
    m = retrieval_metrics(sim, ks=(1, 2, 3))
    assert m["R@1"] == pytest.approx((1 + 0 + 1 / 4 + 0) / 4)
    assert m["R@2"] == pytest.approx((1 + 0 + 2 / 4 + 0) / 4)
    assert m["R@3"] == pytest.approx((1 + 1 / 2 + 3 / 4 + 0) / 4)
    assert m["MedR"] == pytest.approx((2.5 + 3.5) / 2)  # mid-ranks 1, 3.5, 2.5, 4
    assert m["MeanR"] == pytest.approx((1 + 3.5 + 2.5 + 4) / 4)
    d = [1 / math.log2(p + 1) for p in range(1, 5)]
    assert m["nDCG@10"] == pytest.approx((d[0] + (d[2] + d[3]) / 2 + sum(d) / 4 + d[3]) / 4, abs=1e-12)
    assert m["tied_match_share"] == pytest.approx(0.5)


def test_ndcg_zero_beyond_ten_and_tie_straddling_the_cut() -> None:
    n = 12
    sim = torch.arange(n, 0, -1, dtype=torch.float64).repeat(n, 1)  # column j scores n - j: match i at i + 1
    assert (ranks_from_similarity(sim).higher + 1).tolist() == list(range(1, n + 1))
    m = retrieval_metrics(sim)
    assert m["nDCG@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / n)
    assert m["R@10"] == pytest.approx(10 / 12) and m["MedR"] == pytest.approx(6.5)
    # a tie over positions 9 … 12: the positions ≤ 10 count, averaged over the four
    straddle = metrics_from_ranks(RankCounts(torch.tensor([8]), torch.tensor([3])))
    assert straddle["nDCG@10"] == pytest.approx((1 / math.log2(10) + 1 / math.log2(11)) / 4)
    assert straddle["R@10"] == pytest.approx(2 / 4) and straddle["MeanR"] == pytest.approx(10.5)


def test_float64_near_ties_stay_distinct() -> None:
    eps = 1e-12  # far below float32 resolution at 1.0: a float32 cast would tie the two items
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, 0.0], [1.0 - eps, 0.0]], dtype=torch.float64)
    g[1, 1] = 1.0
    assert float((q @ g.T)[0, 0]) > float((q @ g.T)[0, 1])
    m = retrieval_metrics_from_embeddings(q, g, ks=(1,))
    assert m["R@1"] == 1.0 and m["tied_match_share"] == 0.0
    cast = retrieval_metrics_from_embeddings(q.float(), g.float(), ks=(1,))
    assert cast["R@1"] == 0.75 and cast["tied_match_share"] == 0.5  # what the float32 cast reported


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_embeddings_version_equals_matrix_version(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (23, 4), generator=g).double()  # integer values: exact ties
    k = torch.randint(-2, 3, (23, 4), generator=g).double()
    sim = q @ k.T
    a, b = ranks_from_embeddings(q, k, chunk_size), ranks_from_similarity(sim, 7)
    assert torch.equal(a.higher, b.higher) and torch.equal(a.tied, b.tied) and int(a.tied.sum()) > 0
    _assert_metrics_equal(retrieval_metrics_from_embeddings(q, k, chunk_size=chunk_size), retrieval_metrics(sim))

    qf = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=-1)
    kf = torch.nn.functional.normalize(qf + 0.5 * torch.randn(30, 8, generator=g), dim=-1)
    _assert_metrics_equal(
        retrieval_metrics_from_embeddings(qf, kf, chunk_size=chunk_size), retrieval_metrics(qf @ kf.T)
    )


def test_bidirectional_keys_and_directions() -> None:
    g = torch.Generator().manual_seed(5)
    img = torch.nn.functional.normalize(torch.randn(20, 6, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + torch.randn(20, 6, generator=g), dim=-1)
    out = bidirectional_retrieval(img, txt, prefix="val/", chunk_size=6)
    assert set(out) == {f"val/{d}/{m}" for d in ("i2t", "t2i") for m in NAMES}
    i2t = retrieval_metrics(img @ txt.T)
    t2i = retrieval_metrics(txt @ img.T)
    for m in NAMES:
        assert out[f"val/i2t/{m}"] == pytest.approx(i2t[m])
        assert out[f"val/t2i/{m}"] == pytest.approx(t2i[m])
    assert all(isinstance(v, float) for v in out.values())
    assert set(bidirectional_retrieval(img, txt)) == {f"{d}/{m}" for d in ("i2t", "t2i") for m in NAMES}


def test_perfect_and_single() -> None:
    m = retrieval_metrics(np.eye(5))
    assert m["R@1"] == 1.0 and m["MedR"] == 1.0 and m["MeanR"] == 1.0 and m["nDCG@10"] == 1.0
    assert retrieval_metrics(np.array([[0.3]]))["R@1"] == 1.0


def test_plain_integer_ranks_are_untied_counts() -> None:
    m = metrics_from_ranks(torch.tensor([1, 3, 12]), ks=(1, 3))
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@3"] == pytest.approx(2 / 3) and m["MedR"] == 3.0
    assert m["tied_match_share"] == 0.0
    with pytest.raises(ValueError, match="1-based integers"):
        metrics_from_ranks(torch.tensor([1.5, 2.0]))
    with pytest.raises(ValueError, match="1-based integers"):
        metrics_from_ranks(np.array([0, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        RankCounts(torch.tensor([0]), torch.tensor([-1]))


def test_errors() -> None:
    sim = torch.rand(4, 4)
    sim[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(sim, chunk_size=2)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        retrieval_metrics(torch.rand(3, 4))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.rand(4))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.zeros(0, 0))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.rand(3, 3), chunk_size=0)
    with pytest.raises(ValueError):
        retrieval_metrics_from_embeddings(torch.rand(3, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics_from_embeddings(torch.full((3, 2), float("nan")), torch.rand(3, 2))
    with pytest.raises(ValueError):
        metrics_from_ranks(torch.zeros(0))
