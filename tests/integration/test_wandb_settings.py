"""W&B console capture is off for credentialed data: the composed logger config carries ``console="off"``."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.integration.hydra_helpers import compose_train


@pytest.mark.parametrize(
    ("data", "console"),
    [("mimic_cxr", "off"), ("chexpert", "off"), ("synthetic", "wrap"), ("synthetic data.credentialed=true", "off")],
)
def test_wandb_console_capture_follows_data_credentialed(tmp_path: Path, data: str, console: str) -> None:
    name, *extra = data.split()
    cfg = compose_train(
        tmp_path, [f"data={name}", "data.root=/nowhere", "logger=wandb", "logger.wandb.offline=true", *extra]
    )
    logger = instantiate(cfg.logger.wandb)
    assert logger._wandb_init["settings"].console == console  # what WandbLogger hands to wandb.init
