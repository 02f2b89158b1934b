"""Retrieval quality against predicted uncertainty (docs/design.md §4, ProbCLIP checkpoints).

Inputs, one entry per query (``N`` queries):

* ``ranks`` ``[N]``: the query's true match as :class:`cxr_vlp.metrics.retrieval.RankCounts` (what the retrieval
  scan produces; ties are counted, see there) or untied 1-based integer ranks (rank 1 = retrieved first);
* ``uncertainty`` ``[N]``: a finite scalar ``u_i ≥ 0`` per query (larger = less certain).

Definitions (``hit_i = P(match of i in the top k)``: ``[rank_i ≤ k]`` for integer ranks, the tie-fair
``clip((k − higher_i) / (tied_i + 1), 0, 1)`` for rank counts; ``R@k(S) = (1/|S|) Σ_{i∈S} hit_i``):

* **Order.** ``π`` = the queries sorted by increasing ``u`` with a *stable* sort, so tied uncertainties keep
  their input order; every result is a deterministic function of the inputs.
* **Uncertainty bins** (:func:`recall_by_uncertainty_bins`). ``π`` is cut into ``n_bins`` consecutive
  equal-count bins (``np.array_split``: sizes differ by at most one, the earlier bins take the extra
  queries). Bin 1 holds the least uncertain queries (with ``n_bins = 10``: decile 1). Per bin ``b``:
  ``count_b``, ``mean_u_b`` = mean uncertainty, ``R@k_b``.
  ``spearman`` = Spearman's ρ between the bin index ``b`` and ``R@k_b`` (a well-calibrated uncertainty gives
  ρ → −1); ``spearman_samples`` = Spearman's ρ between ``u_i`` and ``hit_i`` over the queries. Either is NaN
  when one of its two variables is constant (ρ is undefined there).
* **Risk–coverage** (:func:`risk_coverage`). For ``m = 1..N`` with coverage ``c_m = m / N`` the selective
  risk is ``risk_m = 1 − R@k({π_1, …, π_m})`` (the error rate over the ``m`` most certain queries);
  ``AURC = (1/N) Σ_m risk_m``. The *oracle* curve orders queries by decreasing ``hit_i`` (perfect uncertainty):
  ``oracle_risk_m = 1 − (sum of the m largest hit_i) / m``, which is ``1 − min(m, H) / m`` with ``H = Σ_i hit_i``
  for 0/1 hits, giving ``oracle_aurc`` (the lower bound);
  ``random_risk = 1 − H / N`` is the expected AURC of an uninformative ordering (the flat curve) and also
  ``risk_N``. ``excess_aurc = aurc − oracle_aurc``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from cxr_vlp.metrics.arrays import as_float64
from cxr_vlp.metrics.retrieval import RankCounts

__all__ = [
    "RiskCoverage",
    "UncertaintyBins",
    "recall_by_uncertainty_bins",
    "risk_coverage",
    "safe_spearman",
]


# ---------------------------------------------------------------------------------------------- validation
def _check_inputs(ranks: Any, uncertainty: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(hit, uncertainty)`` as float64 vectors of equal, non-zero length (``hit_i`` = the
    probability that query i's match is in the top k, see the module docstring)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if isinstance(ranks, RankCounts):
        hit = ranks.hit_probability(int(k)).numpy()
        u = as_float64(uncertainty, "uncertainty", 1)
        _check_uncertainty(u, hit.shape)
        return hit, u
    r = as_float64(ranks, "ranks", 1)
    u = as_float64(uncertainty, "uncertainty", 1)
    _check_uncertainty(u, r.shape)
    if not np.isfinite(r).all():
        raise ValueError("ranks contains NaN or infinite values")
    if (r < 1).any():
        raise ValueError(f"ranks must be 1-based (>= 1); found {r[r < 1][0]!r}")
    if (r != np.round(r)).any():
        raise ValueError(f"ranks must be integers; found {r[r != np.round(r)][0]!r}")
    return (r <= k).astype(np.float64), u


def _check_uncertainty(u: np.ndarray, shape: tuple[int, ...]) -> None:
    if u.shape != shape:
        raise ValueError(f"ranks {tuple(shape)} and uncertainty {tuple(u.shape)} must have the same length")
    if u.size == 0:
        raise ValueError("ranks and uncertainty are empty: need at least one query")
    if not np.isfinite(u).all():
        raise ValueError("uncertainty contains NaN or infinite values")
    if (u < 0).any():
        raise ValueError(f"uncertainty must be >= 0; found {u[u < 0][0]!r}")


def safe_spearman(x: Any, y: Any) -> float:
    """Spearman's ρ of two equal-length vectors; NaN (no warning) when fewer than 2 points or either is constant."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x {a.shape} and y {b.shape} must have the same length")
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(a, b).statistic
    return float(rho)


def _bin_word(n_bins: int) -> str:
    return "decile" if n_bins == 10 else "bin"


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------- bins
@dataclass(frozen=True)
class UncertaintyBins:
    """R@k per equal-count uncertainty bin; bin 1 = least uncertain. Arrays are ``[n_bins]``."""

    k: int
    mean_uncertainty: np.ndarray
    min_uncertainty: np.ndarray
    max_uncertainty: np.ndarray
    recall: np.ndarray
    count: np.ndarray
    spearman: float
    spearman_samples: float

    @property
    def n_bins(self) -> int:
        return int(self.recall.shape[0])

    def to_flat(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}R@k_{decile|bin}{b}`` and ``{prefix}uncertainty_{decile|bin}{b}`` per bin (1-based;
        "decile" when there are 10 bins), plus ``{prefix}R@k_spearman`` and ``{prefix}R@k_spearman_samples``."""
        word = _bin_word(self.n_bins)
        out: dict[str, float] = {}
        for b in range(self.n_bins):
            out[f"{prefix}R@{self.k}_{word}{b + 1}"] = float(self.recall[b])
        for b in range(self.n_bins):
            out[f"{prefix}uncertainty_{word}{b + 1}"] = float(self.mean_uncertainty[b])
        out[f"{prefix}R@{self.k}_spearman"] = float(self.spearman)
        out[f"{prefix}R@{self.k}_spearman_samples"] = float(self.spearman_samples)
        return out

    def to_markdown(self) -> str:
        """A Markdown table (one row per bin) followed by the two correlations."""
        word = _bin_word(self.n_bins)
        lines = [
            f"| {word} | count | mean u | u range | R@{self.k} |",
            "|---:|---:|---:|---|---:|",
        ]
        for b in range(self.n_bins):
            lines.append(
                f"| {b + 1} | {int(self.count[b])} | {_fmt(float(self.mean_uncertainty[b]))} | "
                f"{_fmt(float(self.min_uncertainty[b]))}–{_fmt(float(self.max_uncertainty[b]))} | "
                f"{_fmt(float(self.recall[b]))} |"
            )
        lines.append("")
        lines.append(
            f"Spearman ρ ({word} index vs R@{self.k}): {_fmt(self.spearman)}; "
            f"per query (u vs hit): {_fmt(self.spearman_samples)}"
        )
        return "\n".join(lines)


def recall_by_uncertainty_bins(ranks: Any, uncertainty: Any, n_bins: int = 10, k: int = 1) -> UncertaintyBins:
    """R@k within ``n_bins`` equal-count bins of increasing uncertainty (see the module docstring).

    Raises ``ValueError`` for mismatched lengths, ranks < 1 or non-integer, negative / non-finite
    uncertainty, ``n_bins < 1`` or fewer queries than bins.
    """
    hit, u = _check_inputs(ranks, uncertainty, k)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if hit.size < n_bins:
        raise ValueError(f"need at least n_bins={n_bins} queries, got {hit.size} (ranks/uncertainty length)")
    order = np.argsort(u, kind="stable")
    parts = np.array_split(order, n_bins)
    mean_u = np.array([u[p].mean() for p in parts])
    min_u = np.array([u[p].min() for p in parts])
    max_u = np.array([u[p].max() for p in parts])
    recall = np.array([hit[p].mean() for p in parts])
    count = np.array([p.size for p in parts], dtype=np.int64)
    return UncertaintyBins(
        k=int(k),
        mean_uncertainty=mean_u,
        min_uncertainty=min_u,
        max_uncertainty=max_u,
        recall=recall,
        count=count,
        spearman=safe_spearman(np.arange(1, n_bins + 1), recall),
        spearman_samples=safe_spearman(u, hit),
    )


# ---------------------------------------------------------------------------------------------- risk–coverage
@dataclass(frozen=True)
class RiskCoverage:
    """Risk–coverage curve of selective retrieval; ``coverage``, ``risk`` and ``oracle_risk`` are ``[N]``."""

    k: int
    coverage: np.ndarray
    risk: np.ndarray
    oracle_risk: np.ndarray
    aurc: float
    oracle_aurc: float
    random_risk: float

    @property
    def excess_aurc(self) -> float:
        """``aurc − oracle_aurc`` (0 for a perfect ordering)."""
        return float(self.aurc - self.oracle_aurc)

    def risk_at(self, coverage: float) -> float:
        """Risk over the ``ceil(coverage · N)`` most certain queries (at least one), ``0 < coverage ≤ 1``."""
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
        n = self.risk.shape[0]
        m = min(n, max(1, math.ceil(coverage * n - 1e-9)))
        return float(self.risk[m - 1])

    def to_flat(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}aurc``, ``{prefix}oracle_aurc``, ``{prefix}excess_aurc``, ``{prefix}random_risk`` and
        ``{prefix}risk@cov{50,80,90}`` (risk at 50 / 80 / 90 % coverage)."""
        out = {
            f"{prefix}aurc": float(self.aurc),
            f"{prefix}oracle_aurc": float(self.oracle_aurc),
            f"{prefix}excess_aurc": self.excess_aurc,
            f"{prefix}random_risk": float(self.random_risk),
        }
        for pct in (50, 80, 90):
            out[f"{prefix}risk@cov{pct}"] = self.risk_at(pct / 100)
        return out

    def to_markdown(self) -> str:
        """Risk at coverage 10 %, 20 %, …, 100 % and the AURC summary, as Markdown."""
        lines = [f"| coverage | risk (1 − R@{self.k}) | oracle risk |", "|---:|---:|---:|"]
        n = self.risk.shape[0]
        for pct in range(10, 101, 10):
            m = min(n, max(1, math.ceil(pct / 100 * n - 1e-9)))
            lines.append(f"| {pct}% | {_fmt(float(self.risk[m - 1]))} | {_fmt(float(self.oracle_risk[m - 1]))} |")
        lines.append("")
        lines.append(
            f"AURC {_fmt(self.aurc)} (oracle {_fmt(self.oracle_aurc)}, random {_fmt(self.random_risk)}, "
            f"excess {_fmt(self.excess_aurc)})"
        )
        return "\n".join(lines)


def risk_coverage(ranks: Any, uncertainty: Any, k: int = 1) -> RiskCoverage:
    """Risk–coverage curve, AURC, oracle AURC and random risk (see the module docstring).

    Raises ``ValueError`` for mismatched lengths, ranks < 1 or non-integer, negative / non-finite uncertainty.
    """
    hit, u = _check_inputs(ranks, uncertainty, k)
    n = hit.size
    m = np.arange(1, n + 1, dtype=np.float64)
    order = np.argsort(u, kind="stable")
    risk = 1.0 - np.cumsum(hit[order]) / m
    n_hits = float(hit.sum())
    oracle_risk = 1.0 - np.cumsum(np.sort(hit)[::-1]) / m
    return RiskCoverage(
        k=int(k),
        coverage=m / n,
        risk=risk,
        oracle_risk=oracle_risk,
        aurc=float(risk.mean()),
        oracle_aurc=float(oracle_risk.mean()),
        random_risk=float(1.0 - n_hits / n),
    )
