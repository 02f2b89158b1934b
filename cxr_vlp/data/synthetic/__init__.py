"""The embedded synthetic chest X-ray dataset: deterministic images + reports + CheXpert labels.

``generate_dataset(out_dir, num_patients=200, seed=0)`` writes, in the generic CSV layout read by the
framework's loader::

    out_dir/images/p<subject>/s<study>/<view_index>_<VIEW>.jpg   grayscale JPEGs
    out_dir/studies.csv                                           one row per study
    out_dir/manifest.json                                         config, version, counts

Image and report share instance attributes beyond the 14 labels (side, size, zone, device and tip,
heart-size degree, lung volumes, rotation), so exact image-report retrieval is learnable. The output
depends only on the config (never on ``workers``): every image has its own RNG derived from
``(seed, study index, view index)``. Conventions (patient right = image left in frontal views, label
values) are documented in :mod:`.attributes` and :mod:`.render`.

Generation is a once-only step for concurrent jobs: it runs under a file lock next to ``out_dir``
(``.<name>.lock``), jobs that wait for it reuse the result, and the final rename tolerates a finished dataset
that got there first (for file systems without working locks).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxr_vlp import __version__
from cxr_vlp.data.synthetic.attributes import Study, sample_cohort
from cxr_vlp.data.synthetic.render import image_rng, render_view
from cxr_vlp.data.synthetic.report import write_report
from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.utils.files import file_lock
from cxr_vlp.utils.procs import die_with_parent

__all__ = ["SyntheticConfig", "generate_dataset", "FORMAT_VERSION", "CSV_COLUMNS"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CSV_COLUMNS: tuple[str, ...] = (
    "study_id",
    "subject_id",
    "image_paths",
    "view_names",
    "findings",
    "impression",
    *CHEXPERT_LABELS,
    "study_date",
    "attributes",
)
_NOT_PART_OF_IDENTITY = ("workers",)  # config fields that do not change the generated files


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Everything but ``workers`` determines the output bytes."""

    num_patients: int = 200
    seed: int = 0
    image_size: int = 256
    max_studies_per_patient: int = 4
    max_views_per_study: int = 3
    jpeg_quality: int = 90
    workers: int = 0  # 0 = render in-process; >0 = a multiprocessing pool of that size

    def __post_init__(self) -> None:
        checks = {
            "num_patients": self.num_patients >= 1,
            "image_size": self.image_size >= 32,
            "max_studies_per_patient": self.max_studies_per_patient >= 1,
            "max_views_per_study": self.max_views_per_study >= 1,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
            "workers": self.workers >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SyntheticConfig values: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def identity(self) -> dict[str, Any]:
        """The fields that determine the generated files (used for the cache check)."""
        return {k: v for k, v in asdict(self).items() if k not in _NOT_PART_OF_IDENTITY}


def _config_diff(manifest: dict[str, Any], cfg: SyntheticConfig) -> list[str]:
    """Human-readable differences between a manifest on disk and ``cfg`` (empty when reusable)."""
    diffs = []
    if manifest.get("format_version") != FORMAT_VERSION:
        diffs.append(f"format_version {manifest.get('format_version')!r} on disk vs {FORMAT_VERSION!r} requested")
    old = manifest.get("config", {})
    for key, value in cfg.identity().items():
        if old.get(key) != value:
            diffs.append(f"{key} {old.get(key)!r} on disk vs {value!r} requested")
    return diffs


def _check_existing(out: Path, cfg: SyntheticConfig) -> bool:
    """True when ``out`` already holds this dataset; raise if it holds anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; refusing to write the synthetic dataset there")
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise FileExistsError(f"{out} has an unreadable manifest.json ({err}); refusing to overwrite it") from err
        diffs = _config_diff(manifest, cfg)
        if diffs:
            raise FileExistsError(
                f"{out} already holds a synthetic dataset generated with a different config: "
                f"{'; '.join(diffs)}. Use another out_dir or delete that directory."
            )
        if not (out / "studies.csv").is_file():
            raise FileExistsError(f"{out} has a manifest.json but no studies.csv; delete the directory to regenerate")
        return True
    if any(out.iterdir()):
        raise FileExistsError(
            f"{out} exists, is not empty and has no synthetic manifest.json; "
            "refusing to write into it (it may hold user data)"
        )
    return False


def _image_relpath(st: Study, view_index: int, view: str) -> str:
    return f"images/{st.subject_id}/{st.study_id}/{view_index}_{view}.jpg"


def _render_study(task: tuple[Study, str, int, int, int]) -> int:
    """Render and write every view of one study (runs in a worker or in-process)."""
    st, root, seed, size, quality = task
    folder = Path(root) / "images" / st.subject_id / st.study_id
    folder.mkdir(parents=True, exist_ok=True)
    for vi, view in enumerate(st.views):
        img = render_view(st, view, image_rng(seed, st.index, vi), size)
        path = str(Path(root) / _image_relpath(st, vi, view))
        if not cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cv2.imwrite failed for {path}")
    return len(st.views)


def _worker_init(job_pid: int) -> None:
    die_with_parent(job_pid)
    cv2.setNumThreads(1)


def _render_all(studies: list[Study], root: Path, cfg: SyntheticConfig) -> int:
    tasks = [(st, str(root), cfg.seed, cfg.image_size, cfg.jpeg_quality) for st in studies]
    total = sum(len(st.views) for st in studies)
    done, next_log, t0 = 0, 0.25, time.perf_counter()
    if cfg.workers > 0:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(cfg.workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            chunk = max(1, min(64, len(tasks) // (8 * cfg.workers)))
            for n in pool.imap_unordered(_render_study, tasks, chunksize=chunk):
                done += n
                if done >= next_log * total:
                    logger.info("rendered %d/%d images (%.1fs)", done, total, time.perf_counter() - t0)
                    next_log += 0.25
    else:
        for task in tasks:
            done += _render_study(task)
    return done


def _table(studies: list[Study], seed: int) -> Any:
    import pandas as pd  # local import: keeps worker processes light

    rows = []
    for st in studies:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, st.index)))
        findings, impression = write_report(st, rng)
        rows.append(
            {
                "study_id": st.study_id,
                "subject_id": st.subject_id,
                "image_paths": ";".join(_image_relpath(st, vi, v) for vi, v in enumerate(st.views)),
                "view_names": ";".join(st.views),
                "findings": findings,
                "impression": impression,
                **st.labels,
                "study_date": st.study_date,
                "attributes": st.attributes_json(),
            }
        )
    df = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for name in CHEXPERT_LABELS:
        df[name] = pd.array(df[name].tolist(), dtype="Int64")
    return df


def generate_dataset(out_dir: str | os.PathLike[str], config: SyntheticConfig | None = None, **overrides: Any) -> Path:
    """Generate the synthetic dataset into ``out_dir`` (or reuse it) and return the path of studies.csv.

    ``overrides`` replace fields of ``config`` (e.g. ``num_patients=20``). If ``out_dir`` already holds a
    dataset with the same config it is reused untouched; a different config, or a non-empty directory
    without a manifest, raises ``FileExistsError``. Files are written to a temporary sibling directory
    renamed into place at the end, so an interrupted run leaves nothing at ``out_dir``. Concurrent calls for one
    ``out_dir`` (jobs started together) generate it once: the others wait for the lock and reuse it.
    """
    valid = {f.name for f in fields(SyntheticConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"unknown SyntheticConfig field(s) {unknown}; valid fields: {sorted(valid)}")
    cfg = replace(config or SyntheticConfig(), **overrides)
    out = Path(out_dir).expanduser().absolute()
    if _check_existing(out, cfg):
        logger.info("reusing the synthetic dataset in %s (same config)", out)
        return out / "studies.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock", logger, f"another process is generating {out}; waiting for it"):
        if _check_existing(out, cfg):  # made by the process that held the lock
            logger.info("reusing the synthetic dataset in %s (generated by another process)", out)
            return out / "studies.csv"
        return _generate(out, cfg)


def _generate(out: Path, cfg: SyntheticConfig) -> Path:
    """Render into a temporary sibling of ``out`` and rename it into place; returns studies.csv."""
    t0 = time.perf_counter()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        studies = sample_cohort(cfg.num_patients, cfg.seed, cfg.max_studies_per_patient, cfg.max_views_per_study)
        logger.info(
            "sampled %d patients, %d studies; rendering with %d worker(s)", cfg.num_patients, len(studies), cfg.workers
        )
        n_images = _render_all(studies, tmp, cfg)
        _table(studies, cfg.seed).to_csv(tmp / "studies.csv", index=False)
        manifest = {
            "format_version": FORMAT_VERSION,
            "generator": __name__,
            "package_version": __version__,
            "config": asdict(cfg),
            "counts": {"patients": cfg.num_patients, "studies": len(studies), "images": n_images},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            if out.exists():  # an empty directory (checked by the caller), or a dataset that just appeared
                out.rmdir()
            os.rename(tmp, out)
        except OSError:
            if _check_existing(out, cfg):  # another process (without a working lock) finished it first
                shutil.rmtree(tmp, ignore_errors=True)
                logger.info("reusing the synthetic dataset in %s (generated by another process)", out)
                return out / "studies.csv"
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d studies, %d images to %s in %.1fs", len(studies), n_images, out, time.perf_counter() - t0)
    return out / "studies.csv"
