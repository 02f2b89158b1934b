"""RSNA Pneumonia Detection Challenge (Kaggle, 2018), as published.

Layout under ``root``::

    stage_2_train_labels.csv     patientId, x, y, width, height, Target (one row per box; Target 0 rows have no box)
    stage_2_train_images/<patientId>.dcm

Images converted to PNG / JPEG with the same stem (``<patientId>.png``) are read instead of, or beside, the DICOMs
(``extensions`` gives the order of preference); DICOMs are decoded by
:func:`cxr_vlp.data.transforms.load_grayscale`.

One study per ``patientId`` (the subject too: the challenge has one image per patient), view ``FRONTAL`` (every
image is a frontal radiograph; ``read_headers`` reads ``ViewPosition`` PA / AP, ``PatientSex`` and ``PatientAge``
from the DICOM headers instead). The label **Pneumonia** is the maximum ``Target`` of the patient's rows, the
other 13 CheXpert labels are unknown; the raw values go through :func:`~cxr_vlp.text.labels.apply_policy`. The boxes
``[x, y, width, height]`` of each study are kept in ``extra["boxes"]``. No official split (the stage 2 test labels
were never released): the data module splits the patients.

RSNA has **no reports**. Each study's ``impression`` is the templated sentence of its label
(:func:`~cxr_vlp.data.readers.chexpert.report_from_labels`: "Pneumonia is present." / "No pneumonia."), so the data
loaders have a text to carry, and ``extra["no_report"]`` is true for every study: ``python -m cxr_vlp.eval`` skips
retrieval on it and runs zero-shot classification and the probes.

Bad input: ``root`` missing → ``FileNotFoundError`` naming it; the labels CSV missing → ``FileNotFoundError``
naming the file; a missing column → ``ValueError`` naming file and column; a ``Target`` that is not 0 / 1, a box
value that is not a number, or a ``Target`` 1 row without a box → ``ValueError`` naming file, row and column.
Patients without an image are skipped, counted and logged; none at all raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_vlp.data.readers.chexpert import report_from_labels
from cxr_vlp.data.readers.common import check_root, log_dropped, read_csv, require_columns
from cxr_vlp.data.table import StudyTable
from cxr_vlp.text.labels import CHEXPERT_LABELS, NUM_LABELS, UncertainPolicy, apply_policy

log = logging.getLogger(__name__)

__all__ = ["BOX_COLUMNS", "LABELS_CSV", "IMAGE_DIR", "read_rsna_pneumonia"]

LABELS_CSV = "stage_2_train_labels.csv"
IMAGE_DIR = "stage_2_train_images"
BOX_COLUMNS = ("x", "y", "width", "height")
PNEUMONIA = CHEXPERT_LABELS.index("Pneumonia")


def _checked(csv_path: Path, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(Target ``[n]`` as 0 / 1, boxes ``[n, 4]`` with NaN for none), every bad cell naming file, row and column."""
    target = pd.to_numeric(df["Target"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(target, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{csv_path}: row {row + 1}, column 'Target': must be 0 or 1, got {df['Target'].iloc[row]!r}")
    boxes = np.full((len(df), 4), np.nan)
    for j, name in enumerate(BOX_COLUMNS):
        if name not in df.columns:
            continue
        col = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(col) & df[name].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{csv_path}: row {row + 1}, column {name!r}: not a number: {df[name].iloc[row]!r}")
        boxes[:, j] = col
    if all(c in df.columns for c in BOX_COLUMNS):
        no_box = (target == 1.0) & np.isnan(boxes).any(axis=1)
        if no_box.any():
            row = int(np.flatnonzero(no_box)[0])
            raise ValueError(
                f"{csv_path}: row {row + 1}: Target 1 needs a box (x, y, width, height), got "
                f"{df.loc[df.index[row], list(BOX_COLUMNS)].tolist()}"
            )
    return target, boxes


def _image_index(image_dir: Path, extensions: Sequence[str]) -> dict[str, str]:
    """``stem -> path`` of the images in ``image_dir`` (one listing), the first of ``extensions`` winning."""
    rank = {e.lower(): i for i, e in enumerate(extensions)}
    best: dict[str, tuple[int, str]] = {}
    if not image_dir.is_dir():
        return {}
    with os.scandir(image_dir) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            r = rank.get(ext.lower())
            if r is not None and (stem not in best or r < best[stem][0]) and entry.is_file():
                best[stem] = (r, entry.path)
    return {k: v[1] for k, v in best.items()}


def _headers(paths: list[str]) -> dict[str, list]:
    """``ViewPosition`` (PA / AP), ``PatientSex`` and ``PatientAge`` of DICOM files (None for other files)."""
    import pydicom

    views, sex, age = [], [], []
    for path in paths:
        if not path.lower().endswith(".dcm"):
            views.append("FRONTAL")
            sex.append(None)
            age.append(None)
            continue
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["ViewPosition", "PatientSex", "PatientAge"]
            )
        except Exception as err:
            raise OSError(f"unreadable DICOM header: {path} ({type(err).__name__}: {err})") from err
        views.append(str(getattr(ds, "ViewPosition", "") or "FRONTAL").strip().upper())
        sex.append(str(getattr(ds, "PatientSex", "") or "") or None)
        raw_age = str(getattr(ds, "PatientAge", "") or "").rstrip("Yy")
        age.append(int(raw_age) if raw_age.isdigit() else None)
    return {"view": views, "sex": sex, "age": age}


def read_rsna_pneumonia(
    root: str | os.PathLike[str],
    labels_csv: str = LABELS_CSV,
    image_dir: str = IMAGE_DIR,
    extensions: Sequence[str] = (".dcm", ".png", ".jpg", ".jpeg"),
    uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN,
    read_headers: bool = False,
    check_files: bool = True,
) -> StudyTable:
    """Read RSNA Pneumonia under ``root`` into one row per patient (see the module docstring).

    ``labels_csv`` / ``image_dir``: names under ``root`` (stage 1 used ``stage_1_train_labels.csv``);
    ``extensions``: image suffixes tried, in order of preference; ``uncertain``: the label policy (RSNA has no
    uncertain values); ``read_headers``: views, sex and age from the DICOM headers (one header read per patient);
    ``check_files``: look the images up on disk, skipping patients without one (else ``<patientId><first
    extension>`` is assumed)."""
    root = check_root(root, "rsna")
    if not extensions:
        raise ValueError("data.reader.extensions is empty: give the image suffixes to look for, e.g. [.dcm, .png]")
    csv_path = root / labels_csv
    df = read_csv(csv_path, ("patientId",), "RSNA Pneumonia labels CSV")
    require_columns(csv_path, df, ("patientId", "Target"))
    df["patientId"] = df["patientId"].astype(str).str.strip()
    blank = (df["patientId"] == "") | df["patientId"].isin(["nan", "None"])
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise ValueError(f"{csv_path}: row {row + 1}, column 'patientId': empty")
    target, boxes = _checked(csv_path, df)

    patients = pd.unique(df["patientId"]).tolist()
    codes = pd.Categorical(df["patientId"], categories=patients).codes
    study_target = np.zeros(len(patients))
    np.maximum.at(study_target, codes, target)
    study_boxes: list[list[list[float]]] = [[] for _ in patients]
    for code, box in zip(codes, boxes):
        if not np.isnan(box).any():
            study_boxes[code].append([float(v) for v in box])

    folder = root / image_dir
    if check_files:
        index = _image_index(folder, extensions)
        paths = [index.get(p) for p in patients]
    else:
        paths = [str(folder / f"{p}{extensions[0]}") for p in patients]
    keep = [k for k, p in enumerate(paths) if p is not None]
    missing = len(patients) - len(keep)
    log_dropped(
        root,
        missing,
        f"patients of {labels_csv} have no image in {folder} and are skipped",
        next((folder / f"{patients[k]}{extensions[0]}" for k, p in enumerate(paths) if p is None), None),
    )
    if not keep:
        raise FileNotFoundError(
            f"{root}: none of the {len(patients)} patients of {labels_csv} has an image "
            f"({'/'.join(extensions)}) in {folder}"
        )

    raw = np.full((len(keep), NUM_LABELS), np.nan, dtype=np.float32)
    raw[:, PNEUMONIA] = study_target[keep]
    ids = [patients[k] for k in keep]
    kept_paths = [str(paths[k]) for k in keep]
    headers = _headers(kept_paths) if read_headers else {"view": ["FRONTAL"] * len(keep)}
    extra = {"boxes": [study_boxes[k] for k in keep], "no_report": [True] * len(keep)}
    extra.update({k: v for k, v in headers.items() if k != "view"})
    table = StudyTable(
        study_ids=ids,
        subject_ids=list(ids),
        image_paths=[[p] for p in kept_paths],
        view_names=[[v] for v in headers["view"]],
        findings=[None] * len(keep),
        impression=[report_from_labels(r, key=s) for r, s in zip(raw, ids)],
        labels=apply_policy(raw, uncertain),
        split=None,
        source=str(root),
        has_labels=True,
        extra=extra,
        label_sources={"Pneumonia": "given"},
    )
    log.info(
        "%s: %d patients (%d with pneumonia, %d boxes); text built from the label",
        root,
        len(table),
        int(raw[:, PNEUMONIA].sum()),
        sum(map(len, extra["boxes"])),
    )
    return table
