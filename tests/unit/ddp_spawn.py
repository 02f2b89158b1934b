"""Spawning the 2-process gloo DDP workers of the loss tests and collecting what each rank saved."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from cxr_vlp.losses import distributed as losses_dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_all(out: Path, world: int) -> list[dict] | None:
    """Every rank's saved results, or None if any file is missing or unreadable (e.g. cut short)."""
    try:
        return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def spawn_and_collect(worker: Callable, world: int, out: Path, attempts: int = 3) -> list[dict]:
    """Run ``worker(rank, world, port, out_dir)`` on ``world`` processes; load each ``rank{r}.pt``.

    On the loaded 2-core CI machine a gloo rank was twice killed by SIGABRT ("terminate called without an
    active exception"), not reproducible locally. If every rank had already saved complete results, the
    crash came after the computation (teardown) and the results are used; otherwise the run is repeated on
    a fresh port, up to ``attempts`` times. An exception raised by the worker's own code
    (``ProcessRaisedException``) is never retried.
    """
    for attempt in range(attempts):
        for stale in out.glob("rank*.pt"):
            stale.unlink()
        try:
            mp.spawn(worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
        except mp.ProcessExitedException as err:
            results = _load_all(out, world)
            if results is not None:
                warnings.warn(f"a DDP worker died after saving its results ({err}); using them", stacklevel=2)
                return results
            if attempt == attempts - 1:
                raise
            warnings.warn(f"a DDP worker was killed ({err}); retrying on a fresh port", stacklevel=2)
            continue
        results = _load_all(out, world)
        if results is None:
            raise RuntimeError(f"DDP workers exited cleanly but did not save results in {out}")
        return results
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ shared by the workers and references
def local_rows(rank: int, world: int, global_batch: int) -> slice:
    """This rank's rows of the global batch (equal shares)."""
    b = global_batch // world
    return slice(rank * b, (rank + 1) * b)


def pack(model: nn.Module, loss: Tensor, logs: dict[str, Tensor]) -> dict:
    """Single-process result after ``loss.backward()``: loss, logged values and parameter gradients."""
    return {
        "loss": loss.item(),
        "logs": {k: v.item() for k, v in logs.items()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
    }


def mean_over_ranks(x: Tensor, world: int) -> float:
    x = x.detach().clone()
    dist.all_reduce(x)
    return (x / world).item()


def pack_ddp(model: nn.Module, loss: Tensor, logs: dict[str, Tensor], world: int) -> dict:
    """A rank's result after ``loss.backward()``: the rank-mean loss and logs (every logged value is a mean
    over equal local shares, or a parameter, so the rank mean is the global value), the local loss, and the
    parameter gradients (already averaged over ranks by DDP)."""
    return {
        "loss": mean_over_ranks(loss, world),
        "local_loss": loss.item(),
        "logs": {k: mean_over_ranks(v, world) for k, v in logs.items()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
    }


@contextlib.contextmanager
def gathers_without_grad() -> Iterator[None]:
    """The control: all-gathers that do not carry gradients (the DDP results must then differ)."""
    original = losses_dist.gather_with_grad
    losses_dist.gather_with_grad = losses_dist.gather_no_grad
    try:
        yield
    finally:
        losses_dist.gather_with_grad = original


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join the CPU process group of a spawned worker (one thread; the caller destroys it in ``finally``)."""
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
