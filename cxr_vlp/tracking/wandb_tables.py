"""The evaluation's W&B tables, built as plain rows first (testable without W&B) and logged by
:func:`log_eval_tables` / :func:`log_reportgen_examples`.

* ``eval/label_auroc``: one row per (task, label) of the label tasks (zero-shot, probes, concept bottleneck):
  test AUROC with its bootstrap CI, and sensitivity / specificity / F1 / accuracy at the threshold fitted on
  validation (docs/design.md §4), read from the suite's flat metric keys ``test/<task>/<metric>/<label>``.
  No images, no report text: logged for every dataset.
* ``eval/retrieval_examples``: image→text retrieval on the full test gallery, one row per example query: the
  query image, its true report, the true report's expected rank, and the top-k reports with their scores.
* ``reportgen/examples``: report generation on the test split: prompt, generated report, reference.

The last two show patient images or report text: for a dataset under credentialed access they are logged only
with ``evaluation.allow_patient_content_upload=true``, the switch that also guards the figures
(:data:`cxr_vlp.eval.run.PATIENT_CONTENT`).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LABEL_COLUMNS",
    "LABEL_TABLE",
    "PATIENT_TABLES",
    "REPORTGEN_TABLE",
    "RETRIEVAL_TABLE",
    "Rows",
    "label_metric_rows",
    "log_eval_tables",
    "log_reportgen_examples",
    "patient_content_allowed",
    "reportgen_example_rows",
    "retrieval_example_rows",
]

log = logging.getLogger(__name__)

LABEL_TABLE = "eval/label_auroc"
RETRIEVAL_TABLE = "eval/retrieval_examples"
REPORTGEN_TABLE = "reportgen/examples"
# tables that show patient images or report text
PATIENT_TABLES = frozenset({RETRIEVAL_TABLE, REPORTGEN_TABLE})
LABEL_COLUMNS = (
    "task",
    "label",
    "n_pos",
    "auroc",
    "ci_low",
    "ci_high",
    "threshold",
    "sensitivity",
    "specificity",
    "f1",
    "accuracy",
)
_AUROC_KEY = re.compile(r"^(?:test|eval)/(?P<task>[^/]+)/auroc/(?P<label>[^/]+)$")
REPORTGEN_COLUMNS = ("study_id", "prompt", "generated", "reference")


@dataclass
class Rows:
    """A table as plain data: column names and one list of cells per row (``None`` for a missing number)."""

    columns: list[str]
    data: list[list[Any]]

    def __len__(self) -> int:
        return len(self.data)


def _cell(value: Any) -> Any:
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return value


def patient_content_allowed(credentialed: bool, allow_upload: bool) -> bool:
    """Whether tables with patient images or report text may go to W&B: the figures' rule (any dataset not under
    credentialed access, or ``evaluation.allow_patient_content_upload=true``)."""
    return not credentialed or bool(allow_upload)


# ---------------------------------------------------------------------------------------------- builders
def label_metric_rows(metrics: Mapping[str, Any]) -> Rows:
    """Per-label rows of every label task found in the flat metrics (``test/<task>/auroc/<label>`` or the
    ``eval/`` keys of a training run), in the order the suite wrote them; metrics a task lacks (the concept
    bottleneck has no CI or thresholds) are ``None``."""
    root = {}
    for key in metrics:
        m = _AUROC_KEY.match(key)
        if m:
            root.setdefault((key.split("/", 1)[0], m["task"], m["label"]), None)
    data = []
    for prefix, task, label in root:

        def value(metric: str) -> Any:
            v = metrics.get(f"{prefix}/{task}/{metric}/{label}")
            return None if v is None else _cell(float(v))

        n_pos = value("n_pos")
        data.append([task, label, None if n_pos is None else int(n_pos), *(value(c) for c in LABEL_COLUMNS[3:])])
    return Rows(list(LABEL_COLUMNS), data)


def retrieval_example_rows(
    study_ids: Sequence[str],
    texts: Sequence[str],
    topk: Any,
    topk_scores: Any,
    true_rank: Any,
    images: Sequence[Any] | None,
    n: int,
    k: int,
) -> Rows:
    """Rows of the first ``n`` test queries of image→text retrieval: ``study_id``, ``image`` (omitted when
    ``images`` is None), ``true_report``, ``true_rank`` (expected 1-based rank, ties split), ``hit@k``, then
    ``report_1, score_1, ..., report_k, score_k`` (gallery order of the scan, best first)."""
    idx = np.asarray(topk)
    scores = np.asarray(topk_scores, dtype=np.float64)
    ranks = np.asarray(true_rank, dtype=np.float64)
    n = min(int(n), idx.shape[0])
    k = min(int(k), idx.shape[1])
    columns = ["study_id", *(["image"] if images is not None else []), "true_report", "true_rank", f"hit@{k}"]
    for j in range(1, k + 1):
        columns += [f"report_{j}", f"score_{j}"]
    data = []
    for r in range(n):
        row: list[Any] = [str(study_ids[r])]
        if images is not None:
            row.append(images[r])
        row += [str(texts[r]), float(ranks[r]), bool(r in idx[r, :k].tolist())]
        for j in range(k):
            row += [str(texts[int(idx[r, j])]), float(scores[r, j])]
        data.append(row)
    return Rows(columns, data)


def reportgen_example_rows(generations_csv: str | Path, n: int) -> Rows:
    """The first ``n`` rows of a report-generation test's ``generations.csv`` (prompt, generated, reference);
    ``ValueError`` naming the file and the missing columns when it is not one."""
    path = Path(generations_csv)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REPORTGEN_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; columns: {reader.fieldnames}")
        data = [[row[c] for c in REPORTGEN_COLUMNS] for _, row in zip(range(int(n)), reader)]
    return Rows(list(REPORTGEN_COLUMNS), data)


def _display_uint8(image: Any) -> np.ndarray:
    """A normalised ``[1, H, W]`` / ``[H, W]`` image tensor as ``[H, W]`` uint8, min-max scaled."""
    arr = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image, dtype=np.float64)
    arr = np.asarray(arr, dtype=np.float64)
    arr = arr[0] if arr.ndim == 3 else arr
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = arr[finite].min(), arr[finite].max()
    arr = np.where(finite, arr, lo)
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.round(255 * scaled).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- logging
def wandb_loggers(loggers: Sequence[Any]) -> list[Any]:
    """The W&B loggers among ``loggers`` (Lightning's WandbLogger or ours)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def _to_table(rows: Rows):
    import wandb

    return wandb.Table(columns=list(rows.columns), data=[list(r) for r in rows.data])


def log_tables(loggers: Sequence[Any], tables: Mapping[str, Rows]) -> None:
    """Log ``{key: rows}`` as ``wandb.Table``s to every W&B logger, at the run's last training step."""
    from cxr_vlp.tracking.logger import WandbRunLogger

    tables = {k: v for k, v in tables.items() if len(v)}
    if not tables:
        return
    for logger in wandb_loggers(loggers):
        payload = {key: _to_table(rows) for key, rows in tables.items()}
        if isinstance(logger, WandbRunLogger):
            logger.log_objects(payload)
        else:
            logger.experiment.log(payload)


def _examples(loggers: Sequence[Any], default: int = 16) -> int:
    return max((int(getattr(lg, "examples", default)) for lg in wandb_loggers(loggers)), default=default)


def log_eval_tables(evaluator: Any) -> list[str]:
    """The evaluation suite's tables (module docstring) to the evaluator's W&B loggers; returns the keys logged.
    ``evaluator``: a :class:`cxr_vlp.eval.run.Evaluator` that has run its tasks."""
    loggers = wandb_loggers(evaluator.loggers)
    if not loggers:
        return []
    tables = {LABEL_TABLE: label_metric_rows(evaluator.result.metrics)}
    allowed = patient_content_allowed(evaluator.credentialed, evaluator.cfg.get("allow_patient_content_upload", False))
    scans = getattr(evaluator, "_scans", None)
    if scans is not None and "i2t" in scans and not allowed:
        log.info(
            "table %s not uploaded: the dataset is under credentialed access (set "
            "evaluation.allow_patient_content_upload=true to override)",
            RETRIEVAL_TABLE,
        )
    elif scans is not None and "i2t" in scans:
        test = evaluator.embeddings("test")
        scan = scans["i2t"]
        n = min(_examples(loggers), len(test))
        import wandb

        images = [
            wandb.Image(_display_uint8(img), caption=str(test.study_ids[r]))
            for r, img in enumerate(evaluator._images("test", list(range(n))))
        ]
        tables[RETRIEVAL_TABLE] = retrieval_example_rows(
            test.study_ids, test.texts, scan.topk, scan.topk_scores, scan.ranks.mid_rank(), images, n, k=5
        )
    log_tables(loggers, tables)
    return [k for k, v in tables.items() if len(v)]


def log_reportgen_examples(
    loggers: Sequence[Any], generations_csv: str | Path, credentialed: bool, allow_upload: bool
) -> list[str]:
    """``reportgen/examples`` from a report-generation test's ``generations.csv``, where the guard allows it."""
    loggers = wandb_loggers(loggers)
    path = Path(generations_csv)
    if not loggers or not path.is_file():
        return []
    if not patient_content_allowed(credentialed, allow_upload):
        log.info(
            "table %s not uploaded: the dataset is under credentialed access (set "
            "evaluation.allow_patient_content_upload=true to override)",
            REPORTGEN_TABLE,
        )
        return []
    rows = reportgen_example_rows(path, _examples(loggers))
    log_tables(loggers, {REPORTGEN_TABLE: rows})
    return [REPORTGEN_TABLE] if len(rows) else []
