"""cxr_vlp: chest X-ray vision-language pretraining with PyTorch Lightning and Hydra.

``from cxr_vlp import CXRModel`` imports the inference API on first use, so ``import cxr_vlp`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["CXRModel", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "CXRModel":
        from cxr_vlp.inference.model import CXRModel

        return CXRModel
    raise AttributeError(f"module 'cxr_vlp' has no attribute {name!r}")
