"""Markdown sections of ``report.md`` (the evaluation's tables), and printing them to the console."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxr_vlp.metrics.retrieval import TIE_RULE

RETRIEVAL_COLUMNS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10", "P@1", "P@5", "P@10", "tied_match_share")
CREDENTIALED_NOTE = (
    "This dataset is under credentialed-access terms (PhysioNet / Stanford data use agreements): images and "
    "report text stay on this machine. Figures with patient content were not uploaded to any experiment "
    "tracker (override: `evaluation.allow_patient_content_upload=true`, only where your agreement allows it)."
)


def _cell(key: str, value: float | None) -> str:
    if value is None or value != value:
        return "–"
    if key.startswith(("R@", "P@")) or key == "tied_match_share":
        return f"{100 * value:.1f}"
    return f"{value:.3f}" if key.startswith("nDCG") else f"{value:.1f}"


def retrieval_section(metrics: Mapping[str, float], stage: str = "test") -> str:
    """Both protocols side by side: the full gallery and identical report texts merged (``{stage}/dedup/...``)."""
    n = metrics.get(f"{stage}/num_studies")
    u = metrics.get(f"{stage}/num_distinct_reports")
    protocols = [("", f"full gallery ({int(n) if n else '?'})")]
    if u is not None:
        protocols.append(("dedup/", f"identical reports merged ({int(u)} distinct)"))
    header = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10", "P@1", "P@5", "P@10", "tied")
    lines = [
        f"## Retrieval ({stage}, {int(n) if n else '?'} studies)",
        "",
        "R@K, MedR, MeanR, nDCG@10: exact pair (merged reports: any image of the report text is a match). "
        "P@K: class-based precision, share of the top K sharing a positive label with the query. "
        "tied: share of queries whose match is tied with another item. R@K, P@K and tied in percent.",
        "",
        "| protocol | direction | " + " | ".join(header) + " |",
        "|---" * (len(header) + 2) + "|",
    ]
    for proto, label in protocols:
        for d, name in (("i2t", "image → text"), ("t2i", "text → image")):
            cells = [_cell(c, metrics.get(f"{stage}/{proto}{d}/{c}")) for c in RETRIEVAL_COLUMNS]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    lines += ["", TIE_RULE]
    if n:
        lines += ["", f"Chance (full gallery): R@10 = {100 * min(1.0, 10 / n):.1f} %."]
    return "\n".join(lines)


def classification_section(title: str, report, note: str = "") -> str:
    lines = [f"## {title}", ""]
    if note:
        lines += [note + ". Thresholds: Youden's J on the validation split; AUROC with a bootstrap 95 % CI.", ""]
    return "\n".join(lines) + "\n" + report.to_markdown()


def no_labels_line(tasks: Sequence[str], splits: Sequence[str]) -> str:
    """The one line that replaces the tables of label tasks run on data without any known label."""
    return (
        f"**No known labels** in the {' / '.join(splits)} split{'s' if len(splits) > 1 else ''}: "
        f"{', '.join(tasks)} not computed (the dataset has no labels, or `data.reader.labels=none`)."
    )


def text_labels_line(from_text: Sequence[str], n_labels: int) -> str:
    """One line saying which labels were derived from the report text (not annotated)."""
    which = f"all {n_labels} labels" if len(from_text) == n_labels else ", ".join(from_text)
    return f"Labels: {which} derived from the report text by the rule-based labeler (`cxr_vlp.text.labeler`)."


def uncertainty_section(bins, rc) -> str:
    return "\n".join(["## Uncertainty (image → text)", "", bins.to_markdown(), "", rc.to_markdown()])


def concept_section(
    label_names: Sequence[str],
    auroc: np.ndarray,
    confounders_md: str,
    examples: Mapping[str, tuple[str, list[tuple[str, float]]]],
) -> str:
    lines = [
        "## Concept audit (concept-bottleneck model on image concept scores)",
        "",
        "| label | AUROC |",
        "|---|---|",
    ]
    lines += [f"| {n} | {'–' if a != a else f'{a:.3f}'} |" for n, a in zip(label_names, auroc)]
    lines += [
        f"| **mean** | **{np.nanmean(auroc):.3f}** |",
        "",
        "### Possible confounders",
        "",
        "High-weight concepts that are not findings of the label:",
        "",
        confounders_md,
        "",
        "### Top concepts for example images",
        "",
    ]
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
