"""Concept-bottleneck audit (cxr_vlp.eval.concept_audit) on synthetic concept scores with known structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_vlp.eval.concept_audit import (
    ConceptBottleneck,
    Confounder,
    concept_contributions,
    concept_relevance,
    confounder_table,
    confounders_markdown,
    fit_concept_bottleneck,
    top_concepts,
)
from cxr_vlp.metrics.classification import auroc_per_label

CONCEPTS = [
    "pleural effusion",  # 0: drives label 0
    "blunted costophrenic angle",  # 1: drives label 0
    "pneumothorax",  # 2: drives label 1
    "chest tube",  # 3: spurious, correlated with label 0 only
    "scoliosis",  # 4: noise
    "portable radiograph",  # 5: noise
]
LABELS = ["Pleural Effusion", "Pneumothorax"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _make(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-like scores; label 0 from concepts 0 and 1, label 1 from concept 2, "chest tube" follows label 0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(CONCEPTS)))
    y0 = (rng.random(n) < _sigmoid(3.0 * z[:, 0] + 2.0 * z[:, 1] - 0.5)).astype(float)
    y1 = (rng.random(n) < _sigmoid(3.5 * z[:, 2] - 1.0)).astype(float)
    z[:, 3] = 0.9 * y0 + rng.normal(size=n)  # the confounder: tracks the label, not the finding
    scores = 0.2 + 0.04 * z  # cosine similarities live in a narrow band
    return scores, np.stack([y0, y1], axis=1)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    s_tr, y_tr = _make(3000, 0)
    s_va, y_va = _make(1000, 1)
    s_te, y_te = _make(1000, 2)
    return {"s_tr": s_tr, "y_tr": y_tr, "s_va": s_va, "y_va": y_va, "s_te": s_te, "y_te": y_te}


@pytest.fixture(scope="module")
def cbm(data) -> ConceptBottleneck:
    return fit_concept_bottleneck(data["s_tr"], data["y_tr"], data["s_va"], data["y_va"], LABELS, CONCEPTS)


# ---------------------------------------------------------------------------------------------- fit
def test_recovers_structure_and_high_auroc(cbm, data):
    w = cbm.weights
    assert w.shape == (2, len(CONCEPTS)) and cbm.bias.shape == (2,)
    # label 0: the two driving concepts carry the two largest weights, the confounder comes next
    assert set(np.argsort(-w[0])[:2]) == {0, 1}
    assert np.argsort(-w[0])[2] == 3 and w[0, 3] > 0.3
    assert w[0, 0] > w[0, 1]  # 3.0 vs 2.0 in the generator
    # label 1: concept 2 dominates, the confounder does not matter
    assert np.argmax(w[1]) == 2 and w[1, 2] > 5 * np.abs(np.delete(w[1], 2)).max()
    auc = auroc_per_label(cbm.predict_probs(data["s_te"]), data["y_te"])
    assert np.all(auc > 0.85), auc
    # λ was chosen on validation: the kept one maximises the mean validation AUROC over the grid
    assert cbm.l2 in cbm.grid_scores and len(cbm.grid_scores) == 4
    assert cbm.grid_scores[cbm.l2] == max(cbm.grid_scores.values())
    assert cbm.val_auroc.shape == (2,) and np.all(cbm.val_auroc > 0.85)


def test_standardisation_uses_train_statistics(cbm, data):
    np.testing.assert_allclose(cbm.mean, data["s_tr"].mean(0))
    np.testing.assert_allclose(cbm.std, data["s_tr"].std(0))
    logits = cbm.logits(data["s_te"])
    z = (data["s_te"] - data["s_tr"].mean(0)) / data["s_tr"].std(0)
    np.testing.assert_allclose(logits, z @ cbm.weights.T + cbm.bias)
    np.testing.assert_allclose(cbm.predict_probs(data["s_te"]), _sigmoid(logits))
    assert cbm.predict_probs(torch.as_tensor(data["s_te"][:5])).shape == (5, 2)


def _masked_objective_grad(cbm: ConceptBottleneck, scores, labels, lam: float) -> np.ndarray:
    """Gradient of (1/n_c) Σ_known BCE + λ‖W_c‖² w.r.t. (W_c, b_c), stacked per label: [C, K + 1]."""
    z = (scores - cbm.mean) / cbm.std
    out = []
    for c in range(labels.shape[1]):
        m = ~np.isnan(labels[:, c])
        p = _sigmoid(z[m] @ cbm.weights[c] + cbm.bias[c])
        r = p - labels[m, c]
        g_w = z[m].T @ r / m.sum() + 2 * lam * cbm.weights[c]
        out.append(np.append(g_w, r.mean()))
    return np.array(out)


def test_masked_labels_are_ignored(data):
    s, y = data["s_tr"][:1500], data["y_tr"][:1500].copy()
    rng = np.random.default_rng(5)
    y_nan = y.copy()
    y_nan[rng.random(len(y)) < 0.3, 1] = np.nan  # 30 % of label 1 unknown
    lam = 1e-3
    fit = fit_concept_bottleneck(s, y_nan, None, None, LABELS, CONCEPTS, l2=lam)
    # the fit is a stationary point of the *masked* objective (NaN cells carry no weight) ...
    assert np.abs(_masked_objective_grad(fit, s, y_nan, lam)).max() < 1e-4
    # ... and not of the objective that treats unknown as negative
    y_zero = np.nan_to_num(y_nan, nan=0.0)
    assert np.abs(_masked_objective_grad(fit, s, y_zero, lam)[1]).max() > 1e-2
    # label 0 is unaffected by label 1's unknown cells
    full = fit_concept_bottleneck(s, y, None, None, LABELS, CONCEPTS, l2=lam)
    np.testing.assert_allclose(fit.weights[0], full.weights[0], atol=1e-6)
    # appending a copy of every row with all labels unknown (same train mean/std) changes nothing
    dup = fit_concept_bottleneck(
        np.vstack([s, s]), np.vstack([y_nan, np.full_like(y_nan, np.nan)]), None, None, LABELS, CONCEPTS, l2=lam
    )
    np.testing.assert_allclose(dup.weights, fit.weights, atol=1e-6)
    np.testing.assert_allclose(dup.bias, fit.bias, atol=1e-6)


def test_degenerate_labels_and_constant_concept():
    rng = np.random.default_rng(7)
    s = rng.normal(size=(200, 3))
    s[:, 2] = 0.5  # constant concept: σ = 1, z = 0
    y = np.stack([(s[:, 0] > 0).astype(float), np.ones(200), np.full(200, np.nan)], axis=1)
    y[:50, 1] = np.nan
    fit = fit_concept_bottleneck(s, y, None, None, ["Edema", "Atelectasis", "Fracture"], ["a", "b", "c"], l2=1e-2)
    assert fit.std[2] == 1.0 and fit.weights[0, 2] == pytest.approx(0.0, abs=1e-8)
    assert np.all(fit.weights[1] == 0) and fit.bias[1] > 10  # single class: prevalence logit (clipped)
    assert np.all(fit.weights[2] == 0) and fit.bias[2] == 0  # no known cell: p = 0.5
    assert fit.weights[0, 0] > 1


# ---------------------------------------------------------------------------------------------- explanations
def test_top_concepts_contributions_sum_to_logit(cbm, data):
    row = data["s_te"][0]
    for label in (0, "Pneumothorax"):
        c = cbm.label_index(label)
        allc = top_concepts(cbm, row, label, k=len(CONCEPTS))
        values = [v for _, v in allc]
        assert values == sorted(values, reverse=True)
        assert sorted(n for n, _ in allc) == sorted(CONCEPTS)
        assert cbm.bias[c] + sum(values) == pytest.approx(float(cbm.logits(row[None])[0, c]))
        np.testing.assert_allclose(
            sum(concept_contributions(cbm, row, label)) + cbm.bias[c], cbm.logits(row[None])[0, c]
        )
        assert top_concepts(cbm, row, label, k=2) == allc[:2]


def test_top_concepts_explain_a_typical_positive(cbm):
    row = np.full(len(CONCEPTS), 0.2)
    row[0] += 0.12  # strong "pleural effusion" and "blunted costophrenic angle" similarity
    row[1] += 0.10
    names = [n for n, _ in top_concepts(cbm, row, "Pleural Effusion", k=2)]
    assert names == ["pleural effusion", "blunted costophrenic angle"]
    row2 = np.full(len(CONCEPTS), 0.2)
    row2[2] += 0.12
    assert top_concepts(cbm, row2, "Pneumothorax", k=1)[0][0] == "pneumothorax"


# ---------------------------------------------------------------------------------------------- relevance
@pytest.mark.parametrize(
    "concept,label,expected",
    [
        ("pleural effusion", "Pleural Effusion", True),
        ("blunted costophrenic angle", "Pleural Effusion", True),
        ("chest tube", "Pleural Effusion", False),
        ("chest tube", "Pneumothorax", False),
        ("chest tube", "Support Devices", True),
        ("pacemaker", "Cardiomegaly", False),
        ("enlarged cardiac silhouette", "Cardiomegaly", True),
        ("borderline heart size", "Cardiomegaly", False),  # uncertain, not positive
        ("no pleural effusion", "Pleural Effusion", False),  # negated
        ("hydropneumothorax", "Pneumothorax", True),
        ("hydropneumothorax", "Pleural Effusion", True),
        ("normal heart size", "No Finding", True),
        ("clear lungs", "No Finding", True),
        ("no pleural effusion", "No Finding", True),
        ("scoliosis", "No Finding", False),  # nothing abnormal named, but not a normal finding
        ("chest tube", "No Finding", False),
        ("pleural effusion", "No Finding", False),
        ("pneumothorax", "pneumothorax", True),  # label names are matched case-insensitively
    ],
)
def test_concept_relevance_hand_checked(concept, label, expected):
    rel = concept_relevance([concept], [label])
    assert rel.shape == (1, 1) and rel.dtype == bool
    assert bool(rel[0, 0]) is expected


def test_concept_relevance_matrix_and_unknown_label():
    rel = concept_relevance(CONCEPTS, LABELS)
    assert rel.shape == (2, len(CONCEPTS))
    np.testing.assert_array_equal(rel[0], [True, True, False, False, False, False])
    np.testing.assert_array_equal(rel[1], [False, False, True, False, False, False])
    with pytest.raises(ValueError, match="'Effusion' is not a CheXpert label"):
        concept_relevance(CONCEPTS, ["Effusion"])


# ---------------------------------------------------------------------------------------------- confounders
def test_confounder_table_flags_spurious_concept(cbm):
    rel = concept_relevance(CONCEPTS, LABELS)
    rows = confounder_table(cbm, rel, top=3, min_weight=0.3)
    assert rows == [Confounder("Pleural Effusion", "chest tube", pytest.approx(cbm.weights[0, 3]), 3)]
    # without a weight floor, every non-finding among a label's top positive weights is listed, by rank
    loose = confounder_table(cbm, rel, top=10)
    assert all(
        r.concept not in ("pleural effusion", "blunted costophrenic angle")
        for r in loose
        if r.label == "Pleural Effusion"
    )
    assert all(r.concept != "pneumothorax" for r in loose if r.label == "Pneumothorax")
    assert all(r.weight > 0 for r in loose)
    for label in LABELS:
        ranks = [r.rank for r in loose if r.label == label]
        assert ranks == sorted(ranks)
    # marking everything relevant leaves nothing to flag
    assert confounder_table(cbm, np.ones_like(rel), top=10) == []
    md = confounders_markdown(rows)
    assert md.splitlines()[0] == "| label | rank | concept | weight |"
    assert "| Pleural Effusion | 3 | chest tube |" in md
    assert "(none)" in confounders_markdown([])


# ---------------------------------------------------------------------------------------------- validation
def test_validation_errors(cbm, data):
    s, y = data["s_tr"][:100], data["y_tr"][:100]
    with pytest.raises(ValueError, match="train_scores has 5 concepts"):
        fit_concept_bottleneck(s[:, :5], y, None, None, LABELS, CONCEPTS, l2=1e-2)
    with pytest.raises(ValueError, match=r"train_labels must have shape \[N=100, C=2\]"):
        fit_concept_bottleneck(s, y[:90], None, None, LABELS, CONCEPTS, l2=1e-2)
    bad = y.copy()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="train_labels must be 1, 0 or NaN"):
        fit_concept_bottleneck(s, bad, None, None, LABELS, CONCEPTS, l2=1e-2)
    nan_s = s.copy()
    nan_s[1, 1] = np.nan
    with pytest.raises(ValueError, match="train_scores contains NaN"):
        fit_concept_bottleneck(nan_s, y, None, None, LABELS, CONCEPTS, l2=1e-2)
    with pytest.raises(ValueError, match="needs val_scores and val_labels"):
        fit_concept_bottleneck(s, y, None, None, LABELS, CONCEPTS)
    with pytest.raises(ValueError, match="val_scores has 4 concepts"):
        fit_concept_bottleneck(s, y, s[:, :4], y, LABELS, CONCEPTS)
    with pytest.raises(ValueError, match="l2 values must be finite and > 0"):
        fit_concept_bottleneck(s, y, None, None, LABELS, CONCEPTS, l2=0.0)
    with pytest.raises(ValueError, match="no label with both classes"):
        fit_concept_bottleneck(s, y, s, np.ones_like(y), LABELS, CONCEPTS)
    with pytest.raises(ValueError, match="relevance must have shape"):
        confounder_table(cbm, np.zeros((3, len(CONCEPTS)), dtype=bool))
    with pytest.raises(ValueError, match="relevance must be a boolean array"):
        confounder_table(cbm, np.zeros((2, len(CONCEPTS))))
    with pytest.raises(ValueError, match="'Edema' is not one of the bottleneck's labels"):
        top_concepts(cbm, data["s_te"][0], "Edema")
    with pytest.raises(ValueError, match="scores_row has 3 concepts"):
        top_concepts(cbm, data["s_te"][0, :3], 0)
    with pytest.raises(ValueError, match="scores has 2 concepts"):
        cbm.predict_probs(data["s_te"][:, :2])
    assert math.isfinite(cbm.l2)
