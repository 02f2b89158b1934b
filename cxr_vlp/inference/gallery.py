"""A gallery embedded once: :class:`Gallery`, saved to and loaded from one safetensors file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

GALLERY_FORMAT = "cxr_vlp-gallery-1"
MODALITIES = ("image", "text")

__all__ = ["Gallery"]


@dataclass
class Gallery:
    """``embeddings [N, D]`` (L2-normalised; μ for probabilistic models) of ``N`` items of one modality, their
    ``ids`` (file names, texts or given names) and, for probabilistic models, ``logvar`` ``[N, D or 1]``."""

    modality: str
    ids: list[str]
    embeddings: torch.Tensor
    logvar: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"gallery modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.ids):
            raise ValueError(
                f"gallery embeddings must be [{len(self.ids)}, D] for {len(self.ids)} ids, got "
                f"{tuple(self.embeddings.shape)}"
            )
        if self.logvar is not None and self.logvar.shape[0] != len(self.ids):
            raise ValueError(f"gallery logvar has {self.logvar.shape[0]} rows for {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: str | Path) -> Path:
        """Write the gallery to ``path`` (safetensors: tensors plus the modality and ids as metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": self.embeddings.detach().cpu().contiguous()}
        if self.logvar is not None:
            tensors["logvar"] = self.logvar.detach().cpu().contiguous()
        save_file(
            tensors,
            str(path),
            metadata={"format": GALLERY_FORMAT, "modality": self.modality, "ids": json.dumps(self.ids)},
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> Gallery:
        """A gallery written by :meth:`save`; ``ValueError`` naming the file when it is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such gallery file")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != GALLERY_FORMAT:
                raise ValueError(
                    f"{path}: not a cxr_vlp gallery (metadata format {meta.get('format')!r}, "
                    f"expected {GALLERY_FORMAT!r})"
                )
            keys = set(f.keys())
            embeddings = f.get_tensor("embeddings")
            logvar = f.get_tensor("logvar") if "logvar" in keys else None
        return cls(modality=meta["modality"], ids=list(json.loads(meta["ids"])), embeddings=embeddings, logvar=logvar)
