"""The W&B logger of ``conf/logger/wandb.yaml``: Lightning's :class:`~lightning.pytorch.loggers.WandbLogger` with
summaries that mean something (:mod:`cxr_vlp.tracking.wandb_summary`) and our own model upload
(:mod:`cxr_vlp.tracking.artifacts`) in place of Lightning's raw ``.ckpt`` upload."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from cxr_vlp.tracking.wandb_summary import STEP_METRIC, BestTracker, define_step_axis, metric_goal

__all__ = ["LogModel", "WandbRunLogger", "parse_log_model"]

log = logging.getLogger(__name__)

LogModel = Literal["best", "all"] | None
_SUMMARY_PREFIXES = ("val/",)


def parse_log_model(value: Any) -> LogModel:
    """``logger.wandb.log_model``: ``best`` (the best checkpoint and its exported folder, at the end), ``all`` (also
    every checkpoint as it is saved) or ``false``; ``true`` means ``best``."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("false", "none", "off", "")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "best")):
        return "best"
    if isinstance(value, str) and value.lower() == "all":
        return "all"
    raise ValueError(f"logger.wandb.log_model={value!r}: expected best, all or false")


class WandbRunLogger(WandbLogger):
    """``WandbLogger`` whose run summarises validation metrics by their best, tracks the checkpoint monitor's best
    value with its step and epoch, logs every scalar on the ``trainer/global_step`` axis, and uploads models as
    :mod:`cxr_vlp.tracking.artifacts` does.

    ``best_metric`` / ``best_mode``: the checkpoint monitor (``callbacks.model_checkpoint.monitor`` / ``mode``);
    ``log_model``: see :func:`parse_log_model`; ``credentialed``: the dataset is under credentialed access (model
    upload then also needs ``allow_credentialed_model_upload``); ``examples``: rows of the example tables.
    Other arguments go to ``WandbLogger`` / ``wandb.init``.
    """

    def __init__(
        self,
        *args: Any,
        best_metric: str | None = "val/rsum",
        best_mode: str = "max",
        log_model: Any = False,
        credentialed: bool | None = False,
        allow_credentialed_model_upload: bool = False,
        examples: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, log_model=False, **kwargs)
        self.model_upload: LogModel = parse_log_model(log_model)
        self.credentialed = bool(credentialed)
        self.allow_credentialed_model_upload = bool(allow_credentialed_model_upload)
        if int(examples) < 0:
            raise ValueError(f"logger.wandb.examples={examples}: must be >= 0")
        self.examples = int(examples)
        self.best = BestTracker(best_metric, best_mode) if best_metric else None  # type: ignore[arg-type]
        self._last_step: int | None = None
        self._defined: set[str] = set()
        self._uploaded: dict[str, float] = {}  # checkpoint file -> modification time when uploaded
        self._upload_checked: bool | None = None

    @property
    def experiment(self) -> Any:
        fresh = self._experiment is None
        run = WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        if fresh and self._experiment is not None and hasattr(run, "define_metric"):
            define_step_axis(run)
            if self.best is not None:
                self._define(self.best.metric, self.best.mode)
        return run

    def _define(self, key: str, goal: str | None) -> None:
        self._defined.add(key)
        if goal is None:
            return
        self.experiment.define_metric(key, step_metric=STEP_METRIC, step_sync=True, summary=f"{goal},last")

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            step = self._last_step
        else:  # the furthest step: ThroughputMonitor logs validate/ and test/ timings on counters of their own
            self._last_step = max(int(step), self._last_step or 0)
        for key in metrics:
            if key.startswith(_SUMMARY_PREFIXES) and key not in self._defined:
                goal = self.best.mode if self.best is not None and key == self.best.metric else metric_goal(key)
                self._define(key, goal)
        row = dict(metrics)
        if self.best is not None and self.best.metric in metrics:
            if self.best.update(metrics, step):
                self.experiment.summary.update(self.best.summary())
            row.update(self.best.curve())
        super().log_metrics(row, step)

    @rank_zero_only
    def log_objects(self, payload: Mapping[str, Any]) -> None:
        """Log media / tables at the run's last training step (no step before training: W&B's own)."""
        row = dict(payload)
        if self._last_step is not None:
            row[STEP_METRIC] = self._last_step
        self.experiment.log(row)

    def upload_allowed(self) -> bool:
        """Whether ``log_model`` may upload: on, and for credentialed data also explicitly allowed (one message)."""
        if self.model_upload is None:
            return False
        if self._upload_checked is None:
            self._upload_checked = not self.credentialed or self.allow_credentialed_model_upload
            if self.credentialed and not self.allow_credentialed_model_upload:
                log.warning(
                    "logger.wandb.log_model=%s: models are NOT uploaded, the training data is under credentialed "
                    "access (data.credentialed=true) and trained weights (and the exported folder's config, which "
                    "names the data) may fall under its data use agreement; set "
                    "logger.wandb.allow_credentialed_model_upload=true only where that agreement allows sharing "
                    "them",
                    self.model_upload,
                )
            elif self.credentialed:
                log.warning(
                    "logger.wandb.log_model=%s: uploading models trained on credentialed data "
                    "(logger.wandb.allow_credentialed_model_upload=true)",
                    self.model_upload,
                )
        return self._upload_checked

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self.model_upload == "all" and self.upload_allowed():
            from cxr_vlp.tracking.artifacts import upload_checkpoints

            upload_checkpoints(self, checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Nothing of Lightning's checkpoint upload (ours runs after testing: :mod:`cxr_vlp.tracking.hooks`)."""
