"""One-time image cache: every image resized once (shorter side to ``size``, aspect kept, never upscaled).

Big chest X-rays (~2500x3000 px, 1.5 MB JPEG) take 15-25 ms to decode per core; the cached copies decode
in well under a millisecond. Written by ``python -m cxr_vlp.prepare`` (:func:`build_cache`), read by the
data module (:func:`apply_cache`). Layout under the dataset's cache root (``data.image_cache``)::

    <cache_root>/s<size>/manifest.csv       source, cached, source_size, source_mtime_ns, width, height
    <cache_root>/s<size>/failed.csv         path, reason   (the last run's failures; they are retried)
    <cache_root>/s<size>/images/<hh>/<sha1[:20]>_<stem>.jpg
    <cache_root>/s<size>/.lock              held while a job writes this size (a second job waits)

``hh`` is the first two hex digits of the sha1 of the absolute source path (256 shards: ~1.5k files per
folder for MIMIC-CXR's 377k images); the name is a pure function of the source path. Every image is
written to a temporary name and renamed into place before its manifest row is appended, so a killed run
never leaves a half-written file that counts as done; a re-run skips what the manifest lists unless the
source's size or mtime changed. Unreadable and truncated images are skipped and listed in ``failed.csv``;
:func:`apply_cache` leaves them out of the study table, so training never reads them raw. Nothing outside
``<cache_root>/s<size>/`` is ever written. The pool's workers exit when the job dies (:mod:`cxr_vlp.utils.procs`).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import multiprocessing as mp
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cxr_vlp.utils.files import file_lock
from cxr_vlp.utils.procs import die_with_parent

if TYPE_CHECKING:
    from cxr_vlp.data.table import StudyTable

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
FAILED = "failed.csv"
IMAGES = "images"
MANIFEST_FIELDS = ("source", "cached", "source_size", "source_mtime_ns", "width", "height")
_SIZE_DIR = re.compile(r"^s(\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_SIG, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def size_dir(cache_root: str | os.PathLike[str], size: int) -> Path:
    """The folder of one cached size: ``<cache_root>/s<size>``."""
    return Path(cache_root) / f"s{int(size)}"


def cached_name(source: str, ext: str = ".jpg") -> str:
    """Deterministic relative path of a source image's cached copy (inside ``s<size>/``)."""
    digest = hashlib.sha1(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()
    stem = _UNSAFE.sub("_", Path(source).stem)[:80] or "image"
    return f"{IMAGES}/{digest[:2]}/{digest[:20]}_{stem}{ext}"


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the shorter side is ``size`` (INTER_AREA, aspect kept); smaller images are unchanged."""
    h, w = image.shape[:2]
    short = min(h, w)
    if short <= size:
        return image
    scale = size / short
    new_w, new_h = (size, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), size)
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)


def check_complete(path: str) -> str | None:
    """Why a JPEG / PNG file is incomplete (``None`` if it looks whole): cv2 decodes a truncated JPEG
    partially with only a warning, so the end-of-image marker is checked (trailing zero padding allowed).
    Reads only the first bytes and the last KiB."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, os.SEEK_END)
        length = f.tell()
        f.seek(max(0, length - 1024))
        tail = f.read()
    return incomplete_reason(head, tail, length)


def incomplete_reason(head: bytes, tail: bytes, length: int) -> str | None:
    """:func:`check_complete` on a file's first bytes, its last bytes (≥ 64 after zero padding) and its length."""
    tail = tail.rstrip(b"\x00")
    if length == 0:
        return "empty file"
    if head.startswith(_JPEG_SOI) and _JPEG_EOI not in tail[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG_SIG) and not tail.endswith(_PNG_IEND):
        return "truncated PNG (no IEND chunk)"
    return None


@dataclass
class _Result:
    source: str
    cached: str | None = None
    source_size: int = 0
    source_mtime_ns: int = 0
    width: int = 0
    height: int = 0
    error: str | None = None


def _init_worker(job_pid: int) -> None:
    die_with_parent(job_pid)
    cv2.setNumThreads(1)


def _process(task: tuple[str, str, int, int, int, int]) -> _Result:
    """Decode, check, resize and atomically write one image (runs in a worker)."""
    source, out_dir, size, quality, src_size, src_mtime = task
    rel = cached_name(source)
    result = _Result(source, None, src_size, src_mtime)
    try:
        from cxr_vlp.data.transforms import is_dicom, load_grayscale

        with open(source, "rb") as f:
            head = f.read(132)
        if is_dicom(source, head):  # DICOM (e.g. RSNA Pneumonia): pydicom, through the loaders' decoder
            try:
                image = load_grayscale(source)
            except OSError as err:
                result.error = str(err)
                return result
        else:
            problem = check_complete(source)
            if problem is not None:
                result.error = problem
                return result
            image = cv2.imread(source, cv2.IMREAD_GRAYSCALE)
        if image is None:
            result.error = "unreadable (cv2 could not decode it)"
            return result
        small = resize_shorter(image, size)
        ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            result.error = "cv2.imencode failed"
            return result
        target = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data.tobytes())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        result.cached, result.height, result.width = rel, int(small.shape[0]), int(small.shape[1])
    except Exception as err:  # noqa: BLE001 - one bad file must never stop a 377k-image job
        result.error = f"{type(err).__name__}: {err}"
    return result


def read_manifest(path: str | os.PathLike[str]) -> dict[str, dict]:
    """Manifest rows by absolute source path (later rows win; a partly written last row is ignored)."""
    path = Path(path)
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for row in csv.DictReader(f):
            try:
                entry = {
                    "source": row["source"],
                    "cached": row["cached"],
                    "source_size": int(row["source_size"]),
                    "source_mtime_ns": int(row["source_mtime_ns"]),
                    "width": int(row["width"]),
                    "height": int(row["height"]),
                }
            except (KeyError, TypeError, ValueError):
                continue
            if entry["source"] and entry["cached"]:
                rows[entry["source"]] = entry
    return rows


def _write_csv_atomic(path: Path, header: Iterable[str], rows: Iterable[Iterable]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(list(header))
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _manifest_rows(entries: dict[str, dict]) -> Iterator[list]:
    for entry in entries.values():
        yield [entry[k] for k in MANIFEST_FIELDS]


@dataclass
class CacheSummary:
    """What one :func:`build_cache` run did (printed as JSON by the prepare command)."""

    cache_dir: str
    size: int
    total: int
    done: int
    skipped: int
    failed: int
    seconds: float
    images_per_s: float
    failed_report: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def build_cache(
    image_paths: Iterable[str],
    cache_dir: str | os.PathLike[str],
    size: int,
    workers: int = 4,
    quality: int = 95,
    chunksize: int = 16,
    progress: bool = True,
) -> CacheSummary:
    """Resize every image once into ``<cache_dir>/s<size>/`` (see the module docstring for the layout).

    ``image_paths`` may repeat; relative paths are taken from the current directory. Already cached
    images whose source size and mtime are unchanged are skipped; changed ones are redone. Failures are
    logged, listed in ``failed.csv`` and retried on the next run. ``workers <= 1`` runs in-process. Two jobs
    caching the same size take turns (a file lock, ``s<size>/.lock``): the second skips what the first cached.
    """
    if int(size) < 1:
        raise ValueError(f"cache size must be a positive number of pixels, got {size}")
    out = size_dir(cache_dir, size)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".lock", log, f"image cache {out}: another job is writing it; waiting for it to finish"):
        return _build_cache(image_paths, out, size, workers, quality, chunksize, progress)


def _build_cache(
    image_paths: Iterable[str], out: Path, size: int, workers: int, quality: int, chunksize: int, progress: bool
) -> CacheSummary:
    manifest_path, failed_path = out / MANIFEST, out / FAILED
    t0 = time.perf_counter()

    sources = list(dict.fromkeys(os.path.abspath(str(p)) for p in image_paths))
    entries = read_manifest(manifest_path)
    # compact first: drops a partial last row left by a killed run and leaves a clean file to append to
    _write_csv_atomic(manifest_path, MANIFEST_FIELDS, _manifest_rows(entries))

    tasks: list[tuple[str, str, int, int, int, int]] = []
    failures: list[tuple[str, str]] = []
    skipped = 0
    for source in sources:
        try:
            st = os.stat(source)
        except OSError as err:
            failures.append((source, f"missing or not accessible: {err.strerror or err}"))
            continue
        entry = entries.get(source)
        if (
            entry is not None
            and entry["source_size"] == st.st_size
            and entry["source_mtime_ns"] == st.st_mtime_ns
            and (out / entry["cached"]).is_file()
        ):
            skipped += 1
            continue
        tasks.append((source, str(out), int(size), int(quality), int(st.st_size), int(st.st_mtime_ns)))
    log.info(
        "image cache %s: %d images, %d already cached, %d to do with %d worker(s)",
        out,
        len(sources),
        skipped,
        len(tasks),
        max(1, workers),
    )

    done = 0
    with open(manifest_path, "a", newline="", encoding="utf-8", errors="surrogateescape") as manifest:
        writer = csv.writer(manifest)
        for result in _run(tasks, workers, chunksize, progress, total=len(tasks)):
            if result.error is not None:
                failures.append((result.source, result.error))
                log.warning("image cache: skipping %s: %s", result.source, result.error)
                continue
            writer.writerow([getattr(result, k) for k in MANIFEST_FIELDS])
            done += 1
            if done % 256 == 0:
                manifest.flush()
    # the final manifest is compact (one row per source) and written atomically
    entries = read_manifest(manifest_path)
    _write_csv_atomic(manifest_path, MANIFEST_FIELDS, _manifest_rows(entries))
    _write_csv_atomic(failed_path, ("path", "reason"), failures)
    if failures:
        log.warning(
            "image cache: %d image(s) could not be cached (listed in %s); training skips them (a re-run "
            "of the prepare command retries them)",
            len(failures),
            failed_path,
        )
    seconds = time.perf_counter() - t0
    return CacheSummary(
        cache_dir=str(out),
        size=int(size),
        total=len(sources),
        done=done,
        skipped=skipped,
        failed=len(failures),
        seconds=round(seconds, 3),
        images_per_s=round(done / seconds, 2) if seconds > 0 else 0.0,
        failed_report=str(failed_path) if failures else None,
    )


def _run(tasks: list, workers: int, chunksize: int, progress: bool, total: int) -> Iterator[_Result]:
    from tqdm.auto import tqdm

    def bar() -> tqdm:
        return tqdm(
            total=total,
            unit="img",
            desc="caching images",
            disable=not progress or total == 0,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    if workers <= 1 or total <= 1:
        with bar() as pbar:
            for task in tasks:
                yield _process(task)
                pbar.update(1)
        return
    # Not fork: a parent that already ran cv2 / torch thread pools (the data module, a test session)
    # deadlocks in the forked children. A forkserver starts the workers from a clean process that only
    # imports this module (cv2 + numpy); spawn where forkserver does not exist.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context(method), initializer=_init_worker, initargs=(os.getpid(),)
    ) as pool:
        chunk = max(1, min(chunksize, total // (workers * 4) or 1))
        results = pool.map(_process, tasks, chunksize=chunk)
        with bar() as pbar:
            for result in results:
                yield result
                pbar.update(1)


# ---------------------------------------------------------------------------------------------- read side
def available_sizes(cache_root: str | os.PathLike[str]) -> list[int]:
    """Sizes with a manifest under ``cache_root`` (ascending)."""
    root = Path(cache_root)
    if not root.is_dir():
        return []
    sizes = []
    for child in root.iterdir():
        match = _SIZE_DIR.match(child.name)
        if match and (child / MANIFEST).is_file():
            sizes.append(int(match.group(1)))
    return sorted(sizes)


def load_cache_map(cache_root: str | os.PathLike[str], size: int) -> dict[str, str]:
    """``{absolute source path: absolute cached path}`` for one cached size (no per-image stat)."""
    out = size_dir(cache_root, size)
    prefix = str(out) + os.sep
    return {source: prefix + entry["cached"] for source, entry in read_manifest(out / MANIFEST).items()}


def read_failed(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{absolute source path: reason}`` from a ``failed.csv`` (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {row["path"]: row.get("reason") or "" for row in csv.DictReader(f) if row.get("path")}


def apply_cache(table: StudyTable, cache_root: str | os.PathLike[str] | None, min_size: int) -> StudyTable:
    """``table`` with image paths pointing into the smallest cached size >= ``min_size``.

    Images the manifest lacks keep their raw path, except those its ``failed.csv`` lists (truncated, unreadable,
    missing): they are left out of their study (a study left with no image is replaced at load time, see
    :class:`~cxr_vlp.data.dataset.StudyDataset`). Returns ``table`` itself when there is no usable cache (none
    written, or only sizes smaller than ``min_size``, with a warning in the latter case).
    """
    if not cache_root:
        return table
    sizes = available_sizes(cache_root)
    usable = [s for s in sizes if s >= min_size]
    if not usable:
        if sizes:
            log.warning(
                "image cache %s holds only size(s) %s, smaller than the image size %d: reading raw "
                "images (python -m cxr_vlp.prepare cache.size=%d ... writes a large enough cache)",
                cache_root,
                sizes,
                min_size,
                max(min_size, 512),
            )
        else:
            log.info(
                "no image cache in %s: reading raw images (a one-time `python -m cxr_vlp.prepare "
                "data=<name> data.root=...` makes loading much faster)",
                cache_root,
            )
        return table
    size = usable[0]
    mapping = load_cache_map(cache_root, size)
    failed_path = size_dir(cache_root, size) / FAILED
    failed = read_failed(failed_path)
    abspath = os.path.abspath
    covered = total = 0
    left_out: list[str] = []
    new_paths: list[list[str]] = []
    new_views: list[list[str]] = []
    for paths, views in zip(table.image_paths, table.view_names):
        row, row_views = [], []
        for path, view in zip(paths, views):
            total += 1
            cached = mapping.get(path) or mapping.get(abspath(path))
            if cached is None and failed and (path in failed or abspath(path) in failed):
                left_out.append(path)
                continue
            if cached is not None:
                covered += 1
            row.append(path if cached is None else cached)
            row_views.append(view)
        new_paths.append(row)
        new_views.append(row_views)
    log.info(
        "image cache %s: %d of %d images (%.1f%%) read from the cache, the rest raw",
        size_dir(cache_root, size),
        covered,
        total,
        100.0 * covered / max(total, 1),
    )
    if left_out:
        empty = sum(1 for row in new_paths if not row)
        log.warning(
            "image cache: %d image(s) listed in %s are skipped, not read raw (%d studies left without an "
            "image); first: %s",
            len(left_out),
            failed_path,
            empty,
            ", ".join(left_out[:5]),
        )
    return replace(table, image_paths=new_paths, view_names=new_views)
