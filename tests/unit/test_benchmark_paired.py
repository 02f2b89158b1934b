"""Paired bootstrap of the benchmark against a slow loop transcription, and its p-value behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_vlp.benchmark.paired import Measure, compare, estimate, paired_p_value


def _slow_auroc(scores: list[float], labels: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return float("nan")
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def _slow_metric(kind: str, values: np.ndarray, labels: np.ndarray | None, rows: list[int]) -> float:
    if kind == "mean":
        return sum(float(values[r]) for r in rows) / len(rows)
    per_label = []
    for c in range(values.shape[1]):
        s = [float(values[r, c]) for r in rows if not np.isnan(labels[r, c])]
        y = [float(labels[r, c]) for r in rows if not np.isnan(labels[r, c])]
        per_label.append(_slow_auroc(s, y))
    return float("nan") if any(np.isnan(per_label)) else sum(per_label) / len(per_label)


def _slow_compare(kind, a, b, labels, n_resamples, seed, alpha=0.05):
    """Transcription: the same rows drawn for both models (numpy's default_rng(seed).integers, one resample per
    row of the draw), Δ per resample, percentile CI, p = min(1, 2 (min(#Δ≤0, #Δ≥0) + 1) / (B' + 1))."""
    n = len(a)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    deltas = []
    for r in range(n_resamples):
        rows = [int(i) for i in draws[r]]
        d = _slow_metric(kind, b, labels, rows) - _slow_metric(kind, a, labels, rows)
        if not np.isnan(d):
            deltas.append(d)
    low, high = np.percentile(deltas, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    le = sum(1 for d in deltas if d <= 0)
    ge = sum(1 for d in deltas if d >= 0)
    p = min(1.0, 2 * (min(le, ge) + 1) / (len(deltas) + 1))
    all_rows = list(range(n))
    return _slow_metric(kind, b, labels, all_rows) - _slow_metric(kind, a, labels, all_rows), low, high, p


def test_mean_measure_matches_slow_loop() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 60).astype(float)
    b = np.where(rng.random(60) < 0.3, 1 - a, a)
    got = compare(Measure("mean", a), Measure("mean", b), n_resamples=300, seed=7)
    delta, low, high, p = _slow_compare("mean", a, b, None, 300, 7)
    assert got.delta == pytest.approx(delta)
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high))
    assert got.p_value == pytest.approx(p)
    assert got.n_used == 300


def test_auroc_measure_matches_slow_loop_with_unknown_cells_and_ties() -> None:
    rng = np.random.default_rng(2)
    n = 40
    labels = (rng.random((n, 2)) < 0.35).astype(float)
    labels[rng.random((n, 2)) < 0.2] = np.nan
    a = np.round(rng.random((n, 2)) + 0.3 * np.nan_to_num(labels), 1)  # rounding makes ties
    b = np.round(rng.random((n, 2)) + 0.8 * np.nan_to_num(labels), 1)
    got = compare(Measure("auroc", a, labels), Measure("auroc", b, labels), n_resamples=200, seed=3)
    delta, low, high, p = _slow_compare("auroc", a, b, labels, 200, 3)
    assert got.delta == pytest.approx(delta)
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high))
    assert got.p_value == pytest.approx(p)


def test_identical_models_give_zero_difference_and_p_one() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random((50, 1)) < 0.4).astype(float)
    scores = rng.random((50, 1))
    got = compare(Measure("auroc", scores, labels), Measure("auroc", scores.copy(), labels), n_resamples=200)
    assert got.delta == 0 and got.ci_low == 0 and got.ci_high == 0
    assert got.p_value == 1.0


def test_clearly_better_model_has_small_p_and_positive_ci() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.random(200) < 0.5).astype(float)
    weak = rng.random(200) + 0.1 * labels
    strong = rng.random(200) + 2.0 * labels
    got = compare(Measure("auroc", weak, labels), Measure("auroc", strong, labels), n_resamples=500)
    assert got.delta > 0.3
    assert got.ci_low > 0
    assert got.p_value == pytest.approx(2 / 501)
    # and the other way round: the difference changes sign, the p-value does not
    back = compare(Measure("auroc", strong, labels), Measure("auroc", weak, labels), n_resamples=500)
    assert back.delta == pytest.approx(-got.delta) and back.ci_high < 0 and back.p_value == got.p_value


def test_estimate_ci_brackets_the_value() -> None:
    values = np.r_[np.ones(30), np.zeros(70)]
    est = estimate(Measure("mean", values), n_resamples=400)
    assert est.value == pytest.approx(0.3)
    assert est.ci_low < 0.3 < est.ci_high


def test_p_value_formula_and_mismatched_rows() -> None:
    assert paired_p_value(np.array([1.0, 2.0, -1.0, 3.0])) == pytest.approx(2 * 2 / 5)
    with pytest.raises(ValueError, match="different rows: row 1"):
        compare(Measure("mean", [1.0, 0.0], row_ids=["s1", "s2"]), Measure("mean", [1.0, 1.0], row_ids=["s1", "s3"]))
    with pytest.raises(ValueError, match="3 and 2 rows"):
        compare(Measure("mean", [1.0, 0.0, 1.0]), Measure("mean", [1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        Measure("mean", [1.0, np.nan])
