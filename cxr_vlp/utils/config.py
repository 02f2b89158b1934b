"""Where the Hydra configs live, in a source checkout or an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE = Path(__file__).resolve().parents[1]


def config_dir() -> str:
    """Absolute path of the Hydra root: ``cxr_vlp/conf`` in a wheel, ``<repo>/conf`` in a checkout."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"cxr_vlp configs not found next to {_PACKAGE}; reinstall the package")


def _ensure_dir(path: str) -> str:
    """``${cxr_vlp.mkdir:<dir>}``: the directory, created if missing (e.g. for an Optuna sqlite storage)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


if not OmegaConf.has_resolver("cxr_vlp.mkdir"):
    OmegaConf.register_new_resolver("cxr_vlp.mkdir", _ensure_dir)
# ``${cxr_vlp.cwd:}``: where the command runs. Unlike ``${hydra:runtime.cwd}`` it resolves before Hydra's runtime
# config exists, which the multirun sweeper needs to resolve hydra.sweep.dir (under paths.log_dir)
if not OmegaConf.has_resolver("cxr_vlp.cwd"):
    OmegaConf.register_new_resolver("cxr_vlp.cwd", lambda: os.getcwd())


def _sweep_resolver(kind: str):
    def resolve(task_name: str) -> str:
        from cxr_vlp.utils import sweep

        return sweep.run_group(task_name) if kind == "group" else sweep.run_name(task_name)

    return resolve


for _kind in ("group", "name"):
    if not OmegaConf.has_resolver(f"cxr_vlp.run_{_kind}"):
        OmegaConf.register_new_resolver(f"cxr_vlp.run_{_kind}", _sweep_resolver(_kind))
