"""Builders of tiny dataset trees in the published layouts (MIMIC-CXR-JPG, IU X-Ray OpenI / R2Gen, CheXpert).

File and column names are the published ones; images are small gray pictures with varied content (a
seeded blurred noise field plus a few ellipses), written with OpenCV. Each builder returns a small record of
what it wrote so tests can assert exact parsed values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr_vlp.text.labels import CHEXPERT_LABELS

IMAGE_SIZE = 64
# MIMIC's CheXpert CSV lists the labels alphabetically, not in CHEXPERT_LABELS order
MIMIC_LABEL_ORDER = sorted(CHEXPERT_LABELS)
_FINDINGS = (
    "The lungs are clear. No pleural effusion or\npneumothorax. Heart size is normal.",
    "Mild cardiomegaly. Small left pleural effusion.\nNo pneumothorax.",
    "Right lower lobe opacity concerning for pneumonia.",
    "Endotracheal tube terminates 4 cm above the carina. No focal consolidation.",
    "Patchy bibasilar atelectasis. No pulmonary edema.",
    "There is a 1 cm nodule in the left upper lobe. Lungs otherwise clear.",
)
_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "Cardiomegaly with small left effusion.",
    "Possible right lower lobe pneumonia.",
    "Tube in standard position.",
    "Bibasilar atelectasis.",
    "Left upper lobe nodule; CT recommended.",
)


def write_image(path: Path, seed: int, size: int = IMAGE_SIZE) -> None:
    """A gray image with seeded, varied content (JPEG or PNG by the file extension)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(40, 200, (size, size)).astype(np.float32), (0, 0), 3)
    for _ in range(3):
        c = tuple(int(v) for v in rng.integers(8, size - 8, 2))
        axes = tuple(int(v) for v in rng.integers(3, size // 4, 2))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0, 255)), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8)):
        raise OSError(f"could not write {path}")


def _raw_labels(rng: np.random.Generator) -> dict[str, float]:
    """Raw CheXpert values (1 / 0 / -1 / NaN) for a few observations, blank elsewhere."""
    out = {name: np.nan for name in CHEXPERT_LABELS}
    for name in rng.choice(CHEXPERT_LABELS[1:], size=3, replace=False):
        out[str(name)] = float(rng.choice([1.0, 0.0, -1.0]))
    if not any(out[n] == 1.0 for n in CHEXPERT_LABELS[1:-1]) and rng.random() < 0.5:
        out["No Finding"] = 1.0
    return out


# ----------------------------------------------------------------------------------------------- MIMIC
@dataclass
class MimicLayout:
    root: Path
    subjects: list[str] = field(default_factory=list)
    studies: dict[str, str] = field(default_factory=dict)  # study -> subject
    split: dict[str, str] = field(default_factory=dict)  # study -> official split
    dicoms: dict[str, list[str]] = field(default_factory=dict)  # study -> dicom ids
    views: dict[str, list[str]] = field(default_factory=dict)
    findings: dict[str, str] = field(default_factory=dict)
    impression: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, float]] = field(default_factory=dict)  # study -> raw labels
    missing_images: list[Path] = field(default_factory=list)

    def image(self, study: str, dicom: str) -> Path:
        subject = self.studies[study]
        return self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"

    def report(self, study: str) -> Path:
        subject = self.studies[study]
        return self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"


def build_mimic(
    root: Path, n_subjects: int = 12, studies_per_subject: int = 2, n_missing: int = 1, seed: int = 0
) -> MimicLayout:
    """MIMIC-CXR-JPG: 3 CSVs (.csv.gz), frontal + lateral JPEGs, .txt reports and the sectioned CSV.

    Subjects split 2/3 train, 1/6 validate, 1/6 test (official split). The last ``n_missing`` lateral
    images are not written (a partial download).
    """
    rng = np.random.default_rng(seed)
    out = MimicLayout(root=root)
    meta, chex, split, sectioned = [], [], [], []
    n_train, n_val = (2 * n_subjects) // 3, n_subjects // 6
    k = 0
    for s in range(n_subjects):
        subject = str(10000032 + 1117 * s)
        out.subjects.append(subject)
        official = "train" if s < n_train else "validate" if s < n_train + n_val else "test"
        for _ in range(studies_per_subject):
            study = str(50414267 + 7919 * k)
            out.studies[study], out.split[study] = subject, official
            views = ["PA", "LATERAL"] if k % 3 else ["AP", "LL"]
            dicoms = [f"{k:08x}-{j:04x}-{(k * 31 + j) % 997:08x}" for j in range(len(views))]
            out.dicoms[study], out.views[study] = dicoms, views
            for j, (dicom, view) in enumerate(zip(dicoms, views)):
                meta.append(
                    {
                        "dicom_id": dicom,
                        "subject_id": int(subject),
                        "study_id": int(study),
                        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                        "ViewPosition": view,
                        "Rows": IMAGE_SIZE,
                        "Columns": IMAGE_SIZE,
                        "StudyDate": 21800506,
                    }
                )
                split.append({"dicom_id": dicom, "study_id": int(study), "subject_id": int(subject), "split": official})
                write_image(out.image(study, dicom), seed=1000 * k + j)
            f = f"{_FINDINGS[k % len(_FINDINGS)]} Study number {k} of the series."
            i = _IMPRESSIONS[k % len(_IMPRESSIONS)]
            out.findings[study], out.impression[study] = " ".join(f.split()), i
            out.report(study).write_text(
                f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                f" INDICATION:  ___F with cough, r/o pneumonia\n\n COMPARISON:  None.\n\n FINDINGS:\n\n"
                f" {f}\n\n IMPRESSION:\n\n {i}\n"
            )
            sectioned.append(
                {
                    "study": f"s{study}",
                    "impression": i,
                    "findings": f,
                    "last_paragraph": i,
                    "comparison": "None.",
                    "indication": "___F with cough",
                }
            )
            out.labels[study] = _raw_labels(rng)
            chex.append(
                {
                    "subject_id": int(subject),
                    "study_id": int(study),
                    **{name: out.labels[study][name] for name in MIMIC_LABEL_ORDER},
                }
            )
            k += 1
    for study in list(out.studies)[-n_missing:] if n_missing else []:
        path = out.image(study, out.dicoms[study][-1])
        path.unlink()
        out.missing_images.append(path)
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(chex).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame(split).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    pd.DataFrame(sectioned).to_csv(root / "mimic_cxr_sectioned.csv", index=False)
    return out


# ----------------------------------------------------------------------------------------------- IU X-Ray
_OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <meta type="rr"/>
  <uId id="{uid}"/>
  <pmcId id="{n}"/>
  <docSource>CXR</docSource>
  <IUXRId id="{n}"/>
  <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
    <Article PubModel="Electronic">
      <Abstract>
        <AbstractText Label="COMPARISON">None.</AbstractText>
        <AbstractText Label="INDICATION">Positive TB test</AbstractText>
        {sections}
      </Abstract>
    </Article>
  </MedlineCitation>
  <MeSH><major>normal</major></MeSH>
  {images}
</eCitation>
"""
_PARENT_IMAGE = """<parentImage id="{id}">
    <figureId>F{j}</figureId>
    <caption>Xray Chest PA and Lateral</caption>
    <panel type="single"><url>/hadoop/storage/radiology/extract/{id}.jpg</url></panel>
  </parentImage>"""


@dataclass
class IULayout:
    root: Path
    studies: list[str] = field(default_factory=list)
    images: dict[str, list[Path]] = field(default_factory=dict)
    findings: dict[str, str | None] = field(default_factory=dict)
    impression: dict[str, str | None] = field(default_factory=dict)
    split: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # studies the reader must drop
    missing_images: list[Path] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


def build_iu_openi(root: Path, n_reports: int = 20, malformed: bool = True) -> IULayout:
    """OpenI: ``ecgen-radiology/<n>.xml`` + ``NLMCXR_png/CXR<n>_1_IM-<m>-<k>.png``.

    Report 3 has only an IMPRESSION; the last report has no FINDINGS / IMPRESSION text (dropped); report 5
    lists an image that is not on disk; with ``malformed`` a broken ``9999.xml`` is added (skipped).
    """
    out = IULayout(root=root)
    (root / "ecgen-radiology").mkdir(parents=True)
    for n in range(1, n_reports + 1):
        uid = f"CXR{n}"
        findings = None if n == 3 else f"{_FINDINGS[n % len(_FINDINGS)]} Report {n}."
        impression = _IMPRESSIONS[n % len(_IMPRESSIONS)]
        if n == n_reports:
            findings = impression = None
            out.dropped.append(uid)
        sections = "\n        ".join(
            f'<AbstractText Label="{label}">{text}</AbstractText>' if text else f'<AbstractText Label="{label}"/>'
            for label, text in (("FINDINGS", findings), ("IMPRESSION", impression))
        )
        ids = [f"CXR{n}_1_IM-{n:04d}-{1001 + j}" for j in range(2)]
        (root / "ecgen-radiology" / f"{n}.xml").write_text(
            _OPENI_XML.format(
                uid=uid,
                n=n,
                sections=sections,
                images="\n  ".join(_PARENT_IMAGE.format(id=i, j=j + 1) for j, i in enumerate(ids)),
            )
        )
        paths = [root / "NLMCXR_png" / f"{i}.png" for i in ids]
        for j, path in enumerate(paths):
            if n == 5 and j == 1:
                out.missing_images.append(path)
                continue
            write_image(path, seed=50 * n + j)
        out.studies.append(uid)
        out.images[uid] = [p for p in paths if p not in out.missing_images]
        out.findings[uid] = " ".join(findings.split()) if findings else None
        out.impression[uid] = impression
    if malformed:
        (root / "ecgen-radiology" / "9999.xml").write_text("<eCitation><uId id='CXR9999'/><Abstract>")
        out.malformed.append("9999.xml")
    return out


def build_iu_r2gen(root: Path, counts: tuple[int, int, int] = (14, 4, 4)) -> IULayout:
    """R2Gen: ``annotation.json`` (train / val / test lists) + ``images/<id>/0.png, 1.png``."""
    out = IULayout(root=root)
    data: dict[str, list[dict]] = {}
    n = 0
    for key, count in zip(("train", "val", "test"), counts):
        data[key] = []
        for _ in range(count):
            study = f"CXR{2384 + n}_IM-{942 + n:04d}"
            report = f"{_FINDINGS[n % len(_FINDINGS)]} {_IMPRESSIONS[n % len(_IMPRESSIONS)]} Case {n}."
            rel = [f"{study}/{j}.png" for j in range(2)]
            for j, r in enumerate(rel):
                write_image(root / "images" / r, seed=70 * n + j)
            data[key].append({"id": study, "report": report, "image_path": rel, "split": key})
            out.studies.append(study)
            out.images[study] = [root / "images" / r for r in rel]
            out.findings[study], out.impression[study] = " ".join(report.split()), None
            out.split[study] = key
            n += 1
    (root / "annotation.json").write_text(json.dumps(data))
    return out


# ----------------------------------------------------------------------------------------------- CheXpert
@dataclass
class ChexpertLayout:
    root: Path  # the CheXpert-v1.0-small folder
    rows: dict[str, list[dict]] = field(default_factory=dict)  # csv name -> rows as written
    studies: dict[str, str] = field(default_factory=dict)  # study id -> split ("train" / "valid")


def build_chexpert(parent: Path, n_train: int = 14, n_valid: int = 4, seed: int = 0) -> ChexpertLayout:
    """``CheXpert-v1.0-small/{train,valid}.csv`` and the JPEG folders; Path relative to ``parent``."""
    rng = np.random.default_rng(seed)
    root = parent / "CheXpert-v1.0-small"
    out = ChexpertLayout(root=root)
    for csv_name, folder, n_patients, first in (
        ("train.csv", "train", n_train, 1),
        ("valid.csv", "valid", n_valid, 64541),
    ):
        rows = []
        for p in range(n_patients):
            patient = f"patient{first + p:05d}"
            for s in range(1 + (p % 2)):
                study = f"study{s + 1}"
                labels = _raw_labels(rng)
                if folder == "valid":  # the published valid.csv has no blanks
                    labels = {k: (0.0 if np.isnan(v) else abs(v)) for k, v in labels.items()}
                out.studies[f"{patient}_{study}"] = folder
                views = [("Frontal", "PA" if p % 3 else "AP"), ("Lateral", "")][: 1 + ((p + s) % 2)]
                for v, (kind, appa) in enumerate(views):
                    rel = f"CheXpert-v1.0-small/{folder}/{patient}/{study}/view{v + 1}_{kind.lower()}.jpg"
                    write_image(parent / rel, seed=int(rng.integers(1 << 30)))
                    rows.append(
                        {
                            "Path": rel,
                            "Sex": "Female" if p % 2 else "Male",
                            "Age": 40 + p,
                            "Frontal/Lateral": kind,
                            "AP/PA": appa or np.nan,
                            **labels,
                        }
                    )
        pd.DataFrame(rows).to_csv(root / csv_name, index=False)
        out.rows[csv_name] = rows
    return out
