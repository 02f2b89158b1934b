"""Worker code for the 2-process CPU DDP test of the CLEAR head (concept projection).

Importable in spawned children: the parent puts this directory on ``sys.path`` and spawn copies it.
The tiny model is float64 so DDP and single-process results agree to ~1e-12. The text tower (a linear
layer) embeds the reports *and* fixed concept features, so C = normalise(text_tower(concept_features))
carries gradients into the shared tower, as the real text tower does in ContrastiveModule.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ddp_spawn import gathers_without_grad, init_gloo, local_rows, pack, pack_ddp
from torch import Tensor, nn

from cxr_vlp.losses.clear_head import ClearHead

GLOBAL_BATCH = 8
IMG_IN, TXT_IN, EMB, LLM_DIM = 6, 7, 5, 16
CONCEPTS = [
    "pleural effusion",
    "small pleural effusion",
    "chest tube",
    "clear lungs",
    "enlarged cardiac silhouette",
    "pneumothorax",
]


class TinyClear(nn.Module):
    """Linear image and text towers, C from the text tower on fixed concept features, and a ClearHead
    (two views each, intra-modal terms on, unequal term weights, different temperatures)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1234)
        self.image_tower = nn.Linear(IMG_IN, EMB)
        self.text_tower = nn.Linear(TXT_IN, EMB)
        g = torch.Generator().manual_seed(7)
        self.register_buffer("concept_features", torch.randn(len(CONCEPTS), TXT_IN, generator=g))
        self.head = ClearHead(
            concepts=CONCEPTS,
            embedder={"kind": "hashing", "dim": LLM_DIM},
            w_clip=0.8,
            w_concept=1.3,
            temperature_init=0.2,
            concept_temperature_init=0.3,
            w_i2i=1.0,
            w_t2t=0.5,
        )
        self.head.prepare()  # E (hashing: identical on every rank)
        self.double()

    def forward(self, image_views: list[Tensor], text_views: list[Tensor], detach_concepts: bool = False):
        imgs = [F.normalize(self.image_tower(x), dim=-1) for x in image_views]
        txts = [F.normalize(self.text_tower(x), dim=-1) for x in text_views]
        concepts = F.normalize(self.text_tower(self.concept_features), dim=-1)
        if detach_concepts:
            concepts = concepts.detach()
        out = self.head(imgs, txts, concepts=concepts)
        return out.loss, out.logs


def make_batch() -> tuple[list[Tensor], list[Tensor]]:
    """Fixed global batch: 2 image views [8, 6] and 2 text views [8, 7] (rows 0–3 rank 0, 4–7 rank 1)."""
    g = torch.Generator().manual_seed(99)
    imgs = [torch.randn(GLOBAL_BATCH, IMG_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    txts = [torch.randn(GLOBAL_BATCH, TXT_IN, generator=g, dtype=torch.float64) for _ in range(2)]
    return imgs, txts


def single_process_reference(detach_concepts: bool = False) -> dict:
    """Loss, logs and parameter gradients on the whole global batch in one process."""
    imgs, txts = make_batch()
    model = TinyClear()
    loss, logs = model(imgs, txts, detach_concepts=detach_concepts)
    loss.backward()
    return pack(model, loss, logs)


def _run(rank: int, world: int) -> dict:
    model = TinyClear()
    ddp = nn.parallel.DistributedDataParallel(model)
    imgs, txts = make_batch()
    local = local_rows(rank, world, GLOBAL_BATCH)
    loss, logs = ddp([x[local] for x in imgs], [x[local] for x in txts])
    loss.backward()
    return pack_ddp(model, loss, logs, world)


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Spawned entry point: run with and without gradient-carrying gathers; save the results."""
    init_gloo(rank, world, port)
    try:
        results = {"clear": _run(rank, world)}
        with gathers_without_grad():
            results["clear_nograd"] = _run(rank, world)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
