"""A saved W&B workspace for a project (or one sweep's group), built in code with ``wandb_workspaces``.

Sections and panels (every curve on the ``trainer/global_step`` axis):

* **Training**: loss and its components, temperature / logit scale, learning rate, throughput.
* **Validation**: the checkpoint monitor (``val/rsum``) with its running best (``val/rsum_best``) and scalar charts
  of its best value and the step it was reached at; the retrieval recalls.
* **Evaluation**: the per-label AUROC table (``eval/label_auroc``) and the retrieval examples
  (``eval/retrieval_examples``).
* **Sweep**: a parallel-coordinates plot over the runs (swept parameters → metrics) and the sweep's comparison table
  (``sweep/results`` of the ``sweep-summary`` run).

:func:`build_workspace` only builds the object; :func:`save_workspace` uploads it (``Workspace.save``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cxr_vlp.tracking.sweep_table import SWEEP_TABLE
from cxr_vlp.tracking.wandb_summary import STEP_METRIC
from cxr_vlp.tracking.wandb_tables import LABEL_TABLE, RETRIEVAL_TABLE

__all__ = ["DEFAULT_SWEEP_METRICS", "WorkspaceSpec", "build_workspace", "panel_list", "save_workspace"]

LOSS_COMPONENTS = r"^(train|val)/(loss|contrastive|clip|semantic|sem_i\d+_t\d+|i2i|t2t|concept|match|pseudo|kl)$"
TEMPERATURE = ["train/temperature", "train/logit_scale", "train/concept_temperature", "train/concept_logit_scale"]
LEARNING_RATE = r"^lr-.*"
THROUGHPUT = ["train/device/samples_per_sec", "train/samples_per_sec", "train/device/batches_per_sec"]
RECALLS = ["val/i2t/R@1", "val/i2t/R@5", "val/i2t/R@10", "val/t2i/R@1", "val/t2i/R@5", "val/t2i/R@10"]
DEFAULT_SWEEP_METRICS = [
    "val/rsum.best",
    "test/i2t/R@10",
    "test/t2i/R@10",
    "eval/zeroshot/auroc_mean",
    "eval/probe_mlp/auroc_mean",
]


@dataclass
class WorkspaceSpec:
    """What the workspace shows: ``project`` (and ``entity``, None = the API key's default), ``group`` (only that
    group's runs, e.g. one sweep), ``best_metric`` (the checkpoint monitor), ``swept`` (config keys of the
    parallel-coordinates axes) and ``sweep_metrics`` (summary keys of its metric axes)."""

    project: str
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    best_metric: str = "val/rsum"
    swept: list[str] = field(default_factory=list)
    sweep_metrics: list[str] = field(default_factory=lambda: list(DEFAULT_SWEEP_METRICS))

    def __post_init__(self) -> None:
        if not self.project:
            raise ValueError("project=... is required (the W&B project of the runs)")
        bad = [k for k in self.swept if "/" in k]
        if bad:
            raise ValueError(
                f"swept={bad}: config-group choices (a/b=c) are not config values; give the keys "
                "they set (e.g. model.image_encoder.name)"
            )

    @property
    def title(self) -> str:
        return self.name or f"cxr_vlp: {self.group or self.project}"


def _line(title: str, y: Sequence[str] = (), regex: str | None = None, **kw: Any):
    import wandb_workspaces.reports.v2 as wr

    return wr.LinePlot(title=title, x=STEP_METRIC, y=list(y), metric_regex=regex, **kw)


def _sections(spec: WorkspaceSpec) -> list[Any]:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    best = spec.best_metric
    training = ws.Section(
        name="Training",
        is_open=True,
        panels=[
            _line("Loss and its components", regex=LOSS_COMPONENTS),
            _line("Temperature / logit scale", TEMPERATURE),
            _line("Learning rate", regex=LEARNING_RATE),
            _line("Throughput (studies/s)", THROUGHPUT),
        ],
    )
    validation = ws.Section(
        name="Validation",
        is_open=True,
        panels=[
            _line(f"{best} and its best so far", [best, f"{best}_best"]),
            wr.ScalarChart(title=f"best {best}", metric=wr.SummaryMetric(f"{best}.best")),
            wr.ScalarChart(title=f"step of the best {best}", metric=wr.SummaryMetric(f"{best}.best_step")),
            _line("Validation recalls", RECALLS),
        ],
    )
    evaluation = ws.Section(
        name="Evaluation",
        is_open=True,
        panels=[
            wr.WeavePanelSummaryTable(table_name=LABEL_TABLE, layout=wr.Layout(w=24, h=12)),
            wr.WeavePanelSummaryTable(table_name=RETRIEVAL_TABLE, layout=wr.Layout(w=24, h=14)),
        ],
    )
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in spec.swept]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in spec.sweep_metrics]
    sweep = ws.Section(
        name="Sweep",
        is_open=bool(spec.swept),
        panels=[
            wr.ParallelCoordinatesPlot(
                title="Sweep: parameters → metrics", columns=columns, layout=wr.Layout(w=24, h=10)
            ),
            wr.WeavePanelSummaryTable(table_name=SWEEP_TABLE, layout=wr.Layout(w=24, h=12)),
        ],
    )
    return [training, validation, evaluation, sweep]


def build_workspace(spec: WorkspaceSpec) -> Any:
    """The ``wandb_workspaces.workspaces.Workspace`` of ``spec`` (nothing is sent)."""
    import wandb_workspaces.workspaces as ws

    filters = ws.And(ws.Metric("Group") == spec.group) if spec.group else ""
    pinned = [
        f"summary:{spec.best_metric}.best",
        f"summary:{spec.best_metric}.best_step",
        *(f"config:{k}" for k in spec.swept),
    ]
    return ws.Workspace(
        entity=spec.entity or "",
        project=spec.project,
        name=spec.title,
        sections=_sections(spec),
        settings=ws.WorkspaceSettings(x_axis=STEP_METRIC, max_runs=50),
        runset_settings=ws.RunsetSettings(filters=filters, pinned_columns=pinned),
    )


def panel_list(workspace: Any) -> list[tuple[str, str, str]]:
    """``(section, panel type, title or table)`` of every panel, in order."""
    out = []
    for section in workspace.sections:
        for panel in section.panels:
            label = getattr(panel, "title", None) or getattr(panel, "table_name", None) or ""
            out.append((section.name, type(panel).__name__, str(label)))
    return out


def save_workspace(workspace: Any) -> str:
    """Upload the workspace as a saved view; returns its URL."""
    if not workspace.entity:
        import wandb

        workspace.entity = wandb.Api().default_entity
    workspace.save()
    return workspace.url
