"""ContrastiveModule.flops_per_batch: counted on the first optimiser step of a fit, equal to Lightning's
measure_flops of one training step, and read by ThroughputMonitor without its "define flops_per_batch" warning."""

from __future__ import annotations

import copy
import warnings

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import ThroughputMonitor
from omegaconf import OmegaConf

from cxr_vlp.data.batch import Batch
from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.lit.throughput import studies_in_batch
from cxr_vlp.utils.config import config_dir


def _tiny_module() -> ContrastiveModule:
    overrides = [
        "+experiment=demo",
        "model/image_encoder=resnet10t",
        "model.embed_dim=16",
        "model.text_encoder.local_config.hidden_size=16",
        "model.text_encoder.local_config.intermediate_size=32",
        "model.text_encoder.local_config.num_hidden_layers=1",
        "model.text_encoder.tokenizer.vocab_size=60",
    ]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    c = OmegaConf.to_container(cfg, resolve=False)
    torch.manual_seed(0)
    return ContrastiveModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        loss=c["loss"],
        optim=c["optim"],
        scheduler=c["scheduler"],
    )


def _batch(seed: int, b: int = 4, size: int = 32, length: int = 9) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (b, 2, length), generator=g)
    return Batch(
        images=torch.randn(b, 2, 1, size, size, generator=g),
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.zeros(b, 14),
        index=torch.arange(b),
        study_ids=[str(i) for i in range(b)],
        subject_ids=[str(i) for i in range(b)],
        texts=[["a", "b"]] * b,
    )


def _trainer(root, max_steps: int, callbacks: list | None = None) -> L.Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or validation."""
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=callbacks or [],
    )


def test_fit_counts_the_training_step_flops_and_the_monitor_reads_them(tmp_path) -> None:
    module = _tiny_module()
    reference = copy.deepcopy(module)
    batches = [_batch(0), _batch(1)]
    assert module.flops_per_batch is None
    trainer = _trainer(tmp_path, 2, [ThroughputMonitor(batch_size_fn=studies_in_batch)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert not [w for w in caught if "flops_per_batch" in str(w.message)]
    # the direct count: Lightning's measure_flops of forward + backward of the first batch, same weights
    reference.train()
    direct = measure_flops(
        reference, lambda: reference._head_loss(*reference._loss_views(batches[0]), labels=batches[0].labels).loss
    )
    forward_only = direct
    direct = measure_flops(
        reference,
        lambda: reference._head_loss(*reference._loss_views(batches[0]), labels=batches[0].labels).loss,
        loss_fn=lambda loss: loss,
    )
    assert module.flops_per_batch == direct > 0
    assert 2 * forward_only < direct <= 3 * forward_only  # backward of a matmul / conv: one or two more products


def test_a_fit_that_raises_in_its_first_step_leaves_no_flop_counter_running(tmp_path) -> None:
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    from cxr_vlp.lit.throughput import StudyThroughputMonitor

    class Failing(ContrastiveModule):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("a broken first step")

    module = Failing(**{k: module_arg for k, module_arg in _tiny_module().hparams.items()})
    trainer = _trainer(tmp_path, 1, [StudyThroughputMonitor(batch_size_fn=studies_in_batch)])
    try:
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([_batch(0)], batch_size=None))
    except RuntimeError as err:
        assert "a broken first step" in str(err)
    else:
        raise AssertionError("the fit should have raised")
    assert _get_current_dispatch_mode() is None
    # without a ThroughputMonitor nothing is counted at all
    plain = _trainer(tmp_path, 1)
    module = _tiny_module()
    plain.fit(module, train_dataloaders=torch.utils.data.DataLoader([_batch(0)], batch_size=None))
    assert module.flops_per_batch is None
