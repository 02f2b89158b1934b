"""The labeler's No Finding option through the label cache: its values and its cache keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_vlp.text import label_cache
from cxr_vlp.text.labels import UncertainPolicy

FINDINGS = ["Small left pleural effusion.", "The lungs are clear.", "Hiatal hernia.", None]
IMPRESSION = [None, "No acute disease.", None, None]


def test_no_finding_option_reaches_the_labels_and_the_cache(tmp_path: Path) -> None:
    default = label_cache.derive_labels(FINDINGS, IMPRESSION, UncertainPolicy.UNKNOWN, cache_dir=tmp_path)
    chexpert = label_cache.derive_labels(
        FINDINGS, IMPRESSION, UncertainPolicy.UNKNOWN, cache_dir=tmp_path, no_finding_negative=False
    )
    # after the label policy a positive pathology makes No Finding 0 either way; a finding outside the 13 labels
    # (the hernia) leaves it 0 by default and blank with CheXpert's convention
    assert default[:3, 0].tolist() == [0.0, 1.0, 0.0] and chexpert[:2, 0].tolist() == [0.0, 1.0]
    assert np.isnan(chexpert[2, 0]) and np.isnan(chexpert[3]).all()
    assert np.array_equal(default[:, 1:], chexpert[:, 1:], equal_nan=True)
    # both variants are cached under their own keys: a second lookup labels nothing and returns the raw values
    texts = label_cache.report_texts(FINDINGS, IMPRESSION)
    raw, stats = label_cache.derive_raw_labels(texts, tmp_path, no_finding_negative=False)
    assert stats.labelled == 0 and stats.hits == 3
    assert np.isnan(raw[0, 0]) and raw[1, 0] == 1 and np.isnan(raw[2, 0])
    _, stats = label_cache.derive_raw_labels(texts, tmp_path)
    assert stats.labelled == 0 and stats.hits == 3


def test_the_option_changes_the_key_only_when_set() -> None:
    text = "Hiatal hernia."
    assert label_cache.text_key(text, {}) == label_cache.text_key(text, None)
    assert label_cache.text_key(text, {"no_finding_negative": False}) != label_cache.text_key(text, {})


def test_label_reports_cli_writes_chexpert_no_finding_convention(tmp_path: Path) -> None:
    import pandas as pd

    from cxr_vlp.text.label_reports import main

    src = tmp_path / "reports.csv"
    pd.DataFrame(
        {"id": ["001", "002"], "findings": ["Small left pleural effusion.", "Hiatal hernia."], "impression": ["", ""]}
    ).to_csv(src, index=False)
    assert main([f"in_csv={src}", f"out_csv={tmp_path / 'ours.csv'}"]) == 0
    assert main([f"in_csv={src}", f"out_csv={tmp_path / 'chexpert.csv'}", "no_finding_negative=false"]) == 0
    ours = pd.read_csv(tmp_path / "ours.csv", dtype={"id": str})
    chexpert = pd.read_csv(tmp_path / "chexpert.csv", dtype={"id": str})
    assert ours["No Finding"].tolist() == [0, 0]
    assert chexpert["No Finding"].isna().all()  # 1 or blank, never 0
    assert chexpert["id"].tolist() == ["001", "002"]
    assert chexpert["Pleural Effusion"].iloc[0] == 1
