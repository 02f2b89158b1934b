"""Divergence guard: skip optimizer steps with a non-finite loss or gradient norm, stop after a run of them.

:class:`DivergenceGuard` is a Lightning callback (``callbacks.divergence`` in ``conf/callbacks/default.yaml``):

- every backward pass reports its loss (``on_before_backward``); before the optimizer step
  (``on_before_optimizer_step``, after AMP unscaling and before gradient clipping) the guard checks the loss and the
  total gradient norm. If either is non-finite on any rank, every gradient of the optimizer is dropped
  (``grad = None``), so AdamW leaves those parameters, their moments and step counts untouched, and the BatchNorm
  running statistics the step's forward passes updated are restored. The skip is counted: ``train/skipped_steps``.
  Under fp16 with a ``GradScaler`` an infinite gradient is the scaler's business (it skips the step and lowers the
  scale), so only a non-finite loss counts there. The learning-rate schedule still advances on a skipped step.
- ``max_consecutive_bad_steps`` skipped steps in a row raise :class:`TrainingDivergedError`, whose message names the
  step, the logged loss components, the learning rate and the last checkpoint written; so does a non-finite
  validation loss (``val_loss_key``), before any checkpoint of that epoch is written.
- ``on_save_checkpoint`` refuses (raises :class:`NonFiniteCheckpointError`) a checkpoint whose ``state_dict`` holds a
  non-finite value, before the file is written.

The checks cost one device-to-host transfer of two numbers per optimizer step (and one boolean all-reduce under DDP).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

SKIPPED_KEY = "train/skipped_steps"


class TrainingDivergedError(RuntimeError):
    """Training produced non-finite losses or gradients too many steps in a row (or a non-finite validation loss)."""


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint was about to be written with non-finite weights or buffers."""


@dataclass
class BadStep:
    """One skipped optimizer step: where it happened and what was non-finite."""

    step: int
    epoch: int
    batch_idx: int
    loss_finite: bool
    grad_norm: float | None
    losses: dict[str, float] = field(default_factory=dict)

    def reason(self) -> str:
        parts = [] if self.loss_finite else ["non-finite loss"]
        if self.grad_norm is not None and not math.isfinite(self.grad_norm):
            parts.append(f"gradient norm {self.grad_norm}")
        return " and ".join(parts) or "non-finite value on another rank"


def _norm_buffers(module: nn.Module) -> list[Tensor]:
    """The running statistics of every BatchNorm layer that updates them in training mode."""
    return [
        b
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for b in m.buffers(recurse=False)
        if b is not None
    ]


def non_finite_entries(state_dict: dict[str, Any]) -> tuple[list[str], int]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or ±inf, and how many tensors were
    checked."""
    names = [k for k, v in state_dict.items() if isinstance(v, Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return [], 0
    finite = torch.stack([torch.isfinite(state_dict[k]).all().cpu() for k in names]).tolist()
    return [k for k, ok in zip(names, finite) if not ok], len(names)


def _format(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The most recently written checkpoint file among the trainer's ``ModelCheckpoint`` callbacks, if any."""
    paths = {
        Path(p)
        for c in trainer.checkpoint_callbacks
        if isinstance(c, ModelCheckpoint)
        for p in (c.best_model_path, c.last_model_path)
        if p
    }
    existing = [p for p in paths if p.is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def learning_rates(trainer: L.Trainer) -> list[float]:
    """The distinct learning rates of the trainer's optimizers' parameter groups, in increasing order."""
    return sorted({float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups})


def check_gradients_before_clipping(
    trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
) -> None:
    """Manual optimisation: run the :class:`DivergenceGuard` checks (if the trainer has one) on the unclipped
    gradients; call before ``clip_gradients`` and ``optimizer.step()``, which then skips its own check."""
    for callback in trainer.callbacks:
        if isinstance(callback, DivergenceGuard):
            callback.check_step(trainer, optimizer)
            callback._checked = True


class DivergenceGuard(Callback):
    """Skip steps with a non-finite loss or gradient norm; raise after ``max_consecutive_bad_steps`` in a row.

    Args:
        max_consecutive_bad_steps: skipped optimizer steps in a row that stop training (``>= 1``).
        val_loss_key: validation metric that must be finite at the end of every validation epoch (``None``: no check).
        check_checkpoints: refuse to write checkpoints with non-finite tensors in their ``state_dict``.
    """

    def __init__(
        self, max_consecutive_bad_steps: int = 3, val_loss_key: str | None = "val/loss", check_checkpoints: bool = True
    ) -> None:
        if (
            isinstance(max_consecutive_bad_steps, bool)
            or not isinstance(max_consecutive_bad_steps, int)
            or max_consecutive_bad_steps < 1
        ):
            raise ValueError(
                "callbacks.divergence.max_consecutive_bad_steps must be an integer >= 1, got "
                f"{max_consecutive_bad_steps!r}"
            )
        self.max_consecutive_bad_steps = max_consecutive_bad_steps
        self.val_loss_key = val_loss_key
        self.check_checkpoints = check_checkpoints
        self.skipped_steps = 0
        self.consecutive: list[BadStep] = []
        self._loss_finite: Tensor | None = None  # all losses back-propagated since the last optimizer step finite
        self._window_open = False  # batches of the current (accumulation) window have run forward passes
        self._saved_buffers: list[tuple[Tensor, Tensor]] = []
        self._stepped = False  # an optimizer step (taken or skipped) happened in this batch
        self._bad: BadStep | None = None
        self._checked = False  # check_step already ran for the coming optimizer step

    # ------------------------------------------------------------------ resumable counts (checkpoint["callbacks"])
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "consecutive": [asdict(b) for b in self.consecutive]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive = [BadStep(**b) for b in state_dict.get("consecutive", [])]

    # ------------------------------------------------------------------ per-step checks
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._window_open:
            self._saved_buffers = [(b, b.detach().clone()) for b in _norm_buffers(pl_module)]
            self._window_open = True
        self._stepped, self._bad = False, None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._checked:  # manual optimisation: checked before clipping (check_gradients_before_clipping)
            self._checked = False
            return
        self.check_step(trainer, optimizer)

    def check_step(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> None:
        """Decide whether the coming optimizer step is bad (non-finite loss or gradient norm) and if so drop every
        gradient of ``optimizer``; call it once per step, after the backward passes and before clipping."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        loss_finite = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
        self._loss_finite = None
        check_grads = getattr(trainer.precision_plugin, "scaler", None) is None and bool(params)
        device = params[0].grad.device if params else loss_finite.device
        values = [loss_finite.to(device, torch.float32)]
        if check_grads:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
            values.append(norm.to(device, torch.float32))
        flags = torch.stack(values).tolist()  # one device-to-host transfer
        grad_norm = flags[1] if check_grads else None
        local_bad = flags[0] < 0.5 or (grad_norm is not None and not math.isfinite(grad_norm))
        self._stepped = True
        if not trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            return
        for p in params:
            p.grad = None
        self._bad = BadStep(
            step=trainer.global_step,
            epoch=trainer.current_epoch,
            batch_idx=-1,
            loss_finite=flags[0] >= 0.5,
            grad_norm=grad_norm,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._stepped:
            return
        self._window_open = False
        if self._bad is None:
            self.consecutive = []
        else:
            with torch.no_grad():
                for buffer, saved in self._saved_buffers:
                    buffer.copy_(saved)
            self._bad.batch_idx = batch_idx
            self._bad.losses = self._logged_losses(trainer)
            self.consecutive.append(self._bad)
            self.skipped_steps += 1
        self._saved_buffers = []
        pl_module.log(SKIPPED_KEY, float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=1)
        if len(self.consecutive) >= self.max_consecutive_bad_steps:
            raise TrainingDivergedError(self.report(trainer))

    @staticmethod
    def _logged_losses(trainer: L.Trainer) -> dict[str, float]:
        """The training scalars logged for the current step (the loss and its components)."""
        out = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and key != SKIPPED_KEY and "per_sec" not in key:
                out[key] = float(value)
        return out

    # ------------------------------------------------------------------ validation and checkpoints
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.val_loss_key is None:
            return
        value = trainer.callback_metrics.get(self.val_loss_key)
        if value is not None and not math.isfinite(float(value)):
            when = (
                "in the sanity check before training"
                if trainer.sanity_checking
                else f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
            )
            raise TrainingDivergedError(
                f"training diverged: validation loss {self.val_loss_key}={float(value)} {when}. "
                + self.report(trainer, header=False)
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.check_checkpoints:
            return
        bad, total = non_finite_entries(checkpoint.get("state_dict", {}))
        if bad:
            shown = ", ".join(bad[:5]) + (f", ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
            raise NonFiniteCheckpointError(
                f"refusing to write a checkpoint at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                f"{len(bad)} of {total} tensors hold NaN or inf ({shown}). " + self.report(trainer, header=False)
            )

    # ------------------------------------------------------------------ the message
    def report(self, trainer: L.Trainer, header: bool = True) -> str:
        """What the user needs to act: the bad steps, their loss components, the learning rate, the last checkpoint."""
        lines = []
        if header:
            first, last = self.consecutive[0], self.consecutive[-1]
            lines.append(
                f"training diverged: {len(self.consecutive)} consecutive optimizer steps with a non-finite "
                f"loss or gradient norm (steps {first.step}-{last.step}; last at step {last.step}, epoch "
                f"{last.epoch}, batch {last.batch_idx}: {last.reason()}); these steps were skipped."
            )
        elif self.consecutive:
            lines.append(
                f"The last {len(self.consecutive)} optimizer step(s) were skipped (steps "
                f"{self.consecutive[0].step}-{self.consecutive[-1].step}: {self.consecutive[-1].reason()})."
            )
        if self.consecutive and self.consecutive[-1].losses:
            losses = ", ".join(f"{k}={_format(v)}" for k, v in sorted(self.consecutive[-1].losses.items()))
            lines.append(f"Loss components at step {self.consecutive[-1].step}: {losses}.")
        rates = learning_rates(trainer)
        if rates:
            lines.append(
                "Learning rate: "
                + ", ".join(f"{r:.4g}" for r in rates)
                + " (optim.lr, scheduler; trainer.gradient_clip_val limits the step size)."
            )
        lines.append(f"Skipped steps in this run: {self.skipped_steps}.")
        ckpt = last_checkpoint(trainer)
        lines.append(
            f"Last good checkpoint: {ckpt} (resume with ckpt_path=<file> and a lower optim.lr)."
            if ckpt
            else "Last good checkpoint: none written yet."
        )
        return "\n".join(lines)
