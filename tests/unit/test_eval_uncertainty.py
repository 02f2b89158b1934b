"""R@k by uncertainty bins and the risk–coverage curve (cxr_vlp.eval.uncertainty)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cxr_vlp.eval.uncertainty import (
    RiskCoverage,
    UncertaintyBins,
    recall_by_uncertainty_bins,
    risk_coverage,
    safe_spearman,
)


def _random_case(n: int, seed: int, tied: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ranks = rng.integers(1, 8, size=n)
    # integer-valued uncertainties force many ties; the ordering must then follow input order
    u = rng.integers(0, 6, size=n).astype(float) if tied else rng.random(n)
    return ranks, u


# ---------------------------------------------------------------------------------------------- brute force
def _brute_bins(ranks, u, n_bins, k):
    items = sorted(range(len(u)), key=lambda i: (u[i], i))  # stable: ties keep input order
    base, extra = divmod(len(u), n_bins)
    out, start = [], 0
    for b in range(n_bins):
        size = base + (1 if b < extra else 0)
        idx = items[start : start + size]
        start += size
        hits = [1.0 if ranks[i] <= k else 0.0 for i in idx]
        out.append((sum(u[i] for i in idx) / size, sum(hits) / size, size))
    return out


def _brute_risk(ranks, u, k):
    items = sorted(range(len(u)), key=lambda i: (u[i], i))
    risks = []
    for m in range(1, len(u) + 1):
        hits = sum(1 for i in items[:m] if ranks[i] <= k)
        risks.append(1.0 - hits / m)
    return risks


@pytest.mark.parametrize("n,n_bins,k", [(103, 10, 1), (57, 4, 3), (10, 10, 1), (31, 1, 2)])
def test_bins_match_brute_force(n, n_bins, k):
    ranks, u = _random_case(n, seed=n)
    res = recall_by_uncertainty_bins(ranks, u, n_bins=n_bins, k=k)
    brute = _brute_bins(ranks, u, n_bins, k)
    assert res.n_bins == n_bins and res.k == k
    np.testing.assert_allclose(res.mean_uncertainty, [b[0] for b in brute])
    np.testing.assert_allclose(res.recall, [b[1] for b in brute])
    np.testing.assert_array_equal(res.count, [b[2] for b in brute])
    assert res.count.sum() == n and res.count.max() - res.count.min() <= 1
    # correlations are Spearman's rho of (bin index, R@k) and (u, hit), NaN where undefined
    hit = (ranks <= k).astype(float)
    with warnings.catch_warnings():  # scipy warns (and returns NaN) on constant input
        warnings.simplefilter("ignore")
        exp_bins = spearmanr(np.arange(n_bins), [b[1] for b in brute]).statistic if n_bins > 1 else math.nan
        exp_samples = spearmanr(u, hit).statistic
    assert res.spearman == pytest.approx(exp_bins, nan_ok=True)
    assert res.spearman_samples == pytest.approx(exp_samples, nan_ok=True)


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (50, 1), (77, 5)])
def test_risk_coverage_matches_brute_force(n, k):
    ranks, u = _random_case(n, seed=100 + n)
    rc = risk_coverage(ranks, u, k=k)
    brute = _brute_risk(ranks, u, k)
    np.testing.assert_allclose(rc.risk, brute)
    np.testing.assert_allclose(rc.coverage, np.arange(1, n + 1) / n)
    assert rc.aurc == pytest.approx(sum(brute) / n)
    hits = int((ranks <= k).sum())
    oracle = [1.0 - min(m, hits) / m for m in range(1, n + 1)]
    np.testing.assert_allclose(rc.oracle_risk, oracle)
    assert rc.oracle_aurc == pytest.approx(sum(oracle) / n)
    assert rc.random_risk == pytest.approx(1.0 - hits / n)
    assert rc.risk[-1] == pytest.approx(rc.random_risk)  # full coverage = overall error
    assert rc.oracle_aurc <= rc.aurc + 1e-12


# ---------------------------------------------------------------------------------------------- constructed cases
def test_hits_exactly_low_uncertainty_half():
    n = 100
    u = np.random.default_rng(0).permutation(np.arange(n, dtype=float))  # distinct, shuffled
    ranks = np.where(u < n / 2, 1, 7)
    bins = recall_by_uncertainty_bins(ranks, u, n_bins=10, k=1)
    np.testing.assert_array_equal(bins.recall, [1.0] * 5 + [0.0] * 5)
    np.testing.assert_array_equal(bins.count, [10] * 10)
    assert np.all(np.diff(bins.mean_uncertainty) > 0)  # decile 1 = least uncertain
    assert bins.spearman < -0.85  # step function over 10 bins (ties in R@1): rho = -0.870
    assert bins.spearman_samples < -0.85
    # with two bins the bin-level correlation is exactly -1
    two = recall_by_uncertainty_bins(ranks, u, n_bins=2)
    np.testing.assert_array_equal(two.recall, [1.0, 0.0])
    assert two.spearman == pytest.approx(-1.0)
    rc = risk_coverage(ranks, u)
    assert rc.aurc == pytest.approx(rc.oracle_aurc)
    assert rc.excess_aurc == pytest.approx(0.0, abs=1e-12)
    assert rc.risk_at(0.5) == 0.0 and rc.risk_at(1.0) == pytest.approx(0.5)
    # reversing the uncertainty gives the worst ordering
    worst = risk_coverage(ranks, n - u)
    assert worst.aurc > rc.random_risk > rc.aurc


def test_strictly_decreasing_recall_gives_spearman_minus_one():
    rng = np.random.default_rng(1)
    n_bins, per_bin = 10, 50
    u = np.repeat(np.arange(n_bins, dtype=float), per_bin) + rng.random(n_bins * per_bin) * 0.5
    ranks = np.full(u.size, 9)
    for b in range(n_bins):  # bin b has (n_bins - b) * 5 hits out of 50
        idx = np.flatnonzero(np.floor(u) == b)
        ranks[idx[: (n_bins - b) * 5]] = 1
    bins = recall_by_uncertainty_bins(ranks, u, n_bins=n_bins)
    np.testing.assert_allclose(bins.recall, [(n_bins - b) / 10 for b in range(n_bins)])
    assert bins.spearman == pytest.approx(-1.0)


def test_random_uncertainty_gives_random_risk():
    rng = np.random.default_rng(2)
    n = 20_000
    ranks = np.where(rng.random(n) < 0.3, 1, rng.integers(2, 50, size=n))
    u = rng.gamma(2.0, size=n)
    rc = risk_coverage(ranks, u)
    assert rc.random_risk == pytest.approx(1 - (ranks == 1).mean())
    assert abs(rc.aurc - rc.random_risk) < 0.02
    assert rc.oracle_aurc < rc.aurc - 0.1
    bins = recall_by_uncertainty_bins(ranks, u)
    assert abs(bins.spearman_samples) < 0.05
    assert np.all(np.abs(bins.recall - 0.3) < 0.05)


def test_all_tied_uncertainty_keeps_input_order():
    ranks = np.array([1, 1, 5, 5, 1, 5])
    u = np.zeros(6)
    rc = risk_coverage(ranks, u)
    np.testing.assert_allclose(rc.risk, _brute_risk(ranks, u, 1))
    bins = recall_by_uncertainty_bins(ranks, u, n_bins=3)
    np.testing.assert_allclose(bins.recall, [1.0, 0.0, 0.5])
    assert math.isnan(bins.spearman_samples)  # u is constant: rho undefined


# ---------------------------------------------------------------------------------------------- outputs
def test_to_flat_and_markdown():
    ranks, u = _random_case(200, seed=3)
    bins = recall_by_uncertainty_bins(ranks, u, k=1)
    flat = bins.to_flat("test/prob/")
    assert flat["test/prob/R@1_decile1"] == bins.recall[0]
    assert flat["test/prob/R@1_decile10"] == bins.recall[9]
    assert flat["test/prob/uncertainty_decile3"] == bins.mean_uncertainty[2]
    assert flat["test/prob/R@1_spearman"] == bins.spearman
    assert "test/prob/R@1_spearman_samples" in flat
    assert all(isinstance(v, float) for v in flat.values())
    md = bins.to_markdown()
    assert md.count("\n| ") == 10 and "Spearman" in md

    other = recall_by_uncertainty_bins(ranks, u, n_bins=4, k=5).to_flat()
    assert "R@5_bin4" in other and "R@5_decile1" not in other

    rc = risk_coverage(ranks, u)
    flat_rc = rc.to_flat("x_")
    assert flat_rc["x_aurc"] == rc.aurc and flat_rc["x_oracle_aurc"] == rc.oracle_aurc
    assert flat_rc["x_random_risk"] == rc.random_risk
    assert flat_rc["x_excess_aurc"] == pytest.approx(rc.aurc - rc.oracle_aurc)
    assert flat_rc["x_risk@cov50"] == rc.risk[99]
    assert all(isinstance(v, float) for v in flat_rc.values())
    md_rc = rc.to_markdown()
    assert "AURC" in md_rc and "| 100% |" in md_rc
    assert isinstance(bins, UncertaintyBins) and isinstance(rc, RiskCoverage)


def test_accepts_torch_tensors():
    ranks, u = _random_case(40, seed=4)
    a = recall_by_uncertainty_bins(torch.as_tensor(ranks), torch.as_tensor(u, dtype=torch.float32), n_bins=4)
    b = recall_by_uncertainty_bins(ranks, u.astype(np.float32), n_bins=4)
    np.testing.assert_allclose(a.recall, b.recall)
    assert risk_coverage(torch.as_tensor(ranks), torch.as_tensor(u)).aurc == risk_coverage(ranks, u).aurc


def test_safe_spearman_constant_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(safe_spearman([1, 2, 3], [1, 1, 1]))
        assert math.isnan(safe_spearman([2], [3]))
    assert safe_spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fn", [recall_by_uncertainty_bins, risk_coverage])
def test_input_validation(fn):
    with pytest.raises(ValueError, match=r"ranks \(3,\) and uncertainty \(4,\)"):
        fn(np.array([1, 2, 3]), np.zeros(4))
    with pytest.raises(ValueError, match="ranks must be 1-based"):
        fn(np.array([1, -2, 3]), np.zeros(3))
    with pytest.raises(ValueError, match="ranks must be 1-based"):
        fn(np.array([0, 1, 1]), np.zeros(3))
    with pytest.raises(ValueError, match="ranks must be integers"):
        fn(np.array([1.5, 1, 1]), np.zeros(3))
    with pytest.raises(ValueError, match="uncertainty must be >= 0"):
        fn(np.array([1, 1, 1]), np.array([0.1, -0.2, 0.3]))
    with pytest.raises(ValueError, match="uncertainty contains NaN"):
        fn(np.array([1, 1, 1]), np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match="ranks must be 1-D"):
        fn(np.ones((2, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        fn(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        fn(np.array([1, 1, 1]), np.zeros(3), k=0)


def test_bins_validation():
    with pytest.raises(ValueError, match="n_bins=10 queries, got 5"):
        recall_by_uncertainty_bins(np.ones(5), np.zeros(5))
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        recall_by_uncertainty_bins(np.ones(5), np.zeros(5), n_bins=0)
    with pytest.raises(ValueError, match="coverage must be in"):
        risk_coverage(np.ones(5), np.zeros(5)).risk_at(0.0)
