"""Aggregate a Hydra multirun (sweep) into one table, a Markdown report and plots.

Usage::

    python -m cxr_vlp.experiments.collect <multirun dir> [metrics=test/i2t/R@10,eval/i2t/P@5]
        [x=loss.lam] [hue=loss.concept_temperature] [out=<dir>] [digits=3]

A multirun directory (``logs/<task>/multiruns/<time>/``) holds one numbered folder per job (``0/``, ``1/``,
... sorted numerically), each with ``.hydra/overrides.yaml`` (the job's overrides) and, when the job
finished, ``metrics.json`` (flat ``{"test/i2t/R@1": 0.02, ...}``, ``null`` for NaN).

Decisions:

* One row per job folder, always: a job without a readable ``metrics.json``, or with an ``error.txt``
  (written by :func:`cxr_vlp.utils.sweep.record_failure`), has status ``"failed"``; its ``error`` is the last
  ``...Error: ...`` / ``...Exception: ...`` line of ``error.txt`` or else of its log (``train.log``, any
  ``*.log``), or else a short reason (``"no metrics.json"``). Metrics that a failed job did write are kept.
* Overrides: ``+key=v`` / ``++key=v`` / ``~key`` count under ``key``. A key whose value differs between jobs
  (or that some jobs lack) becomes a *swept* column named by the key; its values are numbers when every
  value looks numeric (``null`` gives NaN), strings otherwise (``model/image_encoder=resnet50`` stays
  ``"resnet50"``). Overrides that are the same in every job are kept verbatim, space-separated, in a
  single string column ``fixed`` (not shown in the Markdown table).
* Column order: ``job``, ``status``, swept columns (in order of first appearance), ``fixed``, ``error``,
  metric columns. :func:`swept_columns` / :func:`metric_columns` recover the groups, also from a CSV.
* Metrics whose key contains ``/R@`` or ``/P@`` are fractions in ``[0, 1]`` and are shown in percent
  with one decimal in the Markdown table and in plots.
* The CLI writes ``results.csv`` (all metrics), ``results.md`` (the chosen metrics) and, when ``x`` is
  given, one plot per chosen metric. Without ``metrics=``, the chosen metrics are the headline ones
  (:func:`headline_metrics`). It exits 0 when jobs failed (the report lists them) and 2 on usage errors.
"""

from __future__ import annotations

import json
import math
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "collect",
    "format_value",
    "headline_metrics",
    "is_fraction_metric",
    "job_dirs",
    "main",
    "metric_columns",
    "plot_filename",
    "plot_metric",
    "swept_columns",
    "to_markdown",
]

META_BEFORE = ("job", "status")
META_AFTER = ("fixed", "error")
ERROR_FILE = "error.txt"
METRICS_FILE = "metrics.json"
CLI_KEYS = ("metrics", "x", "hue", "out", "digits")
MISSING = "–"
FAILED_MARK = "**FAILED**"

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INT = re.compile(r"^[+-]?\d+$")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)\b(?::.*)?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HEADLINE = re.compile(r"^test/(i2t|t2i)/R@(1|5|10)$")


# --------------------------------------------------------------------------------------------- reading


def job_dirs(multirun_dir: str | Path) -> list[Path]:
    """The numbered job folders of a multirun, in numeric order (``10`` after ``9``).

    Raises ``FileNotFoundError`` (naming the path) when the directory does not exist or has no job folder,
    ``NotADirectoryError`` when it is a file.
    """
    root = Path(multirun_dir)
    if not root.exists():
        raise FileNotFoundError(f"multirun directory does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    jobs = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not jobs:
        raise FileNotFoundError(f"no job folders (0/, 1/, ...) in {root}{_hint(root)}")
    return jobs


def _hint(root: Path) -> str:
    """A hint for a directory without job folders: a single run, or the parent of several sweeps."""
    if (root / METRICS_FILE).is_file():
        return " (it looks like a single run, not a multirun)"
    sweeps = sorted(p.name for p in root.iterdir() if p.is_dir() and any(c.name.isdigit() for c in p.iterdir()))
    return f" (sweeps below it: {', '.join(sweeps[-3:])})" if sweeps else ""


def read_overrides(job_dir: Path) -> list[str]:
    """The job's override strings from ``.hydra/overrides.yaml`` (empty when absent or unreadable)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


def split_override(override: str) -> tuple[str, str]:
    """``"+loss.lam=0.5"`` -> ``("loss.lam", "0.5")``; a deletion ``"~key"`` gives ``("key", "~")``."""
    text = override.strip()
    deleted = text.startswith("~")
    key, sep, value = text.lstrip("+~").partition("=")
    if deleted and not sep:
        value = "~"
    return key.strip(), _unquote(value.strip())


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_metrics(job_dir: Path) -> tuple[dict[str, float] | None, str | None]:
    """``(metrics, None)`` from ``metrics.json`` (``null`` and non-numbers -> NaN), or ``(None, reason)``."""
    path = job_dir / METRICS_FILE
    if not path.is_file():
        return None, f"no {METRICS_FILE}"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable {METRICS_FILE}: {err}"
    if not isinstance(data, dict):
        return None, f"unreadable {METRICS_FILE}: not a JSON object"
    return {str(k): _to_float(v) for k, v in data.items()}, None


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def last_error_line(text: str, log_errors: bool = False) -> str | None:
    """The last ``SomeError: message`` / ``pkg.SomeException`` line of a traceback or log, if any.

    With ``log_errors``, a logging line with ``[ERROR]`` counts too when no exception line is found.
    """
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    if log_errors:
        for line in reversed(lines):
            if "[ERROR]" in line:
                return line.strip()
    return None


def job_error(job_dir: Path) -> tuple[bool, str | None]:
    """``(has_error_file, message)`` from ``error.txt`` or the job's log files."""
    error_file = job_dir / ERROR_FILE
    if error_file.is_file():
        text = error_file.read_text(errors="replace")
        nonblank = [line.strip() for line in text.splitlines() if line.strip()]
        return True, last_error_line(text) or (nonblank[-1] if nonblank else None)
    logs = [job_dir / "train.log"] + sorted(p for p in job_dir.glob("*.log") if p.name != "train.log")
    for log in logs:
        if log.is_file():
            message = last_error_line(log.read_text(errors="replace"), log_errors=True)
            if message:
                return False, message
    return False, None


def read_job(job_dir: Path) -> dict[str, Any]:
    """One job: ``{"job", "status", "error", "overrides", "metrics"}``."""
    metrics, reason = read_metrics(job_dir)
    has_error_file, message = job_error(job_dir)
    failed = metrics is None or has_error_file
    return {
        "job": int(job_dir.name),
        "status": "failed" if failed else "ok",
        "error": (message or reason or "failed") if failed else None,
        "overrides": read_overrides(job_dir),
        "metrics": metrics or {},
    }


# --------------------------------------------------------------------------------------------- table


def _ordered_union(seqs: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for seq in seqs:
        for item in seq:
            seen.setdefault(item, None)
    return list(seen)


def _override_maps(jobs: Sequence[dict[str, Any]]) -> list[dict[str, tuple[str, str]]]:
    """Per job: ``{key: (value, original override text)}``."""
    maps = []
    for job in jobs:
        entries = {}
        for text in job["overrides"]:
            key, value = split_override(text)
            entries[key] = (value, text.strip())
        maps.append(entries)
    return maps


def _parse_column(values: Sequence[str | None]) -> list[Any]:
    """Numbers when every present value looks numeric (``null`` -> NaN), otherwise the strings."""
    present = [v for v in values if v is not None and v != "null"]
    if present and all(_NUMBER.match(v) for v in present):
        as_int = all(_INT.match(v) for v in present) and len(present) == len(values)
        return [(int(v) if as_int else float(v)) if v is not None and v != "null" else math.nan for v in values]
    return list(values)


def _override_columns(jobs: Sequence[dict[str, Any]]) -> tuple[dict[str, list[Any]], list[str]]:
    """``({swept key: values per job}, [fixed override text per job])``."""
    maps = _override_maps(jobs)
    keys = _ordered_union(m.keys() for m in maps)
    swept: dict[str, list[Any]] = {}
    fixed_keys = []
    for key in keys:
        values = [m[key][0] if key in m else None for m in maps]
        if len(set(values)) > 1:
            swept[key] = _parse_column(values)
        else:
            fixed_keys.append(key)
    fixed = [" ".join(m[k][1] for k in fixed_keys if k in m) for m in maps]
    return swept, fixed


def collect(multirun_dir: str | Path, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per job of a Hydra multirun, failed jobs included.

    Columns: ``job`` (int), ``status`` (``"ok"`` / ``"failed"``), one column per override key that varies
    between jobs (numbers where every value looks numeric), ``fixed`` (the overrides common to all jobs,
    verbatim, space-separated), ``error`` (last exception line of a failed job, else missing), then the
    metrics: every metric found in any ``metrics.json`` (first-seen order) or exactly ``metrics`` (NaN
    where a job lacks one; a warning when no job has it). ``df.attrs`` holds ``"swept"`` and ``"metrics"``.

    Raises ``FileNotFoundError`` naming the path when the directory does not exist or has no job folder.
    """
    jobs = [read_job(d) for d in job_dirs(multirun_dir)]
    swept, fixed = _override_columns(jobs)
    found = _ordered_union(j["metrics"].keys() for j in jobs)
    chosen = list(found) if metrics is None else list(metrics)
    for name in chosen:
        if name not in found:
            warnings.warn(f"metric {name!r} is in no job's {METRICS_FILE} under {multirun_dir}", stacklevel=2)
    columns: dict[str, list[Any]] = {
        "job": [j["job"] for j in jobs],
        "status": [j["status"] for j in jobs],
        **swept,
        "fixed": fixed,
        "error": [j["error"] for j in jobs],
    }
    clash = [m for m in chosen if m in columns]
    if clash:
        raise ValueError(f"metric names clash with table columns: {clash}")
    for name in chosen:
        columns[name] = [j["metrics"].get(name, math.nan) for j in jobs]
    df = pd.DataFrame(columns)
    df.attrs["swept"] = list(swept)
    df.attrs["metrics"] = chosen
    return df


def swept_columns(df: pd.DataFrame) -> list[str]:
    """The swept override columns of a :func:`collect` table (also after a CSV round-trip)."""
    if "swept" in df.attrs:
        return [c for c in df.attrs["swept"] if c in df.columns]
    cols = list(df.columns)
    if "status" in cols and "fixed" in cols:
        return cols[cols.index("status") + 1 : cols.index("fixed")]
    return []


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a :func:`collect` table (also after a CSV round-trip)."""
    if "metrics" in df.attrs:
        return [c for c in df.attrs["metrics"] if c in df.columns]
    cols = list(df.columns)
    return cols[cols.index("error") + 1 :] if "error" in cols else []


def headline_metrics(df: pd.DataFrame, limit: int = 8) -> list[str]:
    """``test/{i2t,t2i}/R@{1,5,10}`` when present, else the first ``limit`` metric columns."""
    metrics = metric_columns(df)
    headline = [m for m in metrics if _HEADLINE.match(m)]
    return headline or metrics[:limit]


# --------------------------------------------------------------------------------------------- Markdown


def is_fraction_metric(name: str) -> bool:
    """Whether a metric is a fraction shown in percent: its key contains ``/R@`` or ``/P@``."""
    return "/R@" in name or "/P@" in name


def format_value(value: Any, metric: str | None = None, digits: int = 3) -> str:
    """One table cell: ``–`` for missing; fractions (by key) as percent with one decimal; whole numbers
    without decimals; other floats with ``digits`` decimals (or ``digits`` significant digits when tiny)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return str(value).replace("|", "\\|")
    value = float(value)
    if math.isnan(value):
        return MISSING
    if metric is not None and is_fraction_metric(metric):
        return f"{100 * value:.1f}"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) < 10.0 ** (-digits):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _swept_cell(value: Any) -> str:
    """A swept parameter's value as written (``0.1``, ``resnet50``); ``–`` where a job lacks it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value).replace("|", "\\|")


def _header(metric: str) -> str:
    return f"{metric} (%)" if is_fraction_metric(metric) else metric


def to_markdown(df: pd.DataFrame, metrics: Sequence[str] | None = None, digits: int = 3, errors: bool = True) -> str:
    """A GitHub Markdown table: ``job``, the swept columns, ``status``, then ``metrics``.

    ``metrics`` defaults to :func:`headline_metrics`. Keys containing ``/R@`` or ``/P@`` are fractions:
    they are shown in percent with one decimal and their header ends in ``(%)``. Other numbers get
    ``digits`` decimals. Failed jobs are marked ``**FAILED**`` in the status column; with ``errors`` a list
    ``- job N: <error>`` follows the table.
    """
    metrics = list(headline_metrics(df) if metrics is None else metrics)
    unknown = [m for m in metrics if m not in df.columns]
    if unknown:
        raise KeyError(f"metrics not in the table: {unknown}")
    swept = swept_columns(df)
    header = ["job", *swept, "status", *(_header(m) for m in metrics)]
    align = ["---:", *(_align(df[c]) for c in swept), ":---", *["---:"] * len(metrics)]
    lines = [_row(header), "|" + "|".join(align) + "|"]
    for _, rec in df.iterrows():
        status = FAILED_MARK if rec["status"] == "failed" else str(rec["status"])
        cells = [str(int(rec["job"])), *(_swept_cell(rec[c]) for c in swept), status]
        cells += [format_value(rec[m], m, digits) for m in metrics]
        lines.append(_row(cells))
    table = "\n".join(lines)
    failed = df[df["status"] == "failed"]
    if errors and len(failed):
        notes = [f"- job {int(r['job'])}: {_error_text(r.get('error'))}" for _, r in failed.iterrows()]
        table += "\n\nFailed jobs:\n\n" + "\n".join(notes)
    return table


def _align(column: pd.Series) -> str:
    """Numbers right-aligned, strings left-aligned."""
    return "---:" if pd.api.types.is_numeric_dtype(column) else ":---"


def _error_text(error: Any) -> str:
    if error is None or (isinstance(error, float) and math.isnan(error)) or not str(error).strip():
        return "failed (no error message)"
    return f"`{str(error).replace('`', chr(39))}`"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------------------------- plots


def plot_filename(metric: str, x: str) -> str:
    """``"test/i2t/R@10", "loss.lam"`` -> ``"test_i2t_R@10_vs_loss.lam.png"`` (``/`` becomes ``_``)."""
    return f"{metric}_vs_{x}.png".replace("/", "_").replace(" ", "_")


def _check_column(df: pd.DataFrame, name: str, role: str) -> None:
    if name not in df.columns:
        swept = ", ".join(swept_columns(df)) or "none"
        raise KeyError(f"{role}={name!r} is not a column of the sweep table (swept parameters: {swept})")


def _x_positions(values: pd.Series) -> tuple[pd.Series, list[str] | None]:
    """Numeric x as is; strings as positions 0..n-1 (sorted) with their labels."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.astype(float), None
    labels = sorted(values.astype(str).unique())
    return values.astype(str).map({v: i for i, v in enumerate(labels)}).astype(float), labels


def plot_metric(df: pd.DataFrame, metric: str, x: str, hue: str | None = None, path: str | Path | None = None) -> Path:
    """Line plot of ``metric`` against the swept parameter ``x``, one line per value of ``hue``.

    Failed jobs and missing values are skipped. Where several jobs share a point (a third swept
    parameter), the line goes through their mean and each job is drawn as a faint dot. Fractions
    (``/R@``, ``/P@``) are plotted in percent; a positive numeric ``x`` spanning >= 100x gets a log axis;
    string values of ``x`` are placed at evenly spaced ticks. ``path`` is the PNG file, or a folder that
    gets :func:`plot_filename` (default: the current folder). Returns the PNG path; raises ``KeyError``
    for an unknown column and ``ValueError`` when no job has a value to plot.
    """
    for name, role in ((metric, "metric"), (x, "x"), (hue, "hue")):
        if name is not None:
            _check_column(df, name, role)
    data = df[(df["status"] == "ok") & df[metric].notna() & df[x].notna()].copy()
    if data.empty:
        raise ValueError(f"no successful job has a value of {metric!r} to plot against {x!r}")
    scale = 100.0 if is_fraction_metric(metric) else 1.0
    data["_y"] = pd.to_numeric(data[metric], errors="coerce") * scale
    data["_x"], labels = _x_positions(data[x])

    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    aggregated = _draw_lines(ax, data, hue)
    _style_axes(ax, data, metric, x, hue, labels, aggregated)
    out = _resolve_path(path, metric, x)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    fig.clear()
    return out


def _draw_lines(ax: Any, data: pd.DataFrame, hue: str | None) -> bool:
    """Draw one line per hue value; returns whether any point is a mean over several jobs."""
    groups = [(None, data)] if hue is None else list(data.groupby(hue, dropna=False, sort=True))
    aggregated = False
    for value, group in groups:
        means = group.groupby("_x")["_y"].mean().sort_index()
        label = None if hue is None else f"{hue}={_swept_cell(value)}"
        (line,) = ax.plot(means.index, means.values, marker="o", linewidth=1.8, markersize=6, label=label)
        if len(group) > len(means):
            aggregated = True
            ax.scatter(group["_x"], group["_y"], color=line.get_color(), alpha=0.35, s=14, zorder=1)
    return aggregated


def _style_axes(
    ax: Any, data: pd.DataFrame, metric: str, x: str, hue: str | None, labels: list[str] | None, aggregated: bool
) -> None:
    xs = data["_x"]
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels)
    elif (xs > 0).all() and xs.max() / xs.min() >= 100:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(_header(metric))
    title = f"{metric} vs {x}" + (f" by {hue}" if hue else "")
    ax.set_title(title + (" (mean over jobs)" if aggregated else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    if hue is not None:
        ax.legend(fontsize=8)
    ax.figure.tight_layout()


def _resolve_path(path: str | Path | None, metric: str, x: str) -> Path:
    if path is None:
        return Path.cwd() / plot_filename(metric, x)
    path = Path(path)
    return path / plot_filename(metric, x) if path.is_dir() or path.suffix == "" else path


# --------------------------------------------------------------------------------------------- CLI

USAGE = (
    "usage: python -m cxr_vlp.experiments.collect <multirun dir> [metrics=a/b/R@10,c/d] [x=<swept key>] "
    "[hue=<swept key>] [out=<dir>] [digits=<int>]"
)


class UsageError(ValueError):
    """A wrong command line (unknown key, missing directory argument, bad value)."""


def parse_args(argv: Sequence[str]) -> tuple[Path, dict[str, str]]:
    """``[<dir>, "key=value", ...]`` -> ``(dir, {key: value})``; raises :class:`UsageError`."""
    if not argv or "=" in argv[0] or argv[0] in ("-h", "--help"):
        raise UsageError("missing the multirun directory")
    options: dict[str, str] = {}
    for token in argv[1:]:
        key, sep, value = token.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {token!r} (keys: {', '.join(CLI_KEYS)})")
        if key not in CLI_KEYS:
            raise UsageError(f"unknown key {key!r} (keys: {', '.join(CLI_KEYS)})")
        options[key] = value
    if "digits" in options and not options["digits"].isdigit():
        raise UsageError(f"digits must be a non-negative integer, got {options['digits']!r}")
    return Path(argv[0]), options


def _split_metrics(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [m.strip() for m in text.split(",") if m.strip()]


def _swept_key(text: str | None) -> str | None:
    return text.strip().lstrip("+~") if text else None


def summary_line(df: pd.DataFrame) -> str:
    """``"12 jobs, 1 failed: 2"`` (``"12 jobs, 0 failed"`` when none did)."""
    failed = [str(int(j)) for j in df.loc[df["status"] == "failed", "job"]]
    line = f"{len(df)} jobs, {len(failed)} failed"
    return line + (": " + ", ".join(failed) if failed else "")


def build_report(df: pd.DataFrame, multirun_dir: Path, metrics: Sequence[str], digits: int) -> str:
    """The report without its summary line: title, fixed overrides, the table and the failed jobs."""
    parts = [f"# Sweep {multirun_dir.name}", ""]
    fixed = sorted({str(f) for f in df["fixed"].dropna() if str(f)})
    if fixed:
        parts += [f"Fixed overrides: `{' | '.join(fixed)}`", ""]
    parts.append(to_markdown(df, metrics, digits=digits))
    return "\n".join(parts)


def run(multirun_dir: Path, options: dict[str, str]) -> list[Path]:
    """Collect, write CSV / Markdown / plots, print the report; returns the written files."""
    df = collect(multirun_dir)
    chosen = _split_metrics(options.get("metrics")) or headline_metrics(df)
    for name in chosen:
        if name not in df.columns:
            print(f"warning: metric {name!r} is in no job's {METRICS_FILE}", file=sys.stderr)
            df[name] = math.nan
    out = Path(options.get("out") or multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    body = build_report(df, multirun_dir, chosen, int(options.get("digits", 3)))
    summary = summary_line(df)
    written = [out / "results.csv", out / "results.md"]
    df.to_csv(written[0], index=False)
    written[1].write_text(f"{body}\n\n{summary}\n")
    x = _swept_key(options.get("x"))
    if x:
        written += _plots(df, chosen, x, _swept_key(options.get("hue")), out)
    print(body + "\n")
    for path in written:
        print(f"wrote {path}")
    print(summary)
    return written


def _plots(df: pd.DataFrame, metrics: Sequence[str], x: str, hue: str | None, out: Path) -> list[Path]:
    """One plot per chosen metric; a metric with nothing to plot is reported and skipped."""
    for name, role in ((x, "x"), (hue, "hue")):
        if name is not None and name not in swept_columns(df):
            swept = ", ".join(swept_columns(df)) or "none"
            raise UsageError(f"{role}={name} is not a swept parameter of this multirun (swept: {swept})")
    paths = []
    for metric in metrics:
        try:
            paths.append(plot_metric(df, metric, x, hue=hue, path=out / plot_filename(metric, x)))
        except ValueError as err:
            print(f"warning: no plot for {metric}: {err}", file=sys.stderr)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 also when jobs failed, 2 on usage / input errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__)
        return 0
    try:
        multirun_dir, options = parse_args(argv)
        run(multirun_dir, options)
    except UsageError as err:
        print(f"error: {err}\n{USAGE}", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
