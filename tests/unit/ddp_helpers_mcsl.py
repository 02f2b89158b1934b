"""Worker code for the 2-process CPU DDP tests of MCSL and the ProbCLIP matching loss.

Importable in spawned children: the parent puts this directory on ``sys.path`` and spawn copies it.
Every model is float64 so DDP and single-process results agree to ~1e-12.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ddp_spawn import gathers_without_grad, init_gloo, local_rows, pack, pack_ddp
from torch import Tensor, nn

from cxr_vlp.losses.mcsl import McslHead
from cxr_vlp.losses.probabilistic import prob_match_loss, vib_kl

GLOBAL_BATCH = 8
IMG_IN, TXT_IN, EMB = 6, 7, 5
NAN = float("nan")
PSEUDO_WEIGHT, KL_WEIGHT = 0.3, 0.01
MCSL_MODES = ("identity", "uniform")


class TinyMCSL(nn.Module):
    """Two linear towers and an McslHead (two views each, intra-modal terms on)."""

    def __init__(self, empty_row: str) -> None:
        super().__init__()
        torch.manual_seed(1234)
        self.image_tower = nn.Linear(IMG_IN, EMB)
        self.text_tower = nn.Linear(TXT_IN, EMB)
        self.head = McslHead(
            lam=0.7, concept_temperature=0.5, temperature_init=0.2, empty_row=empty_row, w_i2i=1.0, w_t2t=0.5
        )
        self.double()

    def forward(self, image_views: list[Tensor], text_views: list[Tensor], labels: Tensor):
        imgs = [F.normalize(self.image_tower(x), dim=-1) for x in image_views]
        txts = [F.normalize(self.text_tower(x), dim=-1) for x in text_views]
        out = self.head(imgs, txts, labels)
        return out.loss, out.logs


class TinyProb(nn.Module):
    """Towers emitting (μ, log σ²), learnable a = exp(a_log) and b; BCE match + pseudo + VIB."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4321)
        self.image_tower = nn.Linear(IMG_IN, 2 * EMB)
        self.text_tower = nn.Linear(TXT_IN, 2 * EMB)
        self.a_log = nn.Parameter(torch.tensor(math.log(5.0)))
        self.b = nn.Parameter(torch.tensor(5.0))
        self.double()

    @staticmethod
    def _split(h: Tensor) -> tuple[Tensor, Tensor]:
        return F.normalize(h[:, :EMB], dim=-1), h[:, EMB:] - 1.0

    def forward(self, images: Tensor, texts: Tensor):
        mu_i, lv_i = self._split(self.image_tower(images))
        mu_t, lv_t = self._split(self.text_tower(texts))
        out = prob_match_loss(mu_i, lv_i, mu_t, lv_t, self.a_log.exp(), self.b, pseudo_positive_weight=PSEUDO_WEIGHT)
        loss = out["loss"] + KL_WEIGHT * (vib_kl(mu_i, lv_i) + vib_kl(mu_t, lv_t))
        logs = {k: v.detach() for k, v in out.items()}
        return loss, logs


def make_batch() -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Fixed global batch: 2 image views [8, 6], 2 text views [8, 7], labels [8, 14] (1 / 0 / NaN).

    Concepts cross the rank boundary (rows 0–3 on rank 0, 4–7 on rank 1): row 5 shares labels only
    with rows 0 and 2, row 3 only with row 6; row 1 is all unknown and row 7 all negative (empty rows).
    """
    g = torch.Generator().manual_seed(99)
    imgs = [torch.randn(GLOBAL_BATCH, IMG_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    txts = [torch.randn(GLOBAL_BATCH, TXT_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    labels = torch.zeros(GLOBAL_BATCH, 14, dtype=torch.float64)
    labels[:, 10:] = NAN
    positives = {0: [0, 2], 2: [2, 4], 3: [7], 4: [8, 9], 5: [2], 6: [7, 8]}
    for row, cols in positives.items():
        labels[row, cols] = 1.0
    labels[1] = NAN
    return imgs, txts, labels


def single_process_reference() -> dict[str, dict]:
    """Loss, logs and parameter gradients of every model on the whole global batch."""
    imgs, txts, labels = make_batch()
    results = {}
    for mode in MCSL_MODES:
        model = TinyMCSL(mode)
        loss, logs = model(imgs, txts, labels)
        loss.backward()
        results[mode] = pack(model, loss, logs)
    model = TinyProb()
    loss, logs = model(imgs[0], txts[0])
    loss.backward()
    results["prob"] = pack(model, loss, logs)
    return results


def _run(model: nn.Module, rank: int, world: int, prob: bool) -> dict:
    ddp = nn.parallel.DistributedDataParallel(model)
    imgs, txts, labels = make_batch()
    local = local_rows(rank, world, GLOBAL_BATCH)
    if prob:
        loss, logs = ddp(imgs[0][local], txts[0][local])
    else:
        loss, logs = ddp([x[local] for x in imgs], [x[local] for x in txts], labels[local])
    loss.backward()
    return pack_ddp(model, loss, logs, world)


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Spawned entry point: run every model with and without gradient-carrying gathers; save results."""
    init_gloo(rank, world, port)
    try:
        results: dict = {}
        for mode in MCSL_MODES:
            results[mode] = _run(TinyMCSL(mode), rank, world, prob=False)
        results["prob"] = _run(TinyProb(), rank, world, prob=True)

        with gathers_without_grad():
            results["identity_nograd"] = _run(TinyMCSL("identity"), rank, world, prob=False)
            results["prob_nograd"] = _run(TinyProb(), rank, world, prob=True)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
