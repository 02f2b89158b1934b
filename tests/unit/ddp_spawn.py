"""Spawning the 2-process gloo DDP workers of the loss tests and collecting what each rank saved."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_and_collect(worker: Callable, world: int, out: Path) -> list[dict]:
    """Run ``worker(rank, world, port, out_dir)`` on ``world`` processes; load each ``rank{r}.pt``."""
    mp.spawn(worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
