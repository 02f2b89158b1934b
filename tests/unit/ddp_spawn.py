"""Spawning the 2-process gloo DDP workers of the loss tests and collecting what each rank saved."""

from __future__ import annotations

import datetime
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxr_vlp.losses import distributed as losses_dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_and_collect(worker: Callable, world: int, out: Path, attempts: int = 2) -> list[dict]:
    """Run ``worker(rank, world, port, out_dir)`` on ``world`` processes; load each ``rank{r}.pt``.

    A rank killed by a signal (seen once on a loaded 2-core CI machine: gloo aborting with "terminate called
    without an active exception") is retried once on a fresh port; an exception raised by the worker's own
    code is never retried, and a second crash fails the test.
    """
    for attempt in range(attempts):
        try:
            mp.spawn(worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
            break
        except mp.ProcessExitedException:
            if attempt == attempts - 1:
                raise
            warnings.warn("a DDP worker was killed by a signal; retrying once on a fresh port", stacklevel=2)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@contextmanager
def gloo_process_group(rank: int, world: int, port: int) -> Iterator[None]:
    """Inside a spawned worker: a gloo process group on 127.0.0.1:port, torn down on exit."""
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def gather_without_grad() -> Iterator[None]:
    """Swap the losses' gather for a no-grad one: the control showing the gradient-carrying gather matters."""
    original = losses_dist.gather_with_grad
    losses_dist.gather_with_grad = losses_dist.gather_no_grad
    try:
        yield
    finally:
        losses_dist.gather_with_grad = original
