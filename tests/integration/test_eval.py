"""`python -m cxr_vlp.eval` on checkpoints of short trainings through the real configs: every task, the report,
the figures, the embedding cache, thresholds fitted on validation only, and the data-governance rule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_vlp.eval.__main__ import evaluate
from cxr_vlp.eval.figures import is_valid_png
from tests.integration.hydra_helpers import compose_train, train_tiny_checkpoint

FAST_EVAL = [
    "evaluation.bootstrap.n_resamples=50",
    "evaluation.probe.max_epochs=5",
    "evaluation.probe.patience=2",
    "evaluation.figure_examples=2",
    "evaluation.device=cpu",
]


@pytest.fixture(scope="module")
def clip_ckpt(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("clip_run"), "demo")


def _eval(ckpt: Path, out: Path, *extra: str) -> dict[str, float]:
    cfg = compose_train(out, [f"ckpt_path={ckpt}", *FAST_EVAL, *extra], config_name="eval")
    return evaluate(cfg)


def test_eval_all_tasks_report_and_figures(clip_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxr_vlp.metrics.classification as classification

    fitted_on = []
    real = classification.youden_thresholds

    def spy(probs, labels):
        fitted_on.append(np.asarray(labels).copy())
        return real(probs, labels)

    monkeypatch.setattr(classification, "youden_thresholds", spy)
    metrics = _eval(clip_ckpt, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved.keys() == metrics.keys()
    for key in (
        "test/i2t/R@1",
        "test/i2t/P@5",
        "test/t2i/P@10",
        "test/t2i/MedR",
        "test/i2t/tied_match_share",
        "test/dedup/i2t/R@1",
        "test/dedup/t2i/tied_match_share",
        "test/zeroshot/auroc_mean",
        "test/probe_linear/auroc_mean",
        "test/probe_mlp/auroc_mean",
    ):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["test/i2t/P@5"] <= 1
    # thresholds were fitted on the validation labels only (zero-shot + two probes), never on the test labels
    from cxr_vlp.eval.embed import SplitEmbeddings

    val = SplitEmbeddings.load(tmp_path / "embeddings" / "val.pt")
    test = SplitEmbeddings.load(tmp_path / "embeddings" / "test.pt")
    assert len(fitted_on) == 3
    for labels in fitted_on:
        np.testing.assert_array_equal(labels, val.labels.double().numpy())
        assert labels.shape != test.labels.shape or not np.array_equal(
            labels, test.labels.double().numpy(), equal_nan=True
        )
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Retrieval", "## Zero-shot classification", "## Probe: linear", "## Probe: mlp"):
        assert heading in report
    assert "| full gallery (" in report and "| identical reports merged (" in report  # both protocols, one table
    figures = sorted(p.stem for p in (tmp_path / "figures").glob("*.png"))
    assert figures == sorted(["retrieval_i2t", "retrieval_t2i", "tsne", "gradcam", "roc_zeroshot", "roc_probe_mlp"])
    assert all(is_valid_png(p) for p in (tmp_path / "figures").glob("*.png"))
    # the embeddings are cached: a second run reads them instead of embedding again
    stamp = (tmp_path / "embeddings" / "test.pt").stat().st_mtime_ns
    again = _eval(clip_ckpt, tmp_path, "evaluation.tasks=[retrieval]", "evaluation.figures=false")
    assert (tmp_path / "embeddings" / "test.pt").stat().st_mtime_ns == stamp
    assert again["test/i2t/R@1"] == metrics["test/i2t/R@1"]


@pytest.mark.parametrize("experiment", ["probclip_vib_demo", "clear_demo"])
def test_eval_head_specific_tasks(tiny_dataset: Path, tmp_path: Path, experiment: str) -> None:
    ckpt = train_tiny_checkpoint(tiny_dataset, tmp_path / "run", experiment)
    out = tmp_path / "eval"
    metrics = _eval(ckpt, out, "evaluation.tasks=[retrieval,uncertainty,concepts]")
    report = (out / "report.md").read_text()
    if experiment == "probclip_vib_demo":
        assert math.isfinite(metrics["test/uncertainty/aurc"])
        assert "## Uncertainty" in report and "Concept audit" not in report
        assert is_valid_png(out / "figures" / "uncertainty.png")
    else:
        assert (
            math.isfinite(metrics["test/concept_bottleneck/auroc_mean"])
            or "test/concept_bottleneck/auroc_mean" in metrics
        )
        assert "## Concept audit" in report and "Possible confounders" in report
        assert "## Uncertainty" not in report


class _RecordingLogger:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def log_image(self, key: str, images: list[str]) -> None:
        self.keys.append(key)


@pytest.mark.parametrize("allow", [False, True])
def test_credentialed_data_never_uploads_patient_content(clip_ckpt: Path, tmp_path: Path, allow: bool) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cxr_vlp.eval.run import PATIENT_CONTENT, Evaluator
    from cxr_vlp.inference import CXRModel

    model = CXRModel.from_checkpoint(clip_ckpt)
    dm = instantiate(OmegaConf.create(model.payload.record.data), tokenizer=None)
    dm.use_tokenizer(model.tokenizer)
    dm.setup("test")
    logger = _RecordingLogger()
    cfg = {"tasks": ["retrieval"], "figure_examples": 2, "device": "cpu", "allow_patient_content_upload": allow}
    result = Evaluator(model, dm, cfg, tmp_path, credentialed=True, loggers=[logger]).run()
    assert {"retrieval_i2t", "retrieval_t2i", "gradcam", "tsne"} <= set(result.figures)
    uploaded = {k.removeprefix("eval/") for k in logger.keys}
    if allow:
        assert uploaded == set(result.figures)
    else:
        assert uploaded == set(result.figures) - PATIENT_CONTENT and "tsne" in uploaded
    assert ("credentialed-access" in (tmp_path / "report.md").read_text()) is True


@pytest.mark.slow
def test_eval_command_line(clip_ckpt: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_vlp.eval",
            f"ckpt_path={clip_ckpt}",
            *FAST_EVAL,
            "evaluation.tasks=[retrieval,zeroshot]",
            "evaluation.figures=false",
            f"hydra.run.dir={tmp_path}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Zero-shot classification" in result.stdout and "Retrieval" in result.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["test/zeroshot/auroc_mean"] is not None
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_vlp.eval",
            f"ckpt_path={tmp_path / 'nope.ckpt'}",
            f"hydra.run.dir={tmp_path / 'x'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "nope.ckpt: no such checkpoint file" in missing.stderr
