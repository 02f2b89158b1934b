"""Readers of the published layouts, on tiny trees written with the exact file and column names
(tests/layouts.py): parsed values against what the builders wrote, and each kind of bad input."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_vlp.data.readers import read_chexpert, read_iu_xray, read_mimic_cxr, report_from_labels
from cxr_vlp.data.readers.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV
from cxr_vlp.text.labels import CHEXPERT_LABELS, apply_policy
from tests.layouts import build_chexpert, build_iu_openi, build_iu_r2gen, build_mimic

CARDIO = CHEXPERT_LABELS.index("Cardiomegaly")


def _raw_row(raw: dict[str, float]) -> np.ndarray:
    return np.array([raw[name] for name in CHEXPERT_LABELS], dtype=np.float32)


# ----------------------------------------------------------------------------------------------- MIMIC
@pytest.fixture(scope="module")
def mimic(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mimic")
    return build_mimic(root)


@pytest.mark.parametrize("reports", ["txt", "sectioned_csv"])
def test_mimic_reads_every_study_with_its_images_report_labels_and_split(mimic, reports: str) -> None:
    table = read_mimic_cxr(mimic.root, reports=reports)
    assert table.study_ids == list(mimic.studies)
    assert table.subject_ids == [mimic.studies[s] for s in table.study_ids]
    for k, study in enumerate(table.study_ids):
        expected = [str(mimic.image(study, d)) for d in mimic.dicoms[study]]
        expected = [p for p in expected if Path(p) not in mimic.missing_images]
        assert table.image_paths[k] == expected
        assert table.view_names[k] == mimic.views[study][: len(expected)]
        assert table.findings[k] == mimic.findings[study]
        assert table.impression[k] == mimic.impression[study]
        assert table.split[k] == mimic.split[study]
        # the label CSV is in alphabetical column order: the reader matches columns by name
        np.testing.assert_array_equal(table.labels[k], apply_policy(_raw_row(mimic.labels[study])[None], "unknown")[0])
    assert table.extra["dicom_ids"][0] == mimic.dicoms[table.study_ids[0]]


def test_mimic_uncertain_policy_and_view_filter(mimic) -> None:
    ones = read_mimic_cxr(mimic.root, uncertain="ones")
    unknown = read_mimic_cxr(mimic.root, uncertain="unknown")
    raw = np.stack([_raw_row(mimic.labels[s]) for s in ones.study_ids])
    assert (raw == -1).any()
    np.testing.assert_array_equal(ones.labels, apply_policy(raw, "ones"))
    assert np.all(ones.labels[raw == -1] == 1.0)
    # unknown: -1 stays unknown, except where a "No Finding" study makes an unknown pathology negative
    assert np.isnan(unknown.labels[raw == -1]).any()
    frontal = read_mimic_cxr(mimic.root, views=["PA", "AP"])
    assert all(set(v) <= {"PA", "AP"} and len(v) == 1 for v in frontal.view_names)


def test_mimic_missing_report_drops_the_study_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = build_mimic(tmp_path, n_subjects=6, n_missing=0)
    gone = list(layout.studies)[2]
    layout.report(gone).unlink()
    with caplog.at_level(logging.WARNING):
        table = read_mimic_cxr(tmp_path)
    assert gone not in table.study_ids and len(table) == len(layout.studies) - 1
    assert any("without report text" in r.getMessage() and "1 studies" in r.getMessage() for r in caplog.records)


def test_mimic_bad_input_names_file_row_and_column(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_mimic_cxr(tmp_path / "nowhere")
    build_mimic(tmp_path, n_subjects=6, n_missing=0)
    meta_path = tmp_path / METADATA_CSV
    meta = pd.read_csv(meta_path)
    meta.drop(columns=["ViewPosition"]).to_csv(meta_path, index=False)
    with pytest.raises(ValueError, match=rf"{METADATA_CSV}.*ViewPosition"):
        read_mimic_cxr(tmp_path)
    pd.concat([meta, meta.iloc[[0]]]).to_csv(meta_path, index=False)  # a dicom_id twice
    with pytest.raises(ValueError, match=rf"{METADATA_CSV}.*row"):
        read_mimic_cxr(tmp_path)
    meta.to_csv(meta_path, index=False)
    labels = pd.read_csv(tmp_path / CHEXPERT_CSV)
    labels.loc[3, "Edema"] = 2
    labels.to_csv(tmp_path / CHEXPERT_CSV, index=False)
    with pytest.raises(ValueError, match=rf"{CHEXPERT_CSV}.*row 4.*Edema"):
        read_mimic_cxr(tmp_path)
    (tmp_path / SPLIT_CSV).unlink()
    with pytest.raises(FileNotFoundError, match=SPLIT_CSV):
        read_mimic_cxr(tmp_path)


def test_mimic_reads_decompressed_csvs(tmp_path: Path) -> None:
    layout = build_mimic(tmp_path, n_subjects=6, n_missing=0)
    for name in (METADATA_CSV, CHEXPERT_CSV, SPLIT_CSV):
        with gzip.open(tmp_path / name, "rb") as f:
            (tmp_path / name.removesuffix(".gz")).write_bytes(f.read())
        (tmp_path / name).unlink()
    assert read_mimic_cxr(tmp_path).study_ids == list(layout.studies)


# ----------------------------------------------------------------------------------------------- IU X-Ray
def test_iu_openi_reads_reports_images_and_derives_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = build_iu_openi(tmp_path)
    with caplog.at_level(logging.WARNING):
        table = read_iu_xray(tmp_path)
    assert table.study_ids == [s for s in layout.studies if s not in layout.dropped]
    assert table.subject_ids == table.study_ids  # no patient ids in IU X-Ray
    assert table.split is None
    for k, study in enumerate(table.study_ids):
        assert table.image_paths[k] == [str(p) for p in layout.images[study]]
        assert table.view_names[k] == ["UNKNOWN"] * len(layout.images[study])
        assert table.findings[k] == layout.findings[study]
        assert table.impression[k] == layout.impression[study]
    assert table.findings[table.study_ids.index("CXR3")] is None  # impression-only report kept
    assert len(table.image_paths[table.study_ids.index("CXR5")]) == 1  # its missing image skipped
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "9999.xml" in messages and "CXR20" in messages
    # labels from the rule-based labeler: "Mild cardiomegaly." is positive, "Heart size is normal." negative
    for k in range(len(table)):
        text = f"{table.findings[k] or ''} {table.impression[k] or ''}".lower()
        if "mild cardiomegaly" in text:
            assert table.labels[k, CARDIO] == 1.0
        elif "heart size is normal" in text:
            assert table.labels[k, CARDIO] == 0.0


def test_iu_r2gen_reads_the_official_split(tmp_path: Path) -> None:
    layout = build_iu_r2gen(tmp_path)
    table = read_iu_xray(tmp_path, layout="auto")
    assert table.study_ids == layout.studies
    assert table.split == [layout.split[s] for s in table.study_ids]
    assert table.findings == [layout.findings[s] for s in table.study_ids]
    assert table.image_paths == [[str(p) for p in layout.images[s]] for s in table.study_ids]
    data = json.loads((tmp_path / "annotation.json").read_text())
    del data["val"][1]["report"]
    (tmp_path / "annotation.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotation\.json: entry 1 of 'val'.*report"):
        read_iu_xray(tmp_path)


def test_iu_duplicate_study_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="annotation.json|ecgen-radiology"):
        read_iu_xray(tmp_path)
    build_iu_r2gen(tmp_path, counts=(3, 1, 1))
    data = json.loads((tmp_path / "annotation.json").read_text())
    data["test"].append(dict(data["train"][0]))
    (tmp_path / "annotation.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"annotation\.json.*{data['train'][0]['id']}"):
        read_iu_xray(tmp_path)


# ----------------------------------------------------------------------------------------------- CheXpert
def test_chexpert_groups_images_into_studies_with_label_text(tmp_path: Path) -> None:
    layout = build_chexpert(tmp_path)
    table = read_chexpert(layout.root)
    assert set(table.study_ids) == set(layout.studies)
    for k, study in enumerate(table.study_ids):
        patient = study.split("_")[0]
        assert table.subject_ids[k] == patient
        assert table.split[k] == ("test" if layout.studies[study] == "valid" else None)
        assert all(f"/{patient}/{study.split('_')[1]}/" in p and Path(p).is_file() for p in table.image_paths[k])
        assert table.findings[k] is None
    # the text is the templated report of the first image's raw labels
    rows = layout.rows["train.csv"]
    first = next(r for r in rows if "/patient00001/study1/" in r["Path"])
    k = table.study_ids.index("patient00001_study1")
    raw = _raw_row(first)
    assert table.impression[k] == report_from_labels(raw, key="patient00001_study1")
    np.testing.assert_array_equal(table.labels[k], apply_policy(raw[None], "unknown")[0])
    assert read_chexpert(layout.root, valid_as="val").split.count("val") == table.split.count("test")


def test_report_from_labels_sentences() -> None:
    raw = np.full(14, np.nan)
    assert report_from_labels(raw) is None
    raw[CARDIO], raw[CHEXPERT_LABELS.index("Pneumothorax")] = 1.0, 0.0
    raw[CHEXPERT_LABELS.index("Edema")] = -1.0
    text = report_from_labels(raw, key="x").lower()
    assert text.index("cardiomegaly") < text.index("edema") < text.index("pneumothorax")
    assert "no " in text[text.index("edema") + 5 :] and text.count(".") == 3
    with pytest.raises(ValueError, match="14"):
        report_from_labels([1.0, 0.0])


def test_chexpert_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.csv"):
        read_chexpert(tmp_path)
    layout = build_chexpert(tmp_path)
    with pytest.raises(ValueError, match="text_from_labels"):
        read_chexpert(layout.root, text_from_labels=False)
    df = pd.read_csv(layout.root / "train.csv")
    df["Fracture"] = df["Fracture"].astype(object)
    df.loc[2, "Fracture"] = "maybe"
    df.to_csv(layout.root / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train\.csv: row 3, column 'Fracture'"):
        read_chexpert(layout.root)
    df.drop(columns=["Path"]).to_csv(layout.root / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train\.csv.*Path"):
        read_chexpert(layout.root)
