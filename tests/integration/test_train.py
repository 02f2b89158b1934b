"""End-to-end training through the real Hydra configs on generated data (in-process, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxr_vlp.checkpoint import load_module
from cxr_vlp.data.table import read_generic_csv
from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.models.outputs import Embeddings
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, tiny_overrides

RETRIEVAL_KEYS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10")


def _read_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.parametrize("experiment", ["demo", "mcsl_demo", "probclip_vib_demo"])
def test_fast_dev_run_writes_flat_test_metrics(tiny_dataset: Path, tmp_path: Path, experiment: str) -> None:
    cfg = compose_train(
        tmp_path, [f"+experiment={experiment}", *tiny_overrides(tiny_dataset), "trainer.fast_dev_run=true"]
    )
    train(cfg)
    metrics = _read_metrics(tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    n_test = sum(s in set(split["test"]) for s in read_generic_csv(tiny_dataset).subject_ids)
    n = metrics["test/num_studies"]
    assert n == min(16, n_test)  # fast_dev_run: one eval batch of eval_batch_size
    for direction in ("i2t", "t2i"):
        for key in RETRIEVAL_KEYS:
            value = metrics[f"test/{direction}/{key}"]
            assert math.isfinite(value)
            if key.startswith("R@") or key == "nDCG@10":
                assert 0.0 <= value <= 1.0
            else:
                assert 1.0 <= value <= n
        assert metrics[f"test/{direction}/R@1"] <= metrics[f"test/{direction}/R@5"] <= metrics[f"test/{direction}/R@10"]
    assert math.isfinite(metrics["train/loss"])
    for stage in ("val", "test"):
        assert all(f"{stage}/{d}/{k}" in metrics for d in ("i2t", "t2i") for k in RETRIEVAL_KEYS), stage
    if experiment == "probclip_vib_demo":  # retrieval ranked by the match logit, uncertainty logged
        for stage in ("val", "test"):
            assert metrics[f"{stage}/uncertainty_mean"] > 0
        assert math.isfinite(metrics["train/kl"]) and metrics["train/a"] > 0
    # the split and the resolved config are saved beside the metrics
    assert set(split) >= {"train", "val", "test"}
    assert (tmp_path / "config.yaml").is_file()


def test_probabilistic_head_needs_probabilistic_model(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path, ["+experiment=probclip_vib_demo", *tiny_overrides(tiny_dataset), "model.probabilistic=false"]
    )
    c = OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(ValueError, match=r"model\.probabilistic=false.*model\.probabilistic=true") as err:
        ContrastiveModule(model=c["model"], loss=c["loss"], optim=c["optim"], scheduler=c["scheduler"])
    assert "loss._target_=cxr_vlp.losses.prob_head.ProbClipHead" in str(err.value)


def test_probabilistic_retrieval_ranks_by_match_logit(tiny_dataset: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cxr_vlp.lit.module import head_retrieval
    from cxr_vlp.losses.probabilistic import uncertainty
    from cxr_vlp.metrics.retrieval import retrieval_metrics

    cfg = compose_train(tmp_path, ["+experiment=probclip_vib_demo", *tiny_overrides(tiny_dataset)])
    c = OmegaConf.to_container(cfg, resolve=True)
    module = ContrastiveModule(model=c["model"], loss=c["loss"], optim=c["optim"], scheduler=c["scheduler"])
    module._trainer = SimpleNamespace(world_size=1, datamodule=None)
    g = torch.Generator().manual_seed(0)
    n, d = 10, c["model"]["embed_dim"]
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(n, d, generator=g), dim=-1)
    lv_i, lv_t = torch.randn(n, d, generator=g) - 3.0, torch.randn(n, d, generator=g) - 3.0
    order = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 4, 6])  # batches arrive out of index order
    for part in (order[:6], order[6:]):
        module._eval_outputs["val"].append((part, img[part], txt[part], lv_i[part], lv_t[part], None))
    split = module.gathered_eval_split("val")
    module.eval_splits["val"] = split
    metrics = head_retrieval(module.loss_head, split.image, split.text, prefix="val/", chunk_size=3)
    with torch.no_grad():
        sim = module.loss_head.similarity(Embeddings(img, lv_i), Embeddings(txt, lv_t))
    for key, value in retrieval_metrics(sim).items():
        assert metrics[f"val/i2t/{key}"] == pytest.approx(value)
    for key, value in retrieval_metrics(sim.T).items():
        assert metrics[f"val/t2i/{key}"] == pytest.approx(value)
    stored = module.eval_uncertainty["val"]
    assert torch.equal(stored["index"], torch.arange(n))
    torch.testing.assert_close(stored["image"], uncertainty(lv_i))
    expected = 0.5 * float(uncertainty(lv_i).mean() + uncertainty(lv_t).mean())
    assert metrics["val/uncertainty_mean"] == pytest.approx(expected)


def test_training_checkpoints_resume_and_reload(tiny_dataset: Path, tmp_path: Path) -> None:
    """Two epochs with checkpoints; resuming continues the step count; a reloaded checkpoint embeds identically."""
    base = [
        "+experiment=demo",
        *tiny_overrides(tiny_dataset),
        "test=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
    ]
    run1 = tmp_path / "run1"
    train(compose_train(run1, [*base, "trainer.max_epochs=2"]))
    ckpt_dir = run1 / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    best = [p for p in ckpt_dir.glob("epoch*.ckpt")]
    assert last.is_file() and len(best) == 1
    state = torch.load(last, map_location="cpu", weights_only=True)
    steps_after_two = state["global_step"]
    assert steps_after_two > 0 and state["epoch"] == 1  # last.ckpt is refreshed every epoch
    # the tokenizer travels in the checkpoint
    assert state["cxr_vlp"]["tokenizer_json"]

    run2 = tmp_path / "run2"
    train(compose_train(run2, [*base, "trainer.max_epochs=3", f"ckpt_path={last}"]))
    resumed = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == steps_after_two * 3 // 2

    module, payload = load_module(str(last))
    module_again, _ = load_module(str(last))
    assert payload.kind == "contrastive" and payload.data["name"] == "csv"
    images = torch.randn(3, 1, 64, 64)
    tokens = module.tokenizer(
        ["small left pleural effusion.", "no pneumothorax.", "heart size normal."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        a = module.encoder.encode_image(images).embedding
        b = module_again.encoder.encode_image(images).embedding
        t = module.encoder.encode_text(tokens["input_ids"], tokens["attention_mask"]).embedding
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    # the weights really are the trained ones, not a fresh initialisation
    torch.testing.assert_close(
        module.state_dict()["encoder.image_proj.weight"], state["state_dict"]["encoder.image_proj.weight"]
    )


def test_bf16_mixed_precision_trains(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "+experiment=demo",
            *tiny_overrides(tiny_dataset),
            "trainer.fast_dev_run=2",
            "trainer.precision=bf16-mixed",
            "test=false",
        ],
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])


def test_model_learns_on_a_fixed_batch(tiny_dataset: Path, tmp_path: Path) -> None:
    """Data module + dual encoder + CLIP head from the demo config can fit one batch: the loss must fall far
    below its chance value log(B). (Lightning's overfit_batches would re-sample views and sections each epoch.)"""
    cfg = compose_train(tmp_path, ["+experiment=demo", *tiny_overrides(tiny_dataset)])
    container = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data, tokenizer=container["model"]["text_encoder"]["tokenizer"])
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    module = ContrastiveModule(
        model=container["model"], loss=container["loss"], optim=container["optim"], scheduler=container["scheduler"]
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        image_views, text_views = module._loss_views(batch)
        loss = module.loss_head(image_views, text_views).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    chance = math.log(len(batch))
    assert min(losses[-5:]) < 0.5 * chance, losses  # a model that learns nothing stays at ~log(B)


@pytest.mark.parametrize("logger", ["wandb", "tensorboard"])
def test_loggers_write_offline(tiny_dataset: Path, tmp_path: Path, logger: str) -> None:
    # not fast_dev_run: it swaps the loggers for a dummy
    cfg = compose_train(
        tmp_path,
        [
            "+experiment=demo",
            *tiny_overrides(tiny_dataset),
            "trainer.max_steps=2",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
            f"logger={logger}",
            "test=false",
        ],
    )
    train(cfg)
    if logger == "wandb":
        runs = list((tmp_path / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    else:
        assert list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


def test_samples_per_second_are_logged(tiny_dataset: Path, tmp_path: Path) -> None:
    import pandas as pd

    cfg = compose_train(
        tmp_path,
        [
            "+experiment=demo",
            *tiny_overrides(tiny_dataset),
            "trainer.max_steps=6",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
            "test=false",
            "callbacks.throughput.window_size=2",
        ],
    )
    train(cfg)
    frame = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    values = frame["train/device/samples_per_sec"].dropna()
    assert len(values) >= 3 and (values > 0).all()
    # a sample is a study: samples/s = batch size x batches/s
    rows = frame.dropna(subset=["train/device/samples_per_sec", "train/device/batches_per_sec"])
    ratio = rows["train/device/samples_per_sec"] / rows["train/device/batches_per_sec"]
    assert ratio.round(6).eq(cfg.data.batch_size).all()
