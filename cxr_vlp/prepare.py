"""Image-cache entry point: ``python -m cxr_vlp.prepare data=<name> data.root=... cache.size=512``.

Runs the dataset's ``prepare`` step (the synthetic dataset is generated if needed), reads the full study
table (all splits) and resizes every image once into ``${cache.dir}/s${cache.size}/`` (see
:mod:`cxr_vlp.data.cache`). Prints one JSON summary line (done now, skipped as already cached, failed).
"""

from __future__ import annotations

import json
import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from cxr_vlp.data.cache import build_cache
from cxr_vlp.utils.config import config_dir

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict:
    """Build the image cache the config describes; returns the summary (also printed as JSON)."""
    cache = cfg.cache
    if not cache.get("dir"):
        raise ValueError("no cache folder: set cache.dir=/path (or data.image_cache) for the image cache")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    table = datamodule.reader()
    paths = [p for study in table.image_paths for p in study]
    log.info("%s: %d studies, %d image paths; caching at %d px into %s", datamodule.name, len(table), len(paths),
             cache.size, cache.dir)
    summary = build_cache(paths, cache.dir, size=int(cache.size), workers=int(cache.workers),
                          quality=int(cache.quality), progress=bool(cache.get("progress", True)))
    result = {"dataset": datamodule.name, "studies": len(table), **summary.to_dict()}
    print(json.dumps(result), flush=True)
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def main(cfg: DictConfig) -> None:
    summary = prepare(cfg)
    if summary["failed"]:
        log.warning("%d image(s) failed; see %s", summary["failed"], summary["failed_report"])


if __name__ == "__main__":
    main()
