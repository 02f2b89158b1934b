"""Image pipelines (albumentations) for grayscale chest X-rays.

Training: random resized crop (scale ~0.8-1.0), CLAHE, brightness/contrast, small affine. No horizontal
flip by default: left and right carry meaning on a chest X-ray (dextrocardia, side of an effusion), and
reports name the side. Evaluation: resize the shorter side and centre-crop. Output: float tensor
``[1, H, W]`` normalised with ``mean``/``std`` (in units of the 0-1 range).
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from cxr_vlp.data.cache import incomplete_reason


@dataclass
class TransformConfig:
    """Parameters of the train / eval pipelines (the ``data.transforms`` config node)."""

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    clahe_p: float = 0.5
    clahe_clip_limit: float = 2.0
    brightness_contrast_p: float = 0.5
    brightness_limit: float = 0.1
    contrast_limit: float = 0.1
    affine_p: float = 0.5
    rotate_limit: float = 5.0
    translate: float = 0.05
    scale_limit: float = 0.05
    hflip_p: float = 0.0
    mean: float = 0.449
    std: float = 0.226


def build_transforms(cfg: TransformConfig, train: bool) -> A.Compose:
    """The train or eval pipeline for ``uint8`` grayscale ``[H, W]`` images."""
    size = (cfg.image_size, cfg.image_size)
    tail = [A.Normalize(mean=(cfg.mean,), std=(cfg.std,), max_pixel_value=255.0), ToTensorV2()]
    if not train:
        return A.Compose(
            [A.SmallestMaxSize(max_size=cfg.image_size, interpolation=cv2.INTER_AREA), A.CenterCrop(*size), *tail]
        )
    steps: list[A.BasicTransform] = [
        A.RandomResizedCrop(
            size=size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio), interpolation=cv2.INTER_AREA
        ),
        A.CLAHE(clip_limit=cfg.clahe_clip_limit, tile_grid_size=(8, 8), p=cfg.clahe_p),
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_limit, contrast_limit=cfg.contrast_limit, p=cfg.brightness_contrast_p
        ),
        A.Affine(
            scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
            translate_percent=(-cfg.translate, cfg.translate),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=cfg.affine_p,
        ),
    ]
    if cfg.hflip_p > 0:
        steps.append(A.HorizontalFlip(p=cfg.hflip_p))
    return A.Compose([*steps, *tail])


def is_dicom(path: str, data: bytes) -> bool:
    """Whether a file is DICOM: a ``.dcm`` name or the ``DICM`` marker after the 128-byte preamble."""
    return str(path).lower().endswith(".dcm") or data[128:132] == b"DICM"


def decode_dicom(data: bytes, path: str) -> np.ndarray:
    """A DICOM image's pixels (through ``pydicom``) as ``uint8 [H, W]``: the first frame, colour to luma, stored
    values scaled from ``BitsStored`` bits to 8 (``value >> (bits - 8)``, the rule 16-bit PNGs follow; signed values
    shifted to unsigned first), MONOCHROME1 (white = 0) inverted. ``OSError`` naming the file when it is not DICOM,
    holds no pixel data or uses a compression no installed decoder reads."""
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=str(path).lower().endswith(".dcm"))
        pixels = np.asarray(ds.pixel_array)
    except Exception as err:  # pydicom raises many types (InvalidDicomError, AttributeError, RuntimeError, ...)
        raise OSError(f"unreadable DICOM image: {path} ({type(err).__name__}: {err})") from err
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if samples == 3 and pixels.ndim == 3:
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels.astype(np.uint8)), cv2.COLOR_RGB2GRAY)
    if pixels.ndim != 2 or min(pixels.shape) == 0:
        raise OSError(f"unsupported DICOM image shape {tuple(pixels.shape)}: {path}")
    bits = int(getattr(ds, "BitsStored", 8 * pixels.dtype.itemsize) or 8)
    values = pixels.astype(np.int64)
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:
        values = values + (1 << (bits - 1))
    values = np.clip(values >> max(bits - 8, 0), 0, 255).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = 255 - values
    return np.ascontiguousarray(values)


def load_grayscale(path: str) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W]``; raises ``OSError`` naming the file if it is missing, unreadable or
    truncated (OpenCV decodes a truncated JPEG partly, grey below the cut, with only a warning on stderr, so the
    end-of-image marker is checked first, on the bytes the decoder gets: :func:`cxr_vlp.data.cache.check_complete`).
    DICOM files (``.dcm``, e.g. RSNA Pneumonia's) go through :func:`decode_dicom`."""
    try:
        with open(path, "rb") as f:
            data = f.read()  # one read: the completeness check and the decoder share the bytes
    except OSError as err:
        raise OSError(f"unreadable or missing image: {path} ({err.strerror or err})") from err
    if is_dicom(path, data):
        return decode_dicom(data, path)
    problem = incomplete_reason(data[:8], data[-1024:], len(data))
    if problem is not None:
        raise OSError(f"{problem}: {path}")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise OSError(f"unreadable or missing image: {path}")
    return image
