"""Helpers shared by the dataset readers: root checks, column checks, label columns, missing files.

Error style (as in :func:`cxr_vlp.data.table.read_generic_csv`): every error names the file, and where
it applies the row (1-based, header excluded) and the column. Partial downloads are common with the
published datasets, so missing *images* are skipped, counted and logged with an example path instead of
raising; only a dataset where no image at all is found raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_vlp.text.label_cache import derive_labels  # the readers' one path to text-derived labels
from cxr_vlp.text.labels import CHEXPERT_LABELS, NUM_LABELS

log = logging.getLogger(__name__)

__all__ = [
    "check_root",
    "derive_labels",
    "existing_mask",
    "first_duplicate_row",
    "log_dropped",
    "raw_labels",
    "read_csv",
    "require_columns",
    "strip_id_prefix",
]


def check_root(root: str | os.PathLike[str], dataset: str) -> Path:
    """``root`` as a :class:`Path`; ``FileNotFoundError`` naming it when it is not an existing folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset} root folder not found: {root} (set data.root=/path/to/{dataset})")
    return path


def read_csv(path: Path, id_columns: Iterable[str] = (), what: str = "file") -> pd.DataFrame:
    """Read a CSV (``.csv`` or ``.csv.gz``) with the given id columns as strings.

    ``FileNotFoundError`` names the file (and ``what`` it is) when it is absent.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return pd.read_csv(path, dtype={c: str for c in id_columns}, keep_default_na=True, low_memory=False)


def require_columns(path: str | os.PathLike[str], df: pd.DataFrame, columns: Iterable[str]) -> None:
    """``ValueError`` naming the file and the missing column(s) when ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; found {list(df.columns)}")


def first_duplicate_row(values: pd.Series) -> int | None:
    """0-based position of the first row whose value already appeared above it, or None."""
    dup = values.duplicated(keep="first").to_numpy()
    return int(np.flatnonzero(dup)[0]) if dup.any() else None


def strip_id_prefix(values: pd.Series, prefix: str) -> pd.Series:
    """Ids as strings without surrounding spaces, a leading ``prefix`` (``p`` / ``s``) or a ``.0`` suffix."""
    out = values.astype(str).str.strip()
    out = out.str.replace(rf"^{prefix}(?=\d)", "", regex=True)
    return out.str.replace(r"^(\d+)\.0$", r"\1", regex=True)


def raw_labels(path: str | os.PathLike[str], df: pd.DataFrame, required: bool = True) -> np.ndarray:
    """The 14 CheXpert label columns of ``df`` as raw float values ``[n, 14]`` (1 / 0 / -1 / NaN).

    Only parses and validates (the policy is applied by the caller with
    :func:`~cxr_vlp.text.labels.apply_policy`). A missing label column raises when ``required``, else
    it is unknown (NaN). A cell that is not 1, 0, -1 or blank raises naming the file, row and column.
    """
    if required:
        require_columns(path, df, CHEXPERT_LABELS)
    raw = np.full((len(df), NUM_LABELS), np.nan, dtype=np.float32)
    for j, name in enumerate(CHEXPERT_LABELS):
        if name not in df.columns:
            continue
        col = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = (np.isnan(col) & df[name].notna().to_numpy()) | (~np.isnan(col) & ~np.isin(col, (1.0, 0.0, -1.0)))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}: row {row + 1}, column {name!r}: label values must be 1, 0, -1 or blank, "
                f"got {df[name].iloc[row]!r}"
            )
        raw[:, j] = col
    return raw


def existing_mask(paths: Sequence[str], check_files: bool) -> np.ndarray:
    """Boolean mask of the paths that are files (all True without ``check_files``). One stat per path."""
    if not check_files:
        return np.ones(len(paths), dtype=bool)
    isfile = os.path.isfile
    return np.fromiter((isfile(p) for p in paths), dtype=bool, count=len(paths))


def log_dropped(source: str | os.PathLike[str], count: int, what: str, example: Any = None) -> None:
    """One warning line ``<source>: <count> <what> (e.g. <example>)`` when ``count`` > 0."""
    if count:
        hint = f" (e.g. {example})" if example is not None else ""
        log.warning("%s: %d %s%s", source, count, what, hint)
