"""Per-step cost of training ContrastiveModule under a real Lightning Trainer vs. a plain PyTorch loop.

    python bench/framework_overhead.py [+experiment=demo] [data.batch_size=64] [data.transforms.image_size=112]
                                       [other Hydra overrides] [steps=30] [warmup=5] [rounds=2] [length=80]
                                       [logger=csv|none] [callbacks=false|true]

(``+experiment=demo`` unless an experiment is named; ``length``: tokens per text view.) The demo config takes
about 1.5 minutes on 2 idle CPU cores; CPU timings are only meaningful on an otherwise idle machine.

Both sides do the same work on the same data: a fixed pool of pre-built :class:`Batch` objects (random images
``[B, Vi, 1, S, S]``, random token ids / attention masks ``[B, Vt, L]``, labels ``[B, 14]``) served from memory
by a ``DataLoader(batch_size=None)``, a fresh ContrastiveModule with the same seed (hence the same weights),
the optimizer and per-step LambdaLR from ``module.configure_optimizers()``, the config's precision
(autocast for ``bf16-mixed`` / ``16-mixed`` around the forward, a GradScaler for ``16-mixed``;
``16-mixed`` on CPU runs as ``bf16-mixed``, as Lightning does), gradient clipping by norm, and the
loss components read back every ``trainer.log_every_n_steps`` steps.

* Lightning: ``Trainer(devices=1, max_steps=warmup+steps_per_round+1)`` with the config's precision, gradient
  clipping and ``log_every_n_steps``, a CSVLogger in a temporary directory (``logger=none``: no logger), no
  validation, checkpointing, progress bar or model summary. ``callbacks=true`` adds the per-step callbacks of
  ``conf/callbacks`` except checkpoints and progress bars (LearningRateMonitor, ThroughputMonitor).
* plain: the forward path of ``training_step`` (``module._loss_views`` + ``module.loss_head``) without
  ``self.log``, then zero_grad, backward, ``clip_grad_norm_``, ``optimizer.step``, ``scheduler.step``.

A step is the time between two consecutive batch starts (Lightning: ``on_train_batch_start`` of a timing
Callback; plain: the same point of the loop, after the batch was moved to the device), so it includes
everything the loop does per step: fetching and moving the batch, the step, the scheduler, hooks and logging.
``torch.cuda.synchronize()`` before each timestamp on GPU. The first ``warmup`` steps of every run are dropped.
Runs alternate (plain, lightning, plain, lightning, ...) for ``rounds`` rounds, ``steps`` measured steps per
side split over the rounds; ``overhead = lightning / plain - 1`` on the medians of all measured steps.
CPU or the first GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from cxr_vlp.data.batch import Batch
from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.utils.config import config_dir

NUM_LABELS = 14
# distinct batches in memory; the loader cycles through them (enough to defeat caching effects, little memory)
POOL_SIZE = 4
BENCH_ARGS = {"steps": 30, "warmup": 5, "rounds": 2, "length": 80, "logger": "csv", "callbacks": "false"}
PRECISIONS = {
    "32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
}


# ---------------------------------------------------------------------------------------------- set-up
def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` bench options (:data:`BENCH_ARGS`) from the Hydra overrides (``+experiment=demo``
    unless an experiment is named)."""
    options = {k: str(v) for k, v in BENCH_ARGS.items()}
    overrides = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in options:
            options[key] = value
        else:
            overrides.append(arg)
    if not any(o.lstrip("+~").startswith("experiment=") for o in overrides):
        overrides.insert(0, "+experiment=demo")
    return options, overrides


def make_batches(cfg: DictConfig, length: int, seed: int) -> list[Batch]:
    """:data:`POOL_SIZE` random batches of the configured shapes (pad tokens after a random length per row)."""
    g = torch.Generator().manual_seed(seed)
    b, size = cfg.data.batch_size, cfg.data.transforms.image_size
    vi, vt = cfg.data.num_image_views, cfg.data.text_views.num_views
    vocab = cfg.model.text_encoder.tokenizer.vocab_size
    batches = []
    for k in range(POOL_SIZE):
        lengths = torch.randint(length // 2, length + 1, (b, vt, 1), generator=g)
        mask = (torch.arange(length).view(1, 1, -1) < lengths).long()
        ids = torch.randint(5, vocab, (b, vt, length), generator=g) * mask
        labels = torch.randint(0, 2, (b, NUM_LABELS), generator=g).float()
        labels[torch.rand(b, NUM_LABELS, generator=g) < 0.2] = float("nan")
        batches.append(
            Batch(
                images=torch.randn(b, vi, 1, size, size, generator=g),
                input_ids=ids,
                attention_mask=mask,
                labels=labels,
                index=torch.arange(k * b, (k + 1) * b),
                study_ids=[f"s{k * b + i}" for i in range(b)],
                subject_ids=[f"p{k * b + i}" for i in range(b)],
                texts=[["findings"] * vt for _ in range(b)],
            )
        )
    return batches


def make_loader(pool: list[Batch], num_batches: int) -> DataLoader:
    """A DataLoader that serves ``num_batches`` pre-built batches from memory (no collation, no workers)."""
    items = [pool[i % len(pool)] for i in range(num_batches)]
    return DataLoader(items, batch_size=None, shuffle=False, num_workers=0, collate_fn=lambda batch: batch)


def build_module(cfg: DictConfig, seed: int) -> ContrastiveModule:
    """A fresh module; the same seed gives the same weights on both sides."""
    L.seed_everything(seed, verbose=False)
    c = OmegaConf.to_container(cfg, resolve=False)
    module = ContrastiveModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        loss=c["loss"],
        optim=c["optim"],
        scheduler=c["scheduler"],
    )
    if module.needs_concepts:
        raise SystemExit("concept heads (CLEAR) need a trained tokenizer for their concept list: not benchmarked here")
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """What Lightning's ``batch_to_device`` does to the dataclass: every tensor field to the device
    (non-blocking on CUDA, as Lightning does)."""
    non_blocking = device.type == "cuda"
    return dataclasses.replace(
        batch,
        **{
            f.name: getattr(batch, f.name).to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(batch)
            if isinstance(getattr(batch, f.name), torch.Tensor)
        },
    )


@dataclasses.dataclass
class Times:
    """Per-step timestamps of one run: ``starts[i]`` at the start of step i (``len = steps + 1`` at the end),
    ``ends[i]`` once its optimizer and scheduler steps are done."""

    starts: list[float] = dataclasses.field(default_factory=list)
    ends: list[float] = dataclasses.field(default_factory=list)

    def steps(self, warmup: int) -> list[float]:
        """Seconds per step (start to next start) after ``warmup`` steps."""
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1 :])]

    def windows(self, warmup: int, count: int) -> list[float]:
        """Seconds from a step's start to the end of its scheduler step (no fetch, no logging)."""
        return [e - s for s, e in zip(self.starts[warmup : warmup + count], self.ends[warmup : warmup + count])]


# ---------------------------------------------------------------------------------------------- plain loop
def run_plain(
    cfg: DictConfig, pool: list[Batch], device: torch.device, precision: str, warmup: int, steps: int, seed: int
) -> Times:
    """The plain PyTorch loop; ``warmup + steps + 1`` batch starts, the last one closes the last step."""
    module = build_module(cfg, seed).to(device).train()
    total = warmup + steps + 1  # the Lightning run's max_steps, hence the same LR schedule
    module._trainer = SimpleNamespace(estimated_stepping_batches=total)  # configure_optimizers reads this only
    try:
        opt_cfg = module.configure_optimizers()
    finally:
        module._trainer = None
    optimizer, scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    # as Lightning's MixedPrecision plugin: autocast around the forward only, without the weight-cast cache
    autocast: Callable[[], Any] = (
        partial(torch.autocast, device.type, dtype=dtype, cache_enabled=False) if dtype is not None else nullcontext
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    clip = cfg.trainer.gradient_clip_val
    log_every = cfg.trainer.log_every_n_steps
    logged: list[dict[str, float]] = []
    times = Times()
    L.seed_everything(seed, verbose=False)
    loader: Iterator[Batch] = iter(make_loader(pool, total))
    for i, batch in enumerate(loader):
        batch = to_device(batch, device)
        sync(device)
        times.starts.append(time.perf_counter())
        if i == total - 1:
            break
        with autocast():  # the forward path of ContrastiveModule.training_step, without self.log
            image_views, text_views = module._loss_views(batch)
            out = module.loss_head(image_views, text_views, labels=batch.labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.unscale_(optimizer)
        else:
            out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        sync(device)
        times.ends.append(time.perf_counter())
        if (i + 1) % log_every == 0:  # what a hand-written loop logs
            logged.append(
                {
                    "train/loss": float(out.loss.detach()),
                    **{f"train/{k}": float(v) for k, v in out.logs.items() if k != "loss"},
                }
            )
    return times


# ---------------------------------------------------------------------------------------------- Lightning
class StepTimer(L.Callback):
    """Timestamps at every ``on_train_batch_start`` / ``on_train_batch_end`` (after a device synchronize)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times = Times()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        sync(self.device)
        self.times.starts.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        sync(self.device)
        self.times.ends.append(time.perf_counter())


def per_step_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The configured callbacks that cost something every step: all but checkpoints and progress bars."""
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    nodes = [v for v in (cfg.get("callbacks") or {}).values() if v is not None and "_target_" in v]
    return [instantiate(v) for v in nodes if not issubclass(get_class(v._target_), (ModelCheckpoint, ProgressBar))]


def run_lightning(
    cfg: DictConfig,
    pool: list[Batch],
    device: torch.device,
    precision: str,
    warmup: int,
    steps: int,
    seed: int,
    use_logger: bool,
    use_callbacks: bool,
) -> Times:
    """``trainer.fit`` for ``warmup + steps + 1`` steps; the last step's start closes the last measured step."""
    from lightning.pytorch.loggers import CSVLogger

    module = build_module(cfg, seed)
    total = warmup + steps + 1
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory(prefix="cxr_vlp_overhead_") as tmp:
        trainer = L.Trainer(
            accelerator=device.type,
            devices=1,
            max_steps=total,
            precision=precision,
            gradient_clip_val=cfg.trainer.gradient_clip_val,
            gradient_clip_algorithm=cfg.trainer.gradient_clip_algorithm,
            accumulate_grad_batches=1,
            log_every_n_steps=cfg.trainer.log_every_n_steps,
            deterministic=cfg.trainer.deterministic,
            benchmark=cfg.trainer.benchmark,
            logger=CSVLogger(tmp, name="csv", version="") if use_logger else False,
            callbacks=[timer, *(per_step_callbacks(cfg) if use_callbacks else [])],
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        L.seed_everything(seed, verbose=False)
        trainer.fit(module, train_dataloaders=make_loader(pool, total))
    return timer.times


# ---------------------------------------------------------------------------------------------- report
def summary(name: str, seconds: list[float], windows: list[float], batch_size: int) -> tuple[float, str]:
    mean, median = statistics.fmean(seconds), statistics.median(seconds)
    line = (
        f"{name:<10} {1000 * mean:9.1f} {1000 * median:9.1f} {1000 * min(seconds):9.1f} "
        f"{1000 * statistics.median(windows):12.1f} {batch_size / median:10.1f}"
    )
    return median, line


def main(argv: list[str]) -> None:
    options, overrides = parse_args(argv)
    steps, warmup, rounds = int(options["steps"]), int(options["warmup"]), max(1, int(options["rounds"]))
    use_logger = options["logger"].lower() not in ("none", "false", "0", "")
    use_callbacks = options["callbacks"].lower() in ("true", "1", "yes")
    if use_callbacks and not use_logger:
        raise SystemExit("callbacks=true needs a logger (LearningRateMonitor): drop logger=none")
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    precision = PRECISIONS.get(str(cfg.trainer.precision))
    if precision is None:
        raise SystemExit(f"precision {cfg.trainer.precision} is not benchmarked (32-true, bf16-mixed, 16-mixed)")
    if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        print(f"note: trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches} ignored (1 here)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "16-mixed" and device.type == "cpu":  # what Lightning does (fp16 AMP is CUDA-only there)
        print("note: precision 16-mixed on CPU runs as bf16-mixed (as in Lightning)")
        precision = "bf16-mixed"
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*srun.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*flops_per_batch.*")

    seed = int(cfg.get("seed", 42))
    b = cfg.data.batch_size
    pool = make_batches(cfg, int(options["length"]), seed)
    per_round = math.ceil(steps / rounds)
    print(
        f"device={device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''} "
        f"threads={torch.get_num_threads()} torch={torch.__version__} lightning={L.__version__}"
    )
    print(
        f"batch={b} image={cfg.data.transforms.image_size}px views={cfg.data.num_image_views}+"
        f"{cfg.data.text_views.num_views} tokens={options['length']} precision={precision} "
        f"clip={cfg.trainer.gradient_clip_val}/{cfg.trainer.gradient_clip_algorithm} "
        f"log_every_n_steps={cfg.trainer.log_every_n_steps} logger={'csv' if use_logger else 'none'} "
        f"callbacks={'+'.join(['timer', *(type(c).__name__ for c in per_step_callbacks(cfg) if use_callbacks)])}"
    )
    print(f"{rounds} rounds x (plain, lightning): {warmup} warm-up + {per_round} measured steps each")

    results: dict[str, tuple[list[float], list[float]]] = {"plain": ([], []), "lightning": ([], [])}
    for r in range(rounds):
        for name in ("plain", "lightning"):
            start = time.perf_counter()
            if name == "plain":
                times = run_plain(cfg, pool, device, precision, warmup, per_round, seed)
            else:
                times = run_lightning(cfg, pool, device, precision, warmup, per_round, seed, use_logger, use_callbacks)
            measured = times.steps(warmup)
            if len(measured) != per_round:
                raise RuntimeError(f"{name}: {len(measured)} measured steps, expected {per_round}")
            results[name][0].extend(measured)
            results[name][1].extend(times.windows(warmup, per_round))
            print(
                f"  round {r + 1} {name:<9}: median {1000 * statistics.median(measured):8.1f} ms/step "
                f"({time.perf_counter() - start:.0f} s incl. set-up)",
                flush=True,
            )

    print(f"{'':<10} {'mean ms':>9} {'median ms':>9} {'min ms':>9} {'hook-win ms':>12} {'studies/s':>10}")
    medians = {}
    for name, (seconds, windows) in results.items():
        medians[name], line = summary(name, seconds, windows, b)
        print(line)
    overhead = medians["lightning"] / medians["plain"] - 1
    print(
        f"overhead = lightning / plain - 1 = {100 * overhead:+.2f} % (medians of {len(results['plain'][0])} "
        f"steps per side)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
