"""Bootstrap CIs of one model's metric and paired bootstrap comparisons of two models (docs/design.md §4).

A :class:`Measure` is a metric over N rows (studies or retrieval queries) in one of two forms:

- ``"mean"``: per-row values v ``[N]`` (e.g. 1 if the 5-way prediction is right, a query's expected R@K or
  class-based P@K); the metric is mean_i v_i;
- ``"auroc"``: scores s ``[N, C]`` and labels y ``[N, C]`` (1 / 0 / NaN); the metric is the mean over the C labels
  of each label's AUROC on its known cells (C = 1: one label's AUROC).

Resamples are the rows drawn with replacement by :func:`~cxr_vlp.metrics.classification.iter_resample_indices`
for ``(N, n_resamples, seed)``, so two models measured on the same N rows with the same seed are resampled
identically: resample r gives both metrics m_A(r), m_B(r) from the same rows. For the paired comparison of B
against A, with Δ̂ = m_B − m_A on all rows and Δ*_r = m_B(r) − m_A(r) over the B' usable resamples (for AUROC a
resample where some label has a single known class is unusable, for both models alike):

    CI  = percentiles (α/2, 1 − α/2) of Δ*
    p   = min(1, 2 · (min(#{Δ*_r ≤ 0}, #{Δ*_r ≥ 0}) + 1) / (B' + 1))

the two-sided p-value of inverting the percentile interval (the smallest α whose interval just reaches 0), with
the +1 that keeps it above zero for a finite number of resamples. Identical models give Δ* ≡ 0, hence Δ̂ = 0 and
p = 1; a model better on every resample gives p = 2 / (B' + 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cxr_vlp.metrics.classification import auroc_per_label, bootstrap_auroc_samples, iter_resample_indices

__all__ = ["Comparison", "Estimate", "Measure", "compare", "estimate", "paired_p_value", "resample_metric"]

_KINDS = ("mean", "auroc")


@dataclass
class Measure:
    """One metric of one model on N rows (see the module docstring); ``row_ids`` name the rows (study ids or query
    ids) so that two models can be checked to be measured on the same rows."""

    kind: str
    values: np.ndarray
    labels: np.ndarray | None = None
    row_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Measure.kind must be one of {list(_KINDS)}, got {self.kind!r}")
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.kind == "mean":
            if self.values.ndim != 1:
                raise ValueError(f"a mean measure needs per-row values [N], got shape {self.values.shape}")
            if not np.isfinite(self.values).all():
                raise ValueError("a mean measure's per-row values must be finite (leave undefined rows out)")
        else:
            if self.labels is None:
                raise ValueError("an auroc measure needs labels")
            if self.values.ndim == 1:
                self.values = self.values[:, None]
            self.labels = np.asarray(self.labels, dtype=np.float64).reshape(self.values.shape)
        if len(self.values) < 1:
            raise ValueError("a measure needs at least one row")
        self.row_ids = tuple(str(r) for r in self.row_ids)
        if self.row_ids and len(self.row_ids) != len(self.values):
            raise ValueError(f"{len(self.row_ids)} row ids for {len(self.values)} rows")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def point(self) -> float:
        """The metric on all rows."""
        if self.kind == "mean":
            return float(self.values.mean())
        auc = auroc_per_label(self.values, self.labels)
        return float(auc.mean()) if np.isfinite(auc).all() else math.nan


def _mean_blocks(values: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    for idx in iter_resample_indices(len(values), n_resamples, seed):
        yield values[idx].mean(axis=1)


def resample_metric(measure: Measure, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The metric on each bootstrap resample ``[n_resamples]`` (NaN where a resample is unusable)."""
    if measure.kind == "mean":
        return np.concatenate(list(_mean_blocks(measure.values, int(n_resamples), int(seed))))
    samples = bootstrap_auroc_samples(measure.values, measure.labels, int(n_resamples), int(seed))
    out = np.full(samples.shape[0], np.nan)
    ok = np.isfinite(samples).all(axis=1)
    out[ok] = samples[ok].mean(axis=1)
    return out


@dataclass
class Estimate:
    """A metric with its percentile bootstrap CI over ``n_used`` usable resamples, on ``n_rows`` rows."""

    value: float
    ci_low: float
    ci_high: float
    n_rows: int
    n_used: int


@dataclass
class Comparison:
    """Model B against model A on the same rows: Δ̂ = B − A, its paired bootstrap CI and two-sided p-value."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_rows: int
    n_used: int


def _ci(samples: np.ndarray, alpha: float) -> tuple[float, float, int]:
    ok = samples[np.isfinite(samples)]
    if not ok.size:
        return math.nan, math.nan, 0
    low, high = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high), int(ok.size)


def _check_alpha(alpha: float) -> float:
    if not 0 < float(alpha) < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def estimate(measure: Measure, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> Estimate:
    """The metric of one model with its percentile bootstrap ``(1 − alpha)`` CI."""
    low, high, used = _ci(resample_metric(measure, n_resamples, seed), _check_alpha(alpha))
    return Estimate(measure.point(), low, high, len(measure), used)


def paired_p_value(deltas: np.ndarray) -> float:
    """Two-sided p-value of the paired bootstrap differences ``deltas`` (NaN entries ignored; module docstring)."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not d.size:
        return math.nan
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return min(1.0, 2.0 * (tail + 1) / (d.size + 1))


def _check_same_rows(a: Measure, b: Measure) -> None:
    if a.kind != b.kind:
        raise ValueError(f"cannot compare a {a.kind} measure with a {b.kind} measure")
    if len(a) != len(b):
        raise ValueError(f"the two models were measured on {len(a)} and {len(b)} rows: not the same studies")
    if a.row_ids and b.row_ids and a.row_ids != b.row_ids:
        first = next(i for i, (x, y) in enumerate(zip(a.row_ids, b.row_ids)) if x != y)
        raise ValueError(
            f"the two models were measured on different rows: row {first} is {a.row_ids[first]!r} "
            f"for the first and {b.row_ids[first]!r} for the second"
        )
    if a.kind == "auroc" and not np.array_equal(a.labels, b.labels, equal_nan=True):
        raise ValueError("the two models' AUROCs were computed against different labels")


def compare(a: Measure, b: Measure, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> Comparison:
    """Paired bootstrap of ``b − a`` on the same rows and the same resamples (module docstring)."""
    _check_same_rows(a, b)
    alpha = _check_alpha(alpha)
    deltas = resample_metric(b, n_resamples, seed) - resample_metric(a, n_resamples, seed)
    low, high, used = _ci(deltas, alpha)
    return Comparison(b.point() - a.point(), low, high, paired_p_value(deltas), len(a), used)
