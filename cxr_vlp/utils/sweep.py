"""Sweeps that survive a failing job: in a Hydra multirun, a job's exception is written to ``<job>/error.txt``
and the job returns NaN (the basic sweeper moves on; Optuna records the trial as failed), and
:class:`SweepSummary` (a Hydra callback) lists every job's status when the sweep ends."""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
SUMMARY_FILE = "sweep_summary.json"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(output_dir: str | Path, err: BaseException) -> Path:
    """Write the traceback of a failed job next to its outputs; returns the file."""
    path = Path(output_dir) / ERROR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(type(err), err, err.__traceback__)))
    return path


def job_status(job_dir: Path) -> dict[str, Any]:
    """``{"job", "status" (ok | failed | incomplete), "overrides", "error"}`` of one multirun job folder."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = [line[2:].strip() for line in overrides_file.read_text().splitlines() if line.startswith("- ")] \
        if overrides_file.is_file() else []
    error = job_dir / ERROR_FILE
    if error.is_file():
        lines = [ln for ln in error.read_text().splitlines() if ln.strip()]
        return {"job": job_dir.name, "status": "failed", "overrides": overrides, "error": lines[-1] if lines else ""}
    status = "ok" if (job_dir / "metrics.json").is_file() else "incomplete"
    return {"job": job_dir.name, "status": status, "overrides": overrides, "error": None}


def summarise(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Status of every numbered job folder under ``sweep_dir`` (numeric order); writes ``sweep_summary.json``."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    rows = [job_status(p) for p in jobs]
    (sweep_dir / SUMMARY_FILE).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, log one line per job and a count of the failed ones."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = summarise(sweep_dir)
        failed = [r for r in rows if r["status"] != "ok"]
        for r in rows:
            log.info("job %s %-10s %s%s", r["job"], r["status"], " ".join(r["overrides"]),
                     f"  <- {r['error']}" if r["error"] else "")
        message = f"sweep finished: {len(rows)} jobs, {len(failed)} failed or incomplete"
        if failed:
            message += ": jobs " + ", ".join(r["job"] for r in failed) + f" (tracebacks in <job>/{ERROR_FILE})"
        (log.warning if failed else log.info)("%s; summary in %s", message, sweep_dir / SUMMARY_FILE)
        print(message)


def failed_value() -> float:
    """What a failed multirun job returns to the sweeper."""
    return math.nan


def run_group(task_name: str) -> str:
    """W&B group: one per sweep (``<task>-<sweep folder>``), the task name for single runs."""
    if in_multirun():
        return f"{task_name}-{Path(HydraConfig.get().sweep.dir).name}"
    return task_name


def run_name(task_name: str) -> str:
    """W&B run name: ``<task>-<job number>-<overrides>`` in a sweep, ``<task>-<run folder>`` otherwise."""
    if not HydraConfig.initialized():
        return task_name
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        varied = varied_overrides(list(hc.overrides.task), sys.argv[1:])
        return f"{task_name}-{hc.job.num}-{','.join(varied) or hc.job.override_dirname}"[:128]
    return f"{task_name}-{Path(hc.runtime.output_dir).name}"


def varied_overrides(job_overrides: list[str], command_line: list[str]) -> list[str]:
    """The overrides of a sweep job that are swept: those whose key the command line gives a sweep (``a=1,2``,
    ``range(..)``) or does not give at all (a sweeper's own search space, e.g. Optuna). The fixed ones, the same in
    every job, would otherwise fill the 128 characters of a W&B run name before the swept ones. If the command line
    cannot be parsed (e.g. a launcher's worker process), every override counts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        typed = parser.parse_overrides([a for a in command_line if not a.startswith("-")])
        jobs = parser.parse_overrides(job_overrides)
    except Exception:  # noqa: BLE001 - only a naming nicety
        return job_overrides
    fixed = {o.get_key_element() for o in typed if not o.is_sweep_override()}
    return [text for text, o in zip(job_overrides, jobs) if o.get_key_element() not in fixed]


def finish_wandb(loggers: list) -> None:
    """Close the W&B run of this job, so that the next job of a sweep (same process) starts its own run."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
