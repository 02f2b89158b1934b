"""Writing and printing run metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

RETRIEVAL_COLUMNS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10")


def to_floats(metrics: Mapping[str, object]) -> dict[str, float]:
    """Plain floats from tensors / numbers, keys sorted (for a diff-stable metrics.json)."""
    out = {}
    for key in sorted(metrics):
        value = metrics[key]
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def write_metrics(metrics: Mapping[str, object], path: str | Path) -> Path:
    """Write flat ``{"test/i2t/R@1": 0.12, ...}`` JSON. NaN is written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if math.isnan(v) else v) for k, v in to_floats(metrics).items()}
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path


def retrieval_table(metrics: Mapping[str, float], stage: str = "test", chance_k10: float | None = None) -> Table:
    """A rich table with one row per direction; recall columns in percent."""
    title = f"{stage} retrieval"
    if chance_k10 is not None:
        title += f" (chance R@10 = {100 * chance_k10:.1f}%)"
    table = Table(title=title)
    table.add_column("direction")
    for col in RETRIEVAL_COLUMNS:
        table.add_column(col, justify="right")
    for direction, label in (("i2t", "image → text"), ("t2i", "text → image")):
        row = []
        for col in RETRIEVAL_COLUMNS:
            value = metrics.get(f"{stage}/{direction}/{col}")
            if value is None:
                row.append("–")
            elif col.startswith("R@"):
                row.append(f"{100 * value:.1f}")
            else:
                row.append(f"{value:.3f}" if col == "nDCG@10" else f"{value:.1f}")
        table.add_row(label, *row)
    return table


def print_retrieval(metrics: Mapping[str, float], stage: str = "test") -> None:
    n = metrics.get(f"{stage}/num_studies")
    chance = min(1.0, 10.0 / n) if n else None
    Console().print(retrieval_table(metrics, stage, chance))
