"""Resolving pretrained weights without surprises: local path, local cache, or a bounded download.

A Hugging Face / timm name that is not available must fail at once with a message that says how to
make it available, never hang. ``HF_HUB_OFFLINE=1`` (set by the tests) forbids any network access.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

# Bound the metadata request so an unreachable hub fails in seconds rather than minutes.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")


class ModelNotAvailableError(RuntimeError):
    """A pretrained model was asked for that is neither a local path nor in the local cache."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def how_to_make_available(name: str) -> str:
    return (
        f"To use {name!r}: on a machine with internet run `hf download {name}` (or "
        f"`python -c \"from huggingface_hub import snapshot_download; snapshot_download('{name}')\"`) "
        "and copy the cache ($HF_HOME, default ~/.cache/huggingface) to this machine, or pass a local "
        "directory holding the model files instead of the hub name. Offline tests and the demo use the "
        "built-in local models (text_encoder=local_bert, pretrained=false)."
    )


def resolve_hf_model(name_or_path: str, allow_download: bool = True) -> str:
    """Return a local directory for ``name_or_path``: the path itself, a cached snapshot, or a download.

    Raises :class:`ModelNotAvailableError` when the model is not local and cannot be downloaded
    (offline mode, ``allow_download=False``, no network, unknown name).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotAvailableError(f"{path} exists but is not a model directory")
        return str(path)
    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        pass
    reason = "HF_HUB_OFFLINE is set" if offline() else "downloads are disabled (allow_download=false)"
    if allow_download and not offline():
        try:
            return snapshot_download(name_or_path)
        except Exception as err:  # network errors come in many types; all mean "not available"
            reason = f"the download failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    raise ModelNotAvailableError(
        f"model {name_or_path!r} is not a local path and not in the Hugging Face cache, and {reason}. "
        + how_to_make_available(name_or_path)
    )
