"""Inference on trained models: :class:`CXRModel` (load, embed, classify zero-shot, retrieve, explain, export)."""

from cxr_vlp.inference.gallery import Gallery
from cxr_vlp.inference.model import CXRModel, Explanation, GeneratedReport, UnsupportedByModel

__all__ = ["CXRModel", "Explanation", "Gallery", "GeneratedReport", "UnsupportedByModel"]
