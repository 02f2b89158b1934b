"""optim.micro_batch_size through the real configs: the module's cached step gives Lightning's full-batch gradients."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, run_cli, tiny_overrides


class GradProbe(L.Callback):
    """Saves the gradients the optimiser is about to apply at the first step (after any clipping)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            torch.save(
                {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}, self.path
            )


def _first_step_grads(tiny_dataset: Path, run_dir: Path, extra: list[str]) -> dict[str, torch.Tensor]:
    probe = run_dir / "grads.pt"
    # one tokenizer cache for the compared runs (trained once, loaded by the others)
    extra = [f"paths.data_dir={run_dir.parent / 'data'}", *extra]
    # a tower without BatchNorm (ConvNeXt: layer norms) and a text tower without dropout: the chunks must then give
    # exactly the full-batch gradient
    cfg = compose_train(
        run_dir,
        [
            "+experiment=mcsl_demo",
            *tiny_overrides(tiny_dataset),
            "model.image_encoder.name=test_convnext",
            "model.text_encoder.local_config.hidden_dropout_prob=0",
            "model.text_encoder.local_config.attention_probs_dropout_prob=0",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=0",
            "test=false",
            "trainer.gradient_clip_val=null",
            f"+callbacks.grad_probe._target_={__name__}.GradProbe",
            f"+callbacks.grad_probe.path={probe}",
            *extra,
        ],
    )
    train(cfg)
    return torch.load(probe, weights_only=True)


def test_micro_batches_give_the_full_batch_gradient(tiny_dataset: Path, tmp_path: Path) -> None:
    full = _first_step_grads(tiny_dataset, tmp_path / "full", [])
    cached = _first_step_grads(tiny_dataset, tmp_path / "cached", ["optim.micro_batch_size=3"])
    assert set(cached) == set(full)
    assert {"loss_head.logit_scale_log", "encoder.image_proj.weight"} <= set(full)
    for name, value in full.items():  # float32 sums in another order: tolerance relative to the tensor's scale
        atol = 1e-5 * max(value.abs().max().item(), 1e-3)
        torch.testing.assert_close(cached[name], value, atol=atol, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_micro_batches_clip_with_the_trainer_setting(tiny_dataset: Path, tmp_path: Path) -> None:
    """Lightning refuses automatic clipping with manual optimisation: the trainer's value moves into the module."""
    grads = _first_step_grads(tiny_dataset, tmp_path, ["optim.micro_batch_size=3", "trainer.gradient_clip_val=0.001"])
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    assert total.item() == pytest.approx(0.001, rel=1e-3)


def test_micro_batches_refuse_loss_averaging_accumulation(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "+experiment=demo",
            *tiny_overrides(tiny_dataset),
            "optim.micro_batch_size=4",
            "trainer.accumulate_grad_batches=2",
        ],
    )
    with pytest.raises(ValueError, match=r"micro_batch_size=4.*accumulate_grad_batches=2"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_micro_batches_under_two_process_ddp(tiny_dataset: Path, tmp_path: Path) -> None:
    """Lightning DDP (gloo, 2 CPU processes) with the cached step: no_sync for all chunks but the last, then one
    reduction; training, validation and test complete and the optimiser stepped once per batch."""
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "+experiment=mcsl_demo",
            *tiny_overrides(tiny_dataset),
            "optim.micro_batch_size=3",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=3",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/num_studies"] > 0 and metrics["train/loss"] == metrics["train/loss"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
