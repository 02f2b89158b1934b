"""Text-derived labels: the on-disk cache by report hash, and `data.reader.labels=auto|given|none` of the CSV reader."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_vlp.data.table import read_generic_csv
from cxr_vlp.text import label_cache, labeler
from cxr_vlp.text.labels import CHEXPERT_LABELS, apply_policy

EFFUSION = CHEXPERT_LABELS.index("Pleural Effusion")
REPORTS = [
    ("Large right pleural effusion.", "Effusion."),
    ("Mild cardiomegaly. No pneumothorax.", None),
    (None, "No acute cardiopulmonary process."),
    ("Large right pleural effusion.", "Effusion."),  # same report as the first: labelled once
    ("Possible right lower lobe pneumonia.", "Endotracheal tube in place."),
]


def _expected(findings, impression) -> np.ndarray:
    """Slow direct transcription: the labeler on each joined report, one at a time."""
    rows = []
    for f, i in zip(findings, impression):
        text = "\n\n".join(t for t in (f, i) if t)
        rows.append(labeler.label_report(text or None))
    return np.stack(rows)


def test_cached_labels_equal_the_labeler_and_the_second_lookup_labels_nothing(
    tmp_path: Path, labeler_calls: list[int]
) -> None:
    findings, impression = zip(*REPORTS)
    texts = label_cache.report_texts(findings, impression)
    raw, stats = label_cache.derive_raw_labels(texts, tmp_path / "cache")
    np.testing.assert_array_equal(raw, _expected(findings, impression))
    assert raw[0, EFFUSION] == 1.0
    assert labeler_calls == [4] and (stats.reports, stats.distinct, stats.hits, stats.labelled) == (5, 4, 0, 4)
    path = label_cache.cache_file(tmp_path / "cache")
    assert path.is_file() and labeler.LABELER_VERSION in path.name
    stamp = path.stat().st_mtime_ns

    again, stats = label_cache.derive_raw_labels(texts, tmp_path / "cache")
    np.testing.assert_array_equal(again, raw)
    assert labeler_calls == [4] and (stats.hits, stats.labelled) == (4, 0)
    assert path.stat().st_mtime_ns == stamp  # nothing new: the file is not rewritten

    # one new report: only it is labelled, and the file keeps the earlier ones
    more, stats = label_cache.derive_raw_labels([*texts, "Small left pneumothorax."], tmp_path / "cache")
    assert labeler_calls == [4, 1] and stats.labelled == 1
    assert more[-1, CHEXPERT_LABELS.index("Pneumothorax")] == 1.0
    _, stats = label_cache.derive_raw_labels(texts, tmp_path / "cache")
    assert stats.labelled == 0


def test_a_new_labeler_version_labels_again(
    tmp_path: Path, labeler_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    label_cache.derive_raw_labels(["Large right pleural effusion."], tmp_path)
    monkeypatch.setattr(labeler, "LABELER_VERSION", "other-rules")
    _, stats = label_cache.derive_raw_labels(["Large right pleural effusion."], tmp_path)
    assert stats.labelled == 1 and labeler_calls == [1, 1]
    assert len(list(tmp_path.glob("labels-*.npz"))) == 2


def test_keys_ending_in_a_nul_byte_are_found(tmp_path: Path) -> None:
    texts = [f"Small left effusion, case {k}." for k in range(3000)]
    assert any(label_cache.text_key(t).endswith(b"\0") for t in texts)  # ~12 of them
    label_cache.derive_raw_labels(texts, tmp_path)
    _, stats = label_cache.derive_raw_labels(texts, tmp_path)
    assert stats.hits == len(texts) and stats.labelled == 0


def test_the_key_covers_text_version_and_options() -> None:
    key = label_cache.text_key("No effusion.")
    assert key == label_cache.text_key("No effusion.") and len(key) == 16
    assert key != label_cache.text_key("No effusion!")
    assert key != label_cache.text_key("No effusion.", {"no_finding_blank": True})


def test_an_unreadable_cache_file_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = label_cache.cache_file(tmp_path)
    path.write_bytes(b"not an npz file")
    with caplog.at_level(logging.WARNING):
        raw, stats = label_cache.derive_raw_labels(["Large right pleural effusion."], tmp_path)
    assert raw[0, EFFUSION] == 1.0 and stats.labelled == 1
    assert "unreadable" in caplog.text and str(path) in caplog.text
    _, stats = label_cache.derive_raw_labels(["Large right pleural effusion."], tmp_path)
    assert stats.hits == 1


def _write_csv(root: Path, with_labels: list[str] | None = None) -> Path:
    rows = []
    for k, (f, i) in enumerate(REPORTS):
        image = root / "img" / f"{k}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.full((16, 16), 40 + 10 * k, dtype=np.uint8))
        row = {
            "study_id": f"s{k}",
            "subject_id": f"p{k}",
            "image_paths": f"img/{k}.png",
            "view_names": "PA",
            "findings": f,
            "impression": i,
        }
        row.update({name: 1 if name == "Cardiomegaly" else 0 for name in with_labels or []})
        rows.append(row)
    csv = root / "studies.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_auto_labels_a_csv_without_label_columns_from_its_text(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path)
    table = read_generic_csv(csv, labels="auto", label_cache=tmp_path / "cache")
    findings, impression = zip(*REPORTS)
    np.testing.assert_array_equal(table.labels, apply_policy(_expected(findings, impression), "unknown"))
    assert table.has_labels and table.labels_from_text() == list(CHEXPERT_LABELS)
    assert set(table.label_sources.values()) == {"text"}
    assert table.labels[0, EFFUSION] == 1.0
    assert table.labels[2, CHEXPERT_LABELS.index("No Finding")] == 1.0
    assert np.isnan(table.labels[4, CHEXPERT_LABELS.index("Pneumonia")])  # "possible": uncertain -> unknown
    ones = read_generic_csv(csv, labels="auto", uncertain="ones", label_cache=tmp_path / "cache")
    assert ones.labels[4, CHEXPERT_LABELS.index("Pneumonia")] == 1.0  # the one label policy applies
    assert table.subset([4, 0]).labels_from_text() == list(CHEXPERT_LABELS)


def test_auto_uses_the_columns_a_csv_has(tmp_path: Path) -> None:
    table = read_generic_csv(_write_csv(tmp_path, with_labels=list(CHEXPERT_LABELS)), labels="auto")
    assert table.labels_from_text() == [] and set(table.label_sources.values()) == {"given"}
    assert (table.labels[:, CHEXPERT_LABELS.index("Cardiomegaly")] == 1).all()
    assert (table.labels[:, EFFUSION] == 0).all()  # the text says effusion; the given column wins


def test_given_without_the_columns_names_the_file_and_the_columns(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path)
    with pytest.raises(ValueError, match="labels=given") as err:
        read_generic_csv(csv, labels="given")
    assert str(csv) in str(err.value) and all(repr(name) in str(err.value) for name in CHEXPERT_LABELS)
    partial_csv = _write_csv(tmp_path / "partial", with_labels=[n for n in CHEXPERT_LABELS if n != "Edema"])
    with pytest.raises(ValueError, match=r"missing \['Edema'\]") as err:
        read_generic_csv(partial_csv, labels="given")
    assert str(partial_csv) in str(err.value)
    with pytest.raises(ValueError, match="data.reader.labels must be one of"):
        read_generic_csv(csv, labels="text")


def test_none_gives_no_labels_even_with_columns(tmp_path: Path, labeler_calls: list[int]) -> None:
    for csv in (_write_csv(tmp_path / "a"), _write_csv(tmp_path / "b", with_labels=list(CHEXPERT_LABELS))):
        table = read_generic_csv(csv, labels="none")
        assert not table.has_labels and table.label_sources == {} and np.isnan(table.labels).all()
    assert labeler_calls == []


def test_summary_says_which_labels_came_from_text(tmp_path: Path) -> None:
    from cxr_vlp.data.datamodule import CXRDataModule
    from cxr_vlp.data.summary import summarize

    csv = _write_csv(tmp_path)
    dm = CXRDataModule(
        reader=partial(read_generic_csv, csv, label_cache=tmp_path / "cache"),
        transforms={"image_size": 16},
        split_fractions=(0.6, 0.2, 0.2),
        num_workers=0,
    )
    summary = summarize(dm)
    assert summary["labels_from_text"] == list(CHEXPERT_LABELS)
    assert summary["label_sources"] == dict.fromkeys(CHEXPERT_LABELS, "text")
    dm = CXRDataModule(
        reader=partial(read_generic_csv, csv, labels="none"),
        transforms={"image_size": 16},
        split_fractions=(0.6, 0.2, 0.2),
        num_workers=0,
    )
    summary = summarize(dm)
    assert summary["labels_from_text"] == [] and summary["label_sources"] is None
    assert summary["splits"]["train"]["labels"] is None
