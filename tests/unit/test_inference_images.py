"""Image inputs of CXRModel: arrays and PIL images decode to the uint8 gray image training reads from their file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxr_vlp.data.transforms import load_grayscale
from cxr_vlp.inference.images import as_image_list, image_name, to_uint8_gray


def _gradient16(h: int = 37, w: int = 53) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 65536, size=(h, w), dtype=np.uint16)


def test_uint16_array_and_pil_match_the_16_bit_png_read_by_training(tmp_path: Path) -> None:
    img = _gradient16()
    path = tmp_path / "x16.png"
    assert cv2.imwrite(str(path), img)
    expected = load_grayscale(str(path))
    assert expected.dtype == np.uint8
    np.testing.assert_array_equal(to_uint8_gray(img), expected)
    np.testing.assert_array_equal(to_uint8_gray(Image.open(path)), expected)
    np.testing.assert_array_equal(to_uint8_gray(path), expected)
    np.testing.assert_array_equal(to_uint8_gray(str(path)), expected)


def test_uint8_gray_png_pil_and_array_agree(tmp_path: Path) -> None:
    img = (_gradient16(41, 29) >> 8).astype(np.uint8)
    path = tmp_path / "x8.png"
    cv2.imwrite(str(path), img)
    np.testing.assert_array_equal(to_uint8_gray(path), img)
    np.testing.assert_array_equal(to_uint8_gray(Image.open(path)), img)
    np.testing.assert_array_equal(to_uint8_gray(img[:, :, None]), img)


def test_colour_and_float_arrays() -> None:
    gray = np.full((5, 7), 100, dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(to_uint8_gray(rgb), gray)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_uint8_gray(rgba), gray)
    np.testing.assert_array_equal(to_uint8_gray(np.full((3, 3), 1.0, np.float32)), np.full((3, 3), 255, np.uint8))
    np.testing.assert_array_equal(to_uint8_gray(Image.fromarray(rgb)), gray)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((3, 3), 2.0), r"\[0, 1\]"),
        (np.zeros((3, 3), dtype=np.int32), "unsupported pixel type int32"),
        (np.zeros((2, 3, 4, 5), dtype=np.uint8), "expected a gray"),
        (np.zeros((0, 3), dtype=np.uint8), "expected a gray"),
        (12, "expected a file path"),
    ],
)
def test_bad_inputs_are_refused_naming_the_problem(bad, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        to_uint8_gray(bad, "images[0]")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        to_uint8_gray(tmp_path / "nope.png")


def test_lists_and_names() -> None:
    arr = np.zeros((2, 2), np.uint8)
    assert len(as_image_list(arr)) == 1 and len(as_image_list("a.png")) == 1 and len(as_image_list([arr, arr])) == 2
    with pytest.raises(ValueError, match="no images"):
        as_image_list([])
    assert image_name("/x/y/a.png", 0) == "a.png" and image_name(arr, 3) == "image_3"
