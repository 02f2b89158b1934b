"""Checks that need a CUDA device (skipped without one; run them with ``pytest tests/gpu`` on a GPU machine).

- every loss head gives the same loss and gradients on CUDA (fp32) as on the CPU for the same batch;
- under bf16 autocast on CUDA the loss stays within a few per cent of fp32 and the gradients are finite;
- the real configs train, validate and test with ``trainer=gpu`` (bf16-mixed) through the entry point.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxr_vlp.data.batch import Batch
from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, tiny_overrides

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HEADS = ["demo", "mcsl_demo", "probclip_vib_demo", "clear_demo"]


def _module_and_batch(experiment: str, csv: Path, out: Path, *extra: str) -> tuple[ContrastiveModule, Batch]:
    """The experiment's module (tiny towers, dropout off) and one training batch of the tiny dataset."""
    cfg = compose_train(out, [f"+experiment={experiment}", *tiny_overrides(csv), *extra])
    c = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data, tokenizer=c["model"]["text_encoder"]["tokenizer"])
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = ContrastiveModule(model=c["model"], loss=c["loss"], optim=c["optim"], scheduler=c["scheduler"])
    module.tokenizer = datamodule.tokenizer  # what a module rebuilt from a checkpoint carries
    module.setup("fit")
    module.prepare_head(datamodule.tokenizer)
    module.eval()  # dropout off: CPU and CUDA must see the same function
    batch = next(iter(datamodule.train_dataloader()))
    return module, batch


def _to(batch: Batch, device: torch.device) -> Batch:
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return Batch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in values.items()})


def _loss_and_grads(module: ContrastiveModule, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach().float().cpu(), grads


@pytest.mark.parametrize("experiment", HEADS)
def test_cuda_fp32_matches_cpu(experiment: str, tiny_dataset: Path, tmp_path: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # ProbCLIP's pseudo-positive mask (logit >= the true pair's logit) is a step function: duplicate reports in
    # the batch give exactly tied logits, and a 1e-7 difference between devices flips one pair (seen on an H100:
    # loss off by 0.1·softplus(−z)/B² ≈ 1e-3). The comparison is of the smooth part; the mask has its own tests.
    extra = ["loss.pseudo_positive_weight=0.0"] if experiment.startswith("probclip") else []
    module, batch = _module_and_batch(experiment, tiny_dataset, tmp_path, *extra)
    cpu_loss, cpu_grads = _loss_and_grads(module, batch)
    gpu = copy.deepcopy(module).to(DEVICE)
    gpu_loss, gpu_grads = _loss_and_grads(gpu, _to(batch, torch.device(DEVICE)))
    assert math.isfinite(cpu_loss.item())
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-4, atol=1e-5)
    assert set(gpu_grads) == set(cpu_grads) and len(cpu_grads) > 10
    for name, g in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], g, rtol=2e-3, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("experiment", HEADS)
def test_cuda_bf16_autocast_close_to_fp32(experiment: str, tiny_dataset: Path, tmp_path: Path) -> None:
    module, batch = _module_and_batch(experiment, tiny_dataset, tmp_path)
    module = module.to(DEVICE)
    batch = _to(batch, torch.device(DEVICE))
    fp32_loss, _ = _loss_and_grads(module, batch)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        bf16_loss, bf16_grads = _loss_and_grads(module, batch)
    assert abs(bf16_loss.item() - fp32_loss.item()) <= 0.05 * abs(fp32_loss.item()) + 1e-3
    assert all(torch.isfinite(g).all() for g in bf16_grads.values())
    # the parameters (and so the optimizer state) stay fp32 under autocast
    assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("experiment", HEADS)
def test_train_bf16_mixed_on_gpu(experiment: str, tiny_dataset: Path, tmp_path: Path) -> None:
    cpu_only = ("trainer.accelerator=", "trainer.devices=")
    overrides = [o for o in tiny_overrides(tiny_dataset) if not o.startswith(cpu_only)]
    cfg = compose_train(tmp_path, [f"+experiment={experiment}", *overrides, "trainer=gpu", "trainer.max_epochs=2"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/i2t/R@10"] == pytest.approx(metrics["test/i2t/R@10"])
    for key in ("train/loss", "test/i2t/R@1", "test/t2i/R@10", "test/i2t/MedR"):
        assert math.isfinite(saved[key]), key
    assert 0.0 <= saved["test/i2t/R@10"] <= 1.0
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))
