"""Print training studies/s per data-loader worker from litdata shards, the JPEG image cache and the raw files, side by
side in one run, on the synthetic dataset (``data=synthetic``).

    python bench/data_loading.py [patients=150] [raw_size=1024] [cache_size=256] [image_size=224] [epochs=2]
                                 [dir=/tmp/...]

Generates the synthetic dataset at ``raw_size`` px, runs ``python -m cxr_vlp.prepare format=litdata`` (the cache at
``cache_size``, then the shards), and iterates the training split with each source exactly as training does: two
image views per study, the training augmentation at ``image_size``, two text views; one process (``num_workers=0``,
one OpenCV and one torch thread, as in a DataLoader worker), batches of 32, no tokenisation (the same for all
three). The first epoch of each source is a
warm-up (page cache, litdata's chunk index); the figure is the mean over the next ``epochs``, the three sources
taking turns epoch by epoch.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_vlp.data.sampling import EpochSampler  # noqa: E402
from cxr_vlp.data.stream import StudyStream, StudyStreamLoader  # noqa: E402
from tests.integration.hydra_helpers import compose_train  # noqa: E402

BATCH = 32


def _args(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv if "=" in a)


def _as_list(samples: list) -> list:
    return samples


def _rates(makers: dict, epochs: int) -> dict[str, tuple[float, int]]:
    """Studies/s of each source over ``epochs`` epochs after one warm-up epoch each, the sources taking turns epoch by
    epoch (so a change in the machine's load hits them alike); also the studies per epoch."""
    counts = {name: sum(len(b) for b in make(0)) for name, make in makers.items()}
    seconds = dict.fromkeys(makers, 0.0)
    for epoch in range(1, epochs + 1):
        for name, make in makers.items():
            t0 = time.perf_counter()
            for _ in make(epoch):
                pass
            seconds[name] += time.perf_counter() - t0
    return {name: (counts[name] * epochs / seconds[name], counts[name]) for name in makers}


def main(argv: list[str]) -> None:
    args = _args(argv)
    patients, raw_size = int(args.get("patients", 150)), int(args.get("raw_size", 1024))
    cache_size, image_size = int(args.get("cache_size", 256)), int(args.get("image_size", 224))
    epochs = int(args.get("epochs", 2))
    root = Path(args.get("dir") or tempfile.mkdtemp(prefix="cxr_data_loading_"))
    cv2.setNumThreads(1)
    torch.set_num_threads(1)  # as in a DataLoader worker process
    data = [
        f"data.prepare.num_patients={patients}",
        f"data.prepare.image_size={raw_size}",
        f"data.prepare.out_dir={root / 'synthetic'}",
        f"data.transforms.image_size={image_size}",
    ]
    from cxr_vlp.prepare import prepare

    shards = root / "shards"
    if not (shards / "manifest.json").is_file():
        t0 = time.perf_counter()
        prepare(
            compose_train(
                root / "prepare",
                [
                    *data,
                    f"cache.dir={root / 'cache'}",
                    f"cache.size={cache_size}",
                    "cache.workers=2",
                    "cache.progress=false",
                    "format=litdata",
                    f"out={shards}",
                ],
                config_name="prepare",
            )
        )
        print(f"prepare (cache + shards): {time.perf_counter() - t0:.1f} s")

    def datamodule(extra: list[str]):
        cfg = compose_train(root / "run", [*data, "data.num_workers=0", *extra])
        dm = instantiate(cfg.data)
        dm.setup("fit")
        return dm

    def map_style(dm):
        dataset = dm.datasets["train"]

        def make(epoch: int):
            sampler = EpochSampler(dataset, seed=0)
            sampler.set_epoch(epoch)
            return DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True, collate_fn=_as_list)

        return make

    def streamed(dm):
        stream = StudyStream(
            dm.shards().split_dir("train"),
            dm._sample_spec("train", dm._transforms),
            shuffle=True,
            seed=0,
            drop_last=True,
        )
        loader = StudyStreamLoader(stream, batch_size=BATCH, num_workers=0, collate_fn=_as_list)
        return lambda epoch: loader

    rates = _rates(
        {
            "raw files": map_style(datamodule(["data.image_cache=null"])),
            f"JPEG cache ({cache_size} px)": map_style(datamodule([f"data.image_cache={root / 'cache'}"])),
            f"litdata shards ({cache_size} px)": streamed(datamodule([f"data.stream={shards}"])),
        },
        epochs,
    )
    print(
        f"synthetic: {patients} patients, raw {raw_size} px, training at {image_size} px, batches of {BATCH}, "
        "one worker"
    )
    base = rates[f"JPEG cache ({cache_size} px)"][0]
    for name, (rate, n) in rates.items():
        print(f"  {name:<28} {rate:8.1f} studies/s   ({n} studies/epoch, {rate / base:.2f}x the JPEG cache)")


if __name__ == "__main__":
    main(sys.argv[1:])
