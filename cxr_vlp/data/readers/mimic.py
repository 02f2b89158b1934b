"""MIMIC-CXR-JPG, as published on PhysioNet, read into a :class:`~cxr_vlp.data.table.StudyTable`.

Layout under ``root`` (the ``mimic-cxr-jpg/2.0.0`` or ``2.1.0`` folder)::

    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, 14 CheXpert labels (1 / 0 / -1 / blank)
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train / validate / test)
    files/p10/p10000032/s50414267/02aa804e-....jpg
    files/p10/p10000032/s50414267.txt            free-text report (reports="txt"; from MIMIC-CXR)
    mimic_cxr_sectioned.csv                      study, impression, findings, last_paragraph, ...
                                                 (reports="sectioned_csv"; MIT-LCP's sectioning script)

The ``.csv`` files may also be decompressed (``.csv`` instead of ``.csv.gz``). Ids are strings without
their ``p`` / ``s`` prefix. The official split goes into ``table.split`` (``validate`` is mapped to ``val``
by the data module). Work is vectorised with pandas; the only per-item Python is one ``stat`` per image
(``check_files``) and one report read per study (``reports="txt"``).

Bad input:

* ``root`` missing → ``FileNotFoundError`` naming it; a metadata/label/split/report CSV missing →
  ``FileNotFoundError`` naming the file; a missing column → ``ValueError`` naming file and column.
* A ``dicom_id`` twice in the metadata or split file, a study listed under two subjects, or a study whose
  split differs across its images → ``ValueError`` naming the file and the row.
* Partial downloads: images missing on disk are skipped, studies left without any image dropped; a study
  without report text (no ``.txt`` / no row, or empty findings and impression) is dropped; a study absent
  from the CheXpert table gets unknown (NaN) labels; an image absent from the split file gets no official
  split (the data module assigns its subject to train / val). Each is counted and logged as a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_vlp.data.readers.common import (
    check_root,
    existing_mask,
    first_duplicate_row,
    log_dropped,
    raw_labels,
    read_csv,
    require_columns,
    strip_id_prefix,
)
from cxr_vlp.data.table import StudyTable
from cxr_vlp.text.labels import NUM_LABELS, UncertainPolicy, apply_policy
from cxr_vlp.text.sections import collapse_whitespace, findings_and_impression
from cxr_vlp.text.text_views import is_missing

log = logging.getLogger(__name__)

__all__ = ["CHEXPERT_CSV", "METADATA_CSV", "SECTIONED_CSV", "SPLIT_CSV", "read_mimic_cxr"]

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
SECTIONED_CSV = "mimic_cxr_sectioned.csv"
_IDS = ("dicom_id", "subject_id", "study_id")


def _locate(root: Path, name: str, given: str | os.PathLike[str] | None) -> Path:
    """``given`` if set, else ``root/name`` or its ``.gz``-less / ``.gz`` twin, whichever exists."""
    if given is not None:
        return Path(given)
    candidates = [root / name, root / name.removesuffix(".gz") if name.endswith(".gz") else root / f"{name}.gz"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _clean_ids(df: pd.DataFrame) -> pd.DataFrame:
    for col, prefix in (("subject_id", "p"), ("study_id", "s"), ("dicom_id", "")):
        if col in df.columns:
            df[col] = strip_id_prefix(df[col], prefix) if prefix else df[col].astype(str).str.strip()
    return df


def _check_unique(path: Path, df: pd.DataFrame, column: str) -> None:
    row = first_duplicate_row(df[column])
    if row is not None:
        value = df[column].iloc[row]
        first = int(np.flatnonzero((df[column] == value).to_numpy())[0])
        raise ValueError(f"{path}: row {row + 1}: {column} {value!r} appears twice (first at row {first + 1})")


def _check_one_value_per_study(path: Path, df: pd.DataFrame, column: str, what: str) -> None:
    """``ValueError`` naming the row where a study's ``column`` differs from its first value."""
    values = df[column].fillna("<blank>").astype(str)
    first = values.groupby(df["study_id"], sort=False).transform("first")
    bad = (values != first).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        study = df["study_id"].iloc[row]
        ref = int(np.flatnonzero((df["study_id"] == study).to_numpy())[0])
        raise ValueError(
            f"{path}: row {row + 1}: study {study} has {what} {values.iloc[row]!r} here but "
            f"{values.iloc[ref]!r} at row {ref + 1} (one {what} per study expected)"
        )


def _read_metadata(path: Path, views: list[str] | None) -> pd.DataFrame:
    meta = read_csv(path, _IDS, "MIMIC-CXR-JPG metadata CSV")
    require_columns(path, meta, (*_IDS, "ViewPosition"))
    meta = _clean_ids(meta)
    _check_unique(path, meta, "dicom_id")
    _check_one_value_per_study(path, meta, "subject_id", "subject_id")
    meta["ViewPosition"] = meta["ViewPosition"].fillna("UNKNOWN").astype(str).str.strip().str.upper()
    meta.loc[meta["ViewPosition"] == "", "ViewPosition"] = "UNKNOWN"
    if views:
        wanted = {str(v).strip().upper() for v in views}
        keep = meta["ViewPosition"].isin(wanted)
        log.info(
            "%s: keeping %d of %d images with ViewPosition in %s", path, int(keep.sum()), len(meta), sorted(wanted)
        )
        meta = meta[keep]
    return meta.reset_index(drop=True)


def _attach_split(meta: pd.DataFrame, path: Path) -> pd.DataFrame:
    split = read_csv(path, _IDS, "MIMIC-CXR-JPG split CSV")
    require_columns(path, split, (*_IDS, "split"))
    split = _clean_ids(split)
    _check_unique(path, split, "dicom_id")
    split["split"] = split["split"].astype("string").str.strip()
    _check_one_value_per_study(path, split, "split", "split")
    merged = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left", validate="one_to_one")
    absent = int(merged["split"].isna().sum())
    log_dropped(
        path,
        absent,
        "images of the metadata have no official split (their subjects are split by the data module)",
        merged.loc[merged["split"].isna(), "dicom_id"].head(1).tolist() or None,
    )
    # images of one study present and absent in the split file: the study takes its known split
    merged["split"] = merged.groupby("study_id", sort=False)["split"].transform("first")
    return merged


def _image_paths(root: Path, meta: pd.DataFrame) -> pd.Series:
    subject, study = meta["subject_id"], meta["study_id"]
    return (
        str(root / "files")
        + os.sep
        + "p"
        + subject.str[:2]
        + os.sep
        + "p"
        + subject
        + os.sep
        + "s"
        + study
        + os.sep
        + meta["dicom_id"]
        + ".jpg"
    )


def _labels(path: Path, subjects: list[str], studies: list[str]) -> np.ndarray:
    chex = read_csv(path, ("subject_id", "study_id"), "MIMIC-CXR-JPG CheXpert label CSV")
    require_columns(path, chex, ("subject_id", "study_id"))
    chex = _clean_ids(chex)
    _check_unique(path, chex, "study_id")
    raw = raw_labels(path, chex)
    index = pd.Index(chex["subject_id"] + "/" + chex["study_id"])
    pos = index.get_indexer(pd.Index([f"{a}/{b}" for a, b in zip(subjects, studies)]))
    out = np.full((len(studies), NUM_LABELS), np.nan, dtype=np.float32)
    found = pos >= 0
    out[found] = raw[pos[found]]
    missing = np.flatnonzero(~found)
    log_dropped(
        path,
        len(missing),
        "studies are not in the CheXpert label table: their labels are unknown",
        f"study {studies[missing[0]]}" if len(missing) else None,
    )
    return out


def _reports_from_txt(root: Path, subjects: list[str], studies: list[str]) -> tuple[list, list, list[str]]:
    """(findings, impression, reasons) per study; reason is '' when the study has text."""
    findings: list[str | None] = []
    impression: list[str | None] = []
    reasons: list[str] = []
    files = root / "files"
    for subject, study in zip(subjects, studies):
        path = files / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        try:
            f, i = findings_and_impression(path.read_text(encoding="utf-8", errors="replace"))
            reason = "" if (f or i) else f"empty: {path}"
        except FileNotFoundError:
            f, i, reason = None, None, f"missing: {path}"
        findings.append(f)
        impression.append(i)
        reasons.append(reason)
    return findings, impression, reasons


def _reports_from_csv(path: Path, studies: list[str]) -> tuple[list, list, list[str]]:
    df = read_csv(path, ("study",), "MIMIC-CXR sectioned report CSV")
    require_columns(path, df, ("study", "findings", "impression"))
    df["study"] = strip_id_prefix(df["study"], "s")
    _check_unique(path, df, "study")

    def clean(col: str) -> pd.Series:
        if col not in df.columns:
            return pd.Series([None] * len(df), dtype=object)
        return df[col].map(lambda v: None if is_missing(v) else collapse_whitespace(str(v)))

    f, i, last = clean("findings"), clean("impression"), clean("last_paragraph")
    i = i.where(i.notna() | f.notna(), last)  # same fallback as sections.findings_and_impression
    pos = pd.Index(df["study"]).get_indexer(pd.Index(studies))
    findings = [f.iloc[p] if p >= 0 else None for p in pos]
    impression = [i.iloc[p] if p >= 0 else None for p in pos]
    reasons = [
        "" if (a or b) else (f"empty: study s{s}" if p >= 0 else f"no row for study s{s}")
        for a, b, s, p in zip(findings, impression, studies, pos)
    ]
    return findings, impression, reasons


def read_mimic_cxr(
    root: str | os.PathLike[str],
    reports: str = "txt",
    sectioned_csv: str | os.PathLike[str] | None = None,
    uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN,
    check_files: bool = True,
    views: list[str] | None = None,
    metadata_csv: str | os.PathLike[str] | None = None,
    chexpert_csv: str | os.PathLike[str] | None = None,
    split_csv: str | os.PathLike[str] | None = None,
) -> StudyTable:
    """Read MIMIC-CXR-JPG under ``root`` into one row per study (see the module docstring).

    ``reports``: ``"txt"`` (the MIMIC-CXR report files under ``files/``, sectioned with
    :mod:`cxr_vlp.text.sections`) or ``"sectioned_csv"`` (``sectioned_csv``, default
    ``root/mimic_cxr_sectioned.csv``). ``uncertain``: the -1 policy (:func:`~cxr_vlp.text.labels.apply_policy`).
    ``check_files``: stat each image and skip the missing ones (off: trust the metadata). ``views``: keep
    only images with these ``ViewPosition`` values (e.g. ``[PA, AP, LATERAL]``; missing ones are
    ``UNKNOWN``). The three CSV paths default to the published names under ``root``.
    """
    if reports not in ("txt", "sectioned_csv"):
        raise ValueError(f"reports must be 'txt' or 'sectioned_csv', got {reports!r}")
    root = check_root(root, "mimic_cxr")
    meta_path = _locate(root, METADATA_CSV, metadata_csv)
    meta = _read_metadata(meta_path, views)
    meta = _attach_split(meta, _locate(root, SPLIT_CSV, split_csv))

    paths = _image_paths(root, meta)
    exists = existing_mask(paths.tolist(), check_files)
    if len(meta) and not exists.any():
        raise FileNotFoundError(
            f"{root}: none of the {len(meta)} images listed in {meta_path} was found, e.g. "
            f"{paths.iloc[0]} (expected files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg)"
        )
    log_dropped(
        root,
        int((~exists).sum()),
        "images listed in the metadata are missing on disk and skipped",
        paths[~exists].iloc[0] if (~exists).any() else None,
    )
    n_studies = meta["study_id"].nunique()
    meta = meta.assign(path=paths)[exists]
    grouped = meta.groupby("study_id", sort=False).agg(
        subject_id=("subject_id", "first"),
        image_paths=("path", list),
        view_names=("ViewPosition", list),
        dicom_ids=("dicom_id", list),
        split=("split", "first"),
    )
    log_dropped(root, n_studies - len(grouped), "studies have none of their images on disk and are dropped")

    studies = grouped.index.tolist()
    subjects = grouped["subject_id"].tolist()
    if reports == "txt":
        findings, impression, reasons = _reports_from_txt(root, subjects, studies)
    else:
        findings, impression, reasons = _reports_from_csv(_locate(root, SECTIONED_CSV, sectioned_csv), studies)
    raw = _labels(_locate(root, CHEXPERT_CSV, chexpert_csv), subjects, studies)

    keep = [k for k, reason in enumerate(reasons) if not reason]
    dropped = [reason for reason in reasons if reason]
    log_dropped(
        root,
        len(dropped),
        "studies without report text (no report, or empty findings and impression) are dropped",
        dropped[0] if dropped else None,
    )
    split = [None if pd.isna(s) else str(s) for s in grouped["split"]]
    table = StudyTable(
        study_ids=[studies[k] for k in keep],
        subject_ids=[subjects[k] for k in keep],
        image_paths=[grouped["image_paths"].iloc[k] for k in keep],
        view_names=[grouped["view_names"].iloc[k] for k in keep],
        findings=[findings[k] for k in keep],
        impression=[impression[k] for k in keep],
        labels=apply_policy(raw[keep], uncertain) if keep else np.zeros((0, NUM_LABELS), np.float32),
        split=[split[k] for k in keep],
        source=str(root),
        has_labels=True,
        extra={"dicom_ids": [grouped["dicom_ids"].iloc[k] for k in keep]},
    )
    log.info(
        "%s: %d studies, %d images, %d subjects",
        root,
        len(table),
        sum(map(len, table.image_paths)),
        len(set(table.subject_ids)),
    )
    return table
