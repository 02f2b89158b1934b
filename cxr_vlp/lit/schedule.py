"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps`` steps, then a cosine decay to
    ``min_lr_ratio`` at ``total_steps``; constant ``min_lr_ratio`` afterwards.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_warmup(warmup: float | int, total_steps: int) -> int:
    """``warmup`` ≥ 1 is a number of steps; 0 ≤ warmup < 1 is a fraction of ``total_steps``."""
    if warmup < 0:
        raise ValueError(f"warm-up must be ≥ 0, got {warmup}")
    return int(warmup) if warmup >= 1 else int(round(warmup * total_steps))


def adamw_with_cosine(
    named_parameters, optim: dict, scheduler: dict, total_steps: int, no_decay_prefixes: tuple[str, ...] = ()
) -> dict:
    """AdamW (no weight decay on biases, norms and ``no_decay_prefixes``) with :func:`cosine_with_warmup` stepped
    per optimizer step, as Lightning's ``configure_optimizers`` returns it."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.startswith(no_decay_prefixes) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.get("weight_decay", 0.0)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=optim["lr"],
        betas=tuple(optim.get("betas", (0.9, 0.999))),
        eps=optim.get("eps", 1e-8),
        fused=optim.get("fused") or None,
    )
    lr_lambda = partial(
        cosine_with_warmup,
        warmup_steps=resolve_warmup(scheduler.get("warmup", 0), total_steps),
        total_steps=total_steps,
        min_lr_ratio=scheduler.get("min_lr_ratio", 0.0),
    )
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": LambdaLR(optimizer, lr_lambda), "interval": "step", "frequency": 1},
    }
