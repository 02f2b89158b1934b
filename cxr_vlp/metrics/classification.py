"""Binary multi-label classification metrics (docs/design.md §4): AUROC with bootstrap CI, Youden thresholds.

Inputs are ``probs`` ``[N, C]`` (finite scores, higher = more likely positive) and ``labels`` ``[N, C]`` with
1 = positive, 0 = negative, NaN = unknown. Every metric is computed per label on the *known* cells of that
label only (NaN cells are masked out).

Definitions, per label with P known positives and Q known negatives:

    AUROC        = (1 / (P·Q)) Σ_{i∈pos} Σ_{j∈neg} ( [p_i > p_j] + ½ [p_i = p_j] )   (Mann–Whitney; NaN if P·Q = 0)
    bootstrap CI = percentiles (α/2, 1 − α/2) of the AUROC over ``n_resamples`` resamples of the N rows drawn
                   with replacement; a resample in which the label has a single known class is skipped for
                   that label (so labels may rest on different numbers of resamples).
    prediction   = positive  ⇔  p ≥ threshold
    sensitivity  = TP / (TP + FN),  specificity = TN / (TN + FP),  accuracy = (TP + TN) / (P + Q),
    F1           = 2 TP / (2 TP + FP + FN)   (NaN where a denominator is 0)
    Youden's J   = sensitivity + specificity − 1, maximised over the candidate thresholds = the distinct known
                   scores (the ROC thresholds). Ties: the LOWEST threshold among the maximisers (the most
                   sensitive operating point with the best J). A label with a single known class gets 0.5.

:func:`evaluate_binary` fits the thresholds on the validation arrays only and applies them, unchanged, to the
test arrays; it never reads test labels or scores to choose a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from cxr_vlp.metrics.arrays import as_float64

__all__ = [
    "ClassificationReport",
    "RocCurve",
    "auroc_per_label",
    "bootstrap_auroc_ci",
    "bootstrap_auroc_samples",
    "confusion_counts",
    "evaluate_binary",
    "f1_thresholds",
    "iter_resample_indices",
    "threshold_metrics",
    "youden_thresholds",
]

# at most this many row indices (resamples × rows) exist at a time in the bootstrap
_BOOTSTRAP_BLOCK = 4_000_000


# ---------------------------------------------------------------------------------------------- validation
def _check_pair(probs, labels, probs_name: str = "probs", labels_name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    p = as_float64(probs, probs_name, 2)
    y = as_float64(labels, labels_name, 2)
    if p.shape != y.shape:
        raise ValueError(f"{probs_name} {tuple(p.shape)} and {labels_name} {tuple(y.shape)} must have the same shape")
    if not np.isfinite(p).all():
        raise ValueError(f"{probs_name} contains NaN or infinite values")
    known = ~np.isnan(y)
    bad = known & (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"{labels_name} must be 1, 0 or NaN; found {y[bad][0]!r}")
    return p, y


def _known(p: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    m = ~np.isnan(y[:, c])
    return p[m, c], y[m, c]


def _two_classes(y_known: np.ndarray) -> bool:
    return bool(y_known.size) and 0 < int(y_known.sum()) < y_known.size


# ---------------------------------------------------------------------------------------------- AUROC
def auroc_per_label(probs, labels) -> np.ndarray:
    """AUROC of each label on its known cells ``[C]``; NaN where the known cells hold a single class."""
    p, y = _check_pair(probs, labels)
    out = np.full(p.shape[1], np.nan)
    for c in range(p.shape[1]):
        pk, yk = _known(p, y, c)
        if _two_classes(yk):
            out[c] = roc_auc_score(yk, pk)
    return out


def iter_resample_indices(n_rows: int, n_resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield the bootstrap row indices in blocks ``[b, n_rows]`` (rows drawn with replacement), ``Σ b = n_resamples``.

    Deterministic for ``(n_rows, n_resamples, seed)``; blocks keep memory at about ``_BOOTSTRAP_BLOCK`` indices.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK // n_rows)
    done = 0
    while done < n_resamples:
        b = min(block, n_resamples - done)
        yield rng.integers(0, n_rows, size=(b, n_rows))
        done += b


def _weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUROC of one label for many resamples at once.

    ``scores``/``positive`` ``[n]`` are the label's known cells, ``weights`` ``[B, n]`` how often each cell was
    drawn in each resample. Cells are sorted and grouped by equal score; for group g with weighted positive
    count P_g and negative count Q_g: AUROC = Σ_g P_g (Q_<g + ½ Q_g) / (P·Q). NaN where P·Q = 0.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order].astype(np.float64)
    pos = positive[order]
    wp = np.add.reduceat(w * pos, starts, axis=1)
    wn = np.add.reduceat(w * (~pos), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_auroc_samples(probs, labels, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Per-resample AUROCs ``[n_resamples, C]`` (NaN where the resample has one known class for the label).

    Resample r uses the rows of the r-th block row of :func:`iter_resample_indices`; row multiplicities
    act as weights, so nothing of size ``[n_resamples, N, C]`` is ever built.
    """
    p, y = _check_pair(probs, labels)
    n, n_labels = p.shape
    out = np.full((n_resamples, n_labels), np.nan)
    known = [np.flatnonzero(~np.isnan(y[:, c])) for c in range(n_labels)]
    done = 0
    for idx in iter_resample_indices(n, n_resamples, seed):
        b = idx.shape[0]
        counts = np.bincount((idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        for c in range(n_labels):
            rows = known[c]
            if rows.size and _two_classes(y[rows, c]):
                out[done : done + b, c] = _weighted_auroc(p[rows, c], y[rows, c] == 1, counts[:, rows])
        done += b
    return out


def _percentile_ci(samples: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    low = np.full(samples.shape[1], np.nan)
    high = np.full(samples.shape[1], np.nan)
    for c in range(samples.shape[1]):
        v = samples[:, c]
        v = v[np.isfinite(v)]
        if v.size:
            low[c], high[c] = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return low, high


def bootstrap_auroc_ci(
    probs, labels, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap ``(1 − alpha)`` CI of each label's AUROC: ``(low [C], high [C])``.

    NaN for a label with no usable resample. Deterministic for a seed.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return _percentile_ci(bootstrap_auroc_samples(probs, labels, n_resamples, seed), alpha)


# ---------------------------------------------------------------------------------------------- thresholds
def youden_thresholds(probs, labels) -> np.ndarray:
    """Threshold maximising Youden's J per label ``[C]`` (ties → the lowest such threshold; one class → 0.5).

    Candidates are the distinct known scores t (predict positive ⇔ p ≥ t). J is compared exactly as the
    integer ``TP·Q − FP·P`` (= J·P·Q), so floating-point noise cannot break ties.
    """
    p, y = _check_pair(probs, labels)
    out = np.full(p.shape[1], 0.5)
    for c in range(p.shape[1]):
        pk, yk = _known(p, y, c)
        if not _two_classes(yk):
            continue
        n_pos = int(yk.sum())
        n_neg = yk.size - n_pos
        order = np.argsort(-pk, kind="stable")
        s, pos = pk[order], yk[order].astype(np.int64)
        last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each distinct score
        tp = np.cumsum(pos)[last]
        fp = (last + 1) - tp
        j = tp * n_neg - fp * n_pos
        best = np.flatnonzero(j == j.max())[-1]  # thresholds descend, so the last maximiser is the lowest
        out[c] = s[last[best]]
    return out


def f1_thresholds(probs, labels) -> np.ndarray:
    """Threshold maximising F1 = 2TP / (2TP + FP + FN) per label ``[C]`` (ties → the highest such threshold, the
    fewest positives; a label without a known positive → 1.0, never predicted; all positive → 0.5).

    Same candidates as :func:`youden_thresholds`; F1 is compared exactly as fractions (cross-multiplied integers).
    Precision-aware: Youden's J favours sensitivity on rare labels, which lists too many findings in a prompt.
    """
    p, y = _check_pair(probs, labels)
    out = np.full(p.shape[1], 0.5)
    for c in range(p.shape[1]):
        pk, yk = _known(p, y, c)
        n_pos = int(yk.sum())
        if n_pos == 0:
            out[c] = 1.0
            continue
        if n_pos == yk.size:
            continue
        order = np.argsort(-pk, kind="stable")
        s, pos = pk[order], yk[order].astype(np.int64)
        last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
        tp = np.cumsum(pos)[last]
        fp = (last + 1) - tp
        num, den = 2 * tp, 2 * tp + fp + (n_pos - tp)  # F1 = num / den, den > 0 since n_pos > 0
        best_k = 0
        for k in range(1, len(last)):  # exact comparison num_k / den_k > num_best / den_best
            if num[k] * den[best_k] > num[best_k] * den[k]:
                best_k = k
        out[c] = s[last[best_k]]
    return out


def confusion_counts(probs, labels, thresholds) -> dict[str, np.ndarray]:
    """Per-label TP, FP, TN, FN ``[C]`` on known cells, predicting positive when ``prob >= threshold``."""
    p, y = _check_pair(probs, labels)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.shape[0] != p.shape[1]:
        raise ValueError(f"thresholds has {t.shape[0]} values for {p.shape[1]} labels")
    known = ~np.isnan(y)
    pred = p >= t[None, :]
    truth = np.nan_to_num(y) == 1
    return {
        "tp": (known & pred & truth).sum(0),
        "fp": (known & pred & ~truth).sum(0),
        "tn": (known & ~pred & ~truth).sum(0),
        "fn": (known & ~pred & truth).sum(0),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = num.astype(np.float64), den.astype(np.float64)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def threshold_metrics(probs, labels, thresholds) -> dict[str, np.ndarray]:
    """Per-label ``accuracy, f1, sensitivity, specificity, precision`` ``[C]`` at the given thresholds.

    Known cells only; NaN where a denominator is 0 (see the module docstring for the formulas).
    """
    k = confusion_counts(probs, labels, thresholds)
    tp, fp, tn, fn = k["tp"], k["fp"], k["tn"], k["fn"]
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
    }


# ---------------------------------------------------------------------------------------------- report
@dataclass
class RocCurve:
    """One label's test ROC curve and its operating point at the validation-fitted threshold."""

    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float
    ci_low: float
    ci_high: float
    threshold: float
    op_fpr: float
    op_tpr: float


_PER_LABEL = ("auroc", "ci_low", "ci_high", "threshold", "accuracy", "f1", "sensitivity", "specificity")
_MEANS = ("auroc", "accuracy", "f1", "sensitivity", "specificity")


@dataclass
class ClassificationReport:
    """Per-label test metrics ``[C]`` (thresholds fitted on validation) plus the test ROC curves.

    ``op_fpr``/``op_tpr``: the test operating point at ``threshold`` (1 − specificity, sensitivity).
    ``mean_ci_low``/``mean_ci_high``: bootstrap CI of the mean AUROC over the labels with a defined AUROC
    (resamples where any of those labels is undefined are skipped).
    """

    label_names: list[str]
    auroc: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    threshold: np.ndarray
    accuracy: np.ndarray
    f1: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    n_pos: np.ndarray
    n_known: np.ndarray
    op_fpr: np.ndarray
    op_tpr: np.ndarray
    roc_fpr: list[np.ndarray] = field(default_factory=list)
    roc_tpr: list[np.ndarray] = field(default_factory=list)
    mean_ci_low: float = math.nan
    mean_ci_high: float = math.nan
    n_resamples: int = 0

    @property
    def defined(self) -> np.ndarray:
        """Boolean ``[C]``: labels whose test AUROC is defined (both classes among the known cells)."""
        return np.isfinite(self.auroc)

    def mean(self, metric: str) -> float:
        """Mean of a per-label metric over the labels with a defined AUROC (NaN if none)."""
        v = np.asarray(getattr(self, metric), dtype=np.float64)[self.defined]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else math.nan

    def roc_points(self, label_index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(fpr, tpr)`` of the test ROC curve of one label (empty arrays if its AUROC is undefined)."""
        return self.roc_fpr[label_index], self.roc_tpr[label_index]

    def roc_curve(self, label_index: int) -> RocCurve:
        """The test ROC curve of one label with its AUROC, CI and validation-threshold operating point."""
        i = label_index
        return RocCurve(
            self.label_names[i],
            self.roc_fpr[i],
            self.roc_tpr[i],
            float(self.auroc[i]),
            float(self.ci_low[i]),
            float(self.ci_high[i]),
            float(self.threshold[i]),
            float(self.op_fpr[i]),
            float(self.op_tpr[i]),
        )

    def to_flat(self, prefix: str = "") -> dict[str, float]:
        """``{f"{prefix}{metric}/{label}": value, f"{prefix}{metric}_mean": value, ...}`` as floats."""
        out: dict[str, float] = {}
        for metric in _PER_LABEL:
            values = getattr(self, metric)
            for name, v in zip(self.label_names, values, strict=True):
                out[f"{prefix}{metric}/{name}"] = float(v)
        for name, v in zip(self.label_names, self.n_pos, strict=True):
            out[f"{prefix}n_pos/{name}"] = float(v)
        for metric in _MEANS:
            out[f"{prefix}{metric}_mean"] = self.mean(metric)
        out[f"{prefix}auroc_mean_ci_low"] = float(self.mean_ci_low)
        out[f"{prefix}auroc_mean_ci_high"] = float(self.mean_ci_high)
        return out

    def to_markdown(self) -> str:
        """A table: one row per label and a mean row (means over labels with a defined AUROC); one line instead
        when no test label is known."""
        if not int(np.asarray(self.n_known).sum()):
            return "No known test labels: nothing to score."

        def f(v: float) -> str:
            return "–" if not math.isfinite(v) else f"{v:.3f}"

        def auc(v: float, lo: float, hi: float) -> str:
            if not math.isfinite(v):
                return "–"
            return f"{v:.3f} ({lo:.3f}–{hi:.3f})" if math.isfinite(lo) and math.isfinite(hi) else f"{v:.3f}"

        lines = [
            "| label | pos / known | AUROC (95% CI) | threshold | sensitivity | specificity | F1 | accuracy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, name in enumerate(self.label_names):
            lines.append(
                f"| {name} | {int(self.n_pos[i])} / {int(self.n_known[i])} | "
                f"{auc(self.auroc[i], self.ci_low[i], self.ci_high[i])} | {f(self.threshold[i])} | "
                f"{f(self.sensitivity[i])} | {f(self.specificity[i])} | {f(self.f1[i])} | "
                f"{f(self.accuracy[i])} |"
            )
        n_def = int(self.defined.sum())
        mean_auc = auc(self.mean("auroc"), self.mean_ci_low, self.mean_ci_high)
        lines.append(
            f"| **mean ({n_def} labels)** | | **{mean_auc}** "
            f"| | {f(self.mean('sensitivity'))} | {f(self.mean('specificity'))} | {f(self.mean('f1'))} | "
            f"{f(self.mean('accuracy'))} |"
        )
        return "\n".join(lines)


def evaluate_binary(
    val_probs,
    val_labels,
    test_probs,
    test_labels,
    label_names: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> ClassificationReport:
    """Youden thresholds from the validation split, applied to the test split; test AUROC with bootstrap CI.

    The thresholds are computed from ``val_probs``/``val_labels`` alone, before the test arrays are read.
    """
    vp, vy = _check_pair(val_probs, val_labels, "val_probs", "val_labels")
    thresholds = youden_thresholds(vp, vy)
    tp_, ty = _check_pair(test_probs, test_labels, "test_probs", "test_labels")
    names = [str(n) for n in label_names]
    if tp_.shape[1] != vp.shape[1]:
        raise ValueError(f"test_probs has {tp_.shape[1]} labels but val_probs has {vp.shape[1]}")
    if len(names) != tp_.shape[1]:
        raise ValueError(f"label_names has {len(names)} names for {tp_.shape[1]} label columns")

    auroc = auroc_per_label(tp_, ty)
    samples = bootstrap_auroc_samples(tp_, ty, n_resamples, seed)
    ci_low, ci_high = _percentile_ci(samples, alpha)
    defined = np.isfinite(auroc)
    mean_low = mean_high = math.nan
    if defined.any():
        per_resample = samples[:, defined]
        ok = np.isfinite(per_resample).all(axis=1)
        if ok.any():
            lo, hi = _percentile_ci(per_resample[ok].mean(axis=1, keepdims=True), alpha)
            mean_low, mean_high = float(lo[0]), float(hi[0])

    metrics = threshold_metrics(tp_, ty, thresholds)
    known = ~np.isnan(ty)
    roc_fpr, roc_tpr = [], []
    for c in range(tp_.shape[1]):
        pk, yk = _known(tp_, ty, c)
        if _two_classes(yk):
            fpr, tpr, _ = roc_curve(yk, pk)
        else:
            fpr, tpr = np.empty(0), np.empty(0)
        roc_fpr.append(fpr)
        roc_tpr.append(tpr)
    return ClassificationReport(
        label_names=names,
        auroc=auroc,
        ci_low=ci_low,
        ci_high=ci_high,
        threshold=thresholds,
        accuracy=metrics["accuracy"],
        f1=metrics["f1"],
        sensitivity=metrics["sensitivity"],
        specificity=metrics["specificity"],
        n_pos=(known & (np.nan_to_num(ty) == 1)).sum(0),
        n_known=known.sum(0),
        op_fpr=1.0 - metrics["specificity"],
        op_tpr=metrics["sensitivity"],
        roc_fpr=roc_fpr,
        roc_tpr=roc_tpr,
        mean_ci_low=mean_low,
        mean_ci_high=mean_high,
        n_resamples=int(n_resamples),
    )
