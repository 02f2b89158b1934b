"""Broken images are really skipped: truncation found at load time, the cache's failed.csv honoured, replacements
that never put a study twice in one batch, and a training split smaller than one batch refused."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

from cxr_vlp.data import dataset as dataset_mod
from cxr_vlp.data.cache import FAILED, apply_cache, build_cache, read_failed, size_dir
from cxr_vlp.data.datamodule import CXRDataModule
from cxr_vlp.data.dataset import StudyDataset
from cxr_vlp.data.table import read_generic_csv
from cxr_vlp.data.transforms import TransformConfig, build_transforms, load_grayscale
from cxr_vlp.text.text_views import TextViewSampler


def _gradient(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return (
        (100 + 50 * np.sin(xx / 7.0) + 30 * np.cos(yy / 5.0) + rng.normal(0, 10, (h, w))).clip(0, 255).astype(np.uint8)
    )


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _study_csv(root: Path, n: int, broken: dict[int, tuple[int, ...]] | None = None) -> Path:
    """``n`` studies with two images each; ``broken[i]`` lists the images of study ``i`` cut to 60 %."""
    broken = broken or {}
    rows = []
    for i in range(n):
        paths = [f"img/{i}_{k}.jpg" for k in range(2)]
        for k, rel in enumerate(paths):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / rel), _gradient(seed=10 * i + k))
            if k in broken.get(i, ()):
                _truncate(root / rel)
        rows.append(
            {
                "study_id": f"s{i}",
                "subject_id": f"p{i}",
                "image_paths": ";".join(paths),
                "view_names": "PA;LATERAL",
                "findings": f"Finding {i}.",
                "impression": f"Impression {i}.",
            }
        )
    csv = root / "studies.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _dataset(table, train: bool = True) -> StudyDataset:
    transform = build_transforms(TransformConfig(image_size=32), train=train)
    return StudyDataset(table, transform, TextViewSampler(num_views=1), num_image_views=1, train=train)


def test_truncated_jpeg_and_png_are_refused_at_load_time(tmp_path: Path) -> None:
    jpg, png = tmp_path / "cut.jpg", tmp_path / "cut.png"
    assert cv2.imwrite(str(jpg), _gradient()) and cv2.imwrite(str(png), _gradient())
    assert load_grayscale(str(jpg)).shape == (96, 80)  # whole files load
    _truncate(jpg)
    _truncate(png)
    assert cv2.imread(str(jpg), cv2.IMREAD_GRAYSCALE) is not None  # OpenCV alone decodes the cut JPEG (grey fill)
    with pytest.raises(OSError, match=r"truncated JPEG.*cut\.jpg"):
        load_grayscale(str(jpg))
    with pytest.raises(OSError, match=r"truncated PNG.*cut\.png"):
        load_grayscale(str(png))


def test_dataset_skips_a_truncated_image_counts_it_and_logs_its_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = _study_csv(tmp_path, 3, broken={1: (0, 1)})
    ds = _dataset(read_generic_csv(csv), train=False)
    with caplog.at_level(logging.WARNING, logger="cxr_vlp.data.dataset"):
        sample = ds[1]
    assert sample.study_id == "s2"  # both of s1's images are cut: another study stands in
    assert ds.unreadable == {str(tmp_path / "img" / "1_0.jpg"), str(tmp_path / "img" / "1_1.jpg")}
    assert str(tmp_path / "img" / "1_0.jpg") in caplog.text and "truncated JPEG" in caplog.text


def test_images_listed_in_failed_csv_are_not_read_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = _study_csv(tmp_path / "data", 4, broken={1: (0, 1), 2: (0,)})
    table = read_generic_csv(csv)
    cache = tmp_path / "cache"
    summary = build_cache([p for paths in table.image_paths for p in paths], cache, size=48, workers=0, progress=False)
    failed = read_failed(size_dir(cache, 48) / FAILED)
    assert summary.failed == 3 and set(failed) == {
        str(tmp_path / "data" / "img" / n) for n in ("1_0.jpg", "1_1.jpg", "2_0.jpg")
    }
    cached = apply_cache(table, cache, min_size=32)
    assert cached.image_paths[1] == [] and cached.view_names[1] == []
    assert len(cached.image_paths[2]) == 1 and cached.view_names[2] == ["LATERAL"]
    read: list[str] = []
    real = dataset_mod.load_grayscale
    monkeypatch.setattr(dataset_mod, "load_grayscale", lambda p: read.append(p) or real(p))
    ds = _dataset(cached, train=True)
    samples = ds.__getitems__([0, 1, 2, 3])
    assert not set(read) & set(failed), "a file listed in failed.csv was read raw"
    assert all(str(cache) in p for p in read)
    assert sorted(s.study_id for s in samples) == ["s0", "s2", "s3"]  # s1 has no image and no free stand-in


def test_replacement_is_a_study_outside_the_batch(tmp_path: Path) -> None:
    ds = _dataset(read_generic_csv(_study_csv(tmp_path, 5, broken={1: (0, 1)})))
    # the next study after s1 is s2, which is already in this batch: s3 stands in
    assert [s.study_id for s in ds.__getitems__([1, 2, 0])] == ["s3", "s2", "s0"]
    assert [s.index for s in ds.__getitems__([4, 1, 2, 3])] == [4, 0, 2, 3]  # wraps around to s0


def test_a_loader_never_puts_one_study_twice_in_a_batch(tmp_path: Path) -> None:
    ds = _dataset(read_generic_csv(_study_csv(tmp_path, 8, broken={2: (0, 1), 5: (0, 1)})))
    loader = DataLoader(ds, batch_size=4, shuffle=True, drop_last=True, collate_fn=list)
    for _ in range(6):
        for batch in loader:
            ids = [s.study_id for s in batch]
            assert len(ids) == 4 and len(set(ids)) == 4, ids
            assert not {"s2", "s5"} & set(ids)


def test_training_split_smaller_than_one_batch_is_refused(tmp_path: Path) -> None:
    csv = _study_csv(tmp_path, 10)
    dm = CXRDataModule(
        reader=functools.partial(read_generic_csv, csv),
        name="tiny",
        batch_size=16,
        split_fractions=(0.6, 0.2, 0.2),
        transforms={"image_size": 32},
    )
    dm.setup("fit")
    dm.tokenizer = object()  # the loader is refused before the tokenizer is used
    sizes = {k: len(v) for k, v in dm.tables.items()}
    with pytest.raises(ValueError, match=r"data\.batch_size=16") as err:
        dm.train_dataloader()
    assert f"{sizes['train']} studies" in str(err.value)
    assert all(f"{k} {n}" in str(err.value) for k, n in sizes.items())
    dm.batch_size = sizes["train"]
    assert len(dm.train_dataloader()) == 1
