"""Markdown sections of ``report.md`` (the evaluation's tables), and printing them to the console."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

RETRIEVAL_COLUMNS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10", "P@1", "P@5", "P@10")
CREDENTIALED_NOTE = (
    "This dataset is under credentialed-access terms (PhysioNet / Stanford data use agreements): images and "
    "report text stay on this machine. Figures with patient content were not uploaded to any experiment "
    "tracker (override: `evaluation.allow_patient_content_upload=true`, only where your agreement allows it)."
)


def _cell(key: str, value: float | None) -> str:
    if value is None or value != value:
        return "–"
    if key.startswith(("R@", "P@")):
        return f"{100 * value:.1f}"
    return f"{value:.3f}" if key.startswith("nDCG") else f"{value:.1f}"


def retrieval_section(metrics: Mapping[str, float], stage: str = "test", dedup: bool = False) -> str:
    n = metrics.get(f"{stage}/num_studies")
    lines = [f"## Retrieval ({stage}, {int(n) if n else '?'} studies" + (", identical reports merged" if dedup else "")
             + ")", "",
             "R@K, MedR, MeanR, nDCG@10: exact pair (rank = 1 + gallery items scoring strictly higher than the match). "
             "P@K: class-based precision, share of the top K sharing a positive label with the query. Percent.", "",
             "| direction | " + " | ".join(RETRIEVAL_COLUMNS) + " |", "|---" * (len(RETRIEVAL_COLUMNS) + 1) + "|"]
    for d, name in (("i2t", "image → text"), ("t2i", "text → image")):
        lines.append(f"| {name} | " + " | ".join(_cell(c, metrics.get(f"{stage}/{d}/{c}")) for c in RETRIEVAL_COLUMNS)
                     + " |")
    if n:
        lines += ["", f"Chance: R@10 = {100 * min(1.0, 10 / n):.1f} %."]
    return "\n".join(lines)


def classification_section(title: str, report, note: str = "") -> str:
    lines = [f"## {title}", ""]
    if note:
        lines += [note + ". Thresholds: Youden's J on the validation split; AUROC with a bootstrap 95 % CI.", ""]
    return "\n".join(lines) + "\n" + report.to_markdown()


def uncertainty_section(bins, rc) -> str:
    return "\n".join(["## Uncertainty (image → text)", "", bins.to_markdown(), "", rc.to_markdown()])


def concept_section(label_names: Sequence[str], auroc: np.ndarray, confounders_md: str,
                    examples: Mapping[str, tuple[str, list[tuple[str, float]]]]) -> str:
    lines = ["## Concept audit (concept-bottleneck model on image concept scores)", "",
             "| label | AUROC |", "|---|---|"]
    lines += [f"| {n} | {'–' if a != a else f'{a:.3f}'} |" for n, a in zip(label_names, auroc)]
    lines += [f"| **mean** | **{np.nanmean(auroc):.3f}** |", "", "### Possible confounders", "",
              "High-weight concepts that are not findings of the label:", "", confounders_md, "",
              "### Top concepts for example images", ""]
    for study, (label, tops) in examples.items():
        lines.append(f"- {study} ({label}): " + ", ".join(f"{c} ({w:+.2f})" for c, w in tops))
    return "\n".join(lines)


def document(sections: Sequence[str], figures: Sequence[str], ckpt_path: str | None, credentialed: bool) -> str:
    head = ["# Evaluation report", ""]
    if ckpt_path:
        head += [f"Checkpoint: `{ckpt_path}`", ""]
    if credentialed:
        head += [CREDENTIALED_NOTE, ""]
    body = "\n\n".join(sections)
    figs = ["", "## Figures", "", *figures] if figures else []
    return "\n".join(head) + "\n" + body + "\n" + "\n".join(figs) + "\n"


def print_report(path: str | Path) -> None:
    """Render ``report.md`` on the console (tables included)."""
    from rich.console import Console
    from rich.markdown import Markdown

    text = Path(path).read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("!["))
    Console(width=140).print(Markdown(text))
