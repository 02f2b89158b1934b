"""Resumable training order: a shuffle that is a pure function of (seed, epoch) and a loader Lightning checkpoints.

:class:`EpochSampler` permutes the training split with its own generator seeded from ``seed + epoch`` (as
``torch.utils.data.DistributedSampler`` does, of which it is a subclass, so Lightning does not wrap it under DDP)
and yields :class:`TrainIndex` keys that carry the epoch to the dataset, whose augmentation is then seeded per
(study, epoch) in the worker that loads it, whatever the number of workers or restarts.

:class:`ResumableLoader` has the ``state_dict`` / ``load_state_dict`` interface of Lightning's stateful data loading
(``lightning.pytorch.utilities.combined_loader``): the fit loop saves the loader state into every checkpoint and
loads it before the first ``iter()`` of a mid-epoch resume, which then starts at the first batch the interrupted
run had not trained on. The state is a :class:`TrainPosition` read from the trainer's loop progress. Lightning
skips that load when the training loader was created before the loop state was restored (a scheduler that asks for
``trainer.estimated_stepping_batches`` in ``configure_optimizers``), so the data module also keeps the position in
its own checkpoint state and applies it when it creates the loader (:meth:`TrainPosition.apply`, idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class TrainIndex(NamedTuple):
    """A training-set key: study ``index`` in epoch ``epoch``."""

    epoch: int
    index: int


class EpochSampler(DistributedSampler):
    """Shuffled indices of one rank's share, ``permutation(seed + epoch)[rank::num_replicas]``, as
    :class:`TrainIndex` keys; :meth:`skip` drops the first samples of the next iteration (a mid-epoch resume)."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._skip = 0

    def skip(self, num_samples: int) -> None:
        """Leave out the first ``num_samples`` of the next iteration only."""
        if not 0 <= num_samples <= self.num_samples:
            raise ValueError(f"cannot skip {num_samples} samples of an epoch of {self.num_samples}")
        self._skip = int(num_samples)

    def __iter__(self) -> Iterator[TrainIndex]:  # type: ignore[override]
        start, self._skip = self._skip, 0
        epoch = int(self.epoch)
        for i, index in enumerate(super().__iter__()):
            if i >= start:
                yield TrainIndex(epoch, int(index))


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` whose state is its :class:`TrainPosition`.

    ``position`` returns where training stands (the data module reads it from the trainer); without it the state
    is the sampler's epoch with no batch taken.
    """

    def __init__(self, *args: Any, position: Callable[[], dict[str, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError(f"ResumableLoader needs an EpochSampler, got {type(self.sampler).__name__}")
        self.position = position

    def state_dict(self) -> dict[str, int]:
        if self.position is not None:
            return dict(self.position())
        return TrainPosition(epoch=int(self.sampler.epoch), batches_taken=0, epoch_done=False).as_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        TrainPosition.from_dict(state_dict).apply(self.sampler, int(self.batch_size or 1))


class TrainPosition(NamedTuple):
    """Where a fit stands in its training data: ``batches_taken`` batches of ``epoch`` started by the training
    loop (not produced by the iterator: Lightning's fetcher and the workers prefetch ahead), ``epoch_done`` once
    the epoch's last batch has been taken."""

    epoch: int
    batches_taken: int
    epoch_done: bool
    batch_size: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batches_taken": self.batches_taken,
            "epoch_done": int(self.epoch_done),
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_dict(cls, state: dict[str, int]) -> TrainPosition:
        try:
            return cls(
                int(state["epoch"]),
                int(state["batches_taken"]),
                bool(state["epoch_done"]),
                int(state.get("batch_size", 0)),
            )
        except KeyError as err:
            raise ValueError(f"training-loader state {state} lacks the key {err}") from err

    def apply(self, sampler: EpochSampler, batch_size: int) -> None:
        """Point ``sampler`` at the first batch not yet taken: the next epoch's start once this one is done."""
        if self.batch_size and self.batch_size != batch_size:
            raise ValueError(
                f"the checkpoint's training loader had batch_size={self.batch_size}, this run has "
                f"data.batch_size={batch_size}: resuming needs the same batch size"
            )
        if self.epoch_done:
            sampler.set_epoch(self.epoch + 1)
            sampler.skip(0)
        else:
            sampler.set_epoch(self.epoch)
            sampler.skip(min(self.batches_taken * batch_size, sampler.num_samples))


def loader_generator(seed: int) -> torch.Generator:
    """A generator of the loader's own (it draws the workers' base seed at every ``iter()``), so that creating an
    iterator never advances the global torch RNG that dropout and the losses draw from."""
    return torch.Generator().manual_seed(int(seed))
