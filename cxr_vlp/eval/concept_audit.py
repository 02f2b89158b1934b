"""Concept-bottleneck audit of CLEAR concept scores: which concepts does each label lean on, and which of those
are not findings of that label (confounders such as "chest tube" for Pneumothorax)?

Inputs: per image a concept-score vector ``s ∈ R^K`` (cosine similarities to ``K`` concept strings
``concept_names``) and CheXpert-style labels ``y ∈ {1, 0, NaN}^C`` (NaN = unknown, ignored everywhere).

The bottleneck (:func:`fit_concept_bottleneck`)
-----------------------------------------------
Scores are standardised with *training* statistics, ``z = (s − μ) / σ`` (``σ`` = population standard
deviation; a constant concept gets ``σ = 1`` so its ``z`` is 0). Each label ``c`` is an independent logistic
regression on ``z``:

    logit_c(s) = b_c + Σ_k W[c, k] · z_k,        p_c(s) = sigmoid(logit_c(s))

fitted on the ``n_c`` rows whose label ``c`` is known by minimising

    L_c(W_c, b_c) = (1 / n_c) Σ_{i known} BCE(p_c(s_i), y_ic) + λ · ‖W_c‖²          (the bias is not penalised)

(scikit-learn's ``LogisticRegression`` with ``C = 1 / (2 λ n_c)`` is exactly this objective). NaN cells carry no
weight, so a NaN row gives the same fit as dropping that cell. A label whose known training cells hold a single
class (or none) gets ``W_c = 0`` and ``b_c = logit`` of its clipped training prevalence (0 with no known cell).

``λ`` is chosen from a small grid on the validation split by the mean over labels of the validation AUROC (per
label on its known cells; labels with a single known validation class are left out of the mean). Ties go to the
larger ``λ`` (the simpler model). The model kept is the one fitted on the training split with that ``λ``.

Reading the bottleneck
----------------------
* :func:`top_concepts`: for one image and label, contribution ``κ_k = W[c, k] · z_k``; the logit is
  ``b_c + Σ_k κ_k``. Returns the ``k`` largest contributions.
* :func:`concept_relevance`: concept ``k`` is a *finding* of label ``c`` when the project's rule-based labeler
  (:func:`cxr_vlp.text.labeler.label_report`, the one label policy) reads the concept text as positive (1.0)
  for ``c``. "No Finding" is relevant to *normal-sounding* concepts: the labeler gives No Finding = 1, no
  observation (Support Devices included) is positive or uncertain, and the text either negates an observation
  ("no pleural effusion") or carries a normal cue (:data:`NORMAL_CUES`: "normal", "clear", "unremarkable",
  "well expanded", ...). Without that cue the labeler's No Finding = 1 only means "nothing abnormal was named"
  ("scoliosis", "portable radiograph"), which is not a normal finding.
* :func:`confounder_table`: per label, the concepts among its ``top`` largest *positive* weights (rank 1 =
  largest; optionally only weights above ``min_weight``) that are not relevant findings of that label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from cxr_vlp.metrics.classification import auroc_per_label
from cxr_vlp.text.labeler import label_report
from cxr_vlp.text.labels import CHEXPERT_LABELS, NO_FINDING

__all__ = [
    "DEFAULT_L2_GRID",
    "NORMAL_CUES",
    "ConceptBottleneck",
    "Confounder",
    "concept_contributions",
    "concept_relevance",
    "confounder_table",
    "confounders_markdown",
    "fit_concept_bottleneck",
    "top_concepts",
]

DEFAULT_L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)

# word-bounded, case-insensitive cues that make a concept text sound normal (used for "No Finding" only)
NORMAL_CUES: tuple[str, ...] = (
    r"normal",
    r"within\s+normal\s+limits",
    r"wnl",
    r"unremarkable",
    r"clear",
    r"well[- ](?:expanded|aerated|inflated)",
    r"sharp",
    r"no\s+acute",
    r"negative",
)
_NORMAL_RE = re.compile(r"\b(?:" + "|".join(NORMAL_CUES) + r")\b", re.IGNORECASE)
_PREVALENCE_CLIP = 1e-6


# ---------------------------------------------------------------------------------------------- validation
def _as_array(x: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        shape = "[N, K] or [N, C]" if ndim == 2 else "[K]"
        raise ValueError(f"{name} must be {ndim}-D {shape}, got shape {tuple(arr.shape)}")
    return arr


def _check_scores(scores: Any, name: str, n_concepts: int | None = None) -> np.ndarray:
    s = _as_array(scores, name, 2)
    if n_concepts is not None and s.shape[1] != n_concepts:
        raise ValueError(f"{name} has {s.shape[1]} concepts (shape {tuple(s.shape)}), expected K={n_concepts}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def _check_labels(labels: Any, name: str, n_rows: int, n_labels: int) -> np.ndarray:
    y = _as_array(labels, name, 2)
    if y.shape != (n_rows, n_labels):
        raise ValueError(f"{name} must have shape [N={n_rows}, C={n_labels}], got {tuple(y.shape)}")
    known = ~np.isnan(y)
    bad = known & (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"{name} must be 1, 0 or NaN; found {y[bad][0]!r}")
    return y


def _l2_grid(l2: float | Sequence[float]) -> list[float]:
    grid = [float(l2)] if np.isscalar(l2) else [float(v) for v in l2]  # type: ignore[arg-type]
    if not grid:
        raise ValueError("l2 grid is empty")
    for v in grid:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"l2 values must be finite and > 0, got {v!r}")
    # larger λ first so that ties (first maximiser) go to the stronger regularisation
    return sorted(set(grid), reverse=True)


# ---------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True, eq=False)
class ConceptBottleneck:
    """A linear concept bottleneck: ``p = sigmoid(b + W · (s − μ) / σ)``.

    ``weights`` ``[C, K]`` are in standardised units (one training-σ of the concept score), ``bias`` ``[C]``,
    ``mean`` / ``std`` ``[K]`` are the training statistics. ``l2`` is the chosen λ, ``val_auroc`` ``[C]`` the
    per-label validation AUROC at that λ (NaN where undefined) and ``grid_scores`` maps each tried λ to its mean
    validation AUROC.
    """

    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    label_names: tuple[str, ...]
    concept_names: tuple[str, ...]
    l2: float
    val_auroc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid_scores: dict[float, float] = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        return len(self.concept_names)

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def label_index(self, label: str | int) -> int:
        """Index of ``label`` (a name from ``label_names`` or an integer index)."""
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= int(label) < self.n_labels:
                raise ValueError(f"label index {label} out of range for C={self.n_labels} labels")
            return int(label)
        try:
            return self.label_names.index(str(label))
        except ValueError:
            known = list(self.label_names)
            raise ValueError(f"label {label!r} is not one of the bottleneck's labels {known}") from None

    def standardise(self, scores: Any) -> np.ndarray:
        """``z = (s − μ) / σ`` for ``scores`` ``[N, K]``."""
        s = _check_scores(scores, "scores", self.n_concepts)
        return (s - self.mean) / self.std

    def logits(self, scores: Any) -> np.ndarray:
        """``b + z Wᵀ``, shape ``[N, C]``."""
        return self.standardise(scores) @ self.weights.T + self.bias

    def predict_probs(self, scores: Any) -> np.ndarray:
        """``sigmoid(logits)``, shape ``[N, C]``."""
        x = self.logits(scores)
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # numerically stable sigmoid


def _fit_label(z: np.ndarray, y: np.ndarray, lam: float, max_iter: int, seed: int) -> tuple[np.ndarray, float]:
    """Weights ``[K]`` and bias of one label on its known rows (``y`` has no NaN here)."""
    n = y.size
    pos = int(y.sum())
    if n == 0:
        return np.zeros(z.shape[1]), 0.0
    if pos == 0 or pos == n:
        p = min(max(pos / n, _PREVALENCE_CLIP), 1.0 - _PREVALENCE_CLIP)
        return np.zeros(z.shape[1]), float(math.log(p / (1.0 - p)))
    clf = LogisticRegression(C=1.0 / (2.0 * lam * n), max_iter=max_iter, tol=1e-8, random_state=seed)
    clf.fit(z, y.astype(np.int64))
    return clf.coef_[0].astype(np.float64), float(clf.intercept_[0])


def fit_concept_bottleneck(
    train_scores: Any,
    train_labels: Any,
    val_scores: Any | None,
    val_labels: Any | None,
    label_names: Sequence[str],
    concept_names: Sequence[str],
    l2: float | Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 1000,
    seed: int = 0,
) -> ConceptBottleneck:
    """Fit the concept bottleneck (formulas in the module docstring).

    ``train_scores`` / ``val_scores`` ``[N, K]``, ``train_labels`` / ``val_labels`` ``[N, C]`` (1 / 0 / NaN).
    ``l2`` is one λ or a grid of them; with a grid of more than one value the validation split is required and
    λ is chosen by mean validation AUROC (ties → larger λ). With a single λ the validation split is optional
    and only used to report ``val_auroc``.
    """
    label_names = tuple(str(n) for n in label_names)
    concept_names = tuple(str(n) for n in concept_names)
    if len(set(label_names)) != len(label_names):
        raise ValueError(f"label_names has duplicates: {list(label_names)}")
    if len(set(concept_names)) != len(concept_names):
        raise ValueError("concept_names has duplicates")
    n_concepts, n_labels = len(concept_names), len(label_names)
    if n_concepts == 0 or n_labels == 0:
        raise ValueError(f"need at least one concept and one label, got K={n_concepts}, C={n_labels}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    s_tr = _check_scores(train_scores, "train_scores", n_concepts)
    y_tr = _check_labels(train_labels, "train_labels", s_tr.shape[0], n_labels)
    grid = _l2_grid(l2)
    if (val_scores is None) != (val_labels is None):
        raise ValueError("val_scores and val_labels must both be given or both be None")
    has_val = val_scores is not None
    if not has_val and len(grid) > 1:
        raise ValueError(f"choosing l2 from the grid {grid} needs val_scores and val_labels")
    if has_val:
        s_va = _check_scores(val_scores, "val_scores", n_concepts)
        y_va = _check_labels(val_labels, "val_labels", s_va.shape[0], n_labels)

    mean = s_tr.mean(axis=0)
    std = s_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z_tr = (s_tr - mean) / std
    known = ~np.isnan(y_tr)

    best: ConceptBottleneck | None = None
    best_score = -math.inf
    grid_scores: dict[float, float] = {}
    for lam in grid:
        weights = np.zeros((n_labels, n_concepts))
        bias = np.zeros(n_labels)
        for c in range(n_labels):
            m = known[:, c]
            weights[c], bias[c] = _fit_label(z_tr[m], y_tr[m, c], lam, int(max_iter), seed)
        model = ConceptBottleneck(weights, bias, mean, std, label_names, concept_names, lam)
        if has_val:
            aurocs = auroc_per_label(model.predict_probs(s_va), y_va)
            score = float(np.nanmean(aurocs)) if np.isfinite(aurocs).any() else float("nan")
        else:
            aurocs, score = np.full(n_labels, np.nan), float("nan")
        grid_scores[lam] = score
        if len(grid) > 1 and math.isnan(score):
            raise ValueError("val_labels has no label with both classes known: cannot choose l2 by validation AUROC")
        if best is None or score > best_score:
            best, best_score = (
                ConceptBottleneck(weights, bias, mean, std, label_names, concept_names, lam, val_auroc=aurocs),
                score,
            )
    assert best is not None
    return ConceptBottleneck(
        best.weights,
        best.bias,
        best.mean,
        best.std,
        label_names,
        concept_names,
        best.l2,
        val_auroc=best.val_auroc,
        grid_scores=grid_scores,
    )


# ---------------------------------------------------------------------------------------------- explanations
def concept_contributions(cbm: ConceptBottleneck, scores_row: Any, label: str | int) -> np.ndarray:
    """``κ_k = W[c, k] · z_k`` for one image ``scores_row`` ``[K]``; ``bias[c] + Σ κ = logit_c``."""
    s = _as_array(scores_row, "scores_row", 1)
    if s.shape[0] != cbm.n_concepts:
        raise ValueError(f"scores_row has {s.shape[0]} concepts, expected K={cbm.n_concepts}")
    c = cbm.label_index(label)
    z = cbm.standardise(s[None, :])[0]
    return cbm.weights[c] * z


def top_concepts(cbm: ConceptBottleneck, scores_row: Any, label: str | int, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` concepts with the largest contribution ``W[c, k] · z_k`` to ``label``'s logit for one image,
    as ``(concept, contribution)`` sorted descending (ties by concept order)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    contrib = concept_contributions(cbm, scores_row, label)
    order = np.argsort(-contrib, kind="stable")[: int(k)]
    return [(cbm.concept_names[j], float(contrib[j])) for j in order]


# ---------------------------------------------------------------------------------------------- relevance
def _chexpert_index(name: str) -> int:
    lowered = {n.lower(): i for i, n in enumerate(CHEXPERT_LABELS)}
    try:
        return lowered[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"label_names entry {name!r} is not a CheXpert label {list(CHEXPERT_LABELS)}") from None


def _is_normal_concept(text: str, values: np.ndarray) -> bool:
    if values[NO_FINDING] != 1.0:
        return False
    others = np.delete(values, NO_FINDING)
    if np.any((others == 1.0) | (others == -1.0)):
        return False
    return bool(np.any(others == 0.0)) or _NORMAL_RE.search(text) is not None


def concept_relevance(concept_names: Sequence[str], label_names: Sequence[str]) -> np.ndarray:
    """Boolean ``[C, K]``: ``True`` where concept ``k`` is a finding of label ``c`` (rules in the module docstring).

    ``label_names`` must be CheXpert names (case-insensitive); the concept texts are read by
    ``label_report(text, use_sections=False)``.
    """
    idx = [_chexpert_index(n) for n in label_names]
    rel = np.zeros((len(idx), len(concept_names)), dtype=bool)
    for k, text in enumerate(concept_names):
        values = label_report(str(text), use_sections=False)
        for c, j in enumerate(idx):
            if j == NO_FINDING:
                rel[c, k] = _is_normal_concept(str(text), values)
            else:
                rel[c, k] = bool(values[j] == 1.0)
    return rel


# ---------------------------------------------------------------------------------------------- confounders
@dataclass(frozen=True)
class Confounder:
    """A concept among a label's top positive weights that is not a finding of that label.

    ``rank`` is 1-based among the label's positive weights sorted descending."""

    label: str
    concept: str
    weight: float
    rank: int


def confounder_table(
    cbm: ConceptBottleneck, relevance: Any, top: int = 10, min_weight: float = 0.0
) -> list[Confounder]:
    """Per label (in ``cbm.label_names`` order), the non-relevant concepts among its ``top`` largest positive
    weights, by rank. ``relevance`` is boolean ``[C, K]`` (see :func:`concept_relevance`). Weights ``≤
    min_weight`` (standardised units) are never listed, so near-zero noise weights can be left out."""
    rel = np.asarray(relevance)
    if rel.shape != (cbm.n_labels, cbm.n_concepts):
        raise ValueError(f"relevance must have shape [C={cbm.n_labels}, K={cbm.n_concepts}], got {tuple(rel.shape)}")
    if rel.dtype != bool:
        raise ValueError(f"relevance must be a boolean array, got dtype {rel.dtype}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    if not (math.isfinite(min_weight) and min_weight >= 0):
        raise ValueError(f"min_weight must be finite and >= 0, got {min_weight!r}")
    rows: list[Confounder] = []
    for c, label in enumerate(cbm.label_names):
        w = cbm.weights[c]
        order = np.argsort(-w, kind="stable")[: int(top)]
        for rank, j in enumerate(order, start=1):
            if w[j] <= 0:
                break
            if w[j] > min_weight and not rel[c, j]:
                rows.append(Confounder(label, cbm.concept_names[j], float(w[j]), rank))
    return rows


def confounders_markdown(rows: Sequence[Confounder]) -> str:
    """A Markdown table ``| label | rank | concept | weight |`` of :func:`confounder_table` rows."""
    lines = ["| label | rank | concept | weight |", "|---|---:|---|---:|"]
    if not rows:
        lines.append("| (none) | | | |")
    for r in rows:
        concept = r.concept.replace("|", "\\|")
        lines.append(f"| {r.label} | {r.rank} | {concept} | {r.weight:.4f} |")
    return "\n".join(lines)
