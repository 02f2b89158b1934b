"""`python -m cxr_vlp.train +experiment=<any> data=<published dataset> data.root=<tree>` trains, through the
same configs users call, on tiny trees in each published layout; the summary, the official splits and the
one-time image cache work on them too."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from hydra.utils import instantiate

from cxr_vlp.data.cache import available_sizes
from cxr_vlp.data.summary import summarize
from cxr_vlp.prepare import prepare
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, tiny_model_overrides
from tests.layouts import build_chexpert, build_iu_openi, build_iu_r2gen, build_mimic

# the paper experiments name Hugging Face / timm hub models: swap in the offline tiny towers
OFFLINE_TOWERS = ["model/text_encoder=local_bert", "model.image_encoder.pretrained=false"]
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0"]


def _build(kind: str, tmp: Path) -> tuple[Path, object]:
    root = tmp / kind
    root.mkdir(parents=True)
    if kind == "mimic":
        return root, build_mimic(root, n_subjects=18)
    if kind == "openi":
        return root, build_iu_openi(root, n_reports=30)
    if kind == "r2gen":
        return root, build_iu_r2gen(root, counts=(20, 6, 6))
    layout = build_chexpert(root, n_train=16, n_valid=5)
    return layout.root, layout


@pytest.mark.parametrize(
    ("kind", "data", "experiment"),
    [
        ("mimic", "mimic_cxr", "mcsl_mimic"),
        ("mimic", "mimic_cxr", "clear_demo"),
        ("openi", "iu_xray", "clip_iu_xray"),
        ("r2gen", "iu_xray", "probclip_vib_demo"),
        ("chexpert", "chexpert", "clip_demo"),
    ],
)
def test_experiment_trains_on_published_layout(tmp_path: Path, kind: str, data: str, experiment: str) -> None:
    root, layout = _build(kind, tmp_path)
    run = tmp_path / "run"
    overrides = [
        f"+experiment={experiment}",
        f"data={data}",
        f"data.root={root}",
        *tiny_model_overrides(),
        *OFFLINE_TOWERS,
        *SHORT,
    ]
    if experiment.startswith("clear"):
        overrides.append("loss.embedder.kind=hashing")
    cfg = compose_train(run, overrides)
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    split = json.loads((run / "split.json").read_text())
    assert not (set(split["train"]) & set(split["test"])) and not (set(split["val"]) & set(split["test"]))
    assert metrics["test/num_studies"] > 0 and 0.0 <= metrics["test/i2t/R@10"] <= 1.0
    if kind == "mimic":
        official_test = {layout.studies[s] for s, name in layout.split.items() if name == "test"}
        assert set(split["test"]) == official_test  # the official test split is kept
        if experiment == "mcsl_mimic":  # paper protocol: validation patients come from the official train set
            assert set(split["val"]) <= {layout.studies[s] for s, n in layout.split.items() if n != "test"}
        else:  # the whole official split
            assert set(split["val"]) == {layout.studies[s] for s, n in layout.split.items() if n == "validate"}
    if kind == "r2gen":
        assert set(split["test"]) == {s for s, n in layout.split.items() if n == "test"}
    if kind == "chexpert":  # valid.csv is the test set
        assert set(split["test"]) == {s.split("_")[0] for s, n in layout.studies.items() if n == "valid"}


@pytest.mark.parametrize("kind", ["mimic", "openi", "chexpert"])
def test_summary_on_published_layout(tmp_path: Path, kind: str) -> None:
    root, _ = _build(kind, tmp_path)
    data = {"mimic": "mimic_cxr", "openi": "iu_xray", "chexpert": "chexpert"}[kind]
    cfg = compose_train(
        tmp_path / "run", [f"data={data}", f"data.root={root}", "data.image_cache=null"], config_name="summary"
    )
    datamodule = instantiate(cfg.data)
    out = summarize(datamodule)
    table = datamodule.reader()
    assert out["leaked_subjects"] == 0
    assert out["total"]["studies"] == len(table) == sum(out["splits"][s]["studies"] for s in out["splits"])
    assert out["total"]["images"] == sum(len(p) for p in table.image_paths)
    assert all(out["splits"][s]["studies"] > 0 for s in ("train", "val", "test"))


def test_prepare_caches_once_reports_broken_images_and_training_reads_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, layout = _build("mimic", tmp_path)
    broken = layout.image(next(iter(layout.studies)), layout.dicoms[next(iter(layout.studies))][0])
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 2])  # truncated JPEG
    cache = tmp_path / "cache"
    base = [
        "data=mimic_cxr",
        f"data.root={root}",
        f"data.image_cache={cache}",
        "cache.size=48",
        "cache.workers=2",
        "cache.progress=false",
    ]
    first = prepare(compose_train(tmp_path / "prep1", base, config_name="prepare"))
    n_images = sum(len(d) for d in layout.dicoms.values()) - len(layout.missing_images)
    assert (first["total"], first["done"], first["failed"]) == (n_images, n_images - 1, 1)
    failed = (cache / "s48" / "failed.csv").read_text()
    assert str(broken) in failed and "truncated" in failed
    second = prepare(compose_train(tmp_path / "prep2", base, config_name="prepare"))
    assert (second["skipped"], second["done"], second["failed"]) == (n_images - 1, 0, 1)  # resumable
    assert available_sizes(cache) == [48]

    run = tmp_path / "run"
    tiny = [o for o in tiny_model_overrides() if not o.startswith(("data.image_cache=", "data.transforms.image_size="))]
    overrides = [
        "+experiment=clip_demo",
        "data=mimic_cxr",
        f"data.root={root}",
        *tiny,
        f"data.image_cache={cache}",
        "data.transforms.image_size=48",
        *SHORT,
    ]
    with caplog.at_level(logging.INFO, logger="cxr_vlp.data.cache"):
        metrics = train(compose_train(run, overrides))
    assert math.isfinite(metrics["train/loss"])
    coverage = [r.getMessage() for r in caplog.records if "read from the cache" in r.getMessage()]
    assert coverage and f"{n_images - 1} of {n_images} images" in coverage[0]
