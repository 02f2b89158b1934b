"""`python -m cxr_vlp.data.summary`: the JSON on stdout matches the dataset and its split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cxr_vlp.data.summary import leaked_subjects, table_summary
from cxr_vlp.data.table import StudyTable, read_generic_csv
from cxr_vlp.text.labels import CHEXPERT_LABELS


def _table(ids: list[str], subjects: list[str]) -> StudyTable:
    n = len(ids)
    labels = np.full((n, 14), np.nan, dtype=np.float32)
    return StudyTable(
        study_ids=ids,
        subject_ids=subjects,
        image_paths=[["a.jpg", "b.jpg"]] * n,
        view_names=[["PA", "LATERAL"]] * n,
        findings=["x"] * n,
        impression=[None] * n,
        labels=labels,
    )


def test_leaked_subjects_counts_subjects_in_two_splits() -> None:
    tables = {"train": _table(["1", "2"], ["p1", "p2"]), "val": _table(["3"], ["p2"]), "test": _table(["4"], ["p3"])}
    assert leaked_subjects(tables) == 1
    tables["val"] = _table(["3"], ["p4"])
    assert leaked_subjects(tables) == 0


def test_table_summary_counts() -> None:
    table = _table(["1", "2", "3"], ["p1", "p1", "p2"])
    table.labels[0, 2] = 1.0
    table.labels[1, 2] = 0.0
    out = table_summary(table)
    assert (out["studies"], out["images"], out["subjects"], out["with_findings"], out["with_impression"]) == (
        3,
        6,
        2,
        3,
        0,
    )
    assert out["labels"][CHEXPERT_LABELS[2]] == {"positive": 1, "negative": 1, "unknown": 1, "prevalence": 0.5}


def test_summary_command_on_the_synthetic_csv(tiny_dataset: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PROJECT_ROOT": str(tmp_path)}
    args = [
        sys.executable,
        "-m",
        "cxr_vlp.data.summary",
        "data=csv",
        f"data.root={tiny_dataset.parent}",
        "data.image_cache=null",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # stdout is the JSON object only
    table = read_generic_csv(tiny_dataset)
    assert summary["leaked_subjects"] == 0
    assert summary["total"]["studies"] == len(table)
    assert summary["total"]["images"] == sum(len(p) for p in table.image_paths)
    assert summary["total"]["subjects"] == len(set(table.subject_ids))
    split = summary["splits"]
    assert sum(split[s]["studies"] for s in ("train", "val", "test")) == len(table)
    assert split["train"]["studies"] > split["test"]["studies"] > 0
    cardio = CHEXPERT_LABELS.index("Cardiomegaly")
    positives = sum(split[s]["labels"]["Cardiomegaly"]["positive"] for s in split)
    assert positives == int((table.labels[:, cardio] == 1).sum())
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
