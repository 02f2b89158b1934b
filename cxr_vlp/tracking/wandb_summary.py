"""What a run's W&B summary holds (docs/design.md §4 for the metrics themselves).

* Every curve is plotted against one step axis, ``trainer/global_step`` (:data:`STEP_METRIC`); scalars logged
  without a step (the evaluation suite's) get the last training step.
* A validation metric with a known direction (:func:`metric_goal`) summarises by its best and its last value
  (``{"max": ..., "last": ...}`` for ``val/rsum``); the metric that picks the best checkpoint (the checkpoint
  monitor, ``val/rsum`` for contrastive pretraining) also gets plain keys ``<metric>.best``,
  ``<metric>.best_step`` and ``<metric>.best_epoch`` and a running-best curve ``<metric>_best``.
* Test and ``eval/`` metrics sit in the summary with their final values (:func:`final_summary`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["STEP_METRIC", "BestTracker", "define_step_axis", "final_summary", "metric_goal"]

STEP_METRIC = "trainer/global_step"
Mode = Literal["max", "min"]

# lower is better: losses, rank statistics, the share of tied matches, calibration / risk areas
_LOWER = re.compile(r"(^|/)(loss\w*|MedR|MeanR|tied_match_share|aurc|ece|skipped_steps)$")
# higher is better: recalls, precisions, ranking gains, R-sum, AUROC, F1, text-overlap scores
_HIGHER = re.compile(
    r"(^|/)(rsum|R@\d+|P@\d+|nDCG@\d+|auroc\w*|f1\w*|micro_f1|macro_f1|accuracy\w*|bleu\w*|"
    r"rouge\w*|meteor|cider|sensitivity\w*|specificity\w*)$"
)
_FINAL_PREFIXES = ("test/", "eval/")


def metric_goal(name: str) -> Mode | None:
    """``"max"`` / ``"min"`` when a metric's name says which way is better, else None."""
    if _LOWER.search(name):
        return "min"
    if _HIGHER.search(name):
        return "max"
    return None


def define_step_axis(run: Any) -> None:
    """``trainer/global_step`` as the x axis of every metric of ``run`` (what Lightning's logger also sets)."""
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)


@dataclass
class BestTracker:
    """The best value of ``metric`` seen so far (``mode`` max or min; the first of equal values is kept, as
    Lightning's ModelCheckpoint keeps the first of equal scores), with the step and epoch it was logged at."""

    metric: str
    mode: Mode = "max"
    value: float | None = None
    step: int | None = None
    epoch: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"best mode for {self.metric!r} must be 'max' or 'min', got {self.mode!r}")

    @property
    def keys(self) -> tuple[str, str, str, str]:
        """``(<metric>.best, <metric>.best_step, <metric>.best_epoch, <metric>_best)``."""
        return (f"{self.metric}.best", f"{self.metric}.best_step", f"{self.metric}.best_epoch", f"{self.metric}_best")

    def update(self, metrics: Mapping[str, Any], step: int | None) -> bool:
        """Take the metric from one logged row; True when it is a new best."""
        raw = metrics.get(self.metric)
        if raw is None:
            return False
        value = float(raw)
        if not math.isfinite(value):
            return False
        better = self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        if better:
            epoch = metrics.get("epoch")
            self.value, self.step = value, None if step is None else int(step)
            self.epoch = None if epoch is None else int(epoch)
        return better

    def summary(self) -> dict[str, Any]:
        """The plain summary keys (empty before the first value)."""
        if self.value is None:
            return {}
        best, step, epoch, _ = self.keys
        return {best: self.value, step: self.step, epoch: self.epoch}

    def curve(self) -> dict[str, float]:
        """The running-best history value (empty before the first value)."""
        return {} if self.value is None else {self.keys[3]: self.value}


def final_summary(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite test / ``eval/`` metrics and ``best_model_score`` of a finished run, for ``run.summary``."""
    out = {}
    for key, value in metrics.items():
        if not (key.startswith(_FINAL_PREFIXES) or key == "best_model_score"):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            continue
        out[key] = float(value)
    return out
