"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math


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
