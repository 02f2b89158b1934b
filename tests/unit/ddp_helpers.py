"""Worker code for the 2-process CPU DDP loss test (must be importable in spawned children).

The parent puts this directory on ``sys.path``; ``multiprocessing`` spawn copies ``sys.path`` into
the children, so ``import ddp_helpers`` works there too.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ddp_spawn import gathers_without_grad, init_gloo, local_rows
from torch import Tensor, nn

from cxr_vlp.losses import ClipHead
from cxr_vlp.losses import distributed as losses_dist

GLOBAL_BATCH = 8
IMG_IN, TXT_IN, EMB = 6, 7, 5
W_I2I, W_T2T = 1.0, 0.5
MODES = ("grad", "nograd")


class TinyCLIP(nn.Module):
    """Two linear towers and a ClipHead; float64 so DDP and single-process results agree to ~1e-12."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1234)
        self.image_tower = nn.Linear(IMG_IN, EMB)
        self.text_tower = nn.Linear(TXT_IN, EMB)
        self.head = ClipHead(temperature_init=0.2, w_i2i=W_I2I, w_t2t=W_T2T)
        self.double()

    def forward(self, image_views: list[Tensor], text_views: list[Tensor]) -> Tensor:
        imgs = [F.normalize(self.image_tower(x), dim=-1) for x in image_views]
        txts = [F.normalize(self.text_tower(x), dim=-1) for x in text_views]
        return self.head(imgs, txts).loss


def make_batch() -> tuple[list[Tensor], list[Tensor]]:
    """Fixed global batch: 2 image views [8, 6] and 2 text views [8, 7]."""
    g = torch.Generator().manual_seed(99)
    imgs = [torch.randn(GLOBAL_BATCH, IMG_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    txts = [torch.randn(GLOBAL_BATCH, TXT_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    return imgs, txts


def single_process_reference() -> tuple[float, dict[str, Tensor]]:
    """Loss and parameter gradients on the whole global batch in one process."""
    model = TinyCLIP()
    imgs, txts = make_batch()
    loss = model(imgs, txts)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _run_step(rank: int, world: int) -> dict:
    model = TinyCLIP()
    ddp = nn.parallel.DistributedDataParallel(model)
    imgs, txts = make_batch()
    local = local_rows(rank, world, GLOBAL_BATCH)
    loss = ddp([x[local] for x in imgs], [x[local] for x in txts])
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return {"loss": mean_loss.item(), "local_loss": loss.item(), "grads": grads}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Spawned entry point: run every mode plus collective checks; save results to out_dir."""
    init_gloo(rank, world, port)
    try:
        results: dict = {}
        results["grad"] = _run_step(rank, world)

        # Plain (no-grad) gather: columns from other ranks carry no gradient.
        with gathers_without_grad():
            results["nograd"] = _run_step(rank, world)

        x = torch.full((2, 3), float(rank), dtype=torch.float64, requires_grad=True)
        gathered = losses_dist.gather_no_grad(x)
        results["gather_no_grad"] = (gathered.tolist(), gathered.requires_grad)
        results["offset"] = losses_dist.rank_offset(4)
        try:
            losses_dist.rank_offset(3 + rank)
            results["unequal_error"] = None
        except ValueError as err:
            results["unequal_error"] = str(err)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
