"""Bad input end to end: a dataset with ~2% broken images still trains (skipped, counted, logged), and the
generic reader names the file, row and column of each kind of bad row."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxr_vlp.data.table import read_generic_csv
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, tiny_overrides


def _copy_dataset(csv: Path, dest: Path) -> Path:
    shutil.copytree(csv.parent, dest)
    return dest / csv.name


def test_training_survives_broken_images(tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = _copy_dataset(tiny_dataset, tmp_path / "data")
    table = read_generic_csv(csv)
    paths = sorted({p for ps in table.image_paths for p in ps})
    broken = paths[:: max(1, len(paths) // max(1, round(0.02 * len(paths))))][: max(2, round(0.02 * len(paths)))]
    for p in broken:  # garbage bytes: cv2 cannot decode them
        Path(p).write_bytes(b"this is not an image")
    run = tmp_path / "run"
    overrides = [*tiny_overrides(csv), "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0"]
    with caplog.at_level(logging.WARNING, logger="cxr_vlp.data.dataset"):
        metrics = train(compose_train(run, ["+experiment=demo", *overrides]))
    assert math.isfinite(metrics["train/loss"]) and metrics["test/num_studies"] > 0
    skipped = [r.getMessage() for r in caplog.records if "skipping image" in r.getMessage()]
    assert skipped, "broken images were not reported"
    assert all(any(b in m for b in broken) for m in skipped)  # each warning names a broken file
    assert json.loads((run / "metrics.json").read_text())["test/num_studies"] == metrics["test/num_studies"]


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    (tmp_path / "a.jpg").write_bytes(b"x")
    csv = tmp_path / "studies.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _row(i: int, **kw) -> dict:
    return {
        "study_id": f"s{i}",
        "subject_id": f"p{i}",
        "image_paths": "a.jpg",
        "view_names": "PA",
        "findings": "Clear lungs.",
        "impression": "Normal.",
        **kw,
    }


@pytest.mark.parametrize(
    ("rows", "error", "pattern"),
    [
        (
            [{k: v for k, v in _row(0).items() if k != "findings"}],
            ValueError,
            r"studies\.csv.*missing required column.*findings",
        ),
        (
            [_row(0), _row(1, image_paths="missing.jpg")],
            FileNotFoundError,
            r"studies\.csv: row 2: image file.*missing\.jpg",
        ),
        ([_row(0), _row(1, image_paths="")], ValueError, r"studies\.csv: row 2 \(study s1\): empty image_paths"),
        ([_row(0), _row(1, study_id="s0")], ValueError, r"studies\.csv: duplicate study_id values: \['s0'\]"),
        ([_row(0, Edema="yes")], ValueError, r"studies\.csv: row 1, column 'Edema'"),
    ],
    ids=["missing_column", "missing_image", "no_images", "duplicate_id", "bad_label"],
)
def test_generic_reader_errors_name_file_row_and_column(tmp_path: Path, rows, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        read_generic_csv(_write(tmp_path, rows))


def test_empty_report_is_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = _write(tmp_path, [_row(0), _row(1, findings="", impression=" ")])
    with caplog.at_level(logging.WARNING):
        table = read_generic_csv(csv)
    assert table.study_ids == ["s0"]
    assert any("dropped 1 studies with neither findings nor impression" in r.getMessage() for r in caplog.records)
