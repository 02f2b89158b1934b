"""`python -m cxr_vlp.benchmark` on checkpoints of short trainings through the real configs: every protocol that
applies to the tiny synthetic set (our heads and a tiny open_clip model), identical studies for every model, paired
differences, the embedding cache, the 5×200 selection file, and the RSNA protocol on relabelled data."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cxr_vlp.benchmark.__main__ import run_benchmark
from cxr_vlp.eval.figures import is_valid_png
from cxr_vlp.text.labels import CHEXPERT_LABELS
from tests.adapter_models import open_clip_folder
from tests.integration.hydra_helpers import compose_train, run_cli, train_tiny_checkpoint

FAST = ["bootstrap.n_resamples=50", "probe.max_epochs=3", "probe.patience=2", "device=cpu", "batch_size=16"]


@pytest.fixture(scope="module")
def ckpts(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return (
        train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("clip_run"), "demo"),
        train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("mcsl_run"), "mcsl_demo"),
    )


def test_benchmark_compares_models_on_identical_studies(ckpts, tmp_path: Path, monkeypatch) -> None:
    import cxr_vlp.eval.embed as embed

    calls: list[str] = []
    real = embed.embed_split
    monkeypatch.setattr(
        embed, "embed_split", lambda model, dm, split, limit=None: calls.append(split) or real(model, dm, split, limit)
    )
    clip, mcsl = ckpts
    other = open_clip_folder(tmp_path / "open_clip_model")
    cfg = compose_train(
        tmp_path / "run",
        [
            f"models=[{clip},{mcsl},{clip},{other}]",
            "names=[clip,mcsl,clip_again,open_clip]",
            "benchmark=[chexpert5,chexpert5x200,mimic5x200,retrieval]",
            "benchmark.chexpert5x200.per_class=3",
            "benchmark.mimic5x200.per_class=3",
            f"cache_dir={tmp_path / 'cache'}",
            *FAST,
        ],
        config_name="benchmark",
    )
    out = run_benchmark(cfg)
    run = tmp_path / "run"
    for name in ("benchmark.md", "benchmark.csv", "audit.csv", "selections/chexpert5x200.csv"):
        assert (run / name).is_file(), name
    for protocol in ("chexpert5", "chexpert5x200", "mimic5x200", "retrieval"):
        assert is_valid_png(run / "figures" / f"forest_{protocol}.png")
    df = pd.read_csv(run / "benchmark.csv")
    assert set(df["protocol"]) == {"chexpert5", "chexpert5x200", "mimic5x200", "retrieval"}
    tasks = set(zip(df["protocol"], df["task"], df["measure"]))
    for key in [
        ("chexpert5x200", "zero-shot", "5-way accuracy"),
        ("mimic5x200", "image → report", "P@5"),
        ("retrieval", "i2t full gallery", "R@1"),
        ("retrieval", "t2i de-duplicated reports", "R@5"),
        ("chexpert5", "probe (linear)", "mean AUROC"),
    ]:
        assert key in tasks, key
    # every model on every metric, on the same number of rows
    per_metric = df.groupby(["protocol", "split", "task", "measure"])
    assert (per_metric["model"].nunique() == 4).all()
    assert (per_metric["n_rows"].nunique() == 1).all()
    # the same checkpoint again: Δ = 0, p = 1 everywhere; the first model has no Δ
    again = df[df["model"] == "clip_again"]
    assert (again["delta"] == 0).all() and (again["p_value"] == 1).all()
    assert df[df["model"] == "clip"]["delta"].isna().all()
    mcsl_rows = df[df["model"].isin(["mcsl", "open_clip"])]
    assert mcsl_rows["p_value"].between(0, 1).all()
    assert all(math.isfinite(v) for v in mcsl_rows["delta"])
    # the second copy of a model reads the first one's embeddings: each split embedded once per distinct model
    assert set(Counter(calls).values()) == {3}, Counter(calls)
    # the selection's ids and their sha256 are in the run, the note names them
    sel = pd.read_csv(run / "selections" / "chexpert5x200.csv", dtype=str)
    sha = hashlib.sha256("".join(f"{s},{c}\n" for s, c in zip(sel["study_id"], sel["class"])).encode()).hexdigest()
    md = (run / "benchmark.md").read_text()
    assert sha in md and "Prompt and negation audit" in md and "forest_retrieval.png" in md
    assert sel.groupby("class").size().max() <= 3
    audit = pd.read_csv(run / "audit.csv")
    assert "No Finding" in set(audit["label"]) and set(audit["model"]) <= {"clip", "mcsl", "clip_again", "open_clip"}
    assert out["models"] == ["clip", "mcsl", "clip_again", "open_clip"]


def test_rsna_protocol_on_relabelled_data_through_the_cli(ckpts, tiny_dataset: Path, tmp_path: Path) -> None:
    """The RSNA protocol only needs a Pneumonia column: the tiny set with every other label column dropped."""
    df = pd.read_csv(tiny_dataset)
    df = df.drop(columns=[c for c in CHEXPERT_LABELS if c != "Pneumonia" and c in df.columns])
    df["Pneumonia"] = [i % 2 for i in range(len(df))]
    df["image_paths"] = [";".join(str(tiny_dataset.parent / p) for p in str(v).split(";")) for v in df["image_paths"]]
    csv = tmp_path / "rsna_like" / "studies.csv"
    csv.parent.mkdir()
    df.to_csv(csv, index=False)
    clip, _ = ckpts
    run = tmp_path / "run"
    result = run_cli(
        [
            f"models=[{clip}]",
            "benchmark=[rsna]",
            "data=csv",
            f"data.root={csv.parent}",
            "data.image_cache=null",
            "data.num_workers=0",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run}",
            *FAST,
        ],
        cwd=tmp_path,
        module="cxr_vlp.benchmark",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = pd.read_csv(run / "benchmark.csv")
    assert set(out["measure"]) == {"mean AUROC", "AUROC Pneumonia"}
    assert set(out["task"]) == {"zero-shot", "probe (linear)"}
    assert out["value"].between(0, 1).all()
    audit = pd.read_csv(run / "audit.csv")
    assert list(audit["label"]) == ["Pneumonia"]  # No Finding is unknown in this data


def test_benchmark_needs_models(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["benchmark=[retrieval]"], config_name="benchmark")
    with pytest.raises(ValueError, match="models: the models to compare"):
        run_benchmark(cfg)
