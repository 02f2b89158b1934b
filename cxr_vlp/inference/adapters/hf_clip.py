"""Hugging Face ``transformers`` CLIP-style models as :class:`~cxr_vlp.inference.base.ImageTextModel`:
:class:`HFClipModel` and :func:`load_hf_clip`.

Any model folder (or hub id) whose ``AutoModel`` has ``get_image_features`` and ``get_text_features``
(``CLIPModel``, ``SiglipModel``, ...), with the image processor (``AutoImageProcessor``, e.g.
``CLIPImageProcessor``) and tokenizer (``AutoTokenizer``) saved beside it. Images: the processor on a PIL RGB image
made from our decoded ``uint8`` gray image. Texts: the tokenizer, padded to the longest text and truncated at the
text tower's position limit. Embeddings are L2-normalised; scores and the zero-shot scale use ``logit_scale.exp()``
(1 when the model has none); ``features`` are the pooled image features the visual projection reads (models with a
``visual_projection`` layer), the embedding otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cxr_vlp.inference.adapters.common import (
    PilTransform,
    ScaledCosineModel,
    l2_embeddings,
    resolve_folder,
    weights_fingerprint,
)
from cxr_vlp.inference.base import ImageEncoding, as_texts
from cxr_vlp.models.outputs import Embeddings

__all__ = ["HFClipModel", "is_hf_clip_folder", "load_hf_clip"]


def is_hf_clip_folder(path: Path) -> bool:
    """Whether ``path`` holds a transformers ``config.json`` (a ``model_type``) and an image processor config."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file() and (path / "preprocessor_config.json").is_file()):
        return False
    try:
        return bool(json.loads(config.read_text()).get("model_type"))
    except (json.JSONDecodeError, AttributeError, OSError):
        return False


def _tensor(out: Any) -> Tensor:
    """The features tensor of ``get_*_features``: a tensor, or (transformers ≥ 5) its output's ``pooler_output``."""
    if isinstance(out, Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    raise TypeError(f"get_*_features returned a {type(out).__name__} without a pooler_output tensor")


def _max_length(model: torch.nn.Module, tokenizer: Any) -> int:
    """The text tower's position limit, capped by the tokenizer's ``model_max_length`` when that is set."""
    config = getattr(model.config, "text_config", model.config)
    limits = [
        int(getattr(config, "max_position_embeddings", 0) or 0),
        int(getattr(tokenizer, "model_max_length", 0) or 0),
    ]
    limits = [v for v in limits if 0 < v < 1_000_000]
    return min(limits) if limits else 77


class HFClipModel(ScaledCosineModel):
    """A transformers dual encoder with its image processor and tokenizer (see the module docstring). Build it with
    :func:`load_hf_clip`."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        tokenizer: Any,
        name: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"{name}: {type(model).__name__} has no {method} (not a CLIP-style dual encoder)")
        self.model = model.float().to(self.device).eval()
        self.processor = processor
        self.tokenizer = tokenizer
        self.max_length = _max_length(model, tokenizer)
        self._name = name
        self._transform = PilTransform(processor, hf_processor=True)

    @property
    def name(self) -> str:
        return self._name

    @cached_property
    def fingerprint(self) -> str:
        processor = self.processor.to_dict() if hasattr(self.processor, "to_dict") else repr(self.processor)
        return weights_fingerprint(self.model, ["hf_clip", processor, self.max_length])

    @property
    def image_transform(self) -> PilTransform:
        return self._transform

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor) -> ImageEncoding:
        captured: list[Tensor] = []
        projection = getattr(self.model, "visual_projection", None)
        hook = (
            projection.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
            if isinstance(projection, torch.nn.Module)
            else None
        )
        try:
            with self.autocast():
                embedding = _tensor(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        finally:
            if hook is not None:
                hook.remove()
        features = captured[-1] if captured else embedding
        return ImageEncoding(embeddings=l2_embeddings(embedding), features=features.float().cpu())

    def tokens(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """The tokenizer's ``input_ids`` / ``attention_mask`` for ``texts`` (on ``device``)."""
        tok = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def encode_text_embeddings(self, texts: Sequence[str]) -> Embeddings:
        inputs = self.tokens(as_texts(texts))
        with self.autocast():
            return l2_embeddings(_tensor(self.model.get_text_features(**inputs)))

    @property
    def scale(self) -> float:
        """``logit_scale.exp()`` (1 for a model without a logit scale)."""
        logit_scale = getattr(self.model, "logit_scale", None)
        return 1.0 if logit_scale is None else float(logit_scale.detach().float().exp())


def load_hf_clip(spec: str | Path, **kwargs: Any) -> HFClipModel:
    """The transformers model ``spec`` names (a folder or a hub id, ``hf-hub:`` optional): ``AutoModel``,
    ``AutoImageProcessor`` and ``AutoTokenizer`` from the same folder. ``kwargs`` (``device``, ``dtype``,
    ``batch_size``) go to :class:`HFClipModel`."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    folder = resolve_folder(str(spec))
    if not is_hf_clip_folder(folder):
        raise ValueError(
            f"{spec}: {folder} holds no transformers config.json with an image processor (preprocessor_config.json)"
        )
    model = AutoModel.from_pretrained(str(folder))
    processor = AutoImageProcessor.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return HFClipModel(model, processor, tokenizer, name=str(spec), **kwargs)
