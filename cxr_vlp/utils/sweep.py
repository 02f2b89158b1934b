"""Sweeps that survive a failing job and stop when asked: in a Hydra multirun, a job's exception is written to
``<job>/error.txt`` (:func:`job_failed`) and the job returns NaN, so the basic sweeper moves on; under Optuna the
exception is raised on, so that the sweeper records the trial as failed. :class:`SweepSummary` (a Hydra callback)
lists every job's status when the sweep ends and makes the command exit non-zero when a job failed. One SIGINT
(Ctrl-C) or SIGTERM stops the whole sweep: the current job is recorded as stopped, no further job starts, and the
process exits with 128 + the signal number. The handlers are installed in the process that runs the sweep only;
jobs that a launcher runs elsewhere (submitit / SLURM) keep the launcher's own signal handling (requeue on
preemption)."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cxr_vlp.tracking import hooks as tracking

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
SUMMARY_FILE = "sweep_summary.json"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# sweepers that record a failed job themselves when the job raises (a NaN return would break Optuna's tell())
_SWEEPERS_RECORDING_FAILURES = ("hydra_plugins.hydra_optuna_sweeper",)


class SweepFailed(SystemExit):
    """Raised when a multirun ends with failed or incomplete jobs: Python prints the message and exits with 1 (a
    ``SystemExit``, since Hydra turns a callback's exceptions into warnings)."""


class SweepStopped(KeyboardInterrupt):
    """Raised in the sweep's process by the SIGINT / SIGTERM handler of :func:`install_stop_handlers`."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"sweep stopped by {signal.Signals(signum).name}")
        self.signum = signum


_stop_signal: int | None = None


def stop_requested() -> int | None:
    """The signal that asked the running sweep to stop, or None."""
    return _stop_signal


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    global _stop_signal
    first = _stop_signal is None
    _stop_signal = signum
    if first:  # later signals (a second Ctrl-C) land while the job winds down: nothing more to do
        raise SweepStopped(signum)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM stop the sweep: the handler raises :class:`SweepStopped` in the running job (Lightning's
    own SIGTERM handler, installed during fit, calls this one too) and :func:`job_failed` ends the sweep."""
    global _stop_signal
    _stop_signal = None
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)


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
    overrides = (
        [line[2:].strip() for line in overrides_file.read_text().splitlines() if line.startswith("- ")]
        if overrides_file.is_file()
        else []
    )
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


def report(sweep_dir: Path, verb: str = "finished") -> tuple[str, list[dict[str, Any]]]:
    """Log one line per job, print and return ``sweep <verb>: N jobs, k failed or incomplete[: jobs ...]``."""
    rows = summarise(sweep_dir)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in rows:
        log.info(
            "job %s %-10s %s%s",
            r["job"],
            r["status"],
            " ".join(r["overrides"]),
            f"  <- {r['error']}" if r["error"] else "",
        )
    message = f"sweep {verb}: {len(rows)} jobs, {len(failed)} failed or incomplete"
    if failed:
        message += ": jobs " + ", ".join(r["job"] for r in failed) + f" (tracebacks in <job>/{ERROR_FILE})"
    (log.warning if failed else log.info)("%s; summary in %s", message, sweep_dir / SUMMARY_FILE)
    print(message, flush=True)
    return message, failed


class SweepSummary(Callback):
    """Hydra callback: SIGINT / SIGTERM stop the sweep (:func:`install_stop_handlers`); at the end of a multirun, one
    line per job and a count of the failed ones, and :class:`SweepFailed` (exit status 1) if there are any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_stop_handlers()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        message, failed = report(sweep_dir)
        tracking.after_sweep(config, sweep_dir)  # the comparison table as a run in the sweep's W&B group
        if failed:
            raise SweepFailed(message)


def failed_value() -> float:
    """What a failed multirun job returns to the sweeper."""
    return math.nan


def _sweeper_records_failures() -> bool:
    target = str(HydraConfig.get().sweeper.get("_target_", ""))
    return target.startswith(_SWEEPERS_RECORDING_FAILURES)


def job_failed(output_dir: str | Path, err: BaseException) -> float:
    """What a job does with the exception ``err`` of its task (call it from the ``except`` block): outside a
    multirun, raise it. In a sweep, a stop request (SIGINT / SIGTERM, also when it surfaces as another exception
    such as a data-loader worker's death or Lightning's exit) records the job as stopped, writes the summary and
    exits with 128 + the signal number; an ordinary exception is recorded in ``<job>/error.txt`` and the job returns
    NaN (the sweep goes on), or, under a sweeper that records failures itself (Optuna), raises it on. Any other
    ``BaseException`` (e.g. a launcher's exit on preemption) is raised on untouched."""
    if not in_multirun():
        raise err
    signum = stop_requested()
    if signum is not None:
        _stop_sweep(output_dir, err, signum)
    if not isinstance(err, Exception):
        raise err
    path = record_failure(output_dir, err)
    if _sweeper_records_failures():
        log.error("job failed (traceback in %s); the sweeper records the trial as failed", path)
        raise err
    log.error("job failed; the sweep goes on (traceback in %s)", path, exc_info=err)
    return failed_value()


def _stop_sweep(output_dir: str | Path, err: BaseException, signum: int) -> NoReturn:
    name = signal.Signals(signum).name
    path = Path(output_dir) / ERROR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"SweepStopped: stopped by {name} ({type(err).__name__}: {err})\n")
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    if sweep_dir.is_dir():
        report(sweep_dir, verb=f"stopped by {name}")
    raise SystemExit(128 + signum) from err


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
