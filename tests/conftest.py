"""Shared fixtures: offline environment, a tiny generated dataset, and composed Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_PATIENTS = 48


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (generic CSV layout) made once per test session; returns studies.csv."""
    from cxr_vlp.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("data") / "synthetic"
    return Path(generate_dataset(out, num_patients=TINY_PATIENTS, seed=3, image_size=64))


@pytest.fixture
def labeler_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many report texts each call of the rule-based labeler receives (the labeler still runs)."""
    from cxr_vlp.text import labeler

    calls: list[int] = []
    real = labeler.label_reports

    def spy(texts, **kw):
        texts = list(texts)
        calls.append(len(texts))
        return real(texts, **kw)

    monkeypatch.setattr(labeler, "label_reports", spy)
    return calls
