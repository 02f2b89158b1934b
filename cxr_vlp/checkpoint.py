"""The ``cxr_vlp`` checkpoint payload: one typed, versioned record of what a checkpoint needs besides its weights.

A Lightning checkpoint of this package holds the weights (``state_dict``), the module's constructor arguments
(``hyper_parameters``, written by Lightning) and, under ``checkpoint["cxr_vlp"]``, the :class:`CXRPayload`: the
task (``kind``), the tokenizer (one JSON copy, ``None`` for a Hugging Face tokenizer rebuilt from its name), the
resolved data config of the training run, the concept bank of concept heads and, where a step has them, decision
thresholds and metrics.

Public API (everything else in the package reads checkpoints through these):

- :func:`write_payload` ``(checkpoint, payload)``: the only writer of ``checkpoint["cxr_vlp"]`` (the modules'
  ``on_save_checkpoint``).
- :func:`read_payload` ``(path_or_checkpoint)``: the only reader; a path is loaded once, weights-only
  (:func:`cxr_vlp.utils.checkpoint.load_checkpoint`). Payloads written before ``format_version`` existed are
  migrated (:func:`migrate_payload`); what cannot be migrated fails with a message saying what to do.
- :func:`load_module` ``(path_or_checkpoint, map_location="cpu") -> (module, payload)``: the module of the
  payload's ``kind`` (``ContrastiveModule`` or ``ReportGenModule``) rebuilt from the file, weights loaded, in
  eval mode, its tokenizer attached (``module.tokenizer``).

Example::

    from cxr_vlp.checkpoint import load_module, read_payload
    module, payload = load_module("logs/demo/runs/<run>/checkpoints/last.ckpt")
    payload.kind, payload.data["name"], payload.tokenizer()
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

from cxr_vlp.utils.checkpoint import load_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "PAYLOAD_KEY",
    "CXRPayload",
    "CheckpointFormatError",
    "write_payload",
    "read_payload",
    "read_checkpoint",
    "migrate_payload",
    "load_module",
]

PAYLOAD_KEY = "cxr_vlp"
FORMAT_VERSION = 1
KINDS = ("contrastive", "reportgen")
Kind = Literal["contrastive", "reportgen"]
# the data module's entry in a Lightning checkpoint (payloads before format 1 kept a second tokenizer copy there)
_DATAMODULE_KEY = "CXRDataModule"


class CheckpointFormatError(ValueError):
    """A checkpoint whose ``cxr_vlp`` payload cannot be read by this version of the package."""


@dataclass(frozen=True)
class CXRPayload:
    """What a ``cxr_vlp`` checkpoint carries besides its weights.

    ``hparams`` are the module's constructor arguments: Lightning stores them once, as
    ``checkpoint["hyper_parameters"]``, so :func:`write_payload` does not copy them under ``"cxr_vlp"``.
    ``thresholds`` maps a label to its decision threshold, ``metrics`` a metric name to its value.
    """

    kind: Kind
    hparams: dict[str, Any] = field(default_factory=dict)
    tokenizer_json: str | None = None
    data: dict[str, Any] | None = None
    concepts: list[str] | None = None
    thresholds: dict[str, float] | None = None
    metrics: dict[str, float] | None = None
    package_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CheckpointFormatError(f"payload kind must be one of {KINDS}, got {self.kind!r}")

    def tokenizer(self):
        """The stored tokenizer (``None`` when the checkpoint uses a Hugging Face tokenizer by name)."""
        if not self.tokenizer_json:
            return None
        from cxr_vlp.data.tokenizer import tokenizer_from_json

        return tokenizer_from_json(self.tokenizer_json)

    def loss_config(self) -> dict[str, Any]:
        """The ``loss`` node of ``hparams`` with the stored concept list (concept heads: the bank file need not
        exist where the checkpoint is loaded)."""
        loss = dict(self.hparams.get("loss") or {})
        return {**loss, "concepts": list(self.concepts)} if self.concepts else loss

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored under ``checkpoint["cxr_vlp"]`` (without ``hparams``, see the class docstring)."""
        out = asdict(self)
        out.pop("hparams")
        return out


def _package_version() -> str:
    import cxr_vlp

    return cxr_vlp.__version__


def write_payload(checkpoint: dict[str, Any], payload: CXRPayload) -> None:
    """Store ``payload`` in ``checkpoint`` (``checkpoint["cxr_vlp"]``; ``hyper_parameters`` when Lightning has not)."""
    record = payload.to_dict()
    record["package_version"] = payload.package_version or _package_version()
    record["format_version"] = FORMAT_VERSION
    checkpoint[PAYLOAD_KEY] = record
    if payload.hparams and "hyper_parameters" not in checkpoint:
        checkpoint["hyper_parameters"] = dict(payload.hparams)


def migrate_payload(checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The ``cxr_vlp`` record of a checkpoint written before ``format_version`` existed, in the current layout.

    Old layout: ``{"version", "tokenizer_json", "data"[, "concepts"]}`` for contrastive runs (the tokenizer possibly
    only in the data module's state) and ``{"version", "kind": "reportgen", "data", "tokenizer_json"}``.
    """
    old = dict(checkpoint.get(PAYLOAD_KEY) or {})
    hparams = checkpoint.get("hyper_parameters") or {}
    kind = old.get("kind") or ("contrastive" if "model" in hparams and "loss" in hparams else None)
    if kind not in KINDS:
        raise CheckpointFormatError(
            f"{source}: not a cxr_vlp checkpoint (no 'cxr_vlp' payload and no model/loss hyper-parameters). Use a "
            "checkpoint written by `python -m cxr_vlp.train` (its <run>/checkpoints/*.ckpt)"
        )
    tokenizer_json = old.get("tokenizer_json") or (checkpoint.get(_DATAMODULE_KEY) or {}).get("tokenizer_json")
    if kind == "reportgen" and not tokenizer_json:
        raise CheckpointFormatError(
            f"{source}: an old report-generation checkpoint without its decoder tokenizer: it cannot be used. "
            "Train it again with `python -m cxr_vlp.train +experiment=reportgen_demo pretrained_ckpt=...`"
        )
    if kind == "contrastive" and not tokenizer_json:
        tok = ((hparams.get("model") or {}).get("text_encoder") or {}).get("tokenizer") or {}
        if tok.get("kind") == "wordpiece":
            raise CheckpointFormatError(
                f"{source}: an old checkpoint whose locally trained WordPiece tokenizer was not stored: its text "
                "tower cannot be used. Train it again with `python -m cxr_vlp.train +experiment=<name>`"
            )
    return {
        "kind": kind,
        "tokenizer_json": tokenizer_json,
        "data": old.get("data"),
        "concepts": old.get("concepts"),
        "package_version": str(old.get("version", "")),
        "format_version": FORMAT_VERSION,
    }


def read_payload(path_or_checkpoint: str | os.PathLike[str] | dict[str, Any]) -> CXRPayload:
    """The :class:`CXRPayload` of a checkpoint file (loaded once, weights-only) or of a loaded checkpoint dict."""
    return read_checkpoint(path_or_checkpoint)[1]


def read_checkpoint(
    path_or_checkpoint: str | os.PathLike[str] | dict[str, Any], map_location: Any = "cpu"
) -> tuple[dict[str, Any], CXRPayload]:
    """``(checkpoint dict, payload)``: the file loaded once (weights-only), its payload read or migrated."""
    if isinstance(path_or_checkpoint, dict):
        checkpoint, source = path_or_checkpoint, "checkpoint"
    else:
        source = str(path_or_checkpoint)
        checkpoint = load_checkpoint(source, map_location=map_location)
        if not isinstance(checkpoint, dict):
            raise CheckpointFormatError(f"{source}: not a Lightning checkpoint (a {type(checkpoint).__name__})")
    record = checkpoint.get(PAYLOAD_KEY)
    if not isinstance(record, dict) or "format_version" not in record:
        record = migrate_payload(checkpoint, source)
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{source}: payload format_version={version!r} is newer than this cxr_vlp reads ({FORMAT_VERSION}, "
            f"package {_package_version()}): upgrade cxr_vlp (pip install -U cxr_vlp) to load it"
        )
    known = {f.name for f in fields(CXRPayload)} - {"hparams"}
    unknown = sorted(set(record) - known)
    if unknown:
        raise CheckpointFormatError(
            f"{source}: unknown key(s) {unknown} in the 'cxr_vlp' payload "
            f"(format_version={version}); known: {sorted(known)}"
        )
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise CheckpointFormatError(
            f"{source}: no 'hyper_parameters' (a cxr_vlp checkpoint stores the module's "
            "constructor arguments there): re-save it with `python -m cxr_vlp.train`"
        )
    return checkpoint, CXRPayload(hparams=dict(hparams), **record)


def load_module(path_or_checkpoint: str | os.PathLike[str] | dict[str, Any], map_location: str | torch.device = "cpu"):
    """``(module, payload)``: the LightningModule of the payload's kind, rebuilt and loaded (eval mode)."""
    checkpoint, payload = read_checkpoint(path_or_checkpoint, map_location=map_location)
    if payload.kind == "reportgen":
        from cxr_vlp.reportgen.module import ReportGenModule as cls
    else:
        from cxr_vlp.lit.module import ContrastiveModule as cls
    module = cls.from_payload(payload, checkpoint["state_dict"])
    return module.eval(), payload
