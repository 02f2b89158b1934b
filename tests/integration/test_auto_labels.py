"""An image–text CSV without label columns trains end to end through `data=csv`: labels from the report text (cached),
MCSL gets them, class-based P@K is computed; with `data.reader.labels=none` the label tasks say so in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxr_vlp.text import labeler
from cxr_vlp.text.labels import CHEXPERT_LABELS, apply_policy
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, tiny_overrides

SHORT = [
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "evaluation.figures=false",
    "evaluation.device=cpu",
    "evaluation.bootstrap.n_resamples=20",
]


@pytest.fixture(scope="module")
def unlabelled_csv(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic set as a plain image–text CSV: no label columns, absolute image paths."""
    df = pd.read_csv(tiny_dataset, dtype=str)
    df = df.drop(columns=[c for c in CHEXPERT_LABELS if c in df.columns])
    df["image_paths"] = [";".join(str(tiny_dataset.parent / p) for p in cell.split(";")) for cell in df["image_paths"]]
    out = tmp_path_factory.mktemp("unlabelled") / "studies.csv"
    df.to_csv(out, index=False)
    return out


def test_mcsl_trains_on_text_labels_cached_by_report(
    unlabelled_csv: Path, tmp_path: Path, labeler_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxr_vlp.losses.mcsl import McslHead

    seen: list[np.ndarray] = []
    real_forward = McslHead.forward

    def spy_forward(self, *args, labels=None, **kwargs):
        seen.append(labels.detach().cpu().numpy())
        return real_forward(self, *args, labels=labels, **kwargs)

    monkeypatch.setattr(McslHead, "forward", spy_forward)
    cache = tmp_path / "label_cache"
    overrides = [
        "+experiment=mcsl_demo",
        *tiny_overrides(unlabelled_csv),
        *SHORT,
        f"data.reader.label_cache={cache}",
        "evaluation.tasks=[retrieval,zeroshot]",
    ]
    cfg = compose_train(tmp_path / "run", overrides)
    assert cfg.data.reader.labels == "auto"
    metrics = train(cfg)

    df = pd.read_csv(unlabelled_csv, dtype=str, keep_default_na=False)
    texts = ["\n\n".join(t for t in (f, i) if t.strip()) for f, i in zip(df["findings"], df["impression"])]
    assert labeler_calls == [len(set(texts))]  # each distinct report labelled once
    # MCSL saw known positive labels (its concept targets are not all identity rows)
    assert seen and all(np.nansum(batch == 1) > 0 for batch in seen)
    # class-based P@K and zero-shot have labels to score
    assert math.isfinite(metrics["eval/i2t/P@5"]) and math.isfinite(metrics["eval/zeroshot/auroc_mean"])
    report = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "all 14 labels derived from the report text" in report and "## Zero-shot classification" in report

    # a second run reads the labels from the cache: the labeler is not called again
    stamp = next(cache.glob("labels-*.npz")).stat().st_mtime_ns
    cfg2 = compose_train(tmp_path / "run2", overrides)
    dm = instantiate(cfg2.data, tokenizer=None)
    dm.setup("fit")
    assert labeler_calls == [len(set(texts))]
    assert next(cache.glob("labels-*.npz")).stat().st_mtime_ns == stamp
    # the labels are the labeler's, cell by cell (a report with "large right pleural effusion" is positive)
    table = dm.read_table()
    assert table.labels_from_text() == list(CHEXPERT_LABELS)
    effusion = CHEXPERT_LABELS.index("Pleural Effusion")
    rows = [k for k, t in enumerate(texts) if "large right pleural effusion" in t.lower()]
    assert rows and all(table.labels[k, effusion] == 1.0 for k in rows)
    for k in (0, 1, 2, len(texts) - 1, *rows[:2]):
        np.testing.assert_array_equal(table.labels[k], apply_policy(labeler.label_report(texts[k]), "unknown"))


def test_labels_none_label_tasks_say_so_in_one_line(
    unlabelled_csv: Path, tmp_path: Path, labeler_calls: list[int]
) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "+experiment=demo",
            *tiny_overrides(unlabelled_csv),
            *SHORT,
            "data.reader.labels=none",
            "evaluation.tasks=[retrieval,zeroshot,probe]",
        ],
    )
    metrics = train(cfg)
    assert labeler_calls == []
    report = (tmp_path / "eval" / "report.md").read_text()
    lines = [line for line in report.splitlines() if "No known labels" in line]
    assert len(lines) == 1, report
    assert "zero-shot, probe, class-based P@K not computed" in lines[0]
    assert "## Zero-shot" not in report and "## Probe" not in report and "| Pleural Effusion |" not in report
    assert not any(k.startswith(("eval/zeroshot/", "eval/probe_")) for k in metrics)
    assert math.isfinite(metrics["eval/i2t/R@1"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert "eval/zeroshot/auroc_mean" not in saved
    assert OmegaConf.select(cfg, "data.reader.label_cache").endswith("cache/labels")
