"""Sweep aggregation (cxr_vlp.experiments.collect) on a fake Hydra multirun tree."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from cxr_vlp.experiments.collect import (
    collect,
    format_value,
    headline_metrics,
    is_fraction_metric,
    main,
    metric_columns,
    plot_filename,
    plot_metric,
    split_override,
    swept_columns,
    to_markdown,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
LAMS = (0.0, 0.35, 0.7)
TEMPS = (0.1, 0.3, 1.0, 3.0)
FAILED_JOB = 2
NULL_JOB = 5
LOG_FAILED_JOB = 9  # a job without metrics.json whose train.log has a logged exception
TRACEBACK = """[2026-11-24 17:55:59,404][cxr_vlp.train][ERROR] - job failed; the sweep goes on
Traceback (most recent call last):
  File "/work/main/cxr_vlp/train.py", line 120, in main
    raise ValueError("inner")
ValueError: inner

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/work/main/cxr_vlp/lit/module.py", line 88, in training_step
    loss = self.loss(out)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
[2026-11-24 17:56:00,001][hydra][INFO] - next job
"""


def fake_r10(job: int, lam: float, temp: float) -> float:
    return round(0.1 + 0.2 * lam + 0.05 * temp + 0.001 * job, 6)


def fake_metrics(job: int, lam: float, temp: float) -> dict[str, float | None]:
    return {
        "test/i2t/R@1": round(0.01 + 0.01 * lam + 0.001 * job, 6),
        "test/i2t/R@10": fake_r10(job, lam, temp),
        "eval/i2t/P@5": 0.6 + 0.01 * job,
        "eval/i2t/MedR": 39.0 + job,
        "val/loss": None if job == NULL_JOB else 1.5 - 0.1 * lam,
    }


def write_job(root: Path, job: int, overrides: list[str], metrics: dict | None, log: str = "") -> None:
    job_dir = root / str(job)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / "train.log").write_text(log or "[2026-11-24 17:55:59,404][cxr_vlp.train][INFO] - fine\n")
    if metrics is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """12 jobs (3 lam x 4 temperatures), job 2 failed with a traceback, job 9 failed, job 5 has a null."""
    root = tmp_path / "logs" / "mcsl_demo" / "multiruns" / "2026-11-24_18-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: []\n")
    (root / "sweep_summary.json").write_text("[]\n")
    job = 0
    for lam in LAMS:
        for temp in TEMPS:
            overrides = [
                "+experiment=mcsl_demo",
                f"loss.lam={lam}",
                f"loss.concept_temperature={temp}",
                f"model/image_encoder={'resnet50' if job % 2 else 'vit_small'}",
            ]
            if job == FAILED_JOB:
                write_job(root, job, overrides, None, log=TRACEBACK)
            elif job == LOG_FAILED_JOB:
                write_job(
                    root,
                    job,
                    overrides,
                    None,
                    log="[2026-11-24 18:01:00,000][cxr_vlp.train][ERROR] - RuntimeError: loader died\n",
                )
            else:
                write_job(root, job, overrides, fake_metrics(job, lam, temp))
            job += 1
    return root


def job_params(job: int) -> tuple[float, float]:
    return LAMS[job // len(TEMPS)], TEMPS[job % len(TEMPS)]


# --------------------------------------------------------------------------------------------- collect


def test_collect_rows_columns_and_values(tree: Path) -> None:
    df = collect(tree)
    assert list(df["job"]) == list(range(12))  # numeric order: 10, 11 after 9
    assert swept_columns(df) == ["loss.lam", "loss.concept_temperature", "model/image_encoder"]
    assert list(df.columns[:2]) == ["job", "status"]
    assert metric_columns(df) == ["test/i2t/R@1", "test/i2t/R@10", "eval/i2t/P@5", "eval/i2t/MedR", "val/loss"]
    assert pd.api.types.is_float_dtype(df["loss.lam"]) and pd.api.types.is_float_dtype(df["loss.concept_temperature"])
    assert set(df["model/image_encoder"]) == {"resnet50", "vit_small"}
    assert set(df["fixed"]) == {"+experiment=mcsl_demo"}
    assert "experiment" not in df.columns
    for job in range(12):
        lam, temp = job_params(job)
        row = df.loc[df["job"] == job].iloc[0]
        assert row["loss.lam"] == lam and row["loss.concept_temperature"] == temp
        if job not in (FAILED_JOB, LOG_FAILED_JOB):
            assert row["status"] == "ok"
            assert row["test/i2t/R@10"] == pytest.approx(fake_r10(job, lam, temp))


def test_collect_failed_jobs_and_null(tree: Path) -> None:
    df = collect(tree).set_index("job")
    assert list(df.index[df["status"] == "failed"]) == [FAILED_JOB, LOG_FAILED_JOB]
    assert df.loc[FAILED_JOB, "error"] == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "RuntimeError: loader died" in df.loc[LOG_FAILED_JOB, "error"]
    assert math.isnan(df.loc[FAILED_JOB, "test/i2t/R@10"])
    assert df.loc[NULL_JOB, "status"] == "ok" and math.isnan(df.loc[NULL_JOB, "val/loss"])
    assert pd.isna(df.loc[0, "error"])


def test_collect_error_file_and_unreadable_metrics(tree: Path) -> None:
    (tree / "3" / "metrics.json").write_text("{not json")
    (tree / "4" / "error.txt").write_text("Traceback (most recent call last):\nKeyError: 'text'\n")
    df = collect(tree).set_index("job")
    assert df.loc[3, "status"] == "failed" and "unreadable metrics.json" in df.loc[3, "error"]
    assert df.loc[4, "status"] == "failed" and df.loc[4, "error"] == "KeyError: 'text'"


def test_collect_requested_metrics(tree: Path) -> None:
    with pytest.warns(UserWarning, match="nope/metric"):
        df = collect(tree, metrics=["eval/i2t/P@5", "nope/metric"])
    assert metric_columns(df) == ["eval/i2t/P@5", "nope/metric"]
    assert "test/i2t/R@10" not in df.columns
    assert df["nope/metric"].isna().all()


def test_collect_integer_and_missing_override_values(tmp_path: Path) -> None:
    write_job(tmp_path, 0, ["seed=1", "++trainer.max_epochs=3"], {"a": 1.0})
    write_job(tmp_path, 1, ["seed=2"], {"a": 2.0})
    df = collect(tmp_path)
    assert swept_columns(df) == ["seed", "trainer.max_epochs"]
    assert list(df["seed"]) == [1, 2] and pd.api.types.is_integer_dtype(df["seed"])
    assert df["trainer.max_epochs"].iloc[0] == 3 and math.isnan(df["trainer.max_epochs"].iloc[1])
    assert list(df["fixed"]) == ["", ""]


def test_split_override() -> None:
    assert split_override("+experiment=mcsl_demo") == ("experiment", "mcsl_demo")
    assert split_override("model/image_encoder=resnet50") == ("model/image_encoder", "resnet50")
    assert split_override("name='a b'") == ("name", "a b")
    assert split_override("~callbacks.early_stopping") == ("callbacks.early_stopping", "~")


def test_collect_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        collect(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no job folders"):
        collect(tmp_path / "empty")


# --------------------------------------------------------------------------------------------- Markdown / CSV


def test_format_value() -> None:
    assert is_fraction_metric("test/i2t/R@10") and is_fraction_metric("eval/t2i/P@5")
    assert not is_fraction_metric("eval/i2t/MedR")
    assert format_value(0.19847, "test/i2t/R@10") == "19.8"
    assert format_value(39.0, "eval/i2t/MedR") == "39"
    assert format_value(1.23456, "val/loss", digits=2) == "1.23"
    assert format_value(float("nan"), "val/loss") == "–"


def test_markdown(tree: Path) -> None:
    df = collect(tree)
    md = to_markdown(df, ["test/i2t/R@10", "val/loss"], digits=3)
    lines = md.splitlines()
    assert lines[0] == (
        "| job | loss.lam | loss.concept_temperature | model/image_encoder | status | test/i2t/R@10 (%) | val/loss |"
    )
    assert set(lines[1]) <= set("|-: ")
    lam, temp = job_params(7)
    expected = f"{100 * fake_r10(7, lam, temp):.1f}"
    row7 = next(line for line in lines if line.startswith("| 7 |"))
    assert f"| {expected} |" in row7
    row2 = next(line for line in lines if line.startswith(f"| {FAILED_JOB} |"))
    assert "**FAILED**" in row2 and "| – |" in row2
    row5 = next(line for line in lines if line.startswith(f"| {NULL_JOB} |"))
    assert row5.endswith("| – |")
    assert f"- job {FAILED_JOB}: `torch.OutOfMemoryError" in md
    assert sum(line.startswith("| ") for line in lines) == 13  # header + 12 jobs


def test_markdown_default_metrics(tree: Path) -> None:
    df = collect(tree)
    assert headline_metrics(df) == ["test/i2t/R@1", "test/i2t/R@10"]
    assert "test/i2t/R@1 (%)" in to_markdown(df).splitlines()[0]
    with pytest.raises(KeyError):
        to_markdown(df, ["missing/metric"])


def test_csv_round_trip(tree: Path, tmp_path: Path) -> None:
    df = collect(tree)
    df.to_csv(tmp_path / "r.csv", index=False)
    back = pd.read_csv(tmp_path / "r.csv")
    assert list(back.columns) == list(df.columns)
    assert swept_columns(back) == swept_columns(df) and metric_columns(back) == metric_columns(df)
    pd.testing.assert_series_equal(back["test/i2t/R@10"], df["test/i2t/R@10"])
    assert list(back["status"]) == list(df["status"])
    assert to_markdown(back, ["test/i2t/R@10"]) == to_markdown(df, ["test/i2t/R@10"])


# --------------------------------------------------------------------------------------------- plots


def check_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width > 100 and img.height > 100
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 8


def test_plot_metric(tree: Path, tmp_path: Path) -> None:
    df = collect(tree)
    out = plot_metric(df, "test/i2t/R@10", "loss.lam", hue="loss.concept_temperature", path=tmp_path / "p.png")
    assert out == tmp_path / "p.png"
    check_png(out)
    # no hue: several jobs per point are averaged; a folder as path gets the default name
    out2 = plot_metric(df, "val/loss", "loss.concept_temperature", path=tmp_path)
    assert out2 == tmp_path / plot_filename("val/loss", "loss.concept_temperature")
    check_png(out2)
    # a string-valued swept parameter on the x axis
    check_png(plot_metric(df, "eval/i2t/P@5", "model/image_encoder", hue="loss.lam", path=tmp_path / "s.png"))


def test_plot_metric_errors(tree: Path, tmp_path: Path) -> None:
    df = collect(tree)
    with pytest.raises(KeyError, match="no.such"):
        plot_metric(df, "test/i2t/R@10", "no.such", path=tmp_path / "x.png")
    failed_only = df[df["status"] == "failed"]
    with pytest.raises(ValueError, match="no successful job"):
        plot_metric(failed_only, "test/i2t/R@10", "loss.lam", path=tmp_path / "x.png")


# --------------------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "cxr_vlp.experiments.collect", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )


def test_cli(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = run_cli(
        str(tree), "metrics=test/i2t/R@10,eval/i2t/P@5", "x=loss.lam", "hue=loss.concept_temperature", f"out={out}"
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("results.csv", "results.md", "test_i2t_R@10_vs_loss.lam.png", "eval_i2t_P@5_vs_loss.lam.png"):
        assert (out / name).is_file(), name
    check_png(out / "test_i2t_R@10_vs_loss.lam.png")
    assert f"12 jobs, 2 failed: {FAILED_JOB}, {LOG_FAILED_JOB}" in proc.stdout.splitlines()[-1]
    assert "| test/i2t/R@10 (%) | eval/i2t/P@5 (%) |" in proc.stdout
    md = (out / "results.md").read_text()
    assert "+experiment=mcsl_demo" in md and "**FAILED**" in md
    assert len(pd.read_csv(out / "results.csv")) == 12
    assert not (tree / "results.csv").exists()


def test_cli_defaults_write_into_the_multirun(tree: Path) -> None:
    assert main([str(tree)]) == 0
    assert (tree / "results.csv").is_file() and (tree / "results.md").is_file()
    assert not list(tree.glob("*.png"))


def test_cli_errors(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = run_cli(str(tree), "colour=red")
    assert proc.returncode == 2 and "unknown key 'colour'" in proc.stderr
    missing = tmp_path / "no_such_sweep"
    proc = run_cli(str(missing))
    assert proc.returncode == 2 and str(missing) in proc.stderr
    assert main([str(tree), "x=not.swept"]) == 2
    assert "not a swept parameter" in capsys.readouterr().err
    assert main([]) == 2
    assert main([str(tree), "justaword"]) == 2
