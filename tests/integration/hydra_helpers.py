"""Compose the real Hydra configs the way the entry point does, pointed at test data and a tmp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cxr_vlp.utils.config import config_dir


def tiny_model_overrides() -> list[str]:
    """Overrides that make any experiment small and fast on any dataset: 64 px, tiny encoders, one CPU process."""
    return [
        "data.image_cache=null",
        "data.transforms.image_size=64",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "model/image_encoder=resnet10t",
        "model.embed_dim=32",
        "model.text_encoder.local_config.hidden_size=32",
        "model.text_encoder.local_config.intermediate_size=64",
        "model.text_encoder.local_config.num_hidden_layers=1",
        "model.text_encoder.tokenizer.vocab_size=500",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "callbacks.progress_bar=null",
        "evaluation.tasks=[]",  # the evaluation suite has its own tests
    ]


def tiny_overrides(csv_path: Path) -> list[str]:
    """Overrides that make any experiment run on the tiny generic-CSV dataset at 64 px in one CPU process: the
    tiny set is a folder with a ``studies.csv``, read through ``data=csv`` as a user's own folder would be."""
    return [
        "data=csv",
        f"data.root={Path(csv_path).parent}",
        f"data.reader.csv_path={csv_path}",
        *tiny_model_overrides(),
    ]


def compose_train(output_dir: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose ``train.yaml`` with overrides and register the Hydra runtime (as @hydra.main would)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def run_cli(
    args: list[str], cwd: Path, module: str = "cxr_vlp.train", timeout: int = 900
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as users type it, offline, output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


TINY_STEPS = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]


def train_tiny_checkpoint(tiny_dataset: Path, out: Path, experiment: str, extra: list[str] = ()) -> Path:
    """``last.ckpt`` of two training steps of ``+experiment=<experiment>`` on the tiny set through the real configs
    (a real file with the saved data config). ``extra`` overrides replace ``test=false`` and may set
    ``evaluation.tasks``."""
    from cxr_vlp.train import train

    overrides = [o for o in tiny_overrides(tiny_dataset) if not (extra and o.startswith("evaluation.tasks="))]
    cfg = compose_train(out, [f"+experiment={experiment}", *overrides, *TINY_STEPS, *(extra or ["test=false"])])
    train(cfg)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt
