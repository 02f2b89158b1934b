"""`python -m cxr_vlp.eval model=<spec>` on other projects' models (tiny open_clip / transformers folders built
locally): the whole suite through the real entry point, data= required, and RSNA (no reports: no retrieval)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cxr_vlp.eval.__main__ import evaluate, expand_model_override
from tests import adapter_models as am
from tests.integration.hydra_helpers import compose_train, run_cli
from tests.unit.test_rsna_reader import write_rsna_tree

FAST = [
    "evaluation.bootstrap.n_resamples=20",
    "evaluation.probe.max_epochs=3",
    "evaluation.probe.patience=2",
    "evaluation.figure_examples=2",
    "evaluation.device=cpu",
    "data.image_cache=null",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.pin_memory=false",
    "data.eval_batch_size=16",
]


def _csv_data(tiny_dataset: Path) -> list[str]:
    return ["data=csv", f"data.root={tiny_dataset.parent}", f"data.reader.csv_path={tiny_dataset}"]


def test_model_shorthand_is_the_model_source_spec() -> None:
    assert expand_model_override(
        ["model=/a/b", "+model=hf-hub:x/y", "model_source.arch=ViT-B-32", "data=csv", "model.embed_dim=3"]
    ) == [
        "model_source.spec=/a/b",
        "model_source.spec=hf-hub:x/y",
        "model_source.arch=ViT-B-32",
        "data=csv",
        "model.embed_dim=3",
    ]


@pytest.mark.slow
def test_open_clip_folder_through_the_command_line(tiny_dataset: Path, tmp_path: Path) -> None:
    folder = am.open_clip_folder(tmp_path / "open_clip_model")
    out = tmp_path / "run"
    result = run_cli(
        [f"model={folder}", *_csv_data(tiny_dataset), *FAST, f"hydra.run.dir={out}"],
        cwd=tmp_path,
        module="cxr_vlp.eval",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "test/i2t/R@1",
        "test/t2i/R@10",
        "test/dedup/i2t/R@1",
        "test/zeroshot/auroc_mean",
        "test/probe_linear/auroc_mean",
        "test/probe_mlp/auroc_mean",
    ):
        assert math.isfinite(metrics[key]), key
    assert not any(k.startswith(("test/uncertainty", "test/concept")) for k in metrics)
    report = (out / "report.md").read_text()
    assert str(folder) in report and "Zero-shot classification" in report
    log = result.stdout + result.stderr
    assert "Grad-CAM is not available" in log  # the figure is skipped with a log line, the others are drawn
    assert (out / "figures" / "roc_zeroshot.png").is_file() and not (out / "figures" / "gradcam.png").exists()


def _eval(out: Path, overrides: list[str]) -> dict[str, float]:
    return evaluate(compose_train(out, overrides, config_name="eval"))


@pytest.mark.slow
def test_hf_clip_on_rsna_runs_the_label_tasks_without_retrieval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = am.hf_clip_folder(tmp_path / "hf_clip")
    write_rsna_tree(tmp_path / "rsna", n_patients=40)
    with caplog.at_level("INFO"):
        metrics = _eval(
            tmp_path / "run",
            [
                f"model_source.spec={folder}",
                "data=rsna",
                f"data.root={tmp_path / 'rsna'}",
                "evaluation.figures=false",
                *FAST,
            ],
        )
    assert "retrieval: skipped (the dataset has no reports" in caplog.text
    assert not any("i2t" in k or "t2i" in k for k in metrics)
    assert math.isfinite(metrics["test/zeroshot/auroc/Pneumonia"])
    assert math.isfinite(metrics["test/probe_linear/auroc/Pneumonia"])
    assert math.isnan(metrics["test/zeroshot/auroc/Cardiomegaly"])  # RSNA labels only pneumonia


def test_a_foreign_model_needs_data_and_one_source(tmp_path: Path) -> None:
    folder = am.open_clip_folder(tmp_path / "oc")
    with pytest.raises(ValueError, match=r"carries no data config: name the data"):
        _eval(tmp_path / "a", [f"model_source.spec={folder}"])
    with pytest.raises(ValueError, match="either ckpt_path or model, not both"):
        _eval(tmp_path / "b", [f"model_source.spec={folder}", "ckpt_path=x.ckpt", "data=synthetic"])
    with pytest.raises(ValueError, match=r"no model to evaluate: give ckpt_path=.*or model="):
        _eval(tmp_path / "c", ["data=synthetic"])


def test_uncached_hub_model_fails_before_any_data_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr_vlp.utils.hub import ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"):
        _eval(tmp_path / "run", ["model_source=biomedclip", "data=chexpert", "data.root=/nonexistent/chexpert"])
