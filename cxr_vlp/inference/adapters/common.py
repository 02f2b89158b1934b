"""Pieces every adapter of another project's model shares: PIL preprocessing wrapped albumentations-style, a
weights fingerprint, embeddings as the evaluation suite keeps them, and the ``local folder or cached hub id`` rule.

Other projects preprocess PIL RGB images; our data loaders hand every model a decoded ``uint8 [H, W]`` gray image
(:func:`cxr_vlp.data.transforms.load_grayscale`). :class:`PilTransform` makes the one from the other: the gray image
replicated to three channels (``PIL.Image.convert("RGB")``), then the model's own pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.models.outputs import Embeddings
from cxr_vlp.utils.hub import ModelNotAvailableError, how_to_make_available, offline, resolve_hf_model

__all__ = ["PilTransform", "cached_hf_file", "l2_embeddings", "resolve_folder", "weights_fingerprint"]


class PilTransform:
    """``transform(image=<uint8 [H, W]>)["image"]`` → ``pil_fn(PIL RGB image)`` as a float tensor ``[3, S, S]``.

    ``pil_fn``: a torchvision-style callable on one PIL image (open_clip's ``preprocess``), or one returning a
    mapping with ``pixel_values`` of shape ``[1, 3, S, S]`` (a Hugging Face image processor with
    ``return_tensors="pt"``). Picklable when ``pil_fn`` is, so data-loader workers can use it."""

    def __init__(self, pil_fn: Callable[[Any], Any], hf_processor: bool = False) -> None:
        self.pil_fn = pil_fn
        self.hf_processor = hf_processor

    def __call__(self, image: np.ndarray, **_: Any) -> dict[str, Tensor]:
        from PIL import Image

        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 2:
            raise ValueError(f"expected a uint8 gray [H, W] image, got {array.dtype} {tuple(array.shape)}")
        rgb = Image.fromarray(array, mode="L").convert("RGB")
        if self.hf_processor:
            out = self.pil_fn(images=rgb, return_tensors="pt")["pixel_values"][0]
        else:
            out = self.pil_fn(rgb)
        return {"image": torch.as_tensor(out).float()}

    def __repr__(self) -> str:
        return f"PilTransform({self.pil_fn!r})"


def l2_embeddings(x: Tensor) -> Embeddings:
    """Float32 CPU embeddings, L2-normalised along the last dimension."""
    return Embeddings(F.normalize(x.float(), dim=-1).cpu())


def weights_fingerprint(module: torch.nn.Module, extra: Iterable[Any] = ()) -> str:
    """blake2b of every tensor of ``module.state_dict()`` (key order) and of ``extra`` (e.g. the preprocessing)."""
    digest = hashlib.blake2b(digest_size=16)
    for item in extra:
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_folder(spec: str) -> Path:
    """A local folder for ``spec``: the folder itself, or the cached snapshot of a hub id (``hf-hub:`` prefix
    optional). :class:`~cxr_vlp.utils.hub.ModelNotAvailableError` when the id is neither local nor cached and cannot
    be downloaded (``HF_HUB_OFFLINE=1``)."""
    name = spec.removeprefix("hf-hub:")
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    return Path(resolve_hf_model(name))


def cached_hf_file(name: str, filename: str, needed_by: str) -> None:
    """Check that ``filename`` of the Hugging Face model ``name`` (a hub id or a local folder) can be read: local,
    cached, or (online) downloadable. ``ModelNotAvailableError`` naming ``name`` and ``needed_by`` otherwise."""
    if Path(name).expanduser().is_dir() or not offline():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, filename)
    except Exception:  # an id the hub client rejects is not cached either
        found = None
    if not isinstance(found, (str, os.PathLike)):
        raise ModelNotAvailableError(
            f"{needed_by} needs {filename!r} of {name!r}, which is not in the Hugging Face cache, and HF_HUB_OFFLINE "
            f"is set. " + how_to_make_available(name)
        )


class ScaledCosineModel(ImageTextModel):
    """A CLIP-style model: cosines rank, ``scale · cosine`` (the model's own logits, :attr:`scale`) is the score
    shown and the zero-shot multiplier."""

    @property
    def scale(self) -> float:
        """The multiplier of cosines in the model's logits (``logit_scale.exp()``)."""
        raise NotImplementedError

    @torch.no_grad()
    def similarity_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """``scale · cosine`` ``[Nq, Ng]``."""
        return self.scale * self.ranking_scores(query, gallery)

    @torch.no_grad()
    def ranking_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """The cosine ``[Nq, Ng]`` (float32): its order is the order of the scaled scores, without rounding ties."""
        return query.mean.float() @ gallery.mean.float().T

    @property
    def zero_shot_scale(self) -> float:
        return self.scale
