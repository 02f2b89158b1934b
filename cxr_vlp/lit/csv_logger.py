"""A CSVLogger whose ``metrics.csv`` continues across a resume: every step once, in place or in a new run directory.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts and buffers rows in memory between
flushes, so a killed run loses its unflushed rows and a run resumed in place (``ckpt_path=auto``) loses all
earlier ones. :class:`ResumableCSVLogger` flushes on every ``log_metrics`` call (``flush_logs_every_n_steps=1``),
leaves the file alone until it writes its first row, and :meth:`ResumableCSVLogger.resume` (called by
:class:`cxr_vlp.lit.resume.ResumeState` when a fit restores a checkpoint) rewrites its file with the source run's
rows before the checkpoint's next logging step: rows the interrupted run wrote after the checkpoint are logged again
by the resumed run, so they are dropped rather than duplicated. Later rows are appended under the same header.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


def read_metric_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a Lightning ``metrics.csv``; a row without a readable ``step`` raises, naming file and row."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if rows and "step" not in header:
        raise ValueError(f"{path}: no 'step' column in the header {header}")
    for number, row in enumerate(rows, start=2):
        try:
            row_step(row)
        except ValueError as err:
            raise ValueError(f"{path}, row {number}: unreadable step {row.get('step')!r}") from err
    return header, rows


def row_step(row: dict[str, Any]) -> int:
    return int(float(row["step"]))


class _ResumableWriter(ExperimentWriter):
    """Leaves an existing file in place until the first row (a fresh run then replaces it, a resumed one has
    been seeded by :meth:`seed` and appends)."""

    def __init__(self, log_dir: str) -> None:
        self._claimed = False
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here; see save()
        return

    def save(self) -> None:
        if self.metrics and not self._claimed:
            if self._fs.isfile(self.metrics_file_path):
                self._fs.rm_file(self.metrics_file_path)
            self._claimed = True
        super().save()

    def seed(self, header: list[str], rows: list[dict[str, str]]) -> None:
        """Make the file hold exactly ``rows`` under ``header`` (written to a temporary file, then renamed)."""
        os.makedirs(self.log_dir, exist_ok=True)
        tmp = f"{self.metrics_file_path}.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)
        self.metrics_keys = sorted(header)
        self._claimed = True


class ResumableCSVLogger(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` that flushes every row and can continue a source run's file."""

    def __init__(self, *args: Any, flush_logs_every_n_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumableWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)

    @rank_zero_only
    def resume(self, source: str | Path | None, next_step: int) -> None:
        """Continue after a checkpoint whose next training batch logs at ``next_step``: this logger's file becomes
        the rows of ``source`` (the interrupted run's metrics.csv, possibly this same file) before that step."""
        writer = self.experiment
        writer.save()  # nothing is pending before a fit starts; flush in case
        if source is None or not Path(source).is_file():
            log.warning(
                "resuming without the earlier metrics rows: %s is not a file; %s starts at step %d",
                source,
                self.metrics_file,
                next_step,
            )
            return
        header, rows = read_metric_rows(source)
        kept = [row for row in rows if row_step(row) < next_step]
        writer.seed(header, kept)
        log.info(
            "metrics: %d rows before step %d from %s (%d later rows dropped: the resumed run logs them again)",
            len(kept),
            next_step,
            source,
            len(rows) - len(kept),
        )
