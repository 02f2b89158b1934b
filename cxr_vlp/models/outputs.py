"""Typed outputs of the dual encoder: what a tower returns and what a loss head scores.

:class:`Embeddings` is one set of embeddings in the joint space (``mean`` L2-normalised, ``logvar`` = log σ² for
probabilistic towers, else ``None``); :class:`EncoderOutput` adds the tower's pooled backbone features (frozen
encoder probes). Loss heads rank pairs of :class:`Embeddings` with ``head.similarity(query, gallery)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Embeddings", "EncoderOutput"]


@dataclass(frozen=True)
class Embeddings:
    """``mean`` ``[N, D]`` (L2-normalised, float32) and, for probabilistic towers, ``logvar`` ``[N, D]`` or
    ``[N, 1]``."""

    mean: Tensor
    logvar: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logvar is not None and self.logvar.shape[0] != self.mean.shape[0]:
            raise ValueError(f"Embeddings: mean has {self.mean.shape[0]} rows, logvar {self.logvar.shape[0]}")

    def __len__(self) -> int:
        return self.mean.shape[0]

    @property
    def gaussian(self) -> bool:
        return self.logvar is not None

    def rows(self, index: Tensor | slice) -> Embeddings:
        """The embeddings of the selected rows (a slice, an index tensor or a boolean mask)."""
        return Embeddings(self.mean[index], None if self.logvar is None else self.logvar[index])

    def to(self, *args, **kwargs) -> Embeddings:
        logvar = None if self.logvar is None else self.logvar.to(*args, **kwargs)
        return Embeddings(self.mean.to(*args, **kwargs), logvar)

    def detach(self) -> Embeddings:
        return Embeddings(self.mean.detach(), None if self.logvar is None else self.logvar.detach())

    def cpu(self) -> Embeddings:
        return self.to("cpu")

    def views(self, batch: int) -> list[Embeddings]:
        """Split ``[batch * V, ...]`` rows (views of a study adjacent, as ``flatten(0, 1)`` lays them) into V
        per-view :class:`Embeddings` of ``batch`` rows each."""
        means = self.mean.view(batch, -1, self.mean.shape[-1]).unbind(1)
        if self.logvar is None:
            return [Embeddings(m) for m in means]
        logvars = self.logvar.view(batch, -1, self.logvar.shape[-1]).unbind(1)
        return [Embeddings(m, v) for m, v in zip(means, logvars)]

    @staticmethod
    def cat(parts: Sequence[Embeddings]) -> Embeddings:
        if not parts:
            raise ValueError("Embeddings.cat needs at least one part")
        logvars = [p.logvar for p in parts]
        if any(v is None for v in logvars) and not all(v is None for v in logvars):
            raise ValueError("Embeddings.cat: some parts have a log-variance and some do not")
        return Embeddings(torch.cat([p.mean for p in parts]), None if logvars[0] is None else torch.cat(logvars))  # type: ignore[arg-type]


@dataclass(frozen=True)
class EncoderOutput:
    """One tower's output: ``embedding`` ``[N, D]`` (L2-normalised unless asked otherwise), the backbone's pooled
    ``features`` ``[N, F]`` and ``logvar`` (log σ², probabilistic towers only)."""

    embedding: Tensor
    features: Tensor
    logvar: Tensor | None = None

    @property
    def embeddings(self) -> Embeddings:
        return Embeddings(self.embedding, self.logvar)
