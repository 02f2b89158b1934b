"""Where the Hydra configs live, in a source checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def config_dir() -> str:
    """Absolute path of the Hydra root: ``cxr_vlp/conf`` in a wheel, ``<repo>/conf`` in a checkout."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"cxr_vlp configs not found next to {_PACKAGE}; reinstall the package")
