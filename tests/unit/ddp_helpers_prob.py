"""Worker code for the 2-process CPU DDP test of ProbClipHead (ProbCLIP-VIB).

Importable in spawned children: the parent puts this directory on ``sys.path`` and spawn copies it.
The model is float64 so DDP and single-process results agree to ~1e-12.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ddp_spawn import gathers_without_grad, init_gloo, local_rows, pack, pack_ddp
from torch import Tensor, nn

from cxr_vlp.losses import distributed as losses_dist
from cxr_vlp.losses.heads import GaussianEmbedding
from cxr_vlp.losses.prob_head import ProbClipHead

GLOBAL_BATCH = 8
IMG_IN, TXT_IN, EMB = 6, 7, 5
# (logvar width, clip_weight, distance, kl_reduction): diagonal with the CLIP mix, isotropic without it,
# MedProbCLIP's variant
VARIANTS = {
    "diag_clip": (EMB, 0.5, "csd", "mean_over_dims"),
    "iso": (1, 0.0, "csd", "sum_over_dims"),
    "medprob": (EMB, 0.0, "medprobclip", "mean_over_dims"),
}


class TinyProbHead(nn.Module):
    """Two linear towers emitting (μ, log σ²) and a ProbClipHead with every term on (two views each)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.lv_dim, clip_weight, distance, kl_reduction = VARIANTS[variant]
        torch.manual_seed(4321)
        self.image_tower = nn.Linear(IMG_IN, EMB + self.lv_dim)
        self.text_tower = nn.Linear(TXT_IN, EMB + self.lv_dim)
        # a, b away from their defaults so that pseudo-positives occur
        self.head = ProbClipHead(
            a_init=2.0,
            b_init=1.0,
            pseudo_positive_weight=0.3,
            w_i2i=1.0,
            w_t2t=0.5,
            kl_weight=0.01,
            kl_reduction=kl_reduction,
            clip_weight=clip_weight,
            temperature_init=0.2,
            distance=distance,
        )
        self.double()

    def _split(self, h: Tensor) -> GaussianEmbedding:
        return GaussianEmbedding(F.normalize(h[:, :EMB], dim=-1), h[:, EMB:] - 1.0)

    def views(self, image_views: list[Tensor], text_views: list[Tensor]):
        return (
            [self._split(self.image_tower(x)) for x in image_views],
            [self._split(self.text_tower(x)) for x in text_views],
        )

    def forward(self, image_views: list[Tensor], text_views: list[Tensor]):
        imgs, txts = self.views(image_views, text_views)
        out = self.head(imgs, txts)
        return out.loss, out.logs


def make_batch() -> tuple[list[Tensor], list[Tensor]]:
    """Fixed global batch: 2 image views [8, 6], 2 text views [8, 7]."""
    g = torch.Generator().manual_seed(77)
    imgs = [torch.randn(GLOBAL_BATCH, IMG_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    txts = [torch.randn(GLOBAL_BATCH, TXT_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    return imgs, txts


@torch.no_grad()
def pseudo_masks(variant: str = "diag_clip") -> tuple[Tensor, Tensor]:
    """Pseudo-positive masks of the (image 0, text 0) pairing on the global batch: image rows against
    z_ii and text columns against z_jj (true pairs excluded)."""
    model = TinyProbHead(variant)
    imgs, txts = model.views(*make_batch())
    z = model.head.match_logit(imgs[0].mu, imgs[0].logvar, txts[0].mu, txts[0].logvar)
    off = ~torch.eye(GLOBAL_BATCH, dtype=torch.bool)
    return (z >= z.diagonal().unsqueeze(1)) & off, (z >= z.diagonal().unsqueeze(0)) & off


@contextlib.contextmanager
def local_true_logits(world: int) -> Iterator[None]:
    """The control: every rank uses its own true-pair logits for every rank's text columns instead of
    gathering them (the DDP results must then differ)."""
    original = losses_dist.gather_no_grad
    losses_dist.gather_no_grad = lambda x: torch.cat([x.detach()] * world)
    try:
        yield
    finally:
        losses_dist.gather_no_grad = original


def single_process_reference() -> dict[str, dict]:
    """Loss, logs and parameter gradients of every variant on the whole global batch."""
    imgs, txts = make_batch()
    results = {}
    for variant in VARIANTS:
        model = TinyProbHead(variant)
        loss, logs = model(imgs, txts)
        loss.backward()
        results[variant] = pack(model, loss, logs)
    return results


def _run(model: nn.Module, rank: int, world: int) -> dict:
    ddp = nn.parallel.DistributedDataParallel(model)
    imgs, txts = make_batch()
    local = local_rows(rank, world, GLOBAL_BATCH)
    loss, logs = ddp([x[local] for x in imgs], [x[local] for x in txts])
    loss.backward()
    return pack_ddp(model, loss, logs, world)


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Spawned entry point: run every variant with and without gradient-carrying gathers; save results."""
    init_gloo(rank, world, port)
    try:
        results: dict = {variant: _run(TinyProbHead(variant), rank, world) for variant in VARIANTS}
        with gathers_without_grad():
            results["diag_clip_nograd"] = _run(TinyProbHead("diag_clip"), rank, world)
        with local_true_logits(world):
            results["diag_clip_local_true"] = _run(TinyProbHead("diag_clip"), rank, world)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
