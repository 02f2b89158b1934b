"""Models from anywhere as :class:`~cxr_vlp.inference.base.ImageTextModel`: :func:`load_model`.

``load_model(spec)`` reads what ``spec`` names: a cxr_vlp training checkpoint (``*.ckpt``) or exported folder
(``config.json`` with our ``format`` key) as :class:`~cxr_vlp.inference.model.CXRModel`; other formats
through the adapters of this package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.inference.hub_io import FORMAT

__all__ = ["load_model"]


def _is_cxr_vlp_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def load_model(spec: str | Path, **kwargs: Any) -> ImageTextModel:
    """The model ``spec`` names (see the module docstring); ``kwargs`` (``device``, ``dtype``, ``batch_size``) go to
    its constructor. ``ValueError`` naming ``spec`` when no loader recognises it."""
    from cxr_vlp.inference.model import CXRModel

    text = str(spec)
    path = Path(text).expanduser()
    if text.endswith(".ckpt") or path.is_file():
        return CXRModel.from_checkpoint(path, **kwargs)
    if path.is_dir() and _is_cxr_vlp_folder(path):
        return CXRModel.from_pretrained(path, **kwargs)
    raise ValueError(f"{spec}: not a model this version can load (a cxr_vlp .ckpt or exported folder)")
