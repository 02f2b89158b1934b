"""DivergenceGuard on a tiny module: bad steps are skipped without touching weights, optimizer state or BatchNorm
statistics; a run of them stops training with a message that names step, losses, learning rate and checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxr_vlp.lit.divergence import (
    SKIPPED_KEY,
    DivergenceGuard,
    NonFiniteCheckpointError,
    TrainingDivergedError,
    check_gradients_before_clipping,
    non_finite_entries,
)

BATCH = 4
LR = 0.05


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss with a non-finite gradient norm."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, math.inf)


class Tiny(L.LightningModule):
    """Linear + BatchNorm regression; batches whose index is in ``bad`` get a NaN input (``mode="loss"``) or an
    infinite gradient with a finite loss (``mode="grad"``). Records the weights after every batch."""

    def __init__(self, bad: set[int], mode: str = "loss", manual: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 1))
        self.bad, self.mode = bad, mode
        self.automatic_optimization = not manual
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def _loss(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if batch_idx in self.bad and self.mode == "loss":
            x = x.clone()
            x[0, 0] = math.nan
        out = self.net(x)
        if batch_idx in self.bad and self.mode == "grad":
            out = _InfGrad.apply(out)
        loss = ((out - y) ** 2).mean()
        self.log("train/loss", loss)
        self.log("train/mse_term", loss * 0.5)
        return loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.automatic_optimization:
            return self._loss(x, y, batch_idx)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(self._loss(x, y, batch_idx))
        check_gradients_before_clipping(self.trainer, self, opt)
        self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt.step()
        return None

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:  # after the callbacks' hooks
        self.snapshots.append({k: v.detach().clone() for k, v in self.state_dict().items()})

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=LR)


def _loader(n_batches: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * BATCH, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=BATCH, shuffle=False)


def _trainer(tmp_path: Path, guard: DivergenceGuard, max_steps: int, **kwargs) -> L.Trainer:
    callbacks = [guard, *kwargs.pop("callbacks", [])]
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        callbacks=callbacks,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("mode", ["loss", "grad"])
@pytest.mark.parametrize("manual", [False, True])
def test_bad_step_is_skipped_and_leaves_weights_and_state(tmp_path: Path, mode: str, manual: bool) -> None:
    module = Tiny(bad={1}, mode=mode, manual=manual)
    guard = DivergenceGuard(max_consecutive_bad_steps=3)
    trainer = _trainer(tmp_path, guard, max_steps=3, gradient_clip_val=None if manual else 1.0)
    trainer.fit(module, train_dataloaders=_loader(3))
    before, after_bad, after_good = module.snapshots
    _assert_same(after_bad, before)  # weights and BatchNorm running statistics of step 0
    assert all(torch.isfinite(v).all() for v in after_good.values() if v.is_floating_point())
    assert not torch.equal(after_good["net.0.weight"], after_bad["net.0.weight"])  # a good step updates again
    state = trainer.optimizers[0].state[module.net[0].weight]
    assert int(state["step"]) == 2  # AdamW counted only the two good steps
    assert guard.skipped_steps == 1 and guard.consecutive == []
    assert trainer.callback_metrics[SKIPPED_KEY] == 1.0
    assert trainer.global_step == 3


def test_skipped_step_changes_nothing_compared_with_no_step(tmp_path: Path) -> None:
    """A run with a bad batch 1 ends where a run that never saw batch 1 ends (same weights, same AdamW moments)."""

    def run(bad: set[int], batches: list[int]) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        module = Tiny(bad=bad)
        loader = _loader(3)
        subset = DataLoader(
            torch.utils.data.Subset(loader.dataset, [i * BATCH + j for i in batches for j in range(BATCH)]),
            batch_size=BATCH,
        )
        trainer = _trainer(tmp_path, DivergenceGuard(), max_steps=len(batches), gradient_clip_val=1.0)
        trainer.fit(module, train_dataloaders=subset)
        return module.snapshots[-1]

    _assert_same(run(bad={1}, batches=[0, 1, 2]), run(bad=set(), batches=[0, 2]))


def test_consecutive_bad_steps_stop_with_the_message_parts(tmp_path: Path) -> None:
    module = Tiny(bad={2, 3, 4, 5, 6})
    guard = DivergenceGuard(max_consecutive_bad_steps=3)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=1, save_top_k=1, enable_version_counter=False
    )
    trainer = _trainer(tmp_path, guard, max_steps=10, gradient_clip_val=1.0, callbacks=[checkpoint])
    with pytest.raises(TrainingDivergedError) as err:
        trainer.fit(module, train_dataloaders=_loader(10))
    message = str(err.value)
    assert "3 consecutive optimizer steps" in message
    assert "steps 2-4" in message and "last at step 4, epoch 0, batch 4" in message
    assert "non-finite loss" in message
    assert "train/loss=nan" in message and "train/mse_term=nan" in message
    assert f"Learning rate: {LR:.4g}" in message
    last = tmp_path / "ckpt" / "last.ckpt"
    assert f"Last good checkpoint: {last}" in message
    saved = torch.load(last, weights_only=True)
    # written after every step; skipped steps leave the weights of the last good step (batch 1)
    _assert_same(saved["state_dict"], module.snapshots[1])
    assert non_finite_entries(saved["state_dict"])[0] == []
    assert guard.skipped_steps == 3 and len(module.snapshots) == 4  # batches 0-1 good, 2 and 3 skipped, 4 raised


def test_message_without_checkpoint_and_good_steps_reset_the_count(tmp_path: Path) -> None:
    module = Tiny(bad={0, 1, 3, 4, 5})
    guard = DivergenceGuard(max_consecutive_bad_steps=3)
    trainer = _trainer(tmp_path, guard, max_steps=10, gradient_clip_val=1.0)
    with pytest.raises(TrainingDivergedError, match=r"(?s)steps 3-5.*none written yet"):
        trainer.fit(module, train_dataloaders=_loader(10))
    assert guard.skipped_steps == 5  # two at the start, then three in a row after one good step


def test_non_finite_validation_loss_stops_before_checkpoints(tmp_path: Path) -> None:
    class NaNVal(Tiny):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", torch.tensor(math.nan))

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", save_top_k=1)
    trainer = _trainer(tmp_path, DivergenceGuard(), max_steps=4, callbacks=[checkpoint])
    with pytest.raises(TrainingDivergedError, match=r"validation loss val/loss=nan at step 2 \(epoch 0\)"):
        trainer.fit(NaNVal(bad=set()), train_dataloaders=_loader(2), val_dataloaders=_loader(1))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    module = Tiny(bad=set())
    trainer = _trainer(tmp_path, DivergenceGuard(), max_steps=1)
    trainer.fit(module, train_dataloaders=_loader(1))
    good = tmp_path / "good.ckpt"
    trainer.save_checkpoint(good)
    with torch.no_grad():
        module.net[2].weight[0, 1] = math.inf
        module.net[1].running_var.fill_(math.nan)
    bad = tmp_path / "bad.ckpt"
    with pytest.raises(
        NonFiniteCheckpointError,
        match=r"2 of \d+ tensors hold NaN or inf \(net\.1\.running_var, "
        r"net\.2\.weight\)",
    ) as err:
        trainer.save_checkpoint(bad)
    assert not bad.exists() and good.is_file()
    assert "refusing to write a checkpoint at step 1" in str(err.value)


def test_non_finite_entries_matches_a_direct_check() -> None:
    state = {
        "a": torch.tensor([1.0, math.nan]),
        "b": torch.ones(2),
        "c": torch.tensor([math.inf]),
        "d": torch.tensor([1, 2]),
        "e": torch.zeros(0),
        "f": 3,
    }
    bad, total = non_finite_entries(state)
    direct = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
        and v.is_floating_point()
        and any(not math.isfinite(float(x)) for x in v.flatten())
    ]
    assert bad == direct == ["a", "c"] and total == 3


@pytest.mark.parametrize("value", [0, -1, True, "3", 2.5])
def test_max_consecutive_bad_steps_must_be_a_positive_int(value) -> None:
    with pytest.raises(ValueError, match=r"max_consecutive_bad_steps must be an integer >= 1, got"):
        DivergenceGuard(max_consecutive_bad_steps=value)


def test_counts_travel_in_the_checkpoint(tmp_path: Path) -> None:
    """A resumed run continues train/skipped_steps and the current run of bad steps (weights-only loadable)."""
    guard = DivergenceGuard(max_consecutive_bad_steps=3)
    trainer = _trainer(tmp_path, guard, max_steps=3, gradient_clip_val=1.0)
    trainer.fit(Tiny(bad={0, 2}), train_dataloaders=_loader(3))
    path = tmp_path / "resume.ckpt"
    trainer.save_checkpoint(path)
    resumed = DivergenceGuard(max_consecutive_bad_steps=3)
    trainer = _trainer(tmp_path, resumed, max_steps=4, gradient_clip_val=1.0)
    trainer.fit(Tiny(bad={3}), train_dataloaders=_loader(4), ckpt_path=str(path), weights_only=True)
    # steps 0 and 2 skipped before the checkpoint; the resumed run goes on at batch 3 (step 3), bad as well
    assert resumed.skipped_steps == 3 and [b.step for b in resumed.consecutive] == [2, 3]
    assert trainer.callback_metrics[SKIPPED_KEY] == 3.0
