"""Inference on trained models: :class:`CXRModel` (load, embed, classify zero-shot, retrieve, explain, export) and
:class:`ImageTextModel`, the interface the evaluation suite scores."""

from cxr_vlp.inference.base import ImageEncoding, ImageTextModel, UnsupportedByModel
from cxr_vlp.inference.gallery import Gallery
from cxr_vlp.inference.model import CXRModel, Explanation, GeneratedReport

__all__ = [
    "CXRModel",
    "Explanation",
    "Gallery",
    "GeneratedReport",
    "ImageEncoding",
    "ImageTextModel",
    "UnsupportedByModel",
]
