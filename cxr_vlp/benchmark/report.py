"""The benchmark's outputs: ``benchmark.csv`` (one row per metric and model), ``benchmark.md`` (per task a table
with bootstrap 95 % CIs and each model's paired difference to the first model) and forest plots of the differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from cxr_vlp.benchmark.audit import AuditRow
from cxr_vlp.benchmark.paired import compare, estimate
from cxr_vlp.benchmark.protocols import Result

__all__ = ["Row", "forest_plot", "summarise", "write_csv", "write_markdown"]

Key = tuple[str, str, str, str]


@dataclass
class Row:
    """One metric of one model: its value with CI and, from the second model on, the paired difference to the
    first model (NaN for the first)."""

    protocol: str
    split: str
    task: str
    measure: str
    model: str
    value: float
    ci_low: float
    ci_high: float
    n_rows: int
    delta: float = math.nan
    delta_ci_low: float = math.nan
    delta_ci_high: float = math.nan
    p_value: float = math.nan


def summarise(
    models: Sequence[str],
    results: Mapping[str, Sequence[Result]],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[Row]:
    """Rows for every metric (in the first model's order, then metrics only later models have) and model; the
    differences resample the same rows for both models (:func:`~cxr_vlp.benchmark.paired.compare`)."""
    by_model = {m: {r.key: r for r in results.get(m, ())} for m in models}
    keys: list[Key] = []
    for m in models:
        keys += [k for k in by_model[m] if k not in keys]
    rows = []
    first = models[0]
    for key in keys:
        for m in models:
            res = by_model[m].get(key)
            if res is None:
                continue
            est = estimate(res.data, n_resamples, seed, alpha)
            row = Row(*key, m, est.value, est.ci_low, est.ci_high, est.n_rows)
            base = by_model[first].get(key)
            if m != first and base is not None:
                cmp_ = compare(base.data, res.data, n_resamples, seed, alpha)
                row.delta, row.delta_ci_low, row.delta_ci_high, row.p_value = (
                    cmp_.delta,
                    cmp_.ci_low,
                    cmp_.ci_high,
                    cmp_.p_value,
                )
            rows.append(row)
    return rows


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    path = Path(path)
    pd.DataFrame([asdict(r) for r in rows], columns=list(Row.__dataclass_fields__)).to_csv(path, index=False)
    return path


def _f(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _tables(rows: Sequence[Row], first: str) -> list[str]:
    out: list[str] = []
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.protocol, r.split, r.task), []).append(r)
    current = None
    for (protocol, split, task), items in groups.items():
        if protocol != current:
            out += [f"## {protocol}", ""]
            current = protocol
        out += [
            f"### {task} (split `{split}`, {items[0].n_rows} rows)",
            "",
            f"| metric | model | value | 95 % CI | Δ vs {first} | 95 % CI of Δ | p |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in items:
            ci = f"[{_f(r.ci_low)}, {_f(r.ci_high)}]"
            dci = "–" if not math.isfinite(r.delta) else f"[{_f(r.delta_ci_low, True)}, {_f(r.delta_ci_high, True)}]"
            out.append(
                f"| {r.measure} | {r.model} | {_f(r.value)} | {ci} | {_f(r.delta, True)} | {dci} | {_p(r.p_value)} |"
            )
        out.append("")
    return out


def _audit_table(audit: Sequence[AuditRow]) -> list[str]:
    if not audit:
        return []
    out = [
        "## Prompt and negation audit",
        "",
        "Per label: zero-shot AUROC of the prompt ensemble, of each positive prompt alone (mean, "
        "spread = max − min, worst) and of the negative prompt alone (a model that reads negation scores well "
        "below 0.5 with it).",
        "",
        "| model | label | positives / known | ensemble | mean | spread | worst | worst prompt | negative only |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in audit:
        out.append(
            f"| {a.model} | {a.label} | {a.n_pos} / {a.n_known} | {_f(a.ensemble)} | {_f(a.mean)} | "
            f"{_f(a.spread)} | {_f(a.worst)} | {a.worst_prompt} | {_f(a.negative_only)} |"
        )
    return out + [""]


def write_markdown(
    path: str | Path,
    rows: Sequence[Row],
    models: Sequence[str],
    specs: Sequence[str],
    audit: Sequence[AuditRow],
    notes: Sequence[str],
    figures: Mapping[str, Path],
    n_resamples: int,
    data_name: str,
) -> Path:
    """``benchmark.md``: the models, the notes, per task the table, the forest plots and the prompt audit."""
    path = Path(path)
    lines = [
        "# Benchmark",
        "",
        f"Data: `{data_name}`. Every model is scored on the same studies; CIs are percentile "
        f"bootstrap 95 % intervals over {n_resamples} resamples of the rows, and each Δ resamples the same rows "
        f"for both models (paired), with its two-sided bootstrap p-value.",
        "",
        "| # | model | source |",
        "|---|---|---|",
    ]
    lines += [f"| {i + 1} | {m} | `{s}` |" for i, (m, s) in enumerate(zip(models, specs))]
    lines.append("")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    lines += _tables(rows, models[0])
    if figures:
        lines += ["## Differences to the first model", ""]
        lines += [f"![{name}]({p.relative_to(path.parent)})" for name, p in figures.items()]
        lines.append("")
    lines += _audit_table(audit)
    path.write_text("\n".join(lines))
    return path


def forest_plot(path: str | Path, rows: Sequence[Row], first: str, title: str) -> Path | None:
    """Δ vs the first model with its 95 % CI, one line per metric and marker colour per model (None when only one
    model)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = [r for r in rows if math.isfinite(r.delta)]
    if not items:
        return None
    labels: list[str] = []
    for r in items:
        name = f"{r.task}: {r.measure}"
        if name not in labels:
            labels.append(name)
    models = list(dict.fromkeys(r.model for r in items))
    fig = Figure(figsize=(8.0, 1.2 + 0.3 * len(labels) * max(1, len(models)) ** 0.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    step = 0.7 / max(1, len(models))
    for k, m in enumerate(models):
        mine = [r for r in items if r.model == m]
        y = [len(labels) - 1 - labels.index(f"{r.task}: {r.measure}") + 0.35 - step * (k + 0.5) for r in mine]
        x = [r.delta for r in mine]
        err = [[max(0.0, r.delta - r.delta_ci_low) for r in mine], [max(0.0, r.delta_ci_high - r.delta) for r in mine]]
        ax.errorbar(x, y, xerr=err, fmt="o", ms=4, capsize=2, label=m)
    ax.axvline(0.0, color="0.4", lw=1, ls="--")
    ax.set_yticks(range(len(labels)), labels[::-1], fontsize=8)
    ax.set_xlabel(f"difference to {first} (95 % paired bootstrap CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", facecolor="white")
    return out
