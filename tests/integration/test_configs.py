"""Every config in every group composes, and every instantiable node instantiates (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxr_vlp.lit.module import build_dual_encoder
from cxr_vlp.models.hub import ModelNotAvailableError
from cxr_vlp.utils.config import config_dir
from tests.integration.hydra_helpers import compose_train

CONF = Path(config_dir())


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(tmp_path: Path, overrides: list[str]):
    return compose_train(tmp_path / "run", [f"paths.data_dir={tmp_path / 'data'}", *overrides])


def test_every_group_has_options() -> None:
    for group in ("data", "model", "model/image_encoder", "model/text_encoder", "loss", "optim", "scheduler",
                  "trainer", "logger", "callbacks", "experiment", "paths", "hydra", "debug"):
        assert _options(group), f"conf/{group} is empty"


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiments_compose_and_resolve(tmp_path: Path, name: str) -> None:
    cfg = _compose(tmp_path, [f"+experiment={name}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.task_name and cfg.model.embed_dim > 0


@pytest.mark.parametrize("name", _options("model/image_encoder"))
def test_image_encoders_instantiate(tmp_path: Path, name: str) -> None:
    cfg = _compose(tmp_path, [f"model/image_encoder={name}", "model.image_encoder.pretrained=false"])
    encoder = instantiate(cfg.model.image_encoder)
    assert encoder.num_features > 0


@pytest.mark.parametrize("name", _options("model/text_encoder"))
def test_text_encoders_instantiate_or_fail_clearly_offline(tmp_path: Path, name: str) -> None:
    cfg = _compose(tmp_path, [f"model/text_encoder={name}", "model/image_encoder=resnet10t"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if model["text_encoder"]["name_or_path"] is None:
        assert build_dual_encoder(model).text_encoder.num_features > 0
    else:  # hub names are not cached on the test machine: a clear error, not a hang or a download
        with pytest.raises(ModelNotAvailableError, match="hf download"):
            build_dual_encoder(model)


@pytest.mark.parametrize("group", ["trainer", "callbacks", "logger", "loss"])
def test_runtime_groups_instantiate(tmp_path: Path, group: str) -> None:
    for name in _options(group):
        cfg = _compose(tmp_path, [f"{group}={name}"])
        node = cfg[group]
        if group == "trainer":
            trainer = instantiate(node, accelerator="cpu", logger=False, enable_progress_bar=False)
            assert trainer.max_epochs == node.max_epochs
        elif group == "loss":
            assert instantiate(node).similarity_scale() > 0
        else:
            objects = [instantiate(v) for v in node.values()] if node else []
            assert all(o is not None for o in objects)


@pytest.mark.parametrize("name", _options("data"))
def test_data_configs_instantiate(tmp_path: Path, name: str) -> None:
    overrides = [f"data={name}"]
    if name == "csv":
        overrides.append("data.reader.csv_path=/nonexistent/studies.csv")
    cfg = _compose(tmp_path, overrides)
    dm = instantiate(cfg.data)
    assert dm.batch_size == cfg.data.batch_size
    if name == "csv":
        with pytest.raises(FileNotFoundError, match="/nonexistent/studies.csv"):
            dm.setup("fit")


@pytest.mark.parametrize("name", _options("debug"))
def test_debug_configs_compose(tmp_path: Path, name: str) -> None:
    cfg = _compose(tmp_path, [f"debug={name}"])
    assert cfg.trainer.accelerator == "cpu"
