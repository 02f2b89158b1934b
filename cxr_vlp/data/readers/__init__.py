"""Readers for the published dataset layouts; each returns a :class:`~cxr_vlp.data.table.StudyTable`.

* :func:`read_mimic_cxr` — MIMIC-CXR-JPG (metadata / CheXpert / split CSVs, ``files/pXX/...``, reports).
* :func:`read_iu_xray` — IU X-Ray in the OpenI XML or the R2Gen ``annotation.json`` layout.
* :func:`read_chexpert` — CheXpert ``train.csv`` / ``valid.csv`` (templated label text, no reports).
* :func:`read_rsna_pneumonia` — RSNA Pneumonia ``stage_2_train_labels.csv`` + DICOM / PNG images (no reports).
* :func:`read_generic_csv` — the generic study-level CSV (re-exported from :mod:`cxr_vlp.data.table`).

The Hydra configs ``conf/data/{mimic_cxr,iu_xray,chexpert,rsna,csv}.yaml`` call them with ``_partial_: true``.
"""

from cxr_vlp.data.readers.chexpert import read_chexpert, report_from_labels
from cxr_vlp.data.readers.iu_xray import read_iu_xray
from cxr_vlp.data.readers.mimic import read_mimic_cxr
from cxr_vlp.data.readers.rsna import read_rsna_pneumonia
from cxr_vlp.data.table import read_generic_csv

__all__ = [
    "read_chexpert",
    "read_generic_csv",
    "read_iu_xray",
    "read_mimic_cxr",
    "read_rsna_pneumonia",
    "report_from_labels",
]
