"""Retrieval metrics against a brute-force reference and hand-checked examples (DESIGN.md §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_vlp.eval.retrieval import (
    bidirectional_retrieval,
    metrics_from_ranks,
    ranks_from_embeddings,
    ranks_from_similarity,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
)


def brute_ranks(sim: np.ndarray) -> list[int]:
    """rank_i = 1 + #{j : sim[i, j] > sim[i, i]}, one comparison at a time."""
    n = sim.shape[0]
    ranks = []
    for i in range(n):
        higher = 0
        for j in range(n):
            if sim[i, j] > sim[i, i]:
                higher += 1
        ranks.append(1 + higher)
    return ranks


def brute_metrics(sim: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    ranks = brute_ranks(sim)
    n = len(ranks)
    out = {f"R@{k}": sum(r <= k for r in ranks) / n for k in ks}
    srt = sorted(ranks)
    out["MedR"] = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
    out["MeanR"] = sum(ranks) / n
    out["nDCG@10"] = sum(1 / math.log2(r + 1) if r <= 10 else 0.0 for r in ranks) / n
    return out


def _assert_metrics_equal(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


@pytest.mark.parametrize("n", [1, 2, 7, 33, 50])
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 1000])
def test_matches_brute_force_with_ties(n: int, chunk_size: int) -> None:
    rng = np.random.default_rng(n * 1000 + chunk_size)
    sim = rng.integers(0, 4, size=(n, n)).astype(np.float32)  # many ties
    _assert_metrics_equal(retrieval_metrics(sim, chunk_size=chunk_size), brute_metrics(sim))
    ranks = ranks_from_similarity(torch.from_numpy(sim), chunk_size=chunk_size)
    assert ranks.dtype == torch.long
    assert ranks.tolist() == brute_ranks(sim)


@pytest.mark.parametrize("chunk_size", [3, 64])
def test_matches_brute_force_continuous(chunk_size: int) -> None:
    sim = np.random.default_rng(0).normal(size=(40, 40))
    sim[np.arange(40), np.arange(40)] += 1.5
    _assert_metrics_equal(retrieval_metrics(sim, chunk_size=chunk_size), brute_metrics(sim))


def test_hand_checked_example() -> None:
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.0],  # match best                    -> rank 1
            [0.5, 0.3, 0.3, 0.7],  # 0.5, 0.7 above; 0.3 tie       -> rank 3
            [0.2, 0.2, 0.2, 0.2],  # all tie, ties favour match     -> rank 1
            [0.8, 0.6, 0.9, 0.1],  # three above                   -> rank 4
        ]
    )
    assert ranks_from_similarity(sim).tolist() == [1, 3, 1, 4]
    m = retrieval_metrics(sim, ks=(1, 2, 3))
    assert m["R@1"] == pytest.approx(0.5)
    assert m["R@2"] == pytest.approx(0.5)
    assert m["R@3"] == pytest.approx(0.75)
    assert m["MedR"] == pytest.approx(2.0)  # sorted 1, 1, 3, 4 -> (1 + 3) / 2
    assert m["MeanR"] == pytest.approx(9 / 4)
    # (1/log2(2) + 1/log2(4) + 1/log2(2) + 1/log2(5)) / 4 = (1 + 0.5 + 1 + 0.430677) / 4
    assert m["nDCG@10"] == pytest.approx((2.5 + 0.4306765581) / 4, abs=1e-9)


def test_ndcg_zero_beyond_ten() -> None:
    n = 12
    sim = torch.zeros(n, n)
    sim[:, :] = torch.arange(n, 0, -1, dtype=torch.float32)  # column j scores n - j in every row
    # row i's match is column i, with i columns above -> rank i + 1
    assert ranks_from_similarity(sim).tolist() == list(range(1, n + 1))
    m = retrieval_metrics(sim)
    assert m["nDCG@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / n)
    assert m["R@10"] == pytest.approx(10 / 12)
    assert m["MedR"] == pytest.approx(6.5)


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_embeddings_version_equals_matrix_version(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (23, 4), generator=g).double()  # integer values: exact ties
    k = torch.randint(-2, 3, (23, 4), generator=g).double()
    sim = q @ k.T
    assert ranks_from_embeddings(q, k, chunk_size).tolist() == ranks_from_similarity(sim, 7).tolist()
    _assert_metrics_equal(retrieval_metrics_from_embeddings(q, k, chunk_size=chunk_size), retrieval_metrics(sim))
    _assert_metrics_equal(retrieval_metrics(sim), brute_metrics(sim.numpy()))

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
    names = ["R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10"]
    assert set(out) == {f"val/{d}/{m}" for d in ("i2t", "t2i") for m in names}
    i2t = retrieval_metrics(img @ txt.T)
    t2i = retrieval_metrics(txt @ img.T)
    for m in names:
        assert out[f"val/i2t/{m}"] == pytest.approx(i2t[m])
        assert out[f"val/t2i/{m}"] == pytest.approx(t2i[m])
    assert all(isinstance(v, float) for v in out.values())
    assert set(bidirectional_retrieval(img, txt)) == {f"{d}/{m}" for d in ("i2t", "t2i") for m in names}


def test_perfect_and_single() -> None:
    m = retrieval_metrics(np.eye(5))
    assert m["R@1"] == 1.0 and m["MedR"] == 1.0 and m["MeanR"] == 1.0 and m["nDCG@10"] == 1.0
    assert retrieval_metrics(np.array([[0.3]]))["R@1"] == 1.0


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
