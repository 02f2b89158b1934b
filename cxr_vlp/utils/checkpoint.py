"""Checkpoint reading: one weights-only loader for local files and remote URLs.

``torch.load(..., weights_only=True)`` unpickles only tensors, containers and primitive types, so a crafted
checkpoint cannot run code (PyTorch "Serialization semantics": weights_only). Every checkpoint the package
reads goes through :func:`load_checkpoint`: local paths directly, ``http(s)://`` downloaded to a temporary
file first, other URL schemes (``s3://``, ``gs://``, ...) through fsspec when its backend is installed; a
scheme nothing can read is refused with a message naming the path.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Any

import torch

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_HTTP_TIMEOUT_S = 60


def url_scheme(path: str | os.PathLike[str]) -> str | None:
    """The lower-case scheme of a URL (``https``, ``s3``), ``None`` for a local path (``file://`` counts as local)."""
    match = _URL.match(str(path))
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_remote(path: str | os.PathLike[str]) -> bool:
    return url_scheme(path) is not None


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` for a local path or a URL (see the module docstring).

    Raises ``pickle.UnpicklingError`` for a checkpoint holding anything but weights and plain data, ``OSError``
    naming the URL when a download fails, ``ValueError`` for a URL scheme that cannot be read here.
    """
    text = str(path)
    scheme = url_scheme(text)
    if scheme is None:
        local = text[len("file://") :] if text.lower().startswith("file://") else text
        return torch.load(local, map_location=map_location, weights_only=True)
    if scheme in ("http", "https"):
        with tempfile.TemporaryFile() as tmp:
            try:
                with urllib.request.urlopen(text, timeout=_HTTP_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
                    shutil.copyfileobj(response, tmp)
            except (urllib.error.URLError, TimeoutError) as err:
                raise OSError(f"checkpoint {text}: download failed: {err}") from err
            tmp.seek(0)
            return torch.load(tmp, map_location=map_location, weights_only=True)
    try:
        import fsspec

        opened = fsspec.open(text, "rb")
    except (ImportError, ValueError) as err:
        raise ValueError(
            f"checkpoint {text}: {scheme}:// paths cannot be read here ({err}); install the fsspec "
            f"backend for {scheme} (e.g. s3fs for s3://) or copy the file and pass the local "
            "path"
        ) from err
    with opened as f:
        return torch.load(f, map_location=map_location, weights_only=True)
