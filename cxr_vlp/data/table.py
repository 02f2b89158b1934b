"""Study tables: one row per study, the common currency between readers and the data module.

Every reader (generic CSV now; MIMIC-CXR, IU X-Ray and CheXpert readers produce the same object) yields
a :class:`StudyTable`. The generic CSV layout (MedProbCLIP's) is::

    study_id, image_paths, view_names, findings, impression[, subject_id][, split][, <14 CheXpert labels>]

with ``;`` between multiple paths and views. Relative image paths are resolved against ``image_root``
(default: the CSV's directory). Label cells follow CheXpert (1 / 0 / -1 / blank) and go through the one
label policy in :mod:`cxr_vlp.text.labels`.

Where the labels come from (``labels``, i.e. ``data.reader.labels``):

* ``auto`` (default): a CSV with CheXpert label columns is read as given (a column it lacks is unknown, with a
  warning naming it); a CSV without any label column is labelled from findings + impression by the rule-based
  labeler (:mod:`cxr_vlp.text.label_cache`, cached by report hash in ``label_cache``).
* ``given``: the 14 columns are required (``ValueError`` naming the file and the missing columns).
* ``none``: no labels (all unknown, ``has_labels`` false), whatever columns the CSV has.

``StudyTable.label_sources`` records per label whether it was ``given`` or derived from ``text``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_vlp.text.label_cache import derive_raw_labels, log_stats, report_texts
from cxr_vlp.text.labels import CHEXPERT_LABELS, NUM_LABELS, UncertainPolicy, apply_policy

log = logging.getLogger(__name__)

LABEL_MODES = ("auto", "given", "none")
# values of StudyTable.label_sources: a label column of the dataset, or the rule-based labeler on the report text
LABEL_SOURCES = ("given", "text")

REQUIRED_COLUMNS = ("study_id", "image_paths", "view_names", "findings", "impression")
FRONTAL_VIEWS = frozenset({"PA", "AP", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD", "FRONTAL"})
LATERAL_VIEWS = frozenset({"LATERAL", "LL", "RL", "LAO", "RAO", "LPO", "XTABLE LATERAL", "SWIMMERS"})


def view_group(view: str) -> str:
    """``frontal``, ``lateral`` or ``other`` for a view name (case and spacing insensitive)."""
    name = " ".join(str(view).upper().split())
    if name in FRONTAL_VIEWS:
        return "frontal"
    if name in LATERAL_VIEWS:
        return "lateral"
    return "other"


def _text_or_none(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


@dataclass
class StudyTable:
    """Column-oriented studies. ``labels`` is ``[n, 14]`` float32 with NaN for unknown.

    ``label_sources`` maps each label to ``"given"`` (a label column of the dataset) or ``"text"`` (derived
    from the report by the rule-based labeler); empty when the table has no labels. Left empty by a reader
    whose table has labels, every label counts as given.
    """

    study_ids: list[str]
    subject_ids: list[str]
    image_paths: list[list[str]]
    view_names: list[list[str]]
    findings: list[str | None]
    impression: list[str | None]
    labels: np.ndarray
    split: list[str] | None = None
    source: str = "<memory>"
    has_labels: bool = True
    extra: dict[str, list] = field(default_factory=dict)
    label_sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.study_ids)
        for name in ("subject_ids", "image_paths", "view_names", "findings", "impression"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.source}: column {name!r} has {len(getattr(self, name))} rows, expected {n}")
        if self.labels.shape != (n, NUM_LABELS):
            raise ValueError(f"{self.source}: labels must be [{n}, {NUM_LABELS}], got {list(self.labels.shape)}")
        if len(set(self.study_ids)) != n:
            dup = pd.Series(self.study_ids)
            dups = dup[dup.duplicated()].unique()[:10].tolist()
            raise ValueError(f"{self.source}: duplicate study_id values: {dups}")
        if not self.has_labels:
            self.label_sources = {}
        elif not self.label_sources:
            self.label_sources = dict.fromkeys(CHEXPERT_LABELS, "given")
        bad = {k: v for k, v in self.label_sources.items() if k not in CHEXPERT_LABELS or v not in LABEL_SOURCES}
        if bad:
            raise ValueError(f"{self.source}: label_sources must map CheXpert labels to {LABEL_SOURCES}, got {bad}")

    def labels_from_text(self) -> list[str]:
        """The labels derived from the report text (in CheXpert order)."""
        return [name for name in CHEXPERT_LABELS if self.label_sources.get(name) == "text"]

    def __len__(self) -> int:
        return len(self.study_ids)

    def subset(self, indices: np.ndarray | list[int]) -> StudyTable:
        """A new table with the given rows, in that order."""
        idx = [int(i) for i in indices]
        return StudyTable(
            study_ids=[self.study_ids[i] for i in idx],
            subject_ids=[self.subject_ids[i] for i in idx],
            image_paths=[self.image_paths[i] for i in idx],
            view_names=[self.view_names[i] for i in idx],
            findings=[self.findings[i] for i in idx],
            impression=[self.impression[i] for i in idx],
            labels=self.labels[idx],
            split=None if self.split is None else [self.split[i] for i in idx],
            source=self.source,
            has_labels=self.has_labels,
            extra={k: [v[i] for i in idx] for k, v in self.extra.items()},
            label_sources=dict(self.label_sources),
        )

    def texts(self) -> list[str]:
        """All report sections present (findings and impression), e.g. to train a tokenizer."""
        return [t for pair in zip(self.findings, self.impression) for t in pair if t]


def _csv_labels(
    csv_path: Path, df: pd.DataFrame, mode: str, texts: list[str | None], label_cache: str | Path | None
) -> tuple[np.ndarray, dict[str, str]]:
    """Raw labels ``[n, 14]`` (1 / 0 / -1 / NaN) and their sources under ``mode`` (see the module docstring)."""
    raw = np.full((len(df), NUM_LABELS), np.nan, dtype=np.float32)
    present = [c for c in CHEXPERT_LABELS if c in df.columns]
    missing = [c for c in CHEXPERT_LABELS if c not in df.columns]
    if mode == "none":
        if present:
            log.info("%s: data.reader.labels=none: its %d label columns are ignored", csv_path, len(present))
        return raw, {}
    for name in present:
        j = CHEXPERT_LABELS.index(name)
        col = pd.to_numeric(df[name], errors="coerce")
        bad = col.isna() & df[name].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            raise ValueError(f"{csv_path}: row {row}, column {name!r}: not a label value: {df[name].iloc[row - 1]!r}")
        raw[:, j] = col.to_numpy(dtype=np.float32)
    bad = ~np.isnan(raw) & ~np.isin(raw, (1.0, 0.0, -1.0))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            f"{csv_path}: row {row + 1}, column {CHEXPERT_LABELS[col]!r}: label values must be 1, 0, -1 or blank, "
            f"got {raw[row, col]:g}"
        )
    if present:
        if missing:
            log.warning("%s: label columns %s absent; treated as unknown", csv_path, missing)
        return raw, dict.fromkeys(CHEXPERT_LABELS, "given")
    log.info("%s: no label columns; all 14 labels are derived from the report text (data.reader.labels=auto)", csv_path)
    raw, stats = derive_raw_labels(texts, label_cache)
    log_stats(str(csv_path), stats)
    return raw, dict.fromkeys(CHEXPERT_LABELS, "text")


def read_generic_csv(
    csv_path: str | Path,
    image_root: str | Path | None = None,
    uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN,
    check_files: bool = True,
    drop_textless: bool = True,
    labels: str = "auto",
    label_cache: str | Path | None = None,
) -> StudyTable:
    """Read a study-level CSV in the generic layout and validate it.

    Errors name the file, the row (1-based, header excluded) and the column. Studies with neither
    findings nor impression are dropped with a logged count when ``drop_textless`` (they cannot be
    paired with a report); studies whose images are missing raise, since that is a broken dataset.
    ``labels``: ``auto`` / ``given`` / ``none`` (module docstring); ``label_cache``: the folder of the
    text-derived label cache (None: label without caching).
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"data.reader.labels must be one of {list(LABEL_MODES)}, got {labels!r}")
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"study CSV not found: {csv_path}")
    df = pd.read_csv(csv_path, dtype={"study_id": str, "subject_id": str}, keep_default_na=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing required column(s) {missing}; found {list(df.columns)}")
    absent_labels = [c for c in CHEXPERT_LABELS if c not in df.columns]
    if labels == "given" and absent_labels:
        raise ValueError(
            f"{csv_path}: data.reader.labels=given needs the 14 CheXpert label columns; missing "
            f"{absent_labels} (data.reader.labels=auto derives absent ones from the report text, "
            "data.reader.labels=none trains without labels)"
        )
    root = Path(image_root) if image_root is not None else csv_path.parent

    image_paths: list[list[str]] = []
    view_names: list[list[str]] = []
    for row, (paths_cell, views_cell) in enumerate(zip(df["image_paths"], df["view_names"]), start=1):
        paths = [p.strip() for p in str(paths_cell).split(";") if p.strip()] if _text_or_none(paths_cell) else []
        views = [v.strip() for v in str(views_cell).split(";")] if _text_or_none(views_cell) else []
        if not paths:
            raise ValueError(f"{csv_path}: row {row} (study {df['study_id'].iloc[row - 1]}): empty image_paths")
        if views and len(views) != len(paths):
            raise ValueError(f"{csv_path}: row {row}: {len(paths)} image_paths but {len(views)} view_names")
        resolved = [str(p if Path(p).is_absolute() else root / p) for p in paths]
        if check_files:
            absent = [p for p in resolved if not Path(p).is_file()]
            if absent:
                raise FileNotFoundError(f"{csv_path}: row {row}: image file(s) not found: {absent[:3]}")
        image_paths.append(resolved)
        view_names.append(views or ["UNKNOWN"] * len(paths))

    findings = [_text_or_none(v) for v in df["findings"]]
    impression = [_text_or_none(v) for v in df["impression"]]
    raw, sources = _csv_labels(csv_path, df, labels, report_texts(findings, impression), label_cache)
    label_values = apply_policy(raw, uncertain)

    study_ids = df["study_id"].astype(str).tolist()
    if "subject_id" in df.columns:
        subject_ids = df["subject_id"].astype(str).tolist()
    else:
        log.warning("%s: no subject_id column; each study is its own subject (no patient grouping)", csv_path)
        subject_ids = list(study_ids)
    table = StudyTable(
        study_ids=study_ids,
        subject_ids=subject_ids,
        image_paths=image_paths,
        view_names=view_names,
        findings=findings,
        impression=impression,
        labels=label_values,
        split=df["split"].astype(str).tolist() if "split" in df.columns else None,
        source=str(csv_path),
        has_labels=labels != "none",
        label_sources=sources,
    )
    if drop_textless:
        keep = [i for i in range(len(table)) if table.findings[i] or table.impression[i]]
        if len(keep) < len(table):
            log.warning("%s: dropped %d studies with neither findings nor impression", csv_path, len(table) - len(keep))
            table = table.subset(keep)
    return table
