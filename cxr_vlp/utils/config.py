"""Where the Hydra configs live, in a source checkout or an installed wheel."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

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


def run_suffix() -> str:
    """``${cxr_vlp.run_suffix:}``: ``<pid>-<4 random hex digits>``, appended to the timestamp of run and sweep
    directories so that jobs started in the same second (a sweep submitted at once, two users) never share one. The
    pid separates the jobs of one machine, the random part those of several. Registered with ``use_cache``: one
    value per composed config, which Hydra copies into every job of a multirun (as it does for ``${now:}``)."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


if not OmegaConf.has_resolver("cxr_vlp.run_suffix"):
    OmegaConf.register_new_resolver("cxr_vlp.run_suffix", run_suffix, use_cache=True)


def wandb_console(credentialed: object) -> str:
    """``${cxr_vlp.wandb_console:<data.credentialed>}``: W&B's console capture, ``off`` unless the data is known not
    to be credentialed (``false``). The captured console log is uploaded and would hold the image paths and study ids
    of data warnings; an unknown value (``null``: e.g. evaluation reading the data config from the checkpoint)
    counts as credentialed."""
    return "auto" if credentialed is False else "off"


if not OmegaConf.has_resolver("cxr_vlp.wandb_console"):
    OmegaConf.register_new_resolver("cxr_vlp.wandb_console", wandb_console)


def _sweep_resolver(kind: str):
    def resolve(task_name: str) -> str:
        from cxr_vlp.utils import sweep

        return sweep.run_group(task_name) if kind == "group" else sweep.run_name(task_name)

    return resolve


for _kind in ("group", "name"):
    if not OmegaConf.has_resolver(f"cxr_vlp.run_{_kind}"):
        OmegaConf.register_new_resolver(f"cxr_vlp.run_{_kind}", _sweep_resolver(_kind))


def require_accelerator(trainer_cfg: Any) -> None:
    """Stop before any data is read when ``trainer.accelerator`` asks for a GPU that this machine does not have
    (e.g. the ``*_mimic`` / ``*_iu_xray`` experiments select ``trainer=gpu``), naming the override that runs on CPU."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator not in ("gpu", "cuda"):
        return
    import torch
    from hydra.core.hydra_config import HydraConfig

    if torch.cuda.is_available():
        return
    choice = HydraConfig.get().runtime.choices.get("trainer") if HydraConfig.initialized() else None
    selected = f" (trainer={choice})" if choice else ""
    raise RuntimeError(
        f"trainer.accelerator={accelerator}{selected} needs a CUDA GPU, and this machine has none: add "
        "trainer=cpu to the command to run on the CPU (trainer.precision is kept: add trainer.precision=32-true "
        "for full precision), or run it on a GPU machine"
    )
