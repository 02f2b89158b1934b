"""Read an offline W&B run back from its record file (``<dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``).

What ``wandb sync`` would upload, read without the network: the run record (name, group, job type), the
config, every history row, the summary as the W&B app would show it, the ``define_metric`` records, the
logged artifacts and the table files. The record file is a LevelDB-style log: a 7-byte header (``:W&B``, magic
``0xBEE1``, version 0), then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32, length, type: full /
first / middle / last); each reassembled chunk is a ``wandb.proto.wandb_internal_pb2.Record``. W&B's service
writes the file after ``run.finish()`` returns: read it once the process has ended or after ``wandb.teardown()``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OfflineRun", "find_runs", "read_run", "read_records"]

_BLOCK = 32 * 1024
_HEADER = struct.Struct("<IHB")
_FILE_HEADER = struct.Struct("<4sHB")
_IDENT, _MAGIC = b":W&B", 0xBEE1
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file, in order; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise ValueError(f"{path}: not a W&B record file (too short)")
    ident, magic, _version = _FILE_HEADER.unpack_from(data)
    if ident != _IDENT or magic != _MAGIC:
        raise ValueError(f"{path}: not a W&B record file (header {data[:7]!r})")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        if kind == 0 and length == 0:  # zero fill up to the next block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if pos + length > len(data):  # a run still writing: its last record is not complete yet
            return
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos - length - _HEADER.size}")


@dataclass
class OfflineRun:
    """One offline run as its record file holds it (see the module docstring)."""

    dir: Path
    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def table(self, key: str) -> dict[str, Any]:
        """The last table logged under ``key``: ``{"columns": [...], "data": [[...], ...]}`` (its JSON file)."""
        entry = self.summary.get(key)
        if not isinstance(entry, dict) or entry.get("_type") != "table-file":
            raise KeyError(f"{self.dir}: no table {key!r} in the summary (tables: {self.tables()})")
        return json.loads((self.dir / "files" / entry["path"]).read_text())

    def tables(self) -> list[str]:
        """The keys of the tables in the summary."""
        return sorted(k for k, v in self.summary.items() if isinstance(v, dict) and v.get("_type") == "table-file")


def _set_nested(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = target[k] = {}
        target = nxt
    target[keys[-1]] = value


def _remove_nested(target: dict[str, Any], keys: list[str]) -> None:
    for k in keys[:-1]:
        target = target.get(k)
        if not isinstance(target, dict):
            return
    target.pop(keys[-1], None)


def read_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``run_dir`` (an ``offline-run-*`` folder, or a folder holding exactly one under ``wandb/``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    if not run_dir.name.startswith(("offline-run-", "run-")):
        found = find_runs(run_dir)
        if len(found) != 1:
            raise FileNotFoundError(f"{run_dir}: expected one W&B run under it, found {len(found)}: {found}")
        run_dir = found[0]
    files = sorted(run_dir.glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb record file")
    run = OfflineRun(dir=run_dir)
    for raw in read_records(files[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.name, run.group, run.job_type, run.project = (
                r.run_id,
                r.display_name,
                r.run_group,
                r.job_type,
                r.project,
            )
            for item in r.config.update:
                _set_nested(run.config, list(item.nested_key) or [item.key], json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set_nested(run.config, list(item.nested_key) or [item.key], json.loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_nested(run.summary, list(item.nested_key) or [item.key], json.loads(item.value_json))
            for item in record.summary.remove:
                _remove_nested(run.summary, list(item.nested_key) or [item.key])
        elif kind == "metric":
            m = record.metric
            summary = [
                s for s in ("min", "max", "mean", "best", "last", "none", "first") if getattr(m.summary, s, False)
            ]
            run.metrics.append(
                {
                    "name": m.name,
                    "glob_name": m.glob_name,
                    "step_metric": m.step_metric,
                    "summary": summary,
                    "goal": int(m.goal),
                }
            )
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": list(a.aliases),
                    "description": a.description,
                    "metadata": json.loads(a.metadata) if a.metadata else {},
                    "files": sorted(c.path for c in a.manifest.contents),
                }
            )
    return run


def find_runs(root: str | Path) -> list[Path]:
    """The offline / online run folders under ``root/wandb`` (or ``root`` itself), oldest first."""
    root = Path(root)
    base = root / "wandb" if (root / "wandb").is_dir() else root
    return sorted(p for p in base.glob("*run-*") if p.is_dir() and p.name != "latest-run")
