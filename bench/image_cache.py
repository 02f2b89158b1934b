"""Print images/s of the raw-JPEG loading path against the one-time image cache, on generated full-size
chest-X-ray-sized JPEGs (2500 x 3000, quality 95, textured so they compress like real films).

    python bench/image_cache.py [n=48] [size=512] [image_size=224] [workers=2] [repeats=2] [dir=/tmp/...]

Both paths run exactly what a training worker runs per image: ``load_grayscale`` (the dataset's reader)
and the training albumentations pipeline at ``image_size``. One process, one thread for OpenCV, so the
figure is per data-loader worker. Also prints how long building the cache took (``build_cache`` with
``workers`` processes), i.e. when the one-time cost pays off.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cxr_vlp.data.cache import build_cache, load_cache_map
from cxr_vlp.data.transforms import TransformConfig, build_transforms, load_grayscale


def _args(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv if "=" in a)


def make_films(folder: Path, n: int, height: int = 3000, width: int = 2500, seed: int = 0) -> list[str]:
    """``n`` textured grayscale JPEGs of ``height`` x ``width`` (about 1-2 MB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 110 + 50 * np.sin(xx / 140.0) * np.cos(yy / 190.0)
    paths = []
    for k in range(n):
        img = base + rng.normal(0, 5, (height, width)).astype(np.float32)
        cv2.ellipse(img, (width // 2 + 40 * k % 300, height // 2), (700, 1000), 0, 0, 360, 200.0, 30)
        path = folder / f"film_{k:04d}.jpg"
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(path))
    return paths


def images_per_s(paths: list[str], image_size: int, repeats: int) -> float:
    transform = build_transforms(TransformConfig(image_size=image_size), train=True)
    load_grayscale(paths[0])  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        for path in paths:
            out = transform(image=load_grayscale(path))["image"]
            assert out.shape[-1] == image_size
    return repeats * len(paths) / (time.perf_counter() - t0)


def main(argv: list[str]) -> None:
    a = _args(argv)
    n, size, image_size = int(a.get("n", 48)), int(a.get("size", 512)), int(a.get("image_size", 224))
    workers, repeats = int(a.get("workers", 2)), int(a.get("repeats", 2))
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(dir=a.get("dir")) as tmp:
        t0 = time.perf_counter()
        raw = make_films(Path(tmp) / "raw", n)
        mb = sum(Path(p).stat().st_size for p in raw) / len(raw) / 2**20
        print(f"generated {n} JPEGs of 2500x3000 ({mb:.2f} MB each) in {time.perf_counter() - t0:.1f} s")
        summary = build_cache(raw, Path(tmp) / "cache", size=size, workers=workers, progress=False)
        print(
            f"build_cache size={size} workers={workers}: {summary.done} images in {summary.seconds:.2f} s "
            f"({summary.images_per_s:.1f} images/s)"
        )
        mapping = load_cache_map(Path(tmp) / "cache", size)
        cached = [mapping[str(Path(p).resolve())] for p in raw]
        cmb = sum(Path(p).stat().st_size for p in cached) / len(cached) / 2**10
        raw_rate = images_per_s(raw, image_size, repeats)
        cached_rate = images_per_s(cached, image_size, repeats)
    print(f"cached copies: {cmb:.0f} kB each")
    print(f"raw JPEG path    : {raw_rate:8.1f} images/s per worker (load + train transform at {image_size} px)")
    print(f"cached {size:4d} px : {cached_rate:8.1f} images/s per worker")
    print(f"speed-up         : {cached_rate / raw_rate:8.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
