"""Binary multi-label metrics (cxr_vlp.metrics.classification) against brute-force pure-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_vlp.metrics.classification import (
    ClassificationReport,
    auroc_per_label,
    bootstrap_auroc_ci,
    bootstrap_auroc_samples,
    confusion_counts,
    evaluate_binary,
    f1_thresholds,
    iter_resample_indices,
    threshold_metrics,
    youden_thresholds,
)

NAMES = ["Cardiomegaly", "Pleural Effusion", "Edema", "Fracture"]


# ---------------------------------------------------------------------------------------------- references
def ref_auroc(scores: list[float], labels: list[float]) -> float:
    """Mann–Whitney pair count over known cells, ties count 1/2."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = 0.0
    for a in pos:
        for b in neg:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (len(pos) * len(neg))


def ref_counts(scores: list[float], labels: list[float], t: float) -> tuple[int, int, int, int]:
    tp = fp = tn = fn = 0
    for s, y in zip(scores, labels, strict=True):
        if math.isnan(y):
            continue
        pred = s >= t
        if pred and y == 1:
            tp += 1
        elif pred and y == 0:
            fp += 1
        elif not pred and y == 0:
            tn += 1
        else:
            fn += 1
    return tp, fp, tn, fn


def ref_youden(scores: list[float], labels: list[float]) -> tuple[float, float]:
    """(threshold, J): scan every distinct known score, keep the best J, ties → the lowest threshold."""
    known = [(s, y) for s, y in zip(scores, labels, strict=True) if not math.isnan(y)]
    n_pos = sum(1 for _, y in known if y == 1)
    n_neg = len(known) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5, math.nan
    best_t, best_j = None, -math.inf
    for t in sorted({s for s, _ in known}):  # ascending: a later tie is never taken (strict >)
        tp, _, tn, _ = ref_counts(scores, labels, t)
        j = tp / n_pos + tn / n_neg - 1
        if j > best_j + 1e-12:
            best_t, best_j = t, j
    return best_t, best_j


def col(a: np.ndarray, c: int) -> list[float]:
    return [float(v) for v in a[:, c]]


def make_data(
    n: int, c: int = 4, seed: int = 0, unknown: float = 0.2, signal: float = 1.0, decimals: int | None = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Scores with ties (rounded) and labels with NaN cells."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.35).astype(float)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=(n, c)))))
    if decimals is not None:
        p = np.round(p, decimals)
    y[rng.random((n, c)) < unknown] = np.nan
    return p, y


# ---------------------------------------------------------------------------------------------- AUROC
def test_auroc_matches_mann_whitney_with_ties_and_nan():
    p, y = make_data(80, decimals=1)  # coarse rounding → many ties
    got = auroc_per_label(p, y)
    for c in range(p.shape[1]):
        assert got[c] == pytest.approx(ref_auroc(col(p, c), col(y, c)), abs=1e-12)


def test_auroc_ignores_scores_of_unknown_cells():
    p, y = make_data(60, seed=1)
    p2 = p.copy()
    p2[np.isnan(y)] = np.random.default_rng(5).random(int(np.isnan(y).sum()))
    np.testing.assert_array_equal(auroc_per_label(p, y), auroc_per_label(p2, y))


def test_auroc_nan_for_single_class_label():
    p, y = make_data(40)
    y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 1.0)  # only positives known
    y[:, 2] = np.nan  # nothing known
    got = auroc_per_label(p, y)
    assert math.isnan(got[1]) and math.isnan(got[2])
    assert np.isfinite(got[[0, 3]]).all()


def test_shape_and_value_errors_name_the_argument():
    p, y = make_data(10)
    with pytest.raises(ValueError, match="probs"):
        auroc_per_label(p[:, :3], y)
    with pytest.raises(ValueError, match="labels"):
        auroc_per_label(p, np.where(np.isnan(y), np.nan, 2 * y - 1))  # -1 is not a mapped value
    bad = p.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="probs"):
        auroc_per_label(bad, y)
    with pytest.raises(ValueError, match="test_probs"):
        evaluate_binary(p, y, p[:, :2], y[:, :2], NAMES, n_resamples=10)
    with pytest.raises(ValueError, match="label_names"):
        evaluate_binary(p, y, p, y, NAMES[:2], n_resamples=10)


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_samples_equal_brute_force_auroc_of_each_resample():
    p, y = make_data(30, decimals=1, seed=2)
    n_res = 25
    samples = bootstrap_auroc_samples(p, y, n_resamples=n_res, seed=7)
    idx = np.concatenate(list(iter_resample_indices(30, n_res, seed=7)))
    assert idx.shape == (n_res, 30)
    for r in range(n_res):
        pr, yr = p[idx[r]], y[idx[r]]
        for c in range(p.shape[1]):
            expected = ref_auroc(col(pr, c), col(yr, c))
            if math.isnan(expected):
                assert math.isnan(samples[r, c])
            else:
                assert samples[r, c] == pytest.approx(expected, abs=1e-12)


def test_bootstrap_skips_single_class_resamples():
    # 1 positive among 12 known rows: many resamples miss it, those must be NaN, not 0 or 1
    p = np.linspace(0, 1, 12)[:, None]
    y = np.zeros((12, 1))
    y[-1] = 1
    samples = bootstrap_auroc_samples(p, y, n_resamples=200, seed=0)[:, 0]
    assert np.isnan(samples).any() and np.isfinite(samples).any()
    assert np.all(samples[np.isfinite(samples)] == 1.0)
    lo, hi = bootstrap_auroc_ci(p, y, n_resamples=200, seed=0)
    assert lo[0] == hi[0] == 1.0


def test_bootstrap_ci_contains_estimate_narrows_with_data_and_is_deterministic():
    p_small, y_small = make_data(200, seed=3, decimals=None)
    p_big, y_big = make_data(3000, seed=3, decimals=None)
    lo_s, hi_s = bootstrap_auroc_ci(p_small, y_small, n_resamples=300, seed=0)
    lo_b, hi_b = bootstrap_auroc_ci(p_big, y_big, n_resamples=300, seed=0)
    for p, y, lo, hi in ((p_small, y_small, lo_s, hi_s), (p_big, y_big, lo_b, hi_b)):
        auc = auroc_per_label(p, y)
        assert np.all(lo <= auc) and np.all(auc <= hi) and np.all(lo < hi)
    assert np.all(hi_b - lo_b < 0.6 * (hi_s - lo_s))
    again = bootstrap_auroc_ci(p_small, y_small, n_resamples=300, seed=0)
    np.testing.assert_array_equal(again[0], lo_s)
    np.testing.assert_array_equal(again[1], hi_s)
    other = bootstrap_auroc_ci(p_small, y_small, n_resamples=300, seed=1)
    assert not np.array_equal(other[0], lo_s)


def test_bootstrap_is_fast_enough():
    import time

    p, y = make_data(3000, c=14, seed=4)
    t0 = time.perf_counter()
    bootstrap_auroc_ci(p, y, n_resamples=1000, seed=0)
    assert time.perf_counter() - t0 < 10.0


# ---------------------------------------------------------------------------------------------- thresholds
def test_youden_matches_scan_of_every_threshold():
    p, y = make_data(70, seed=5, decimals=1)
    got = youden_thresholds(p, y)
    for c in range(p.shape[1]):
        t_ref, j_ref = ref_youden(col(p, c), col(y, c))
        assert got[c] == t_ref
        # no threshold at all (also between or outside the scores) does better
        n_pos = int(np.nansum(y[:, c]))
        n_neg = int((~np.isnan(y[:, c])).sum()) - n_pos
        for t in np.linspace(-0.1, 1.1, 241):
            tp, _, tn, _ = ref_counts(col(p, c), col(y, c), float(t))
            assert tp / n_pos + tn / n_neg - 1 <= j_ref + 1e-12


def test_youden_tie_rule_takes_the_lowest_threshold():
    # 2 known positives, 2 known negatives; thresholds 0.9 (tp=1, fp=0) and 0.2 (tp=2, fp=1) tie at J = 1/2
    p = np.array([[0.9], [0.8], [0.2], [0.1], [0.5]])
    y = np.array([[1.0], [0.0], [1.0], [0.0], [np.nan]])
    # J(0.9) = 1/2 - 0 = 0.5, J(0.8) = 0.5 - 0.5 = 0, J(0.2) = 1 - 0.5 = 0.5, J(0.1) = 0
    assert youden_thresholds(p, y)[0] == 0.2


def test_youden_single_class_gives_half():
    p, y = make_data(30)
    y[:, 0] = np.where(np.isnan(y[:, 0]), np.nan, 0.0)
    assert youden_thresholds(p, y)[0] == 0.5


def test_threshold_metrics_match_loop_counts():
    p, y = make_data(90, seed=6)
    t = np.array([0.3, 0.5, 0.62, 0.71])
    k = confusion_counts(p, y, t)
    m = threshold_metrics(p, y, t)
    for c in range(p.shape[1]):
        tp, fp, tn, fn = ref_counts(col(p, c), col(y, c), float(t[c]))
        assert (k["tp"][c], k["fp"][c], k["tn"][c], k["fn"][c]) == (tp, fp, tn, fn)
        assert m["accuracy"][c] == pytest.approx((tp + tn) / (tp + fp + tn + fn))
        assert m["sensitivity"][c] == pytest.approx(tp / (tp + fn))
        assert m["specificity"][c] == pytest.approx(tn / (tn + fp))
        assert m["f1"][c] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    with pytest.raises(ValueError, match="thresholds"):
        threshold_metrics(p, y, t[:2])


def test_threshold_metrics_mask_unknown_cells_and_prob_equal_threshold_is_positive():
    p = np.array([[0.5], [0.4], [0.9], [0.1]])
    y = np.array([[1.0], [0.0], [np.nan], [np.nan]])
    k = confusion_counts(p, y, [0.5])
    assert (k["tp"][0], k["fp"][0], k["tn"][0], k["fn"][0]) == (1, 0, 1, 0)


# ---------------------------------------------------------------------------------------------- evaluate_binary
def test_thresholds_come_from_validation_only():
    vp, vy = make_data(120, seed=8)
    tp, ty = make_data(150, seed=9)
    base = evaluate_binary(vp, vy, tp, ty, NAMES, n_resamples=50)
    np.testing.assert_array_equal(base.threshold, youden_thresholds(vp, vy))

    rng = np.random.default_rng(0)
    poisoned_y = ty[rng.permutation(len(ty))]
    poisoned_p = rng.random(tp.shape)  # unrelated scores
    other = evaluate_binary(vp, vy, poisoned_p, poisoned_y, NAMES, n_resamples=50)
    np.testing.assert_array_equal(other.threshold, base.threshold)
    assert not np.allclose(other.auroc, base.auroc)
    assert not np.allclose(other.f1, base.f1)
    # and the thresholds do follow the validation split
    moved = evaluate_binary(vp, vy[rng.permutation(len(vy))], tp, ty, NAMES, n_resamples=50)
    assert not np.array_equal(moved.threshold, base.threshold)


def test_report_contents_flat_keys_and_markdown():
    vp, vy = make_data(120, seed=10)
    tp, ty = make_data(150, seed=11)
    ty[:, 3] = np.where(np.isnan(ty[:, 3]), np.nan, 0.0)  # Fracture: single class on test
    r = evaluate_binary(vp, vy, tp, ty, NAMES, n_resamples=100, seed=0)
    assert isinstance(r, ClassificationReport)
    np.testing.assert_array_equal(r.auroc, auroc_per_label(tp, ty))
    lo, hi = bootstrap_auroc_ci(tp, ty, n_resamples=100, seed=0)
    np.testing.assert_array_equal(r.ci_low, lo)
    np.testing.assert_array_equal(r.ci_high, hi)
    m = threshold_metrics(tp, ty, r.threshold)
    np.testing.assert_array_equal(r.f1, m["f1"])
    assert list(r.n_known) == list((~np.isnan(ty)).sum(0))
    assert list(r.n_pos) == list(np.nansum(ty, axis=0).astype(int))

    flat = r.to_flat("test/zeroshot/")
    assert flat["test/zeroshot/auroc/Cardiomegaly"] == pytest.approx(r.auroc[0])
    assert flat["test/zeroshot/auroc_mean"] == pytest.approx(np.mean(r.auroc[:3]))  # Fracture undefined
    assert flat["test/zeroshot/f1_mean"] == pytest.approx(np.mean(r.f1[:3]))
    assert math.isnan(flat["test/zeroshot/auroc/Fracture"])
    assert all(isinstance(v, float) for v in flat.values())
    assert (
        flat["test/zeroshot/auroc_mean_ci_low"]
        <= flat["test/zeroshot/auroc_mean"]
        <= flat["test/zeroshot/auroc_mean_ci_high"]
    )

    text = r.to_markdown()
    lines = text.splitlines()
    assert len(lines) == 2 + len(NAMES) + 1
    assert f"{r.auroc[0]:.3f} ({r.ci_low[0]:.3f}–{r.ci_high[0]:.3f})" in lines[2]
    assert "mean" in lines[-1]


def test_roc_points_and_operating_point():
    vp, vy = make_data(120, seed=12)
    tp, ty = make_data(150, seed=13)
    r = evaluate_binary(vp, vy, tp, ty, NAMES, n_resamples=20)
    for c in range(len(NAMES)):
        fpr, tpr = r.roc_points(c)
        assert np.trapezoid(tpr, fpr) == pytest.approx(r.auroc[c], abs=1e-12)
        curve = r.roc_curve(c)
        assert curve.label == NAMES[c] and curve.threshold == r.threshold[c]
        tp_, fp_, tn_, fn_ = ref_counts(col(tp, c), col(ty, c), float(r.threshold[c]))
        assert curve.op_tpr == pytest.approx(tp_ / (tp_ + fn_))
        assert curve.op_fpr == pytest.approx(fp_ / (fp_ + tn_))


def test_f1_thresholds_against_brute_force() -> None:
    """Every candidate threshold scored by a direct F1 count; the chosen one has the best F1 (ties: highest)."""
    rng = np.random.default_rng(3)
    y = (rng.random((60, 5)) < np.array([0.5, 0.1, 0.3, 0.0, 1.0])).astype(float)
    p = np.round(np.clip(0.4 * y + rng.random((60, 5)) * 0.8, 0, 1), 2)  # rounded: ties between scores
    y[rng.random((60, 5)) < 0.1] = np.nan
    got = f1_thresholds(p, y)
    for c in range(3):
        known = ~np.isnan(y[:, c])
        pk, yk = p[known, c], y[known, c]

        def f1(t: float) -> float:
            pred = pk >= t
            tp = np.sum(pred & (yk == 1))
            return 2 * tp / (2 * tp + np.sum(pred & (yk == 0)) + np.sum(~pred & (yk == 1)))

        scores = {t: f1(t) for t in np.unique(pk)}
        best = max(scores.values())
        assert f1(got[c]) == best and got[c] == max(t for t, v in scores.items() if v == best)
    assert got[3] == 1.0 and got[4] == 0.5  # no known positive: never listed; all positive: 0.5


def test_a_report_without_known_test_labels_is_one_line() -> None:
    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(12, len(NAMES)))
    labels = (rng.uniform(size=(12, len(NAMES))) > 0.5).astype(float)
    report = evaluate_binary(probs, labels, probs, np.full_like(labels, np.nan), NAMES, n_resamples=10)
    assert report.to_markdown() == "No known test labels: nothing to score."
    labelled = evaluate_binary(probs, labels, probs, labels, NAMES, n_resamples=10).to_markdown()
    assert all(f"| {name} |" in labelled for name in NAMES)
