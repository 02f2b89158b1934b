"""Collectives used by the contrastive losses and by the metrics.

All helpers are no-ops (identity, offset 0) when ``torch.distributed`` is unavailable, not
initialised, or the world size is 1, so the same loss code runs in a single process and under DDP.

Gradient semantics of :func:`gather_with_grad` (world size W, rank r, local batch B):

    forward:  G = cat([x_0, ..., x_{W-1}], dim=0)            # [W·B, ...]
    backward: dL/dx_r = Σ_{r'} dL_{r'}/dG[r·B:(r+1)·B]       # summed over every rank's loss

i.e. every rank receives the gradient that *all* ranks' losses send to its slice. Combined with DDP's
gradient averaging (1/W) and losses that are means over local rows, the parameter gradients equal
those of the single-process loss on the concatenated global batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_dist_active",
    "world_size",
    "rank",
    "gather_with_grad",
    "gather_no_grad",
    "rank_offset",
]


def is_dist_active() -> bool:
    """True when torch.distributed is available, initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """World size, 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Global rank, 0 when not distributed."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _collective_device(like: Tensor | None = None) -> torch.device:
    """Device for small bookkeeping tensors: ``like``'s device, else CUDA for NCCL, else CPU."""
    if like is not None:
        return like.device
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph.

    Uses ``torch.distributed.nn.functional.all_gather`` whose backward sums, over ranks, the
    gradients flowing into each rank's slice and returns that sum to the slice's owner (reduce-scatter
    on NCCL, emulated with scatter-based all-to-all on gloo). All ranks must pass tensors of the same
    shape. Identity when not distributed.
    """
    if not is_dist_active():
        return x
    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():
        # Deprecated (FutureWarning) in recent torch in favour of the private
        # _functional_collectives API, but still the public autograd-aware all_gather.
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, detached (for metrics / logging).

    All ranks must pass tensors of the same shape. Returns ``x.detach()`` when not distributed.
    """
    x = x.detach()
    if not is_dist_active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def rank_offset(local_batch: int, check: bool = True, device: torch.device | None = None) -> int:
    """Row offset of this rank's slice in a gathered batch: ``rank × local_batch``.

    Gathered batches are only well defined when every rank has the same local batch size (the
    all-gather needs equal shapes, and the offset formula assumes it). With ``check=True`` (default)
    the sizes are all-gathered once (a collective: every rank must call this) and a ``ValueError``
    naming all sizes is raised when they differ — use ``drop_last=True`` in the dataloader.
    Returns 0 when not distributed.
    """
    if not is_dist_active():
        return 0
    if check:
        dev = device if device is not None else _collective_device()
        size = torch.tensor([int(local_batch)], dtype=torch.long, device=dev)
        sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, size)
        all_sizes = [int(s.item()) for s in sizes]
        if len(set(all_sizes)) != 1:
            raise ValueError(
                "contrastive losses under DDP need equal local batch sizes on every rank, got "
                f"{all_sizes} (rank {dist.get_rank()} has {local_batch}); use drop_last=True"
            )
    return dist.get_rank() * int(local_batch)
