"""The one-time image cache: resize rule, names, resumability, failures, and the read side."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_vlp.data.cache import (
    FAILED,
    MANIFEST,
    apply_cache,
    build_cache,
    cached_name,
    read_manifest,
    resize_shorter,
    size_dir,
)
from cxr_vlp.data.table import StudyTable
from cxr_vlp.text.labels import NUM_LABELS


def _image(path: Path, h: int, w: int, seed: int = 0, ext: str = ".jpg") -> str:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = (127 + 60 * np.sin(xx / 17.0) + 40 * np.cos(yy / 23.0) + rng.normal(0, 8, (h, w))).clip(0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return str(path)


@pytest.fixture()
def images(tmp_path: Path) -> list[str]:
    src = tmp_path / "src"
    return [
        _image(src / "a" / "tall.jpg", 300, 200, 1),
        _image(src / "b" / "wide.jpg", 150, 401, 2),
        _image(src / "c" / "small.jpg", 40, 50, 3),
        _image(src / "d" / "tall.jpg", 333, 222, 4),
    ]


def _table(paths: list[list[str]]) -> StudyTable:
    n = len(paths)
    return StudyTable(
        study_ids=[f"s{i}" for i in range(n)],
        subject_ids=[f"p{i}" for i in range(n)],
        image_paths=paths,
        view_names=[["PA"] * len(p) for p in paths],
        findings=["x"] * n,
        impression=["y"] * n,
        labels=np.full((n, NUM_LABELS), np.nan, dtype=np.float32),
    )


def test_resize_shorter_side_keeps_aspect_and_never_upscales() -> None:
    for h, w in [(3000, 2500), (2500, 3000), (1000, 1000), (517, 2999)]:
        out = resize_shorter(np.zeros((h, w), np.uint8), 512)
        assert min(out.shape) == 512
        assert abs(max(out.shape) - max(h, w) * 512 / min(h, w)) <= 1
        assert (out.shape[0] >= out.shape[1]) == (h >= w)
    small = np.zeros((300, 200), np.uint8)
    assert resize_shorter(small, 512) is small


def test_build_writes_resized_files_and_manifest(images: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    summary = build_cache(images + images[:1], cache, size=64, workers=2, progress=False)
    assert (summary.total, summary.done, summary.skipped, summary.failed) == (4, 4, 0, 0)
    out = size_dir(cache, 64)
    manifest = read_manifest(out / MANIFEST)
    assert set(manifest) == set(images)
    for src, entry in manifest.items():
        assert entry["cached"] == cached_name(src) and entry["cached"].startswith("images/")
        img = cv2.imread(str(out / entry["cached"]), cv2.IMREAD_GRAYSCALE)
        assert img.shape == (entry["height"], entry["width"])
        h, w = cv2.imread(src, cv2.IMREAD_GRAYSCALE).shape
        if min(h, w) <= 64:
            assert img.shape == (h, w)  # never upscaled
        else:
            assert min(img.shape) == 64 and abs(max(img.shape) - max(h, w) * 64 / min(h, w)) <= 1
    # same stem in two folders -> two different cached files; no stray temporary files
    assert manifest[images[0]]["cached"] != manifest[images[3]]["cached"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert (out / FAILED).read_text().strip() == "path,reason"


def test_names_are_deterministic_and_sharded() -> None:
    a = cached_name("/data/files/p10/p10000032/s50414267/02aa804e.jpg")
    assert a == cached_name("/data/files/p10/p10000032/s50414267/02aa804e.jpg")
    assert a != cached_name("/data/files/p10/p10000032/s50414268/02aa804e.jpg")
    parts = a.split("/")
    assert parts[0] == "images" and len(parts[1]) == 2 and parts[2].startswith(parts[1])
    assert parts[2].endswith("_02aa804e.jpg")


def test_second_run_skips_and_a_changed_source_is_redone(images: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build_cache(images, cache, size=64, workers=1, progress=False)
    again = build_cache(images, cache, size=64, workers=1, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 4, 0)
    # a changed source (new content, new size and mtime) is redone, and only that one
    _image(Path(images[1]), 100, 90, seed=9)
    st = os.stat(images[1])
    os.utime(images[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = build_cache(images, cache, size=64, workers=1, progress=False)
    assert (third.done, third.skipped) == (1, 3)
    entry = read_manifest(size_dir(cache, 64) / MANIFEST)[images[1]]
    assert (entry["height"], entry["width"]) == (71, 64)
    # a cached file deleted behind the manifest's back is redone too
    (size_dir(cache, 64) / entry["cached"]).unlink()
    assert build_cache(images, cache, size=64, workers=1, progress=False).done == 1
    # a partial row left by a killed run is ignored, and the manifest stays one row per source
    with open(size_dir(cache, 64) / MANIFEST, "a") as f:
        f.write(f"{images[0]},images/zz/partial")
    last = build_cache(images, cache, size=64, workers=1, progress=False)
    assert (last.done, last.skipped) == (0, 4)
    rows = list(csv.DictReader(open(size_dir(cache, 64) / MANIFEST)))
    assert len(rows) == 4


def test_truncated_and_garbage_images_are_reported_and_skipped(images: list[str], tmp_path: Path) -> None:
    good = Path(images[0]).read_bytes()
    truncated = tmp_path / "src" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    assert cv2.imread(str(truncated), cv2.IMREAD_GRAYSCALE) is not None  # cv2 alone would accept it
    garbage = tmp_path / "src" / "garbage.jpg"
    garbage.write_bytes(b"not an image at all" * 10)
    missing = tmp_path / "src" / "missing.jpg"
    paths = [images[0], str(truncated), str(garbage), str(missing)]
    cache = tmp_path / "cache"
    summary = build_cache(paths, cache, size=64, workers=2, progress=False)
    assert (summary.done, summary.failed) == (1, 3)
    failed = {row["path"]: row["reason"] for row in csv.DictReader(open(size_dir(cache, 64) / FAILED))}
    assert set(failed) == {str(truncated), str(garbage), str(missing)}
    assert "truncated" in failed[str(truncated)]
    assert "unreadable" in failed[str(garbage)] and "missing" in failed[str(missing)]
    assert set(read_manifest(size_dir(cache, 64) / MANIFEST)) == {images[0]}
    # failures are retried (and reported again) on the next run
    again = build_cache(paths, cache, size=64, workers=1, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 1, 3)


def test_apply_cache_maps_covered_paths_and_picks_smallest_sufficient_size(
    images: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    build_cache(images[:2], cache, size=48, workers=1, progress=False)
    build_cache(images[:3], cache, size=64, workers=1, progress=False)
    build_cache(images[:1], cache, size=128, workers=1, progress=False)
    table = _table([images[:2], images[2:]])
    with caplog.at_level(logging.INFO, logger="cxr_vlp.data.cache"):
        out = apply_cache(table, cache, min_size=56)
    s64 = size_dir(cache, 64)
    assert out.image_paths[0] == [str(s64 / cached_name(p)) for p in images[:2]]
    assert out.image_paths[1] == [str(s64 / cached_name(images[2])), images[3]]  # uncovered -> raw
    assert all(Path(p).is_file() for row in out.image_paths for p in row)
    assert "3 of 4 images" in caplog.text
    assert table.image_paths[1] == images[2:]  # the input table is untouched
    assert apply_cache(table, cache, min_size=48).image_paths[0][0].startswith(str(size_dir(cache, 48)))
    assert apply_cache(table, cache, min_size=100).image_paths[0][0].startswith(str(size_dir(cache, 128)))


def test_no_usable_cache_leaves_the_table_unchanged(
    images: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = _table([images])
    assert apply_cache(table, tmp_path / "nothing", min_size=64) is table
    assert apply_cache(table, None, min_size=64) is table
    build_cache(images, tmp_path / "cache", size=32, workers=1, progress=False)
    with caplog.at_level(logging.WARNING, logger="cxr_vlp.data.cache"):
        assert apply_cache(table, tmp_path / "cache", min_size=64) is table
    assert "smaller than the image size" in caplog.text
