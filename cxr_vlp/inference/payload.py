"""What a trained model is made of, independent of where it is stored: :class:`Payload`.

A payload comes from a training checkpoint (:func:`payload_from_checkpoint`, through :mod:`cxr_vlp.checkpoint`) or
from an exported folder (:func:`cxr_vlp.inference.hub_io.load_folder`), and turns into the
LightningModule it describes with :func:`build_module`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxr_vlp.checkpoint import CheckpointFormatError, CXRPayload, read_checkpoint
from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.utils.checkpoint import is_remote

log = logging.getLogger(__name__)

__all__ = ["Payload", "build_module", "payload_from_checkpoint", "payload_from_module", "split_fingerprint"]


@dataclass
class Payload:
    """A trained model: the checkpoint payload (:class:`~cxr_vlp.checkpoint.CXRPayload`: kind, hyper-parameters,
    tokenizer, data config, concepts), its weights and what the run folder adds.

    ``preprocessing``: ``transforms`` (the ``data.transforms`` node) and ``max_length`` (tokens per text);
    ``training_data``: ``name`` and ``credentialed`` of the dataset (never its paths);
    ``thresholds``: validation-fitted zero-shot thresholds per label (empty when the run has none);
    ``metrics``: the run's test metrics; ``split_fingerprint``: sha256 of the run's patient split (or None).
    """

    record: CXRPayload
    state_dict: dict[str, torch.Tensor]
    preprocessing: dict[str, Any]
    training_data: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    split_fingerprint: str | None = None

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def hparams(self) -> dict[str, Any]:
        return self.record.hparams

    @property
    def concepts(self) -> list[str] | None:
        return self.record.concepts


def split_fingerprint(split_json: str | Path) -> str:
    """sha256 of a patient split (``split.json``: subject ids per split), independent of order and formatting."""
    from cxr_vlp.data.splits import SPLIT_NAMES, PatientSplit

    split = PatientSplit.from_json(split_json)
    canonical = {name: sorted(str(s) for s in getattr(split, name)) for name in SPLIT_NAMES}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _run_files(ckpt_path: str) -> tuple[dict[str, float], str | None]:
    """The run's ``metrics.json`` and split fingerprint for ``<run>/checkpoints/<name>.ckpt`` (empty when absent)."""
    if is_remote(ckpt_path):
        return {}, None
    run = Path(ckpt_path).resolve().parent.parent
    metrics: dict[str, float] = {}
    path = run / "metrics.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        metrics = {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    split = run / "split.json"
    return metrics, split_fingerprint(split) if split.is_file() else None


def zeroshot_thresholds(metrics: dict[str, float]) -> dict[str, float]:
    """Validation-fitted zero-shot thresholds per label from a run's metrics (``eval/`` after training, else
    ``test/`` of ``python -m cxr_vlp.eval``)."""
    for prefix in ("eval/zeroshot/threshold/", "test/zeroshot/threshold/"):
        found = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix) and math.isfinite(v)}
        if found:
            return {label: found[label] for label in CHEXPERT_LABELS if label in found}
    return {}


def held_out_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The held-out metrics of a run (``test/`` and ``eval/`` keys, finite values)."""
    return {k: v for k, v in metrics.items() if k.startswith(("test/", "eval/")) and math.isfinite(v)}


def _read_checkpoint(ckpt_path: str) -> tuple[dict[str, Any], CXRPayload]:
    """The checkpoint file (weights-only load) and its payload: the single place this package reads a ``.ckpt``."""
    if not is_remote(ckpt_path) and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    checkpoint, record = read_checkpoint(ckpt_path)
    if "state_dict" not in checkpoint:
        raise CheckpointFormatError(f"{ckpt_path}: no 'state_dict' in the file: not a Lightning checkpoint")
    return checkpoint, record


def payload_from_checkpoint(ckpt_path: str | Path) -> Payload:
    """A :class:`Payload` from a training checkpoint plus its run's ``metrics.json`` / ``split.json`` when present."""
    path = str(ckpt_path)
    checkpoint, record = _read_checkpoint(path)
    data = record.data or record.hparams.get("data")
    if not data:
        raise CheckpointFormatError(
            f"{path} carries no data config (written before cxr_vlp stored it), so its evaluation preprocessing is "
            "unknown: train it again with `python -m cxr_vlp.train +experiment=<name>`"
        )
    metrics, fingerprint = _run_files(path)
    thresholds = dict(record.thresholds or {}) if record.kind == "contrastive" else {}
    return Payload(
        record=record,
        state_dict=dict(checkpoint["state_dict"]),
        preprocessing=preprocessing(data),
        training_data=training_data(data),
        thresholds=thresholds or zeroshot_thresholds(metrics),
        metrics=held_out_metrics(metrics),
        split_fingerprint=fingerprint,
    )


def preprocessing(data: dict[str, Any]) -> dict[str, Any]:
    """The evaluation preprocessing of a run's data config: ``transforms`` and ``max_length``."""
    return {"transforms": dict(data.get("transforms") or {}), "max_length": int(data.get("max_length", 128))}


def training_data(data: dict[str, Any]) -> dict[str, Any]:
    """Name and access class of a run's dataset (never its paths)."""
    return {"name": str(data.get("name", "dataset")), "credentialed": bool(data.get("credentialed", False))}


def payload_from_module(module: torch.nn.Module, data: dict[str, Any]) -> Payload:
    """A :class:`Payload` of a LightningModule in memory (its ``payload()`` record, its current weights) with the
    run's data config ``data``."""
    if not data:
        raise ValueError("payload_from_module needs the run's data config (transforms, max_length)")
    return Payload(
        record=module.payload(),
        state_dict=module.state_dict(),
        preprocessing=preprocessing(data),
        training_data=training_data(data),
    )


def build_module(payload: Payload) -> torch.nn.Module:
    """The LightningModule of a payload (:func:`cxr_vlp.checkpoint.load_module`'s classes, ``from_payload``) in
    eval mode, weights loaded, tokenizer attached."""
    if payload.kind == "reportgen":
        from cxr_vlp.reportgen.module import ReportGenModule as cls
    else:
        from cxr_vlp.lit.module import ContrastiveModule as cls
    return cls.from_payload(payload.record, payload.state_dict).eval()
