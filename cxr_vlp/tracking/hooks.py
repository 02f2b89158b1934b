"""The three places the rest of the project calls into W&B tracking, each one call that does nothing without a W&B
logger: :func:`after_training` (``cxr_vlp.train``, after testing and the evaluation suite), :func:`after_evaluation`
(``cxr_vlp.eval.run.Evaluator``, once its outputs are written) and :func:`after_sweep`
(``cxr_vlp.utils.sweep.SweepSummary``, when a multirun ends)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["after_evaluation", "after_sweep", "after_training"]

log = logging.getLogger(__name__)


def after_training(cfg: Any, trainer: Any, output_dir: str | Path, metrics: Mapping[str, Any]) -> None:
    """On rank 0 of a finished run: the test / ``eval/`` metrics into each W&B run's summary, the report-generation
    examples table (``<run>/reportgen/generations.csv``, where the patient-content guard allows it) and, with
    ``logger.wandb.log_model``, the best model as artifacts."""
    from cxr_vlp.tracking.logger import WandbRunLogger
    from cxr_vlp.tracking.wandb_summary import final_summary
    from cxr_vlp.tracking.wandb_tables import log_reportgen_examples, wandb_loggers

    loggers = wandb_loggers(getattr(trainer, "loggers", []))
    if not loggers or not trainer.is_global_zero:
        return
    summary = final_summary(metrics)
    for logger in loggers:
        logger.experiment.summary.update(summary)
    data = cfg.get("data") or {}
    evaluation = cfg.get("evaluation") or {}
    log_reportgen_examples(
        loggers,
        Path(output_dir) / "reportgen" / "generations.csv",
        credentialed=bool(data.get("credentialed", False)),
        allow_upload=bool(evaluation.get("allow_patient_content_upload", False)),
    )
    callback = _monitored_checkpoint(trainer)
    for logger in loggers:
        if not isinstance(logger, WandbRunLogger) or not logger.upload_allowed():
            continue
        if callback is None or not callback.best_model_path:
            log.warning(
                "logger.wandb.log_model=%s: no best checkpoint (no validation?); nothing uploaded", logger.model_upload
            )
            continue
        from cxr_vlp.tracking.artifacts import log_best_model, upload_checkpoints

        if logger.model_upload == "all":
            for cb in trainer.checkpoint_callbacks:
                upload_checkpoints(logger, cb)
        log_best_model(logger, callback, callback.best_model_path)


def _monitored_checkpoint(trainer: Any) -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)


def after_evaluation(evaluator: Any) -> None:
    """The evaluation suite's tables (:func:`cxr_vlp.tracking.wandb_tables.log_eval_tables`); a failure is reported,
    never raised (the suite's files are already written)."""
    from cxr_vlp.tracking.wandb_tables import log_eval_tables

    try:
        log_eval_tables(evaluator)
    except Exception as err:  # noqa: BLE001 - tables must never lose the evaluation
        log.warning("W&B tables of the evaluation were not logged: %s", err, exc_info=True)


def after_sweep(config: Any, sweep_dir: str | Path) -> None:
    """The sweep's comparison table as a ``sweep-summary`` run in the sweep's W&B group
    (:func:`cxr_vlp.tracking.sweep_table.log_sweep_summary`)."""
    from cxr_vlp.tracking.sweep_table import log_sweep_summary

    log_sweep_summary(config, sweep_dir)
