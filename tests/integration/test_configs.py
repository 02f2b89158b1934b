"""Every config in every group composes, and every instantiable node instantiates (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxr_vlp.lit.module import build_dual_encoder
from cxr_vlp.utils.config import config_dir
from cxr_vlp.utils.hub import ModelNotAvailableError
from tests.integration.hydra_helpers import compose_train, tiny_model_overrides

CONF = Path(config_dir())


def _options(group: str) -> list[str]:
    """Selectable options of a group (files starting with ``_`` are shared parts, not options)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _compose(tmp_path: Path, overrides: list[str]):
    return compose_train(tmp_path / "run", [f"paths.data_dir={tmp_path / 'data'}", *overrides])


def test_every_group_has_options() -> None:
    for group in (
        "data",
        "model",
        "model/image_encoder",
        "model/text_encoder",
        "loss",
        "optim",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "experiment",
        "paths",
        "hydra",
        "debug",
        "reportgen",
        "module",
    ):
        assert _options(group), f"conf/{group} is empty"


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiments_compose_and_resolve(tmp_path: Path, name: str) -> None:
    real_data = name.endswith(("_mimic", "_iu_xray"))
    reportgen = name.startswith("reportgen")
    cfg = _compose(
        tmp_path,
        [
            f"+experiment={name}",
            *(["data.root=/data/set"] if real_data else []),
            *(["pretrained_ckpt=/ckpts/contrastive.ckpt"] if reportgen else []),
        ],
    )
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.task_name == name and cfg.model.embed_dim > 0
    # the task is the module config group: report generation for reportgen_*, contrastive pretraining otherwise
    target = (
        "cxr_vlp.reportgen.module.ReportGenModule.from_pretrained"
        if reportgen
        else "cxr_vlp.lit.module.ContrastiveModule"
    )
    assert cfg.module._target_ == target
    if reportgen:  # report generation: the whole report as target, concept prompts on, no retrieval suite
        assert cfg.reportgen.prompts.enabled and cfg.data.text_views.whole_report and list(cfg.evaluation.tasks) == []
        assert cfg.data.num_image_views == 1 and cfg.callbacks.model_checkpoint.monitor == "val/loss"
        if real_data:
            assert cfg.data.name == "mimic_cxr" and "Bio_ClinicalBERT" in cfg.reportgen.decoder.name_or_path
        return
    head = {"demo": "clip", "lambda_sweep": "mcsl"}.get(name, name.split("_")[0])
    head = "probclip_vib" if name.startswith("probclip_vib") else head
    assert OmegaConf.to_container(cfg.loss)["_target_"].rsplit(".", 1)[-1].lower().startswith(head.split("_")[0])
    if real_data:  # the CLIP-XRad paper's settings on every head
        assert cfg.data.name == ("mimic_cxr" if name.endswith("_mimic") else "iu_xray")
        assert cfg.model.image_encoder.name.startswith("swin_tiny") and cfg.model.embed_dim == 768
        assert "Bio_ClinicalBERT" in cfg.model.text_encoder.name_or_path
        assert (cfg.optim.lr, cfg.data.batch_size, cfg.data.transforms.image_size) == (3.0e-5, 64, 224)
        assert cfg.trainer.precision == "bf16-mixed" and cfg.loss.temperature_init == 0.07
        if name.startswith("mcsl"):
            assert cfg.loss.lam == 0.7


@pytest.mark.parametrize("name", _options("model/image_encoder"))
def test_image_encoders_follow_the_data_image_size(tmp_path: Path, name: str) -> None:
    """Every backbone config takes the data transforms' image size (ViT / Swin fix theirs at construction)."""
    cfg = _compose(
        tmp_path,
        [f"model/image_encoder={name}", "model.image_encoder.pretrained=false", "data.transforms.image_size=64"],
    )
    encoder = instantiate(cfg.model.image_encoder)
    with torch.no_grad():
        features = encoder.eval()(torch.zeros(2, 1, 64, 64))
    assert features.shape == (2, encoder.num_features) and encoder.num_features > 0


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
        if name == "slurm_ddp":  # needs SLURM's environment to build; composed in test_sweeps.py
            continue
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
    """Every dataset config builds a data module; a real-data root that does not exist fails at setup with
    an error naming that folder (not a KeyError or a silent empty dataset)."""
    overrides = [f"data={name}"]
    if name != "synthetic":
        overrides.append("data.root=/nonexistent/dataset")
    cfg = _compose(tmp_path, overrides)
    dm = instantiate(cfg.data)
    assert dm.batch_size == cfg.data.batch_size
    assert dm.name == name
    if name != "synthetic":
        with pytest.raises(FileNotFoundError, match="/nonexistent/dataset"):
            dm.setup("fit")


@pytest.mark.parametrize("name", _options("debug"))
def test_debug_configs_compose(tmp_path: Path, name: str) -> None:
    cfg = _compose(tmp_path, [f"debug={name}"])
    assert cfg.trainer.accelerator == "cpu"
    assert list(cfg.evaluation.tasks) == []  # the evaluation suite takes minutes; debug runs take seconds


_DEMOS = [name for name in _options("experiment") if name.endswith("_demo") or name in ("demo", "lambda_sweep")]


@pytest.mark.parametrize("data", _options("data"))
@pytest.mark.parametrize("experiment", _DEMOS)
def test_demo_experiments_compose_with_every_dataset(tmp_path: Path, experiment: str, data: str) -> None:
    """``+experiment=<demo> data=<any>``: only the synthetic set has a generator step, and the data module builds."""
    overrides = [
        f"+experiment={experiment}",
        f"data={data}",
        *(["pretrained_ckpt=/ckpts/contrastive.ckpt"] if experiment.startswith("reportgen") else []),
    ]
    if data != "synthetic":
        overrides.append("data.root=/data/set")
    cfg = _compose(tmp_path, overrides)
    assert cfg.data.name == data
    assert ("prepare" in cfg.data) == (data == "synthetic")
    dm = instantiate(cfg.data)
    assert (dm.prepare is not None) == (data == "synthetic")


def test_gpu_experiments_on_a_cpu_machine_name_the_cpu_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxr_vlp.train import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _compose(tmp_path, ["+experiment=clip_mimic", "data.root=/nonexistent/mimic"])
    with pytest.raises(RuntimeError, match=r"trainer\.accelerator=gpu \(trainer=gpu\).*add trainer=cpu"):
        train(cfg)  # before the data is read (the root does not exist)
    cfg = _compose(tmp_path, ["+experiment=clip_mimic", "data.root=/nonexistent/mimic", "trainer=cpu"])
    assert cfg.trainer.accelerator == "cpu"


def test_module_gets_what_it_needs_through_its_constructor(tmp_path: Path) -> None:
    """module=contrastive: the run's data config and the trainer's clipping reach the module as arguments."""
    from cxr_vlp.train import build_module, manual_optimization_overrides

    cfg = _compose(
        tmp_path,
        ["+experiment=demo", *tiny_model_overrides(), "optim.micro_batch_size=4", "trainer.gradient_clip_val=0.5"],
    )
    container = OmegaConf.to_container(cfg, resolve=True)
    module = build_module(container)
    assert type(module).__name__ == "ContrastiveModule" and module.data_config == container["data"]
    assert module.manual_gradient_clip == (0.5, "norm") and not module.automatic_optimization
    assert manual_optimization_overrides(cfg, module) == {"gradient_clip_val": None}
    assert module.hparams["data"] == container["data"]  # so the checkpoint rebuilds the same module
    with pytest.raises(ValueError, match=r"module=contrastive\|reportgen"):
        build_module({"module": None})
