"""Score the rule-based labeler against hand-labelled reports (the OpenI real-report set, docs/labeler.md).

``python -m cxr_vlp.text.labeler_eval [fixture=tests/fixtures/openi/reports.jsonl] [labeler_file=PATH]
[errors=false]`` labels each report of ``fixture`` (findings and impression joined as the data readers join
them, :func:`cxr_vlp.text.label_cache.report_texts`) with CheXpert's No Finding convention (1 or blank) and
prints per-label cell accuracy, the overall accuracy over the 13 pathology labels, No Finding's accuracy and
the positive / negative / uncertain F1. ``labeler_file`` scores another copy of the labeler module instead
(for a before / after table: ``git show REV:cxr_vlp/text/labeler.py > old.py``); ``errors=true`` also lists
every wrong cell.

Fixture format: one JSON object per line, ``{"id", "findings", "impression", "labels", "note"}``; ``labels``
maps CheXpert label names to 1 / 0 / -1, a label not listed is blank. Metrics: a cell is right when both
sides agree, blank == blank included. The F1 of a value (1, 0 or -1) pools all cells of the 13 pathology
labels: precision over the cells the labeler gave that value, recall over the cells the reference gave it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from cxr_vlp.text.label_cache import report_texts
from cxr_vlp.text.labels import CHEXPERT_LABELS, NO_FINDING, NUM_LABELS
from cxr_vlp.utils.cli import parse_key_values

__all__ = ["Fixture", "Scores", "format_table", "label_fixture", "load_fixture", "main", "score", "wrong_cells"]

DEFAULT_FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "openi" / "reports.jsonl"
PATHOLOGIES = tuple(range(1, NUM_LABELS))  # every label but No Finding
_VALUES = {1: "positive", 0: "negative", -1: "uncertain"}


@dataclass(frozen=True)
class Fixture:
    """Hand-labelled reports: ids, findings, impressions, expected values ``[n, 14]`` (NaN = blank), notes."""

    ids: list[str]
    findings: list[str | None]
    impression: list[str | None]
    expected: np.ndarray
    notes: list[str]

    @property
    def texts(self) -> list[str | None]:
        """The text the labeler reads per report (findings and impression joined)."""
        return report_texts(self.findings, self.impression)


def load_fixture(path: str | os.PathLike[str] = DEFAULT_FIXTURE) -> Fixture:
    """Read a fixture (module docstring); ``ValueError`` naming the file, line and key on bad content."""
    path = Path(path)
    ids, findings, impression, rows, notes = [], [], [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        missing = [k for k in ("id", "labels") if k not in item]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        if item["id"] in ids:
            raise ValueError(f"{where}: report id {item['id']!r} appears twice")
        row = np.full(NUM_LABELS, np.nan, dtype=np.float32)
        for name, value in item["labels"].items():
            if name not in CHEXPERT_LABELS:
                raise ValueError(f"{where}: unknown label {name!r} in report {item['id']}")
            if value not in (1, 0, -1):
                raise ValueError(f"{where}: {name}={value!r} in report {item['id']}; use 1, 0 or -1")
            row[CHEXPERT_LABELS.index(name)] = value
        if row[NO_FINDING] == 0:
            raise ValueError(f"{where}: No Finding=0 in report {item['id']}; CheXpert's No Finding is 1 or blank")
        ids.append(item["id"])
        findings.append(item.get("findings"))
        impression.append(item.get("impression"))
        rows.append(row)
        notes.append(item.get("note", ""))
    if not ids:
        raise ValueError(f"{path}: no reports")
    return Fixture(ids, findings, impression, np.stack(rows), notes)


def _load_module(path: str | os.PathLike[str]) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_scored_labeler", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the labeler reads its own source through sys.modules
    spec.loader.exec_module(module)
    return module


def label_fixture(fixture: Fixture, label_reports: Callable[..., np.ndarray] | None = None) -> np.ndarray:
    """The labeler's values ``[n, 14]`` for the fixture, with No Finding as 1 or blank."""
    if label_reports is None:
        from cxr_vlp.text.labeler import label_reports
    params = inspect.signature(label_reports).parameters
    option = {"no_finding_negative": False} if "no_finding_negative" in params else {"no_finding_blank": True}
    return label_reports(fixture.texts, **option)


@dataclass(frozen=True)
class Scores:
    """Cell accuracy per label (order of CHEXPERT_LABELS), over the 13 pathology labels, and F1 per value."""

    reports: int
    per_label: dict[str, float]
    pathology_accuracy: float
    no_finding_accuracy: float
    f1: dict[str, float]  # "positive" / "negative" / "uncertain", pooled over the 13 pathology labels
    support: dict[str, int]  # reference cells with that value


def _equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


def score(expected: np.ndarray, predicted: np.ndarray) -> Scores:
    """Scores of ``predicted`` against ``expected`` (both ``[n, 14]``, NaN = blank)."""
    if expected.shape != predicted.shape or expected.ndim != 2 or expected.shape[1] != NUM_LABELS:
        raise ValueError(
            f"expected and predicted must both be [n, {NUM_LABELS}], got {expected.shape} and {predicted.shape}"
        )
    equal = _equal(expected, predicted)
    per_label = {name: float(equal[:, j].mean()) for j, name in enumerate(CHEXPERT_LABELS)}
    exp, pred = expected[:, PATHOLOGIES], predicted[:, PATHOLOGIES]
    f1, support = {}, {}
    for value, name in _VALUES.items():
        tp = int(((exp == value) & (pred == value)).sum())
        n_pred, n_true = int((pred == value).sum()), int((exp == value).sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1[name] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        support[name] = n_true
    return Scores(
        reports=len(expected),
        per_label=per_label,
        pathology_accuracy=float(equal[:, PATHOLOGIES].mean()),
        no_finding_accuracy=per_label[CHEXPERT_LABELS[NO_FINDING]],
        f1=f1,
        support=support,
    )


def wrong_cells(fixture: Fixture, predicted: np.ndarray) -> list[str]:
    """One line per disagreeing cell: report id, label, expected and predicted value."""

    def show(v: float) -> str:
        return "blank" if np.isnan(v) else f"{int(v)}"

    equal = _equal(fixture.expected, predicted)
    return [
        f"{fixture.ids[i]:8s} {CHEXPERT_LABELS[j]:27s} expected {show(fixture.expected[i, j]):5s} "
        f"got {show(predicted[i, j])}"
        for i, j in zip(*np.nonzero(~equal))
    ]


def format_table(columns: Sequence[tuple[str, Scores]]) -> str:
    """A Markdown table: one row per label and summary figure, one column per scored labeler."""
    head = "| | " + " | ".join(name for name, _ in columns) + " |"
    lines = [head, "|---|" + "---|" * len(columns)]
    for name in CHEXPERT_LABELS:
        lines.append(f"| {name} | " + " | ".join(f"{s.per_label[name]:.2%}" for _, s in columns) + " |")
    lines.append(
        "| **13 pathology labels** | " + " | ".join(f"**{s.pathology_accuracy:.2%}**" for _, s in columns) + " |"
    )
    for value in _VALUES.values():
        n = columns[0][1].support[value]
        lines.append(f"| F1 {value} ({n} cells) | " + " | ".join(f"{s.f1[value]:.3f}" for _, s in columns) + " |")
    return "\n".join(lines)


_KEYS = {"fixture": str, "labeler_file": str, "errors": bool}


def main(argv: list[str] | None = None) -> int:
    """Score the labeler (and ``labeler_file``, when given, side by side) and print the table."""
    args = parse_key_values(
        sys.argv[1:] if argv is None else argv,
        _KEYS,
        {"fixture": str(DEFAULT_FIXTURE), "labeler_file": "", "errors": False},
        doc=__doc__,
    )
    try:
        fixture = load_fixture(args["fixture"])
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    columns = []
    if args["labeler_file"]:
        other = _load_module(args["labeler_file"])
        columns.append(
            (Path(args["labeler_file"]).name, score(fixture.expected, label_fixture(fixture, other.label_reports)))
        )
    predicted = label_fixture(fixture)
    columns.append(("cxr_vlp.text.labeler", score(fixture.expected, predicted)))
    print(f"{len(fixture.ids)} reports from {args['fixture']}; cell accuracy (blank == blank counts as right)\n")
    print(format_table(columns))
    if args["errors"]:
        wrong = wrong_cells(fixture, predicted)
        print(f"\n{len(wrong)} wrong cells (cxr_vlp.text.labeler):\n" + "\n".join(wrong))
    return 0


if __name__ == "__main__":
    sys.exit(main())
