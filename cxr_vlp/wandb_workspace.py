"""Build and save the project's W&B workspace: ``python -m cxr_vlp.wandb_workspace project=<name> [group=<group>]``.

Keys: ``project`` (required), ``entity`` (default: your API key's), ``group`` (only that group's runs, e.g. a
sweep's ``<task>-<sweep folder>``), ``name`` (the view's name), ``best_metric`` (default ``val/rsum``), ``swept``
(config keys of the parallel-coordinates axes, comma-separated), ``metrics`` (its summary-metric axes),
``sweep_dir`` (a local multirun folder: its swept parameters), ``save`` (default true; ``save=false`` prints the
panels and sends nothing). Without ``swept`` or ``sweep_dir``, a ``group`` takes the swept parameters from the
group's ``sweep-summary`` run. Panels: :mod:`cxr_vlp.tracking.workspace`.
"""

from __future__ import annotations

import sys
from typing import Any

from cxr_vlp.utils.cli import parse_key_values

TYPES = {
    "project": str,
    "entity": str,
    "group": str,
    "name": str,
    "best_metric": str,
    "swept": list,
    "metrics": list,
    "sweep_dir": str,
    "save": bool,
}
DEFAULTS: dict[str, Any] = {
    "entity": None,
    "group": None,
    "name": None,
    "best_metric": "val/rsum",
    "swept": None,
    "metrics": None,
    "sweep_dir": None,
    "save": True,
}


def swept_from_sweep_dir(sweep_dir: str) -> list[str]:
    """The swept override keys of a local multirun that are config values (not config-group choices)."""
    from cxr_vlp.experiments.collect import collect, swept_columns

    return [k for k in swept_columns(collect(sweep_dir)) if "/" not in k]


def swept_from_api(entity: str | None, project: str, group: str) -> list[str]:
    """The ``swept`` config of the group's ``sweep-summary`` run on W&B (empty when there is none)."""
    import wandb

    from cxr_vlp.tracking.sweep_table import JOB_TYPE

    api = wandb.Api()
    path = f"{entity or api.default_entity}/{project}"
    for run in api.runs(path, filters={"group": group, "jobType": JOB_TYPE}):
        return [k for k in run.config.get("swept", []) if "/" not in k]
    return []


def spec_from_args(args: dict[str, Any]):
    from cxr_vlp.tracking.workspace import DEFAULT_SWEEP_METRICS, WorkspaceSpec

    swept = args["swept"]
    if swept is None and args["sweep_dir"]:
        swept = swept_from_sweep_dir(args["sweep_dir"])
    elif swept is None and args["group"] and args["save"]:
        swept = swept_from_api(args["entity"], args["project"], args["group"])
    best = args["best_metric"]
    metrics = args["metrics"] or [f"{best}.best", *DEFAULT_SWEEP_METRICS[1:]]
    return WorkspaceSpec(
        project=args["project"],
        entity=args["entity"],
        group=args["group"],
        name=args["name"],
        best_metric=best,
        swept=list(swept or []),
        sweep_metrics=list(metrics),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_key_values(
        sys.argv[1:] if argv is None else argv, TYPES, DEFAULTS, required=("project",), doc=__doc__ or ""
    )
    from cxr_vlp.tracking.workspace import build_workspace, panel_list, save_workspace

    try:
        spec = spec_from_args(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    workspace = build_workspace(spec)
    for section, kind, label in panel_list(workspace):
        print(f"{section:<11} {kind:<24} {label}")
    if args["save"]:
        print(f"saved workspace {spec.title!r}: {save_workspace(workspace)}")
    else:
        print(f"workspace {spec.title!r} built (save=false: not sent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
