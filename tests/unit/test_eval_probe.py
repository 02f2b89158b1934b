"""Probes on frozen features (cxr_vlp.eval.probe)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_vlp.eval.probe import (
    ProbeConfig,
    ProbeResult,
    masked_bce_with_logits,
    predict_probs,
    subset_rows,
    train_probe,
)
from cxr_vlp.metrics.classification import auroc_per_label


def separable(
    n: int,
    f: int = 12,
    c: int = 3,
    seed: int = 0,
    unknown: float = 0.15,
    noise: float = 0.0,
    offset: float = 5.0,
    spread: float = 3.0,
):
    """Features on an arbitrary scale and offset; labels = sign of a fixed linear map (+ label noise); NaN cells."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(f, c, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, f, generator=g)
    y = (x @ w > 0).float()
    if noise:
        flip = torch.rand(n, c, generator=g) < noise
        y = torch.where(flip, 1 - y, y)
    y[torch.rand(n, c, generator=g) < unknown] = float("nan")
    return offset + spread * x, y


def mean_auroc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(np.nanmean(auroc_per_label(probs.double().numpy(), labels.double().numpy())))


def params(result: ProbeResult) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result.model.state_dict().values()]


FAST = {"max_epochs": 30, "patience": 30, "batch_size": 64, "lr": 1e-2, "hidden": 32, "dropout": 0.0}


# ---------------------------------------------------------------------------------------------- loss
def test_masked_bce_equals_loop_reference():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 4, generator=g)
    targets = (torch.rand(6, 4, generator=g) < 0.5).float()
    targets[torch.rand(6, 4, generator=g) < 0.3] = float("nan")
    total, count = 0.0, 0
    for i in range(6):
        for c in range(4):
            y = float(targets[i, c])
            if math.isnan(y):
                continue
            p = 1 / (1 + math.exp(-float(logits[i, c])))
            total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
            count += 1
    assert float(masked_bce_with_logits(logits, targets)) == pytest.approx(total / count, rel=1e-5)


def test_masked_bce_ignores_nan_cells():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g, requires_grad=True)
    targets = torch.tensor(
        [
            [1.0, float("nan"), 0.0],
            [0.0, 1.0, float("nan")],
            [float("nan")] * 3,
            [1.0, 1.0, 0.0],
            [0.0, float("nan"), 1.0],
        ]
    )
    loss = masked_bce_with_logits(logits, targets)
    loss.backward()
    nan = torch.isnan(targets)
    assert torch.all(logits.grad[nan] == 0) and torch.all(logits.grad[~nan] != 0)
    # whatever the logits say at unknown cells (even huge), the loss is the same and finite
    changed = logits.detach().clone()
    changed[nan] = torch.tensor([1e4, -1e4, 50.0, -3.0, 7.0, 0.0])[: int(nan.sum())]
    assert masked_bce_with_logits(changed, targets).item() == pytest.approx(loss.item(), abs=1e-6)
    # rows with no known cell never make a NaN, and an all-unknown batch gives 0
    empty = masked_bce_with_logits(logits, torch.full_like(targets, float("nan")))
    assert empty.item() == 0.0
    with pytest.raises(ValueError, match="logits"):
        masked_bce_with_logits(logits, targets[:, :2])


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_probe_learns_a_separable_problem(kind):
    tx, ty = separable(600, seed=0)
    vx, vy = separable(300, seed=1)
    res = train_probe(tx, ty, vx, vy, ProbeConfig(kind=kind, **FAST))
    assert not res.model.training
    assert res.n_train_used == 600
    assert mean_auroc(predict_probs(res, vx), vy) > 0.95
    probs = predict_probs(res, vx)
    assert probs.shape == (300, 3) and probs.dtype == torch.float32
    assert (probs >= 0).all() and (probs <= 1).all()


def test_early_stopping_restores_the_best_epoch():
    # noisy labels and a wide MLP: validation AUROC climbs for a few epochs, then the probe overfits
    tx, ty = separable(150, f=20, seed=2, noise=0.3)
    vx, vy = separable(300, f=20, seed=3, noise=0.3)
    cfg = ProbeConfig(
        kind="mlp", hidden=128, dropout=0.0, lr=5e-3, batch_size=16, max_epochs=40, patience=5, weight_decay=0.0
    )
    res = train_probe(tx, ty, vx, vy, cfg)
    hist = res.val_auroc_history
    assert res.best_epoch == int(np.argmax(hist)) + 1
    assert 1 < res.best_epoch < len(hist)  # the best is neither the first nor the last epoch
    assert len(hist) < cfg.max_epochs and len(hist) == res.best_epoch + cfg.patience  # it did stop early
    assert mean_auroc(predict_probs(res, vx), vy) == pytest.approx(max(hist), abs=1e-6)
    # the returned weights are exactly those after epoch best_epoch of the same run
    capped = train_probe(tx, ty, vx, vy, ProbeConfig(**{**cfg.__dict__, "max_epochs": res.best_epoch}))
    assert capped.val_auroc_history == hist[: res.best_epoch]
    for a, b in zip(params(res), params(capped), strict=True):
        assert torch.equal(a, b)


def test_standardisation_uses_training_statistics_only():
    tx, ty = separable(200, seed=4, offset=100.0, spread=10.0)
    vx, vy = separable(100, seed=5, offset=-50.0, spread=0.1)
    res = train_probe(tx, ty, vx, vy, ProbeConfig(kind="linear", max_epochs=2))
    torch.testing.assert_close(res.model.mean, tx.mean(0))
    torch.testing.assert_close(res.model.std, tx.std(0, unbiased=False))


# ---------------------------------------------------------------------------------------------- label fraction
@pytest.mark.parametrize(("fraction", "expected"), [(1.0, 500), (0.1, 50), (0.01, 5), (0.001, 1)])
def test_label_fraction_row_count(fraction, expected):
    rows = subset_rows(500, fraction, seed=0)
    assert rows.numel() == expected
    assert len(set(rows.tolist())) == expected and rows.min() >= 0 and rows.max() < 500
    assert torch.equal(rows, subset_rows(500, fraction, seed=0))


def test_label_fraction_uses_only_the_subset_of_training_rows():
    tx, ty = separable(400, seed=6)
    vx, vy = separable(150, seed=7)
    cfg = ProbeConfig(kind="mlp", label_fraction=0.1, seed=3, **{**FAST, "max_epochs": 5})
    res = train_probe(tx, ty, vx, vy, cfg)
    assert res.n_train_used == 40
    assert torch.equal(res.train_rows, subset_rows(400, 0.1, seed=3))
    torch.testing.assert_close(res.model.mean, tx[res.train_rows].mean(0))

    # poisoning every training row outside the subset changes nothing
    unused = torch.ones(400, dtype=torch.bool)
    unused[res.train_rows] = False
    px, py = tx.clone(), ty.clone()
    px[unused] = 1e3
    py[unused] = 1 - torch.nan_to_num(py[unused], nan=0.0)
    poisoned = train_probe(px, py, vx, vy, cfg)
    for a, b in zip(params(res), params(poisoned), strict=True):
        assert torch.equal(a, b)
    assert poisoned.val_auroc_history == res.val_auroc_history

    # the fraction is never applied to validation: the history is the AUROC on all validation rows
    assert mean_auroc(predict_probs(res, vx), vy) == pytest.approx(res.val_auroc_history[res.best_epoch - 1], abs=1e-6)
    other_val = train_probe(tx, ty, vx[:75], vy[:75], cfg)
    assert torch.equal(other_val.train_rows, res.train_rows)


# ---------------------------------------------------------------------------------------------- determinism
def test_deterministic_for_a_seed_and_leaves_global_rng_alone():
    tx, ty = separable(200, seed=8)
    vx, vy = separable(100, seed=9)
    cfg = ProbeConfig(kind="mlp", seed=5, label_fraction=0.5, **{**FAST, "max_epochs": 4, "dropout": 0.2})
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = train_probe(tx, ty, vx, vy, cfg)
    after = torch.rand(3)
    assert torch.equal(before, after)
    b = train_probe(tx, ty, vx, vy, cfg)
    for p, q in zip(params(a), params(b), strict=True):
        assert torch.equal(p, q)
    assert a.val_auroc_history == b.val_auroc_history
    c = train_probe(tx, ty, vx, vy, ProbeConfig(**{**cfg.__dict__, "seed": 6}))
    assert any(not torch.equal(p, q) for p, q in zip(params(a), params(c), strict=True))


# ---------------------------------------------------------------------------------------------- errors
def test_config_and_input_errors_name_the_culprit():
    with pytest.raises(ValueError, match="kind"):
        ProbeConfig(kind="svm")
    with pytest.raises(ValueError, match="label_fraction"):
        ProbeConfig(label_fraction=0.0)
    with pytest.raises(ValueError, match="patience"):
        ProbeConfig(patience=0)
    tx, ty = separable(20, seed=0)
    vx, vy = separable(10, seed=1)
    with pytest.raises(ValueError, match="train_y"):
        train_probe(tx, ty[:5], vx, vy)
    with pytest.raises(ValueError, match="val_x"):
        train_probe(tx, ty, vx[:, :4], vy)
    with pytest.raises(ValueError, match="val_y"):
        train_probe(tx, ty, vx, vy[:, :2])
    res = train_probe(tx, ty, vx, vy, ProbeConfig(kind="linear", max_epochs=1))
    with pytest.raises(ValueError, match="features"):
        predict_probs(res, vx[:, :3])


def test_a_probe_without_known_training_labels_says_so() -> None:
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="train_y has no known label value"):
        train_probe(x, torch.full((8, 3), float("nan")), x, torch.zeros(8, 3), ProbeConfig(max_epochs=1))
