"""IU X-Ray (Indiana University chest X-rays, OpenI) in its two published layouts.

* **OpenI** (``layout="openi"``), as downloaded from openi.nlm.nih.gov::

      ecgen-radiology/1.xml ...        one report per file: <AbstractText Label="FINDINGS">,
                                       <AbstractText Label="IMPRESSION">, <parentImage id="CXR1_1_IM-0001-3001">
      NLMCXR_png/CXR1_1_IM-0001-3001.png

  The study id is the report's ``<uId id="CXR1">`` (the file name without ``.xml`` when absent).
* **R2Gen** (``layout="r2gen"``), the report-generation benchmark layout::

      annotation.json   {"train": [{"id": "CXR2384_IM-0942", "report": "...", "split": "train",
                                    "image_path": ["CXR2384_IM-0942/0.png", "CXR2384_IM-0942/1.png"]}, ...],
                         "val": [...], "test": [...]}
      images/CXR2384_IM-0942/0.png

  Its split is official and goes into ``table.split``. Its reports are one findings-like paragraph: they
  become ``findings`` (sectioned first, in case a report carries FINDINGS: / IMPRESSION: headers).

``layout="auto"`` picks R2Gen when ``annotation.json`` is under ``root`` (or ``root/iu_xray``), OpenI when
``ecgen-radiology/`` is, and raises ``FileNotFoundError`` describing both layouts otherwise.

Choices: IU X-Ray has **no patient ids**; each report is one patient, so ``subject_id = study_id`` (patient-level
splitting is then study-level; nothing better is possible). The per-image **view names are not published**
(OpenI's caption describes the whole study; the R2Gen file order is not reliably frontal-first), so every view
is ``"UNKNOWN"`` and the multi-view sampler treats the images of a study alike. There are **no CheXpert
labels**: they are derived with the rule-based labeler (:func:`cxr_vlp.text.labeler.label_reports`) on
findings + impression and go through the one label policy.

Bad input: a malformed XML file is skipped, counted and logged with its name; images missing on disk are
skipped and studies left without images dropped (counted, logged with an example path); reports without
findings and impression are dropped (counted, logged); a study id twice, or an R2Gen entry lacking a key,
raises ``ValueError`` naming the file and the entry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vlp.data.readers.common import check_root, derive_labels, existing_mask, log_dropped
from cxr_vlp.data.table import StudyTable
from cxr_vlp.text.labels import CHEXPERT_LABELS, UncertainPolicy
from cxr_vlp.text.sections import PREAMBLE, collapse_whitespace, parse_sections

log = logging.getLogger(__name__)

__all__ = ["UNKNOWN_VIEW", "detect_layout", "parse_openi_xml", "read_iu_xray", "split_r2gen_report"]

UNKNOWN_VIEW = "UNKNOWN"
OPENI_REPORTS, OPENI_IMAGES = "ecgen-radiology", "NLMCXR_png"
R2GEN_ANNOTATION, R2GEN_IMAGES = "annotation.json", "images"


@dataclass
class _Studies:
    """Rows collected by a layout parser before images are checked and labels derived."""

    ids: list[str] = field(default_factory=list)
    images: list[list[str]] = field(default_factory=list)
    findings: list[str | None] = field(default_factory=list)
    impression: list[str | None] = field(default_factory=list)
    split: list[str | None] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # study id -> where it was read (for errors)

    def add(
        self,
        study: str,
        where: str,
        images: list[str],
        findings: str | None,
        impression: str | None,
        split: str | None = None,
    ) -> None:
        if study in self.origin:
            raise ValueError(f"{where}: study id {study!r} appears twice (also in {self.origin[study]})")
        self.origin[study] = where
        self.ids.append(study)
        self.images.append(images)
        self.findings.append(findings)
        self.impression.append(impression)
        self.split.append(split)


def _text(value: str | None) -> str | None:
    text = collapse_whitespace(value) if value else ""
    return text or None


def detect_layout(root: str | os.PathLike[str]) -> tuple[str, Path]:
    """``("r2gen", folder)`` or ``("openi", folder)`` for the layout found under ``root``."""
    root = Path(root)
    for base in (root, root / "iu_xray"):
        if (base / R2GEN_ANNOTATION).is_file():
            return "r2gen", base
    if (root / OPENI_REPORTS).is_dir():
        return "openi", root
    raise FileNotFoundError(
        f"{root}: no IU X-Ray layout found: expected either {R2GEN_ANNOTATION} with {R2GEN_IMAGES}/<id>/0.png "
        f"(R2Gen) or {OPENI_REPORTS}/*.xml with {OPENI_IMAGES}/*.png (OpenI); set data.reader.layout to force one"
    )


def parse_openi_xml(path: str | os.PathLike[str]) -> tuple[str, str | None, str | None, list[str]]:
    """``(study_id, findings, impression, image ids)`` of one OpenI report; raises ``ET.ParseError`` if malformed."""
    tree = ET.parse(path).getroot()
    uid = tree.find(".//uId")
    study = (uid.get("id") if uid is not None else None) or Path(path).stem
    sections: dict[str, str] = {}
    for node in tree.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        if label in ("FINDINGS", "IMPRESSION"):
            sections[label] = " ".join(filter(None, (sections.get(label), _text("".join(node.itertext())))))
    images = [img.get("id") for img in tree.iter("parentImage") if img.get("id")]
    return study.strip(), _text(sections.get("FINDINGS")), _text(sections.get("IMPRESSION")), images


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _read_openi(root: Path) -> _Studies:
    reports = root / OPENI_REPORTS
    if not reports.is_dir():
        raise FileNotFoundError(f"OpenI report folder not found: {reports}")
    images = root / OPENI_IMAGES
    out, malformed = _Studies(), []
    for path in sorted(reports.glob("*.xml"), key=_natural_key):
        try:
            study, findings, impression, image_ids = parse_openi_xml(path)
        except ET.ParseError as err:
            malformed.append(f"{path.name} ({err})")
            continue
        out.add(study, str(path), [str(images / f"{i}.png") for i in image_ids], findings, impression)
    log_dropped(
        reports,
        len(malformed),
        "malformed XML report files are skipped",
        ", ".join(malformed[:5]) if malformed else None,
    )
    if not out.ids and not malformed:
        raise FileNotFoundError(f"no OpenI XML reports in {reports}")
    return out


def split_r2gen_report(report: str | None) -> tuple[str | None, str | None]:
    """``(findings, impression)`` of an R2Gen report: its FINDINGS / IMPRESSION sections when it has such
    headers, else the whole (whitespace-collapsed) text as findings."""
    sections = parse_sections(report)
    if "findings" in sections or "impression" in sections:
        return sections.get("findings"), sections.get("impression")
    return _text(sections.get(PREAMBLE) or (report if isinstance(report, str) else None)), None


def _read_r2gen(root: Path) -> _Studies:
    path = root / R2GEN_ANNOTATION
    if not path.is_file():
        raise FileNotFoundError(f"R2Gen annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{'train': [...], 'val': [...], 'test': [...]}}")
    images, out = root / R2GEN_IMAGES, _Studies()
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: {key!r} must be a list of entries, got {type(entries).__name__}")
        for k, entry in enumerate(entries):
            where = f"{path}: entry {k} of {key!r}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
            missing = [f for f in ("id", "report", "image_path") if f not in entry]
            if missing:
                raise ValueError(f"{where} (id {entry.get('id')!r}): missing key(s) {missing}")
            rel = entry["image_path"]
            rel = [rel] if isinstance(rel, str) else list(rel)
            findings, impression = split_r2gen_report(entry["report"])
            out.add(
                str(entry["id"]).strip(),
                where,
                [str(images / p) for p in rel],
                findings,
                impression,
                str(entry.get("split") or key),
            )
    return out


def read_iu_xray(
    root: str | os.PathLike[str],
    layout: str = "auto",
    uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN,
    check_files: bool = True,
    label_cache: str | os.PathLike[str] | None = None,
) -> StudyTable:
    """Read IU X-Ray under ``root`` (OpenI XML + PNG, or R2Gen ``annotation.json``; see the module docstring).

    ``layout``: ``auto`` / ``openi`` / ``r2gen``. ``uncertain``: the policy for uncertain labeler outputs.
    ``check_files``: stat each image, skipping missing ones (off: trust the listing). ``label_cache``: folder
    of the text-derived label cache (:mod:`cxr_vlp.text.label_cache`; None: label without caching).
    """
    if layout not in ("auto", "openi", "r2gen"):
        raise ValueError(f"layout must be 'auto', 'openi' or 'r2gen', got {layout!r}")
    root = check_root(root, "iu_xray")
    if layout == "auto":
        layout, base = detect_layout(root)
    else:
        nested = root / "iu_xray"
        nested_only = not (root / R2GEN_ANNOTATION).is_file() and (nested / R2GEN_ANNOTATION).is_file()
        base = nested if layout == "r2gen" and nested_only else root
    studies = _read_r2gen(base) if layout == "r2gen" else _read_openi(base)

    flat = [p for paths in studies.images for p in paths]
    exists = existing_mask(flat, check_files)
    if flat and not exists.any():
        raise FileNotFoundError(
            f"{base}: none of the {len(flat)} images referenced by the reports was found, e.g. {flat[0]}"
        )
    log_dropped(
        base,
        int((~exists).sum()),
        "images referenced by the reports are missing on disk and skipped",
        next((p for p, e in zip(flat, exists) if not e), None),
    )
    kept_images, start = [], 0
    for paths in studies.images:
        kept_images.append([p for p, e in zip(paths, exists[start : start + len(paths)]) if e])
        start += len(paths)

    keep, no_image, no_text = [], [], []
    for k, study in enumerate(studies.ids):
        if not kept_images[k]:
            no_image.append(study)
        elif not (studies.findings[k] or studies.impression[k]):
            no_text.append(study)
        else:
            keep.append(k)
    log_dropped(
        base,
        len(no_image),
        "studies without any image on disk are dropped",
        f"study {no_image[0]}" if no_image else None,
    )
    log_dropped(
        base,
        len(no_text),
        "studies without findings or impression text are dropped",
        f"study {no_text[0]}" if no_text else None,
    )

    findings = [studies.findings[k] for k in keep]
    impression = [studies.impression[k] for k in keep]
    ids = [studies.ids[k] for k in keep]
    table = StudyTable(
        study_ids=ids,
        subject_ids=list(ids),  # no patient ids in IU X-Ray: one report = one patient
        image_paths=[kept_images[k] for k in keep],
        view_names=[[UNKNOWN_VIEW] * len(kept_images[k]) for k in keep],
        findings=findings,
        impression=impression,
        labels=derive_labels(findings, impression, uncertain, cache_dir=label_cache, source=str(base)),
        split=[studies.split[k] for k in keep] if layout == "r2gen" else None,
        source=str(base),
        has_labels=True,
        label_sources=dict.fromkeys(CHEXPERT_LABELS, "text"),
    )
    log.info(
        "%s (%s layout): %d studies, %d images; labels derived from the report text",
        base,
        layout,
        len(table),
        sum(map(len, table.image_paths)),
    )
    return table
