"""Input coercion shared by the metric modules: tensors or array-likes to float64 numpy of a given rank."""

from __future__ import annotations

from typing import Any

import numpy as np

SHAPES = {1: "[N]", 2: "[N, C]"}


def as_float64(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` (torch tensor or array-like) as a float64 array with ``ndim`` dimensions, else a ValueError naming it."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {SHAPES.get(ndim, '')}, got shape {tuple(arr.shape)}")
    return arr
