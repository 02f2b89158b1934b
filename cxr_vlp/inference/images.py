"""Image inputs of :class:`~cxr_vlp.inference.CXRModel`: files, PIL images and numpy arrays as ``uint8 [H, W]``.

Training reads every image with :func:`cxr_vlp.data.transforms.load_grayscale` (OpenCV ``IMREAD_GRAYSCALE``), which
turns a 16-bit file into 8 bits by dropping the low byte (``value >> 8``) and a colour file into luma. Arrays and PIL
images are brought to the same ``uint8 [H, W]`` form here, so an in-memory image gives the same model input as the
file it came from; the run's evaluation transforms are applied afterwards by the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from cxr_vlp.data.transforms import load_grayscale

ImageInput = Union[str, os.PathLike, np.ndarray, Any]  # Any: a PIL.Image.Image (PIL is imported lazily)

__all__ = ["ImageInput", "as_image_list", "image_name", "to_uint8_gray"]


def _is_pil(image: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency of matplotlib / torchvision
        return False
    return isinstance(image, Image.Image)


def _array_to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """``uint8 [H, W]`` from a gray ``[H, W]`` or ``[H, W, 1|3|4]`` (RGB / RGBA) array of uint8, uint16 or
    float in [0, 1]."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] in (3, 4):
        if a.dtype not in (np.uint8, np.uint16):
            a = _float_to_uint8(a, where)
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGBA2GRAY if a.shape[2] == 4 else cv2.COLOR_RGB2GRAY)
    if a.ndim != 2 or min(a.shape) == 0:
        raise ValueError(f"{where}: expected a gray [H, W] or colour [H, W, 3|4] image, got shape {tuple(array.shape)}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return np.ascontiguousarray((a >> 8).astype(np.uint8))  # as OpenCV reads a 16-bit file in grayscale
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.signedinteger):
        raise ValueError(f"{where}: unsupported pixel type {a.dtype}; give uint8, uint16 or float in [0, 1]")
    return _float_to_uint8(a, where)


def _float_to_uint8(a: np.ndarray, where: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{where}: unsupported pixel type {a.dtype}; give uint8, uint16 or float in [0, 1]")
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(
            f"{where}: a float image must hold finite values in [0, 1] "
            f"(got range [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}])"
        )
    return np.rint(a * 255.0).astype(np.uint8)


def to_uint8_gray(image: ImageInput, where: str = "image") -> np.ndarray:
    """One image as ``uint8 [H, W]``: a file path (read as training reads it), a PIL image or a numpy array."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no such image file: {path}")
        return load_grayscale(str(path))
    if _is_pil(image):
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L"):
            return _array_to_uint8(np.asarray(image, dtype=np.uint16), where)
        if mode == "I":
            arr = np.asarray(image)
            if arr.min() < 0 or arr.max() > 65535:
                raise ValueError(f"{where}: a PIL 'I' image must hold values in [0, 65535]")
            return _array_to_uint8(arr.astype(np.uint16), where)
        if mode == "F":
            return _array_to_uint8(np.asarray(image, dtype=np.float32), where)
        if mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGB")
        return _array_to_uint8(np.asarray(image), where)
    if isinstance(image, np.ndarray):
        return _array_to_uint8(image, where)
    raise TypeError(f"{where}: expected a file path, a PIL image or a numpy array, got {type(image).__name__}")


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One image (path, PIL image, array) or a sequence of them, as a list."""
    if isinstance(images, (str, os.PathLike, np.ndarray)) or _is_pil(images):
        return [images]
    if isinstance(images, Sequence):
        if len(images) == 0:
            raise ValueError("no images given")
        return list(images)
    raise TypeError(f"expected an image or a list of images, got {type(images).__name__}")


def image_name(image: ImageInput, index: int) -> str:
    """A row label: the file name of a path, else ``image_<index>``."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return f"image_{index}"
