"""Generic CSV reader, view sampling, the dataset's unreadable-image handling, and the collator."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxr_vlp.data.batch import Collator
from cxr_vlp.data.dataset import StudyDataset, choose_image_indices
from cxr_vlp.data.table import read_generic_csv, view_group
from cxr_vlp.data.tokenizer import train_wordpiece
from cxr_vlp.data.transforms import TransformConfig, build_transforms
from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.text.text_views import TextViewSampler


def _write_study_csv(root: Path, rows: list[dict], n_images: dict[str, int] | None = None) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for row in rows:
        for path in row["image_paths"].split(";"):
            value = 40 + 10 * (hash(path) % 10)
            cv2.imwrite(str(root / path), np.full((40, 48), value, dtype=np.uint8))
    csv = root / "studies.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _row(i: int, **kw) -> dict:
    row = {
        "study_id": f"s{i}",
        "subject_id": f"p{i // 2}",
        "image_paths": f"img/{i}_0.jpg;img/{i}_1.jpg",
        "view_names": "PA;LATERAL",
        "findings": f"Finding number {i}. Heart normal.",
        "impression": f"Impression {i}.",
    }
    row.update(kw)
    return row


def test_reader_resolves_paths_and_applies_label_policy(tmp_path: Path) -> None:
    rows = [_row(0, **{"Cardiomegaly": 1, "Edema": -1, "Pneumothorax": 0}), _row(1)]
    csv = _write_study_csv(tmp_path, rows)
    table = read_generic_csv(csv, uncertain="unknown")
    assert table.study_ids == ["s0", "s1"] and table.subject_ids == ["p0", "p0"]
    assert all(Path(p).is_file() and Path(p).is_absolute() for paths in table.image_paths for p in paths)
    assert table.view_names[0] == ["PA", "LATERAL"]
    labels = table.labels
    assert labels[0, CHEXPERT_LABELS.index("Cardiomegaly")] == 1.0
    assert labels[0, CHEXPERT_LABELS.index("Pneumothorax")] == 0.0
    assert np.isnan(labels[0, CHEXPERT_LABELS.index("Edema")])  # uncertain -> unknown
    assert np.isnan(labels[1]).all()  # blank -> unknown
    ones = read_generic_csv(csv, uncertain="ones").labels
    assert ones[0, CHEXPERT_LABELS.index("Edema")] == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"view_names": "PA"}, "row 2: 2 image_paths but 1 view_names"),
        ({"image_paths": "img/missing.jpg", "view_names": "PA"}, "row 2: image file(s) not found"),
        ({"Edema": 2}, "row 2, column 'Edema'"),
        ({"Edema": "maybe"}, "row 2, column 'Edema'"),
    ],
)
def test_reader_errors_name_file_row_and_column(tmp_path: Path, change: dict, message: str) -> None:
    rows = [_row(0), _row(1)]
    csv = _write_study_csv(tmp_path, rows)
    frame = pd.read_csv(csv)
    for key, value in change.items():
        frame[key] = frame.get(key, pd.Series([None] * len(frame))).astype(object)
        frame.loc[1, key] = value
    frame.to_csv(csv, index=False)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        read_generic_csv(csv)
    assert message in str(err.value) and str(csv) in str(err.value)


def test_reader_missing_columns_and_textless_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = _write_study_csv(tmp_path, [_row(0), _row(1, findings=None, impression="  ")])
    with caplog.at_level(logging.WARNING):
        table = read_generic_csv(csv)
    assert table.study_ids == ["s0"]
    assert "dropped 1 studies" in caplog.text
    pd.read_csv(csv).drop(columns=["impression"]).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="missing required column"):
        read_generic_csv(csv)


def test_view_groups_and_image_choice() -> None:
    assert view_group("pa") == view_group(" AP ") == "frontal"
    assert view_group("LL") == view_group("lateral") == "lateral"
    rng = np.random.default_rng(0)
    views = ["LATERAL", "PA", "AP"]
    assert choose_image_indices(views, 1, train=False, rng=rng) == [1]  # first frontal
    assert choose_image_indices(["LATERAL"], 1, train=False, rng=rng) == [0]
    for seed in range(30):
        chosen = choose_image_indices(views, 2, train=True, rng=np.random.default_rng(seed))
        assert len(set(chosen)) == 2
        assert {view_group(views[i]) for i in chosen} == {"frontal", "lateral"}
    assert choose_image_indices(["PA"], 2, train=True, rng=rng) == [0, 0]


def _dataset(csv: Path, train: bool, views: int = 2) -> StudyDataset:
    table = read_generic_csv(csv)
    transform = build_transforms(TransformConfig(image_size=32), train=train)
    return StudyDataset(table, transform, TextViewSampler(num_views=views), num_image_views=views, train=train)


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    csv = _write_study_csv(tmp_path, [_row(0), _row(1), _row(2)])
    (tmp_path / "img" / "0_0.jpg").write_bytes(b"not a jpeg")  # one of study 0's two images
    for k in (0, 1):  # both of study 1's images
        (tmp_path / "img" / f"1_{k}.jpg").write_bytes(b"\xff\xd8\xff truncated")
    ds = _dataset(csv, train=True)
    sample = ds[0]
    assert sample.study_id == "s0" and sample.images.shape == (2, 1, 32, 32)
    replaced = ds[1]
    assert replaced.study_id == "s2"  # no readable image: the next study stands in, batch size is kept
    assert len(ds.unreadable) == 3


def test_samples_and_collated_batch(tmp_path: Path) -> None:
    csv = _write_study_csv(tmp_path, [_row(i) for i in range(4)])
    tokenizer = train_wordpiece(read_generic_csv(csv).texts(), vocab_size=100, min_frequency=1)
    train_ds, eval_ds = _dataset(csv, train=True), _dataset(csv, train=False, views=1)
    batch = Collator(tokenizer, max_length=16)([train_ds[i] for i in range(4)])
    assert batch.images.shape == (4, 2, 1, 32, 32) and batch.images.dtype == torch.float32
    assert batch.input_ids.shape[:2] == (4, 2) and batch.input_ids.shape == batch.attention_mask.shape
    assert batch.labels.shape == (4, 14)
    # no label columns: data.reader.labels=auto labels the reports ("Heart normal.": No Finding, no pathology)
    assert (batch.labels[:, 0] == 1).all() and (batch.labels[:, 1:13] == 0).all()
    assert batch.index.tolist() == [0, 1, 2, 3] and batch.study_ids == ["s0", "s1", "s2", "s3"]
    assert batch.texts[0][0].startswith("Finding") or "Finding" in batch.texts[0][0]  # view 0 = findings
    assert len(batch.image_views()) == 2
    # evaluation is deterministic: one frontal image and the impression
    a, b = eval_ds[2], eval_ds[2]
    torch.testing.assert_close(a.images, b.images)
    assert a.texts == ["Impression 2."]


def test_no_horizontal_flip_by_default() -> None:
    names = [type(t).__name__ for t in build_transforms(TransformConfig(), train=True).transforms]
    assert "HorizontalFlip" not in names and "RandomResizedCrop" in names and "CLAHE" in names
    flipped = [type(t).__name__ for t in build_transforms(TransformConfig(hflip_p=0.5), train=True).transforms]
    assert "HorizontalFlip" in flipped
