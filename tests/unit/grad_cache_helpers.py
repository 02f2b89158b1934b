"""Tiny float64 towers and data for the feature-cache (GradCache) tests, importable in spawned DDP workers.

The parent test puts this directory on ``sys.path`` (as the loss DDP tests do).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from ddp_spawn import init_gloo, local_rows
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cxr_vlp.lit.grad_cache import cached_contrastive_step
from cxr_vlp.losses import ClipHead, GaussianEmbedding, ProbClipHead
from cxr_vlp.losses.mcsl import McslHead

BATCH, IMG_IN, TXT_IN, HID, EMB = 12, 6, 7, 16, 5
NAN = float("nan")


def make_head(kind: str) -> nn.Module:
    if kind == "clip":
        return ClipHead(temperature_init=0.1, w_i2i=1.0, w_t2t=0.5)
    if kind == "mcsl":
        return McslHead(lam=0.7, concept_temperature=0.5, temperature_init=0.2, w_i2i=1.0)
    if kind == "prob":
        return ProbClipHead(pseudo_positive_weight=0.2, kl_weight=0.01, clip_weight=0.5)
    raise ValueError(kind)


class Towers(nn.Module):
    """Two small MLP towers (two views each) with dropout and a layer or batch norm, and a loss head."""

    def __init__(self, head: str = "clip", norm: str = "layer", dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.gaussian = head == "prob"
        out = 2 * EMB if self.gaussian else EMB

        def tower(n_in: int) -> nn.Sequential:
            norm_layer = nn.LayerNorm(HID) if norm == "layer" else nn.BatchNorm1d(HID)
            return nn.Sequential(nn.Linear(n_in, HID), norm_layer, nn.GELU(), nn.Dropout(dropout), nn.Linear(HID, out))

        self.image = tower(IMG_IN)
        self.text = tower(TXT_IN)
        self.head = make_head(head)
        self.double()

    def _view(self, h: Tensor):
        if self.gaussian:
            return GaussianEmbedding(F.normalize(h[:, :EMB], dim=-1), h[:, EMB:] - 2.0)
        return F.normalize(h, dim=-1)

    def encode(self, data: dict[str, Tensor]) -> tuple[list, list]:
        """Chunk (a dict of row-aligned tensors) → (image views, text views)."""
        imgs = [self._view(self.image(x)) for x in data["images"].unbind(1)]
        txts = [self._view(self.text(x)) for x in data["texts"].unbind(1)]
        return imgs, txts


def make_data(batch: int = BATCH, seed: int = 7) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 2, (batch, 14), generator=g).double()
    labels[labels < 0] = NAN
    return {
        "images": torch.randn(batch, 2, IMG_IN, generator=g, dtype=torch.float64),
        "texts": torch.randn(batch, 2, TXT_IN, generator=g, dtype=torch.float64),
        "labels": labels,
    }


def rows(data: dict[str, Tensor], sl: slice) -> dict[str, Tensor]:
    return {k: v[sl] for k, v in data.items()}


def chunks(data: dict[str, Tensor], size: int) -> list[dict[str, Tensor]]:
    n = data["images"].shape[0]
    return [rows(data, slice(s, s + size)) for s in range(0, n, size)]


def loss_of(model: Towers, labels: Tensor):
    return lambda imgs, txts: model.head(imgs, txts, labels=labels)


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def full_batch_grads(
    head: str,
    data: dict[str, Tensor],
    norm: str = "layer",
    dropout: float = 0.0,
    chunk_forward: int | None = None,
    seed: int = 0,
) -> tuple[float, dict[str, Tensor], Towers]:
    """The reference: one loss over the whole batch and one backward; ``chunk_forward`` encodes it chunk by chunk
    (with gradients, in order: the same dropout masks and norm statistics as the cached step)."""
    model = Towers(head, norm, dropout, seed)
    torch.manual_seed(1000)
    parts = [model.encode(c) for c in chunks(data, chunk_forward)] if chunk_forward else [model.encode(data)]
    imgs = [_cat([p[0][v] for p in parts]) for v in range(2)]
    txts = [_cat([p[1][v] for p in parts]) for v in range(2)]
    out = model.head(imgs, txts, labels=data["labels"])
    out.loss.backward()
    return out.loss.item(), grads(model), model


def _cat(views: list):
    if isinstance(views[0], GaussianEmbedding):
        return GaussianEmbedding(torch.cat([v.mu for v in views]), torch.cat([v.logvar for v in views]))
    return torch.cat(views)


def cached_grads(
    head: str, data: dict[str, Tensor], size: int, norm: str = "layer", dropout: float = 0.0, seed: int = 0
) -> tuple[float, dict[str, Tensor], Towers]:
    model = Towers(head, norm, dropout, seed)
    torch.manual_seed(1000)
    out = cached_contrastive_step(
        chunks(data, size),
        model.encode,
        loss_of(model, data["labels"]),
        backward=lambda t: t.backward(),
        norm_module=model,
    )
    return out.loss.item(), grads(model), model


# ------------------------------------------------------------------ 2-process DDP worker
def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Each rank runs the cached step on its rows of the global batch (chunks of 2) under DDP with Lightning's
    backward preparation; saves the loss and the (reduced) gradients."""
    from lightning.pytorch.overrides.distributed import prepare_for_backward

    init_gloo(rank, world, port)
    try:
        results = {}
        for head in ("clip", "mcsl", "prob"):
            data = rows(make_data(), local_rows(rank, world, BATCH))
            model = Towers(head)
            ddp = DistributedDataParallel(model)

            def backward(t: Tensor, ddp=ddp) -> None:
                prepare_for_backward(ddp, t)  # what Lightning's DDP strategy does before a manual backward
                t.backward()

            out = cached_contrastive_step(
                chunks(data, 2),
                model.encode,
                loss_of(model, data["labels"]),
                backward=backward,
                no_sync=ddp.no_sync,
                norm_module=model,
            )
            results[head] = {"local_loss": out.loss.item(), "grads": grads(model)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()
