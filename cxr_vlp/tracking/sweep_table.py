"""A sweep's comparison table as a W&B run of its own (job type ``sweep-summary``) in the sweep's group.

At the end of a multirun (local or SLURM: Hydra calls back in the launching process once every job is done), the
table of :func:`cxr_vlp.experiments.collect.collect` (one row per job: its swept overrides, ``status`` ok / failed
with the error, its W&B run id, and the metrics) is logged as ``sweep/results``. The run's config names the
swept parameters and the metrics, which ``python -m cxr_vlp.wandb_workspace`` turns into a
parallel-coordinates panel over the group's job runs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_vlp.tracking.offline import find_runs
from cxr_vlp.tracking.wandb_tables import Rows

__all__ = ["JOB_TYPE", "SWEEP_TABLE", "log_sweep_summary", "sweep_group", "sweep_rows", "table_metrics", "wandb_node"]

log = logging.getLogger(__name__)

JOB_TYPE = "sweep-summary"
SWEEP_TABLE = "sweep/results"
_RUN_ID = re.compile(r"run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


def wandb_node(config: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """``(name, node)`` of the W&B logger in a composed config's ``logger`` group, if there is one."""
    for name, node in (config.get("logger") or {}).items():
        target = str((node or {}).get("_target_", "")) if hasattr(node, "get") else ""
        if target.endswith(("WandbLogger", "WandbRunLogger")):
            return str(name), node
    return None


def table_metrics(columns: Sequence[str], label_names: Sequence[str], optimized: str | None = None) -> list[str]:
    """The metric columns worth a sweep table: every metric but the per-label ones (``.../<label>``), the
    optimized metric first."""
    labels = set(label_names)
    keep = [c for c in columns if c.rsplit("/", 1)[-1] not in labels]
    if optimized and optimized in keep:
        keep.remove(optimized)
        keep.insert(0, optimized)
    return keep


def job_run_id(job_dir: Path) -> str | None:
    """The W&B run id of a sweep job (its ``wandb/*run-<time>-<id>`` folder), if it logged to W&B."""
    runs = find_runs(job_dir) if (job_dir / "wandb").is_dir() else []
    m = _RUN_ID.search(runs[-1].name) if runs else None
    return m["id"] if m else None


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


def sweep_rows(sweep_dir: str | Path, optimized: str | None = None) -> tuple[Rows, dict[str, Any]]:
    """The sweep's table (``job``, ``status``, ``run_id``, swept parameters, ``error``, metrics) and its description
    (``swept``, ``metrics``, ``fixed``, ``jobs``, ``failed``, ``best_job``)."""
    from cxr_vlp.experiments.collect import collect, metric_columns, swept_columns
    from cxr_vlp.text.labels import CHEXPERT_LABELS

    sweep_dir = Path(sweep_dir)
    df = collect(sweep_dir)
    swept = swept_columns(df)
    metrics = table_metrics(metric_columns(df), CHEXPERT_LABELS, optimized)
    columns = ["job", "status", "run_id", *swept, "error", *metrics]
    data = []
    for _, rec in df.iterrows():
        job = int(rec["job"])
        data.append(
            [
                job,
                str(rec["status"]),
                job_run_id(sweep_dir / str(job)),
                *(_cell(rec[c]) for c in swept),
                None if rec["error"] is None or (isinstance(rec["error"], float)) else str(rec["error"]),
                *(_cell(rec[m]) for m in metrics),
            ]
        )
    ok = df[df["status"] == "ok"]
    best_job = None
    if optimized and optimized in df.columns and ok[optimized].notna().any():
        best_job = int(ok.loc[ok[optimized].idxmax(), "job"])
    info = {
        "sweep_dir": str(sweep_dir),
        "swept": swept,
        "metrics": metrics,
        "optimized_metric": optimized,
        "fixed": sorted({str(f) for f in df["fixed"].dropna() if str(f)}),
        "jobs": len(df),
        "failed": [int(j) for j in df.loc[df["status"] == "failed", "job"]],
        "best_job": best_job,
    }
    return Rows(columns, data), info


def _resolved(config: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(config, key, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - a resolver that needs a job's runtime: fall back to the default
        return None


def log_sweep_summary(config: Any, sweep_dir: str | Path) -> str | None:
    """At the end of a multirun whose config logs to W&B: the sweep's run (module docstring); returns its id.
    Never raises: the sweep's own summary must not be lost to a tracking failure."""
    found = wandb_node(config)
    sweep_dir = Path(sweep_dir)
    if found is None or not sweep_dir.is_dir():
        return None
    name, node = found
    try:
        return _log(config, f"logger.{name}", node, sweep_dir)
    except Exception as err:  # noqa: BLE001
        log.warning("the sweep's W&B summary run was not logged: %s", err, exc_info=True)
        return None


def sweep_group(config: Any, path: str, sweep_dir: Path) -> str:
    """The W&B group of the sweep's jobs: the default ``${cxr_vlp.run_group:...}`` gives ``<task>-<sweep folder>``
    (:func:`cxr_vlp.utils.sweep.run_group` inside a job; Hydra's job runtime is gone when the sweep ends), any
    other value of ``logger.<name>.group`` is used as it resolves."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.select(config, path), resolve=False).get("group")
    if raw is None or "cxr_vlp.run_group" in str(raw):
        return f"{config.get('task_name') or 'train'}-{sweep_dir.name}"
    return str(_resolved(config, f"{path}.group") or raw)


def _log(config: Any, path: str, node: Mapping[str, Any], sweep_dir: Path) -> str:
    import wandb

    group = sweep_group(config, path, sweep_dir)
    rows, info = sweep_rows(sweep_dir, config.get("optimized_metric"))
    offline = bool(_resolved(config, f"{path}.offline"))
    settings = wandb.Settings(console="off")
    run = wandb.init(
        project=_resolved(config, f"{path}.project") or "cxr_vlp",
        entity=_resolved(config, f"{path}.entity"),
        group=str(group),
        job_type=JOB_TYPE,
        name=f"{group}-summary"[:128],
        dir=str(sweep_dir),
        config=info,
        tags=["sweep-summary"],
        mode="offline" if offline else None,
        settings=settings,
        reinit="create_new",
    )
    try:
        run.log({SWEEP_TABLE: wandb.Table(columns=rows.columns, data=rows.data)})
        run.summary.update({"jobs": info["jobs"], "failed_jobs": len(info["failed"]), "best_job": info["best_job"]})
        log.info("sweep table (%d jobs) logged to W&B group %s as run %s", len(rows), group, run.id)
        return run.id
    finally:
        run.finish()
