"""Models from anywhere as :class:`~cxr_vlp.inference.base.ImageTextModel`: :func:`load_model`.

What ``load_model(spec)`` reads (``docs/models.md``):

- a cxr_vlp training checkpoint (``*.ckpt``) or exported folder (``config.json`` with our ``format`` key):
  :class:`~cxr_vlp.inference.model.CXRModel`;
- an open_clip folder (``open_clip_config.json`` + weights), ``hf-hub:<org>/<name>`` (open_clip's hub layout), or
  a CLIP state-dict file (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``, e.g. CheXzero's):
  :class:`~cxr_vlp.inference.adapters.open_clip.OpenClipModel`;
- a transformers CLIP-style folder (``config.json`` + ``preprocessor_config.json`` + tokenizer):
  :class:`~cxr_vlp.inference.adapters.hf_clip.HFClipModel`;
- a hub id ``<org>/<name>``: its cached snapshot (a download when online), read as any of the folders above.

A hub id that is neither cached nor downloadable raises :class:`~cxr_vlp.utils.hub.ModelNotAvailableError`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.inference.hub_io import FORMAT

__all__ = ["STATE_DICT_SUFFIXES", "load_model"]

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_ADAPTER_OPTIONS = ("arch", "quick_gelu", "context_length")


def _is_cxr_vlp_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def _own(options: dict[str, Any], spec: str, kind: str) -> dict[str, Any]:
    """``options`` without the open_clip-only ones, which must be unset for a ``kind`` model."""
    given = sorted(k for k in _ADAPTER_OPTIONS if options.get(k) is not None)
    if given:
        raise ValueError(f"{spec} is a {kind}: the option(s) {given} apply to open_clip models only")
    return {k: v for k, v in options.items() if k not in _ADAPTER_OPTIONS}


def _load_folder(path: Path, spec: str, options: dict[str, Any]) -> ImageTextModel:
    from cxr_vlp.inference.adapters.hf_clip import is_hf_clip_folder, load_hf_clip
    from cxr_vlp.inference.adapters.open_clip import CONFIG_NAME, is_open_clip_folder, load_open_clip
    from cxr_vlp.inference.model import CXRModel

    if _is_cxr_vlp_folder(path):
        return CXRModel.from_pretrained(path, **_own(options, spec, "cxr_vlp model"))
    if is_open_clip_folder(path):
        return load_open_clip(path, **options)
    if is_hf_clip_folder(path):
        return load_hf_clip(path, **_own(options, spec, "transformers model"))
    raise ValueError(
        f"{spec}: {path} is not a model folder this version can load (a cxr_vlp export with "
        f"config.json 'format', an open_clip folder with {CONFIG_NAME}, or a transformers CLIP-style "
        "folder with config.json and preprocessor_config.json)"
    )


def load_model(spec: str | Path, **kwargs: Any) -> ImageTextModel:
    """The model ``spec`` names (see the module docstring). ``kwargs``: ``device``, ``dtype``, ``batch_size`` for
    every model; for open_clip models also ``arch``, ``quick_gelu`` and ``context_length``
    (:func:`~cxr_vlp.inference.adapters.open_clip.load_open_clip`). ``ValueError`` naming ``spec`` when nothing
    recognises it."""
    from cxr_vlp.inference.adapters.common import resolve_folder
    from cxr_vlp.inference.adapters.open_clip import load_open_clip
    from cxr_vlp.inference.model import CXRModel

    text = str(spec)
    path = Path(text).expanduser()
    if text.endswith(".ckpt"):
        return CXRModel.from_checkpoint(path, **_own(kwargs, text, "cxr_vlp checkpoint"))
    if path.is_file():
        if path.suffix.lower() in STATE_DICT_SUFFIXES:
            return load_open_clip(path, **kwargs)
        raise ValueError(
            f"{spec}: a file that is neither a cxr_vlp .ckpt nor a state dict ({', '.join(STATE_DICT_SUFFIXES)})"
        )
    if path.is_dir():
        return _load_folder(path, text, kwargs)
    if text.startswith("hf-hub:"):
        return load_open_clip(text, **kwargs)
    if _HUB_ID.fullmatch(text):
        return _load_folder(resolve_folder(text), text, kwargs)
    raise ValueError(
        f"{spec}: not a model this version can load: no such file or folder, and not a hub id "
        "(<org>/<name> or hf-hub:<org>/<name>)"
    )
