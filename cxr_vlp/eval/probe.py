"""Supervised probes on frozen features (docs/design.md §4): linear or one-hidden-layer MLP, sigmoid outputs.

Features are standardised with the statistics of the training rows actually used, x̂ = (x − μ) / σ
(population σ; σ < 1e-6 → 1), inside the model, so :func:`predict_probs` takes raw features.

Loss, with logits z, targets y ∈ {0, 1, NaN} and K = the set of known (non-NaN) cells of the batch:

    L = (1/|K|) Σ_{(i,c) ∈ K} [ softplus(z_ic) − y_ic·z_ic ]   (= BCE with logits; L = 0 when K is empty)

Training: AdamW, minibatches shuffled per epoch, at most ``max_epochs`` epochs. After each epoch the
validation mean AUROC (over labels whose known validation cells hold both classes) is recorded; the weights
of the best epoch (first one on ties) are restored at the end, and training stops once ``patience`` epochs
pass without improvement. If no label has both classes in validation, the validation loss (lower is better)
takes the AUROC's place for the selection.

``label_fraction`` < 1 trains on a seeded random subset of round(fraction·N_train) training rows (at least 1);
the validation rows are always used in full. Everything is deterministic for ``seed`` and leaves the
global torch RNG state untouched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxr_vlp.metrics.classification import auroc_per_label

__all__ = [
    "ProbeConfig",
    "ProbeModel",
    "ProbeResult",
    "masked_bce_with_logits",
    "predict_probs",
    "subset_rows",
    "train_probe",
]

_KINDS = ("mlp", "linear")
_EVAL_CHUNK = 8192


@dataclass
class ProbeConfig:
    """Probe hyper-parameters; ``kind`` is ``"mlp"`` (Linear–ReLU–Dropout–Linear) or ``"linear"``."""

    kind: str = "mlp"
    hidden: int = 256
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 10
    seed: int = 0
    label_fraction: float = 1.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"ProbeConfig.kind must be one of {list(_KINDS)}, got {self.kind!r}")
        for name in ("hidden", "batch_size", "max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"ProbeConfig.dropout must be in [0, 1), got {self.dropout}")
        if not float(self.lr) > 0:
            raise ValueError(f"ProbeConfig.lr must be > 0, got {self.lr}")
        if float(self.weight_decay) < 0:
            raise ValueError(f"ProbeConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < float(self.label_fraction) <= 1.0:
            raise ValueError(f"ProbeConfig.label_fraction must be in (0, 1], got {self.label_fraction}")


class ProbeModel(nn.Module):
    """Standardisation (buffers ``mean``, ``std``) followed by a linear layer or an MLP; returns logits."""

    def __init__(
        self, mean: Tensor, std: Tensor, num_labels: int, kind: str = "mlp", hidden: int = 256, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        dim = mean.shape[0]
        if kind == "linear":
            self.net: nn.Module = nn.Linear(dim, num_labels)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_labels)
            )
        else:
            raise ValueError(f"kind must be one of {list(_KINDS)}, got {kind!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


@dataclass
class ProbeResult:
    """The trained probe (eval mode, best-epoch weights) and its training record.

    ``best_epoch`` is 1-based; ``val_auroc_history[e - 1]`` is the validation mean AUROC after epoch e.
    ``train_rows`` are the indices of the training rows used (``n_train_used`` of them).
    """

    model: ProbeModel
    best_epoch: int
    val_auroc_history: list[float]
    n_train_used: int
    train_rows: Tensor
    val_loss_history: list[float] = field(default_factory=list)
    train_loss_history: list[float] = field(default_factory=list)


def masked_bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits over the known (non-NaN) cells of ``targets``; 0 (with a graph) when none is known."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    known = ~torch.isnan(targets)
    per_cell = F.binary_cross_entropy_with_logits(
        logits, torch.where(known, targets, torch.zeros_like(targets)), reduction="none"
    )
    per_cell = torch.where(known, per_cell, torch.zeros_like(per_cell))
    return per_cell.sum() / known.sum().clamp_min(1)


def subset_rows(n_rows: int, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a seeded random subset of ``max(1, floor(fraction·n_rows + ½))`` rows out of ``n_rows``."""
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_used = min(n_rows, max(1, math.floor(fraction * n_rows + 0.5)))
    if n_used == n_rows:
        return torch.arange(n_rows)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_rows, generator=g)[:n_used].sort().values


def _as_float(x, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().float().cpu()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    return t


def _check_inputs(train_x, train_y, val_x, val_y) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    tx, ty = _as_float(train_x, "train_x"), _as_float(train_y, "train_y")
    vx, vy = _as_float(val_x, "val_x"), _as_float(val_y, "val_y")
    if tx.shape[0] != ty.shape[0]:
        raise ValueError(f"train_x has {tx.shape[0]} rows but train_y has {ty.shape[0]}")
    if vx.shape[0] != vy.shape[0]:
        raise ValueError(f"val_x has {vx.shape[0]} rows but val_y has {vy.shape[0]}")
    if tx.shape[0] == 0 or vx.shape[0] == 0:
        raise ValueError(f"train_x and val_x need at least one row, got {tx.shape[0]} and {vx.shape[0]}")
    if vx.shape[1] != tx.shape[1]:
        raise ValueError(f"val_x has {vx.shape[1]} features but train_x has {tx.shape[1]}")
    if vy.shape[1] != ty.shape[1]:
        raise ValueError(f"val_y has {vy.shape[1]} labels but train_y has {ty.shape[1]}")
    for name, t in (("train_x", tx), ("val_x", vx)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if not torch.isfinite(ty).any():
        raise ValueError(
            "train_y has no known label value: nothing to train a probe on (a dataset without labels, "
            "or data.reader.labels=none)"
        )
    return tx, ty, vx, vy


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, device: torch.device) -> Tensor:
    return torch.cat(
        [model(x[i : i + _EVAL_CHUNK].to(device)).float().cpu() for i in range(0, x.shape[0], _EVAL_CHUNK)]
    )


def _mean_auroc(probs: Tensor, labels: Tensor) -> float:
    auc = auroc_per_label(probs.double().numpy(), labels.double().numpy())
    auc = auc[np.isfinite(auc)]
    return float(auc.mean()) if auc.size else math.nan


def train_probe(train_x, train_y, val_x, val_y, cfg: ProbeConfig | None = None) -> ProbeResult:
    """Train a probe on frozen features ``[N, F]`` with labels ``[N, C]`` (NaN = unknown); see the module docstring."""
    cfg = cfg or ProbeConfig()
    tx, ty, vx, vy = _check_inputs(train_x, train_y, val_x, val_y)
    rows = subset_rows(tx.shape[0], float(cfg.label_fraction), cfg.seed)
    tx, ty = tx[rows], ty[rows]
    device = torch.device(cfg.device)
    mean = tx.mean(dim=0)
    std = tx.std(dim=0, unbiased=False)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)

    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(int(cfg.seed))
        model = ProbeModel(mean, std, ty.shape[1], cfg.kind, int(cfg.hidden), float(cfg.dropout)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        g = torch.Generator().manual_seed(int(cfg.seed) + 1)
        aurocs: list[float] = []
        val_losses: list[float] = []
        train_losses: list[float] = []
        best_score, best_epoch, best_state = -math.inf, 0, None
        n, bs = tx.shape[0], int(cfg.batch_size)
        for epoch in range(1, int(cfg.max_epochs) + 1):
            model.train()
            order = torch.randperm(n, generator=g)
            total, count = 0.0, 0
            for i in range(0, n, bs):
                idx = order[i : i + bs]
                loss = masked_bce_with_logits(model(tx[idx].to(device)), ty[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                count += len(idx)
            train_losses.append(total / max(count, 1))

            model.eval()
            logits = _logits(model, vx, device)
            val_losses.append(float(masked_bce_with_logits(logits, vy)))
            aurocs.append(_mean_auroc(torch.sigmoid(logits), vy))
            score = aurocs[-1] if math.isfinite(aurocs[-1]) else -val_losses[-1]
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= int(cfg.patience):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return ProbeResult(
        model=model,
        best_epoch=best_epoch,
        val_auroc_history=aurocs,
        n_train_used=int(rows.numel()),
        train_rows=rows,
        val_loss_history=val_losses,
        train_loss_history=train_losses,
    )


def predict_probs(result: ProbeResult | nn.Module, x) -> Tensor:
    """Sigmoid probabilities ``[N, C]`` (float32, CPU) of a trained probe on raw features ``x`` ``[N, F]``."""
    model = result.model if isinstance(result, ProbeResult) else result
    xt = _as_float(x, "x")
    expected = model.mean.shape[0] if isinstance(model, ProbeModel) else None
    if expected is not None and xt.shape[1] != expected:
        raise ValueError(f"x has {xt.shape[1]} features but the probe was trained on {expected}")
    model.eval()
    device = next(model.parameters()).device
    return torch.sigmoid(_logits(model, xt, device))
