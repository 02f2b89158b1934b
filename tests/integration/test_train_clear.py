"""CLEAR end to end: train through the real Hydra config (+experiment=clear_demo, tiny data), reload the
checkpoint without the concept embedder, and collect the image concept scores of the test split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxr_vlp.checkpoint import load_module
from cxr_vlp.concepts.bank import load_concept_bank
from cxr_vlp.concepts.embeddings import hashing_embeddings
from cxr_vlp.data.table import read_generic_csv
from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.losses import clear_head as clear_mod
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, tiny_overrides

LIMITS = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
]


def _n_test_studies(tiny_dataset: Path, run_dir: Path) -> int:
    split = json.loads((run_dir / "split.json").read_text())
    return sum(s in set(split["test"]) for s in read_generic_csv(tiny_dataset).subject_ids)


@pytest.fixture(scope="module")
def clear_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, object]:
    run_dir = tmp_path_factory.mktemp("clear_run")
    cfg = compose_train(run_dir, ["+experiment=clear_demo", *tiny_overrides(tiny_dataset), *LIMITS])
    metrics = train(cfg)
    return run_dir, metrics, cfg


def test_clear_demo_config_uses_the_offline_embedder(clear_run) -> None:
    _, _, cfg = clear_run
    assert cfg.loss._target_ == "cxr_vlp.losses.clear_head.ClearHead"
    assert cfg.loss.embedder.kind == "hashing"
    assert cfg.data.num_image_views == 2 and cfg.data.text_views.num_views == 2


def test_clear_trains_with_finite_metrics(clear_run, tiny_dataset: Path) -> None:
    run_dir, metrics, _ = clear_run
    for key in (
        "train/loss",
        "train/clip",
        "train/concept",
        "train/concept_logit_scale",
        "train/concept_score_max",
        "val/loss",
        "test/loss",
        "test/rsum",
        "test/i2t/R@1",
        "test/t2i/MedR",
    ):
        assert math.isfinite(metrics[key]), key
    assert metrics["test/num_studies"] == _n_test_studies(tiny_dataset, run_dir)
    assert metrics["train/concept_temperature"] > 0


def test_checkpoint_reloads_without_embedder_and_scores_test_split(
    clear_run, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _, cfg = clear_run
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    bank = load_concept_bank()
    assert state["cxr_vlp"]["concepts"] == bank
    assert state["state_dict"]["loss_head.concept_llm_emb"].shape == (len(bank), 512)
    assert not any("concept_input_ids" in k for k in state["state_dict"])  # non-persistent: not in the file

    def boom(*args, **kwargs):
        raise AssertionError("evaluation must take E from the checkpoint, not call the embedder")

    monkeypatch.setattr(clear_mod, "compute_llm_embeddings", boom)
    module, payload = load_module(str(last))
    assert payload.concepts == bank
    head = module.loss_head
    assert head.concept_names == bank and head.llm_ready
    torch.testing.assert_close(head.concept_llm_emb, hashing_embeddings(bank, dim=512))
    assert head.concept_input_ids.shape[0] == len(bank)

    with torch.no_grad():
        image = module.encoder.encode_image(torch.randn(3, 1, 64, 64)).embeddings
        scores = head.eval_scores(image, head.loss_inputs(module.encode_text_embedding))
    assert scores.shape == (3, len(bank)) and bool(((scores >= -1 - 1e-5) & (scores <= 1 + 1e-5)).all())

    # the evaluation suite's path: test the reloaded module, read the image concept scores of the split
    container = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data, tokenizer=container["model"]["text_encoder"]["tokenizer"])
    datamodule.use_tokenizer(module.tokenizer)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.test(module, datamodule=datamodule)
    stored = module.eval_concept_scores["test"]
    n_test = _n_test_studies(tiny_dataset, run_dir)
    assert stored["scores"].shape == (n_test, len(bank))
    assert (
        torch.equal(stored["index"], torch.sort(stored["index"]).values) and stored["index"].unique().numel() == n_test
    )
    assert torch.isfinite(stored["scores"]).all()


def test_non_concept_heads_are_untouched(tiny_dataset: Path, tmp_path: Path) -> None:
    """Non-concept heads are untouched: no concept buffers, no concept scores, nothing in the checkpoint hook."""
    cfg = compose_train(tmp_path, ["+experiment=demo", *tiny_overrides(tiny_dataset)])
    c = OmegaConf.to_container(cfg, resolve=True)
    module = ContrastiveModule(model=c["model"], loss=c["loss"], optim=c["optim"], scheduler=c["scheduler"])
    assert not module.loss_head.spec.concepts and not hasattr(module.loss_head, "concept_input_ids")
    assert module.loss_head.concept_names == () and module.loss_head.loss_inputs(module.encode_text_embedding) == {}
    assert module.eval_concept_scores == {}
