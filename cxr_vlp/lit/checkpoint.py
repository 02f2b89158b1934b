"""ModelCheckpoint that also saves every N training steps and keeps its best-k record across run directories.

Lightning's ModelCheckpoint saves either every N epochs or every N training steps, and when a fit resumes from a
checkpoint of another directory (``ckpt_path=<old run>/checkpoints/last.ckpt`` in a new run) it forgets the best
score, so the next validation becomes "best" whatever its value and a different checkpoint is tested.
:class:`RunCheckpoint` saves on both schedules (``every_n_epochs`` and ``every_n_train_steps``, the latter only
without a monitor: a mid-epoch ``last.ckpt`` for resuming) and, resuming into a new ``dirpath``, copies the
source run's best-k checkpoint files into it (the source run is never modified) and restores the full record
with the copied paths, so a later epoch replaces the best only when it scores better and the tested checkpoint is
the uninterrupted run's. Callback state is only loaded by fits: testing a checkpoint leaves the record alone.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


def _same_dir(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def copy_checkpoint(source: str, dirpath: str) -> str | None:
    """``dirpath/<name of source>`` (copied there on rank 0 unless a file of that name exists), or None when the
    source file is missing."""
    target = os.path.join(dirpath, os.path.basename(source))
    if rank_zero_only.rank == 0 and not os.path.exists(target):
        if not os.path.isfile(source):
            return None
        os.makedirs(dirpath, exist_ok=True)
        tmp = f"{target}.tmp{os.getpid()}"
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
        log.info("resuming in a new run directory: copied the best checkpoint %s to %s", source, target)
    return target


class RunCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` with ``every_n_train_steps`` alongside
    ``every_n_epochs`` and a best-k record that follows a resume into a new directory (see the module docstring)."""

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_interval = int(every_n_train_steps or 0)
        if self.step_interval < 0:
            raise ValueError(f"every_n_train_steps must be >= 0 (0 or null: off), got {every_n_train_steps}")
        if self.step_interval and self.monitor is not None:
            raise ValueError(
                f"every_n_train_steps={self.step_interval} is for the monitor-less last checkpoint; "
                f"the checkpoint that monitors {self.monitor!r} saves after validation"
            )
        self._stage: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._stage = stage

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.step_interval
        if n < 1 or trainer.global_step % n != 0 or self._should_skip_saving_checkpoint(trainer):
            return
        if self._epoch_save_follows(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _epoch_save_follows(self, trainer: L.Trainer) -> bool:
        """The epoch's last batch, in an epoch whose end this callback saves at. The end-of-epoch save comes after
        validation and holds its result (and the best record); a save here would take its step and make the later
        one a no-op, and a resume from it would not run that validation again (Lightning counts the epoch done)."""
        epoch_loop = trainer.fit_loop.epoch_loop
        last_batch = epoch_loop.batch_progress.is_last_batch or epoch_loop._num_ready_batches_reached()
        every = self._every_n_epochs
        return bool(last_batch and every >= 1 and (trainer.current_epoch + 1) % every == 0)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage not in (None, "fit"):
            return
        source_dir = state_dict.get("dirpath")
        if self.dirpath is None or source_dir is None or _same_dir(source_dir, self.dirpath):
            super().load_state_dict(state_dict)
            return
        if self.monitor is None:  # the last checkpoint: nothing to carry over, this run writes its own
            return
        moved: dict[str, str] = {}
        for path in state_dict.get("best_k_models") or {}:
            target = copy_checkpoint(path, self.dirpath)
            if target is None:
                log.warning("best-k checkpoint %s of the source run is missing; it is dropped from the record", path)
            else:
                moved[path] = target
        best = state_dict.get("best_model_path") or ""
        if best and best not in moved:
            log.warning("the source run's best checkpoint %s is missing: best-checkpoint tracking starts afresh", best)
            return
        record = dict(state_dict)
        record.update(
            dirpath=self.dirpath,
            best_k_models={
                moved[p]: score for p, score in (state_dict.get("best_k_models") or {}).items() if p in moved
            },
            best_model_path=moved.get(best, ""),
            kth_best_model_path=moved.get(state_dict.get("kth_best_model_path") or "", ""),
            last_model_path="",
        )
        super().load_state_dict(record)
        log.info(
            "best checkpoint continued from %s: %s (%s=%s)",
            Path(source_dir),
            self.best_model_path,
            self.monitor,
            self.best_model_score,
        )
