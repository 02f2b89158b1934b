"""CheXpert (Stanford), as published: ``train.csv`` / ``valid.csv`` plus the image folders.

Layout under ``root`` (the ``CheXpert-v1.0`` or ``CheXpert-v1.0-small`` folder)::

    train.csv  valid.csv    Path, Sex, Age, Frontal/Lateral, AP/PA, 14 CheXpert labels (1 / 0 / -1 / blank)
    train/patient00001/study1/view1_frontal.jpg
    valid/patient64541/study1/view1_frontal.jpg

``Path`` is relative to the *parent* of the dataset folder (``CheXpert-v1.0-small/train/...``); it is
resolved robustly by trying ``root/Path``, ``root.parent/Path`` and ``root/<Path without its first
folder>`` on a sample of rows and using the first that finds files.

One row per image is grouped into studies (patient + study folder, study id ``patient00001_study1``); the
subject is the patient. ``valid.csv`` rows get the split ``valid_as`` (default ``test``: CheXpert's
validation set is the usual test set); ``train.csv`` rows get no split, so the data module divides their
patients into train / val.

CheXpert has **no reports**. With ``text_from_labels=True`` each study gets a short templated report built
from its raw labels (:func:`report_from_labels`) as its ``impression`` (``findings`` stays empty), so every
loss can train on label text ("label-only" experiments), and zero-shot and probes work as usual. With
``text_from_labels=False`` the reader refuses to run.

Bad input: ``root`` missing or holding neither CSV → ``FileNotFoundError`` naming it; a missing column →
``ValueError`` naming file and column; a duplicate ``Path``, a ``Path`` without ``patientN/studyN/`` or a
bad label value → ``ValueError`` naming file, row and column. Missing images are skipped, studies without
images (or without any label, hence no text) dropped, each counted and logged.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
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
)
from cxr_vlp.data.table import StudyTable
from cxr_vlp.text.labels import CHEXPERT_LABELS, NO_FINDING, NUM_LABELS, UncertainPolicy, apply_policy

log = logging.getLogger(__name__)

__all__ = ["NO_FINDING_TEXT", "OBSERVATION_PHRASES", "read_chexpert", "report_from_labels"]

NO_FINDING_TEXT = "No acute cardiopulmonary abnormality."
# observation -> (phrase in running text, plural?)
OBSERVATION_PHRASES: dict[str, tuple[str, bool]] = {
    "Enlarged Cardiomediastinum": ("enlarged cardiomediastinum", False),
    "Cardiomegaly": ("cardiomegaly", False),
    "Lung Opacity": ("lung opacity", False),
    "Lung Lesion": ("lung lesion", False),
    "Edema": ("pulmonary edema", False),
    "Consolidation": ("consolidation", False),
    "Pneumonia": ("pneumonia", False),
    "Atelectasis": ("atelectasis", False),
    "Pneumothorax": ("pneumothorax", False),
    "Pleural Effusion": ("pleural effusion", False),
    "Pleural Other": ("pleural thickening", False),
    "Fracture": ("fracture", False),
    "Support Devices": ("support devices", True),
}
_TEMPLATES: dict[float, tuple[str, ...]] = {
    1.0: ("{Obs} {is} present.", "There {is} {obs}.", "{Obs} {is} seen."),
    -1.0: ("Possible {obs}.", "{Obs} cannot be excluded.", "Questionable {obs}."),
    0.0: ("No {obs}.", "No evidence of {obs}.", "There {is} no {obs}."),
}
_CSVS = (("train.csv", None), ("valid.csv", "valid"))
_STUDY_RX = r"(patient\d+)/(study\d+)/"


def report_from_labels(raw: Sequence[float], key: str = "") -> str | None:
    """A short templated report from one study's RAW CheXpert labels (1 / 0 / -1 / NaN, in label order).

    "No Finding" positive → :data:`NO_FINDING_TEXT`; then one sentence per observation: positive
    ("Cardiomegaly is present."), uncertain ("Possible cardiomegaly."), negative ("No cardiomegaly."), blank
    omitted; positives first, then uncertain, then negative. The wording among a few equivalent variants
    is chosen deterministically from ``key`` (e.g. the study id) and the observation, so texts vary across
    studies but are reproducible. ``None`` when every label is blank.
    """
    values = np.asarray(raw, dtype=np.float64)
    if values.shape != (NUM_LABELS,):
        raise ValueError(f"expected {NUM_LABELS} label values, got shape {values.shape}")
    sentences = [NO_FINDING_TEXT] if values[NO_FINDING] == 1.0 else []
    for status in (1.0, -1.0, 0.0):
        for j, name in enumerate(CHEXPERT_LABELS):
            if j == NO_FINDING or values[j] != status:
                continue
            phrase, plural = OBSERVATION_PHRASES[name]
            options = _TEMPLATES[status]
            template = options[zlib.crc32(f"{key}|{name}".encode()) % len(options)]
            sentences.append(
                template.format(obs=phrase, Obs=phrase[0].upper() + phrase[1:], **{"is": "are" if plural else "is"})
            )
    return " ".join(sentences) or None


def _resolver(root: Path, paths: pd.Series, csv_path: Path, check_files: bool) -> tuple[str, str]:
    """(base folder, how many leading path components to drop) that makes ``Path`` values point at files."""
    first = paths.iloc[0].split("/", 1)[0] if len(paths) else ""
    options = [(str(root), 0), (str(root.parent), 0), (str(root), 1)]
    if not check_files:
        return options[2] if first == root.name else options[0]
    sample = paths.iloc[np.unique(np.linspace(0, len(paths) - 1, min(len(paths), 200)).astype(int))]
    for base, strip in options:
        if any(os.path.isfile(_join(base, p, strip)) for p in sample):
            return base, strip
    tried = [_join(b, sample.iloc[0], s) for b, s in options]
    raise FileNotFoundError(f"{csv_path}: no image of column 'Path' found under {root}; tried e.g. {tried}")


def _join(base: str, rel: str, strip: int) -> str:
    return os.path.join(base, rel.split("/", strip)[-1] if strip else rel)


def _read_csv(root: Path, csv_path: Path, split: str | None, check_files: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per image (path, subject, study, view, sex, age, split) and the raw labels ``[n, 14]``."""
    df = read_csv(csv_path, (), "CheXpert CSV")
    require_columns(csv_path, df, ("Path", *CHEXPERT_LABELS))
    df["Path"] = df["Path"].astype(str).str.strip().str.replace("\\", "/", regex=False)
    row = first_duplicate_row(df["Path"])
    if row is not None:
        raise ValueError(f"{csv_path}: row {row + 1}, column 'Path': {df['Path'].iloc[row]!r} appears twice")
    parts = df["Path"].str.extract(_STUDY_RX)
    bad = parts[0].isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{csv_path}: row {row + 1}, column 'Path': {df['Path'].iloc[row]!r} has no patient<N>/study<N>/ folders"
        )
    raw = raw_labels(csv_path, df)
    base, strip = _resolver(root, df["Path"], csv_path, check_files)
    if "Frontal/Lateral" in df.columns:
        kind = df["Frontal/Lateral"].fillna("").astype(str).str.strip().str.upper()
    else:
        kind = df["Path"].str.extract(r"_(frontal|lateral)\.", expand=False).fillna("").str.upper()
    appa = (
        df["AP/PA"].fillna("").astype(str).str.strip().str.upper()
        if "AP/PA" in df.columns
        else pd.Series([""] * len(df), index=df.index)
    )
    view = appa.where((appa != "") & (kind != "LATERAL"), kind).replace("", "UNKNOWN")
    out = pd.DataFrame(
        {
            "path": [_join(base, p, strip) for p in df["Path"]],
            "subject_id": parts[0].to_numpy(),
            "study_id": (parts[0] + "_" + parts[1]).to_numpy(),
            "view": view.to_numpy(),
            "sex": df["Sex"].to_numpy() if "Sex" in df.columns else None,
            "age": df["Age"].to_numpy() if "Age" in df.columns else None,
            "split": split,
        }
    )
    return out, raw


def read_chexpert(
    root: str | os.PathLike[str],
    uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN,
    valid_as: str | None = "test",
    text_from_labels: bool = True,
    check_files: bool = True,
) -> StudyTable:
    """Read CheXpert under ``root`` into one row per study (see the module docstring).

    ``uncertain``: the -1 policy. ``valid_as``: split of the ``valid.csv`` studies (``test``, ``val`` or
    ``None`` to let the data module split them with the rest). ``text_from_labels``: build the templated
    label report (required: CheXpert has no reports). ``check_files``: stat each image, skipping missing ones.
    """
    root = check_root(root, "chexpert")
    if not text_from_labels:
        raise ValueError(
            "CheXpert has no reports, so there is no text to pair with the images: set "
            "data.reader.text_from_labels=true to train on templated label text"
        )
    frames, raws = [], []
    for name, split_name in _CSVS:
        csv_path = root / name
        if csv_path.is_file():
            frame, raw = _read_csv(root, csv_path, valid_as if split_name == "valid" else None, check_files)
            frames.append(frame)
            raws.append(raw)
        else:
            log.info("%s: no %s", root, name)
    if not frames:
        raise FileNotFoundError(f"{root}: neither train.csv nor valid.csv found (expected the CheXpert-v1.0 folder)")
    df = pd.concat(frames, ignore_index=True)
    raw = np.concatenate(raws)

    exists = existing_mask(df["path"].tolist(), check_files)
    log_dropped(
        root,
        int((~exists).sum()),
        "images listed in the CSVs are missing on disk and skipped",
        df.loc[~exists, "path"].iloc[0] if (~exists).any() else None,
    )
    n_studies = df["study_id"].nunique()
    raw_rows = np.flatnonzero(exists)
    df = df[exists].assign(row=np.arange(len(raw_rows)))
    grouped = df.groupby("study_id", sort=False).agg(
        subject_id=("subject_id", "first"),
        image_paths=("path", list),
        view_names=("view", list),
        sex=("sex", "first"),
        age=("age", "first"),
        split=("split", "first"),
        row=("row", "first"),
    )
    log_dropped(root, n_studies - len(grouped), "studies have none of their images on disk and are dropped")
    study_raw = raw[raw_rows[grouped["row"].to_numpy()]]  # labels are per study: the first image's row
    studies = grouped.index.tolist()
    texts = [report_from_labels(r, key=s) for r, s in zip(study_raw, studies)]
    keep = [k for k, t in enumerate(texts) if t]
    log_dropped(root, len(studies) - len(keep), "studies without any label value (no text to build) are dropped")

    table = StudyTable(
        study_ids=[studies[k] for k in keep],
        subject_ids=[grouped["subject_id"].iloc[k] for k in keep],
        image_paths=[grouped["image_paths"].iloc[k] for k in keep],
        view_names=[grouped["view_names"].iloc[k] for k in keep],
        findings=[None] * len(keep),
        impression=[texts[k] for k in keep],
        labels=apply_policy(study_raw[keep], uncertain) if keep else np.zeros((0, NUM_LABELS), np.float32),
        split=[None if pd.isna(grouped["split"].iloc[k]) else grouped["split"].iloc[k] for k in keep],
        source=str(root),
        has_labels=True,
        extra={"sex": [grouped["sex"].iloc[k] for k in keep], "age": [grouped["age"].iloc[k] for k in keep]},
    )
    log.info(
        "%s: %d studies, %d images, %d patients; text built from the labels",
        root,
        len(table),
        sum(map(len, table.image_paths)),
        len(set(table.subject_ids)),
    )
    return table
