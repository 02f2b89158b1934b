"""Image-cache entry point: ``python -m cxr_vlp.prepare data=<name> data.root=... cache.size=512``.

Runs the dataset's ``prepare`` step (the synthetic dataset is generated if needed), reads the full study
table (all splits) and resizes every image once into ``${cache.dir}/s${cache.size}/`` (see
:mod:`cxr_vlp.data.cache`). Prints one JSON summary line (done now, skipped as already cached, failed).

``format=litdata out=<dir or s3://bucket/prefix>`` then writes streaming shards of every split from that cache
(:func:`cxr_vlp.data.stream.write_shards`; the summary gains a ``shards`` entry), which ``data.stream=<out>`` trains
from.
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
    fmt = str(cfg.get("format") or "cache")
    if fmt not in ("cache", "litdata"):
        raise ValueError(f"format={fmt}: expected 'cache' (the image cache) or 'litdata' (the cache, then shards)")
    if fmt == "litdata" and not cfg.get("out"):
        raise ValueError("format=litdata needs out=<dir or s3://bucket/prefix> for the shards")
    if not cache.get("dir"):
        raise ValueError("no cache folder: set cache.dir=/path (or data.image_cache) for the image cache")
    if fmt == "litdata":
        from cxr_vlp.data.stream import check_new_out

        check_new_out(str(cfg.out), dict(cfg.data.get("stream_options") or {}))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    table = datamodule.reader()
    paths = [p for study in table.image_paths for p in study]
    log.info(
        "%s: %d studies, %d image paths; caching at %d px into %s",
        datamodule.name,
        len(table),
        len(paths),
        cache.size,
        cache.dir,
    )
    summary = build_cache(
        paths,
        cache.dir,
        size=int(cache.size),
        workers=int(cache.workers),
        quality=int(cache.quality),
        progress=bool(cache.get("progress", True)),
    )
    result = {"dataset": datamodule.name, "studies": len(table), **summary.to_dict()}
    if fmt == "litdata":
        from cxr_vlp.data.stream import write_shards

        shards_cfg = cfg.get("shards") or {}
        result["shards"] = write_shards(
            datamodule,
            str(cfg.out),
            cache_dir=str(cache.dir),
            size=int(cache.size),
            chunk_bytes=str(shards_cfg.get("chunk_bytes", "64MB")),
            storage_options=dict(cfg.data.get("stream_options") or {}),
            workers=int(shards_cfg.get("workers", 1)),
        ).to_dict()
    print(json.dumps(result), flush=True)
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def main(cfg: DictConfig) -> None:
    summary = prepare(cfg)
    if summary["failed"]:
        log.warning("%d image(s) failed; see %s", summary["failed"], summary["failed_report"])


if __name__ == "__main__":
    main()
