"""Checkpoint state that Lightning does not keep itself: the global RNG streams and the metrics file's position.

:class:`ResumeState` adds to every checkpoint

- the torch (CPU and CUDA), numpy and Python ``random`` global generator states at the moment of saving, restored
  just before the first training batch of the resumed fit (not at load time: the sanity check and the creation of
  data loaders in between must not shift them), so dropout and any sampling in the losses continue as in the
  uninterrupted run. Stored as plain lists and tensors, which ``torch.load(weights_only=True)`` accepts. Under DDP
  the rank-0 states are stored and restored on every rank (ranks seeded alike draw alike);
- the logging step and the ``metrics.csv`` of each :class:`~cxr_vlp.lit.csv_logger.ResumableCSVLogger`, so that
  a resumed fit continues that file (in place) or copies its rows up to the checkpoint (a new run directory).

The sampler's epoch and position are the data loader's state (:mod:`cxr_vlp.data.sampling`), the best-checkpoint
record is :class:`cxr_vlp.lit.checkpoint.RunCheckpoint`'s.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from cxr_vlp.lit.csv_logger import ResumableCSVLogger

log = logging.getLogger(__name__)

KEY = "cxr_vlp_resume"


def collect_rng_states() -> dict[str, Any]:
    """The global generators' states, in types that a weights-only ``torch.load`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(Callback):
    """RNG states and the CSV metrics position in checkpoints (see the module docstring)."""

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None
        # between a batch's end and the loop's increment of its logging step (validation runs in between)
        self._step_increment_pending = False

    def next_log_step(self, trainer: L.Trainer) -> int:
        """The logging step of the next training batch (Lightning's ``_batches_that_stepped`` counts a batch after
        its ``on_train_batch_end`` and the end-of-epoch validation)."""
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped) + int(self._step_increment_pending)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._step_increment_pending = not trainer.fit_loop._should_accumulate()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_increment_pending = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, ResumableCSVLogger)]
        for logger in csv_loggers:
            logger.save()
        checkpoint[KEY] = {
            "rng": collect_rng_states(),
            "next_log_step": self.next_log_step(trainer),
            "csv_metrics": [logger.metrics_file for logger in csv_loggers],
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(KEY)
        if trainer.state.fn != TrainerFn.FITTING or not state:
            return  # testing a checkpoint, or one written without this callback
        self._pending_rng = state["rng"]
        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, ResumableCSVLogger)]
        sources = list(state.get("csv_metrics") or [])
        for i, logger in enumerate(csv_loggers):
            logger.resume(sources[i] if i < len(sources) else None, int(state["next_log_step"]))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_increment_pending = False
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None
