"""Labels derived from report text with the rule-based labeler, cached on disk by report hash.

Every dataset without annotated labels (IU X-Ray, a generic CSV without the 14 CheXpert columns under
``data.reader.labels=auto``) goes through :func:`derive_raw_labels` / :func:`derive_labels`: findings and
impression are joined (blank sections skipped) and read by :func:`cxr_vlp.text.labeler.label_reports`.

Cache: ``<cache_dir>/labels-<LABELER_VERSION>.npz`` holds ``keys`` (BLAKE2b-128 digests of labeler version,
options and report text, ``[n, 16]`` uint8) and ``labels`` (``[n, 14]`` float32 raw 1 / 0 / -1 / NaN). A lookup
labels only the distinct texts that are not in the file yet and rewrites the merged file atomically (temporary
sibling, then ``os.replace``), so a reader never sees a torn file. A new labeler version starts a new file. When
two runs add different texts at the same moment the last writer's file survives; the other run's new texts are
labelled again the next time (the cache is only ever missing entries, never wrong). An unreadable cache file
is reported and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_vlp.text import labeler
from cxr_vlp.text.labels import NUM_LABELS, UncertainPolicy, apply_policy

log = logging.getLogger(__name__)

__all__ = ["CacheStats", "cache_file", "derive_labels", "derive_raw_labels", "log_stats", "report_texts", "text_key"]

_KEY_BYTES = 16


@dataclass(frozen=True)
class CacheStats:
    """How one lookup went: texts labelled (``labelled``), found in the cache (``hits``), and the cache file."""

    reports: int
    distinct: int
    hits: int
    labelled: int
    path: Path | None


def report_texts(findings: Sequence[str | None], impression: Sequence[str | None]) -> list[str | None]:
    """The text the labeler reads per study: findings and impression joined by a blank line (None if both absent)."""
    if len(findings) != len(impression):
        raise ValueError(f"{len(findings)} findings for {len(impression)} impressions")
    return ["\n\n".join(t for t in (f, i) if t) or None for f, i in zip(findings, impression)]


def text_key(text: str, options: dict[str, bool] | None = None) -> bytes:
    """Cache key of one report: BLAKE2b-128 of the labeler version, its options and the text."""
    head = f"{labeler.LABELER_VERSION}\0{json.dumps(options or {}, sort_keys=True)}\0"
    return hashlib.blake2b((head + text).encode("utf-8"), digest_size=_KEY_BYTES).digest()


def cache_file(cache_dir: str | os.PathLike[str]) -> Path:
    """The cache file of the current labeler version in ``cache_dir``."""
    return Path(cache_dir) / f"labels-{labeler.LABELER_VERSION}.npz"


def _load(path: Path) -> dict[bytes, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, labels = data["keys"], data["labels"]
        if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != _KEY_BYTES:
            raise ValueError(f"keys must be uint8 [n, {_KEY_BYTES}], got {keys.dtype} {list(keys.shape)}")
        if labels.shape != (len(keys), NUM_LABELS):
            raise ValueError(f"labels {labels.shape} for {len(keys)} keys")
    except (OSError, KeyError, ValueError) as err:
        log.warning("label cache %s is unreadable (%s); labelling afresh and replacing it", path, err)
        return {}
    return {k.tobytes(): row for k, row in zip(keys, labels)}


def _save(path: Path, entries: dict[bytes, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # raw bytes, not a NumPy bytes dtype: that one drops trailing NUL bytes of a digest
    keys = np.frombuffer(b"".join(entries), dtype=np.uint8).reshape(len(entries), _KEY_BYTES)
    labels = np.stack(list(entries.values())).astype(np.float32) if entries else np.zeros((0, NUM_LABELS), np.float32)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
    try:
        np.savez(tmp, keys=keys, labels=labels)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def derive_raw_labels(
    texts: Sequence[str | None], cache_dir: str | os.PathLike[str] | None = None, **options: bool
) -> tuple[np.ndarray, CacheStats]:
    """Raw labeler output ``[n, 14]`` (1 / 0 / -1 / NaN) for ``texts``, each distinct text labelled once.

    With ``cache_dir`` the labels are looked up in and added to the cache file (module docstring). ``options`` go
    to :func:`~cxr_vlp.text.labeler.label_reports` (``use_sections``, ``no_finding_negative``) and into the keys.
    A missing text (None / blank) is all NaN without a lookup.
    """
    out = np.full((len(texts), NUM_LABELS), np.nan, dtype=np.float32)
    rows: dict[bytes, list[int]] = {}
    first: dict[bytes, str] = {}
    for i, text in enumerate(texts):
        if text is None or not str(text).strip():
            continue
        key = text_key(str(text), options)
        rows.setdefault(key, []).append(i)
        first.setdefault(key, str(text))
    path = cache_file(cache_dir) if cache_dir is not None else None
    cached = _load(path) if path is not None else {}
    todo = [k for k in rows if k not in cached]
    fresh = dict(zip(todo, labeler.label_reports([first[k] for k in todo], **options))) if todo else {}
    for key, idx in rows.items():
        out[idx] = cached[key] if key in cached else fresh[key]
    if path is not None and fresh:
        _save(path, {**_load(path), **fresh})  # re-read: keep what another run added meanwhile
    stats = CacheStats(
        reports=sum(map(len, rows.values())),
        distinct=len(rows),
        hits=len(rows) - len(todo),
        labelled=len(todo),
        path=path,
    )
    return out, stats


def derive_labels(
    findings: Sequence[str | None],
    impression: Sequence[str | None],
    uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN,
    cache_dir: str | os.PathLike[str] | None = None,
    source: str = "reports",
    no_finding_negative: bool = True,
) -> np.ndarray:
    """Labels for reports without annotations: the labeler on findings + impression, then the one label policy.

    ``no_finding_negative=False``: CheXpert's No Finding convention (1 or blank, never 0); it is part of the cache
    key, the default adds no option (keys stay those of a call without options).
    """
    options = {} if no_finding_negative else {"no_finding_negative": False}
    raw, stats = derive_raw_labels(report_texts(findings, impression), cache_dir, **options)
    log_stats(source, stats)
    return apply_policy(raw, uncertain)


def log_stats(source: str, stats: CacheStats) -> None:
    """One log line: how many reports were labelled from text and how many came from the cache."""
    where = f"; cache {stats.path}: {stats.hits} found, {stats.labelled} added" if stats.path is not None else ""
    log.info(
        "%s: labels of %d reports (%d distinct texts) derived from the report text by the rule-based labeler "
        "(version %s)%s",
        source,
        stats.reports,
        stats.distinct,
        labeler.LABELER_VERSION,
        where,
    )
