"""Patient-level train / val / test splits that refuse leakage.

Two ways to obtain a :class:`PatientSplit`:

* :func:`split_from_column` for datasets with an official split column (MIMIC-CXR's
  ``train`` / ``validate`` / ``test``); the table is first checked so that no subject appears under
  two split values.
* :func:`patient_split` for everything else: a seeded split of *subjects* (never of studies),
  multi-label stratified with ``iterstrat`` when labels are given, a seeded permutation otherwise.

A :class:`PatientSplit` can never hold a subject in two splits: its constructor raises
:class:`SplitLeakageError`. Subject ids are always strings (integers such as MIMIC's ``subject_id``
are converted, ``10000032`` and ``10000032.0`` both becoming ``"10000032"``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
DEFAULT_SPLIT_NAMES: Mapping[str, str] = {
    "train": "train",
    "validate": "val",
    "val": "val",
    "valid": "val",
    "test": "test",
}
_MAX_SHOWN = 10


class SplitLeakageError(ValueError):
    """A subject (patient) was found in more than one split."""


def _show(ids: Iterable[Any]) -> str:
    """Up to ``_MAX_SHOWN`` ids, sorted, for error messages."""
    ids = sorted(str(i) for i in ids)
    more = f" (+{len(ids) - _MAX_SHOWN} more)" if len(ids) > _MAX_SHOWN else ""
    return f"{ids[:_MAX_SHOWN]}{more}"


def _id_str(value: Any) -> str:
    """One subject id as a string; integral floats lose their ``.0`` (ids read from a CSV with blanks)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _ids_to_str(values: Iterable[Any]) -> np.ndarray:
    """Subject ids as a 1-d array of ``str`` (vectorised for integer / float columns).

    Missing ids raise ``ValueError``; integral floats lose their ``.0``.
    """
    if isinstance(values, pd.Series):
        series = values.reset_index(drop=True)
    elif isinstance(values, (np.ndarray, pd.Index)):
        series = pd.Series(np.asarray(values).reshape(-1))
    else:
        series = pd.Series(list(values), dtype=object)
    missing = series.isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"subject ids must not be missing; missing at positions {np.flatnonzero(missing)[:_MAX_SHOWN].tolist()}"
        )
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype(np.int64).astype(str).to_numpy(dtype=str)
    if pd.api.types.is_float_dtype(series.dtype) and np.all(np.mod(series.to_numpy(), 1) == 0):
        return series.astype(np.int64).astype(str).to_numpy(dtype=str)
    if pd.api.types.infer_dtype(series, skipna=False) == "string":
        return series.to_numpy(dtype=str)
    return np.array([_id_str(v) for v in series.tolist()], dtype=str)


@dataclass(frozen=True)
class PatientSplit:
    """Disjoint sets of subject ids for train, val and test.

    Construction with any subject in two splits raises :class:`SplitLeakageError` naming the split
    pair, the number of shared subjects and up to 10 of them. Iterables of ids are accepted and
    normalised to ``frozenset[str]``.
    """

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"PatientSplit.{name} must be a collection of subject ids, not a string")
            object.__setattr__(self, name, frozenset(_ids_to_str(value).tolist()))
        problems = []
        for i, first in enumerate(SPLIT_NAMES):
            for second in SPLIT_NAMES[i + 1 :]:
                shared = getattr(self, first) & getattr(self, second)
                if shared:
                    problems.append(f"{len(shared)} subject(s) in both {first!r} and {second!r}: {_show(shared)}")
        if problems:
            raise SplitLeakageError("patient leakage between splits: " + "; ".join(problems))

    # ----------------------------------------------------------------- lookups
    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted subject ids and their split names, for vectorised lookups."""
        ids = np.array([s for name in SPLIT_NAMES for s in getattr(self, name)], dtype=str)
        names = np.array([name for name in SPLIT_NAMES for _ in getattr(self, name)], dtype=str)
        order = np.argsort(ids, kind="stable")
        return ids[order], names[order]

    @property
    def subjects(self) -> frozenset[str]:
        """All subjects of the three splits."""
        return self.train | self.val | self.test

    def __contains__(self, subject_id: object) -> bool:
        return _id_str(subject_id) in self.subjects

    def split_of(self, subject_id: str) -> str:
        """Name of the split holding ``subject_id`` (``"train"``, ``"val"`` or ``"test"``)."""
        sid = _id_str(subject_id)
        for name in SPLIT_NAMES:
            if sid in getattr(self, name):
                return name
        raise KeyError(f"subject {sid!r} is in no split")

    def assign(self, subject_ids: Sequence[str]) -> np.ndarray:
        """Vectorised :meth:`split_of`: an array of split names, one per given id.

        Raises ``KeyError`` naming up to 10 ids that belong to no split.
        """
        query = _ids_to_str(subject_ids)
        ids, names = self._table
        if len(query) == 0:
            return np.array([], dtype=str)
        if len(ids) == 0:
            raise KeyError(f"{len(set(query.tolist()))} subject id(s) in no split: {_show(set(query.tolist()))}")
        pos = np.clip(np.searchsorted(ids, query), 0, len(ids) - 1)
        found = ids[pos] == query
        if not found.all():
            unknown = set(query[~found].tolist())
            raise KeyError(f"{len(unknown)} subject id(s) in no split: {_show(unknown)}")
        return names[pos]

    # ------------------------------------------------------------ table check
    @staticmethod
    def check_frame(df: pd.DataFrame, subject_col: str = "subject_id", split_col: str = "split") -> None:
        """Raise :class:`SplitLeakageError` if any subject of ``df`` appears under two split values.

        For tables carrying an explicit (official) split column. Rows with a blank split are ignored
        here; :func:`split_from_column` rejects them.
        """
        for col in (subject_col, split_col):
            if col not in df.columns:
                raise KeyError(f"column {col!r} not in table (columns: {list(df.columns)})")
        frame = pd.DataFrame({"subject": _ids_to_str(df[subject_col]), "split": df[split_col].to_numpy()})
        frame = frame.dropna(subset=["split"])
        frame["split"] = frame["split"].astype(str)
        n_splits = frame.groupby("subject")["split"].nunique()
        leaking = n_splits[n_splits > 1].index
        if len(leaking):
            sub = frame[frame["subject"].isin(leaking)]
            detail = sub.groupby("subject")["split"].agg(lambda s: sorted(set(s)))
            examples = ", ".join(f"{sid}: {detail[sid]}" for sid in sorted(leaking)[:_MAX_SHOWN])
            raise SplitLeakageError(
                f"{len(leaking)} subject(s) appear under more than one {split_col!r} value: "
                f"{_show(leaking)}; e.g. {examples}"
            )

    # -------------------------------------------------------------- persistence
    def to_json(self, path: str | Path) -> None:
        """Write the split as ``{"train": [...], "val": [...], "test": [...]}`` with sorted ids."""
        payload = {name: sorted(getattr(self, name)) for name in SPLIT_NAMES}
        Path(path).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | Path) -> PatientSplit:
        """Read a split written by :meth:`to_json` (leakage is checked again)."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        missing = [name for name in SPLIT_NAMES if name not in payload]
        if missing:
            raise ValueError(f"{path}: split file lacks key(s) {missing}")
        return cls(**{name: frozenset(payload[name]) for name in SPLIT_NAMES})

    def summary(self) -> dict[str, int]:
        """Subject counts per split and in total."""
        counts = {name: len(getattr(self, name)) for name in SPLIT_NAMES}
        counts["total"] = sum(counts.values())
        return counts


# ------------------------------------------------------------------ seeded split
def _target_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Integer subject counts per split: largest remainder, then ≥ 1 for every non-zero fraction."""
    frac = np.asarray(fractions, dtype=float)
    raw = frac * n
    counts = np.floor(raw).astype(int)
    remainder = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:remainder]] += 1
    wanted = frac > 0
    if n < wanted.sum():
        raise ValueError(
            f"cannot split {n} subject(s) into {int(wanted.sum())} non-empty splits "
            f"(fractions {tuple(float(f) for f in frac)}); give more subjects or set a fraction to 0"
        )
    while (wanted & (counts == 0)).any():
        empty = int(np.flatnonzero(wanted & (counts == 0))[0])
        counts[int(np.argmax(counts))] -= 1
        counts[empty] += 1
    return counts


def _rebalance(second: np.ndarray, n_second: int, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move subjects so that exactly ``n_second`` are in the second part.

    Iterative stratification may miss the requested sizes by a few subjects; those moved are the ones
    whose labels matter least (no positives first, then those carrying only frequent labels).
    """
    second = second.copy()
    excess = int(second.sum()) - n_second
    if excess == 0:
        return second
    weight = 1.0 / (y.sum(axis=0) + 1.0)
    cost = y.astype(float) @ weight + 1e-9 * rng.random(len(second))  # random tie-break
    donors = np.flatnonzero(second if excess > 0 else ~second)
    movers = donors[np.argsort(cost[donors], kind="stable")[: abs(excess)]]
    second[movers] = excess < 0
    return second


def _two_way(y: np.ndarray, n_second: int, random_state: np.random.RandomState, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of exactly ``n_second`` rows of ``y`` forming the stratified second part."""
    n = len(y)
    if n_second == 0 or n_second == n:
        return np.full(n, n_second == n, dtype=bool)
    # A constant zero column keeps iterstrat's "multilabel-indicator" check happy with 0 or 1 labels
    # and changes nothing in the algorithm.
    yy = np.concatenate([y, np.zeros((n, 1), dtype=bool)], axis=1)
    splitter = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=n_second, train_size=n - n_second, random_state=random_state
    )
    _, second_idx = next(splitter.split(np.zeros((n, 1)), yy))
    second = np.zeros(n, dtype=bool)
    second[second_idx] = True
    return _rebalance(second, n_second, y, rng)


def _subject_labels(subject_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique subjects and their ``[n_subjects, n_labels]`` bool matrix (any study positive)."""
    uniq, inverse = np.unique(subject_ids, return_inverse=True)
    positive = np.nan_to_num(np.asarray(labels, dtype=float), nan=0.0) > 0.5
    counts = np.zeros((len(uniq), positive.shape[1]), dtype=np.int64)
    np.add.at(counts, inverse.reshape(-1), positive.astype(np.int64))
    return uniq, counts > 0


def patient_split(
    subject_ids: Sequence[str],
    labels: np.ndarray | None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> PatientSplit:
    """Seeded patient-level split, multi-label stratified when ``labels`` are given.

    ``subject_ids`` and ``labels`` are per study (one row per study; a subject may have many rows);
    ``labels`` is ``[n_rows, n_labels]`` float with NaN for unknown, or ``None``. A subject is
    positive for a label when any of its studies is; unknown counts as negative for stratification.
    Subjects are sorted before splitting, so the result depends on the seed only, not on row order.
    Subject counts per split follow ``fractions`` (train, val, test) exactly up to rounding, with at
    least one subject in every split of non-zero fraction (``ValueError`` when there are too few).
    """
    frac = np.asarray(fractions, dtype=float)
    if frac.shape != (3,) or not np.isfinite(frac).all():
        raise ValueError(f"fractions must be three finite numbers (train, val, test); got {fractions}")
    if (frac < 0).any() or abs(frac.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be >= 0 and sum to 1; got {tuple(float(f) for f in frac)} (sum {frac.sum():.6g})"
        )
    ids = _ids_to_str(subject_ids)
    if len(ids) == 0:
        raise ValueError("patient_split needs at least one subject id")

    if labels is None:
        uniq = np.unique(ids)
        y = None
    else:
        lab = np.asarray(labels, dtype=float)
        if lab.ndim == 1:
            lab = lab[:, None]
        if lab.ndim != 2 or lab.shape[0] != len(ids):
            raise ValueError(f"labels must be [n_rows={len(ids)}, n_labels]; got shape {np.shape(labels)}")
        uniq, y = _subject_labels(ids, lab)

    n_train, n_val, n_test = _target_counts(len(uniq), frac).tolist()
    if y is None:
        perm = np.random.default_rng(seed).permutation(len(uniq))
        part = np.empty(len(uniq), dtype=np.int8)
        part[perm[:n_train]] = 0
        part[perm[n_train : n_train + n_val]] = 1
        part[perm[n_train + n_val :]] = 2
    else:
        random_state = np.random.RandomState(seed)
        rng = np.random.default_rng([seed, 1])
        rest = _two_way(y, n_val + n_test, random_state, rng)
        rest_idx = np.flatnonzero(rest)
        test_in_rest = _two_way(y[rest_idx], n_test, random_state, rng)
        part = np.zeros(len(uniq), dtype=np.int8)
        part[rest_idx] = np.where(test_in_rest, 2, 1)
    return PatientSplit(
        train=frozenset(uniq[part == 0].tolist()),
        val=frozenset(uniq[part == 1].tolist()),
        test=frozenset(uniq[part == 2].tolist()),
    )


# --------------------------------------------------------------- official split
def split_from_column(
    df: pd.DataFrame,
    subject_col: str = "subject_id",
    split_col: str = "split",
    names: Mapping[str, str] | None = None,
) -> PatientSplit:
    """Patient split from a table with an official split column (e.g. MIMIC-CXR's split CSV).

    ``names`` maps the column's values (case- and whitespace-insensitive) to ``train`` / ``val`` /
    ``test``; the default accepts train, validate, val, valid and test. An unknown or blank value raises
    ``ValueError`` naming the value and a row; a subject under two splits raises
    :class:`SplitLeakageError` naming it.
    """
    mapping = {str(k).strip().lower(): v for k, v in (names or DEFAULT_SPLIT_NAMES).items()}
    bad_targets = sorted(set(mapping.values()) - set(SPLIT_NAMES))
    if bad_targets:
        raise ValueError(f"names must map to {SPLIT_NAMES}; got target(s) {bad_targets}")
    for col in (subject_col, split_col):
        if col not in df.columns:
            raise KeyError(f"column {col!r} not in table (columns: {list(df.columns)})")

    raw = df[split_col].reset_index(drop=True)
    # Map each distinct value once (a split column has a handful of values and many rows).
    lookup = {v: mapping.get(str(v).strip().lower()) for v in raw.dropna().unique()}
    canonical = raw.map(lookup)
    unknown = canonical.isna().to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        values = sorted({repr(None if pd.isna(v) else v) for v in raw[unknown]})
        raise ValueError(
            f"unknown {split_col!r} value(s) {values}; first at row {row} (index {df.index[row]!r}, "
            f"subject {df[subject_col].iloc[row]!r}); known values: {sorted(mapping)}"
        )
    frame = pd.DataFrame({"subject_id": _ids_to_str(df[subject_col]), "split": canonical.to_numpy()})
    PatientSplit.check_frame(frame, "subject_id", "split")
    groups = {name: frozenset(frame.loc[frame["split"] == name, "subject_id"]) for name in SPLIT_NAMES}
    return PatientSplit(**groups)
