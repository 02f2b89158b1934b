"""W&B dashboards end to end, offline: a tiny training run, an evaluation of a credentialed dataset and a 2-job sweep
through the real configs, each read back from the runs' record files (what ``wandb sync`` would upload)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from cxr_vlp.tracking.offline import OfflineRun, find_runs, read_run
from tests.integration.hydra_helpers import compose_train, run_cli, tiny_overrides

pytestmark = pytest.mark.slow

TASKS = "evaluation.tasks=[retrieval,zeroshot,probe]"
FAST_EVAL = [
    "evaluation.bootstrap.n_resamples=20",
    "evaluation.probe.max_epochs=3",
    "evaluation.figures=false",
    "evaluation.probe.kinds=[linear]",
]


def _teardown() -> None:
    """Wait until W&B's service has written the finished runs' record files."""
    import wandb

    wandb.teardown()


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OfflineRun]:
    from cxr_vlp.train import train

    out = tmp_path_factory.mktemp("wandb_run")
    overrides = [o for o in tiny_overrides(tiny_dataset) if not o.startswith("evaluation.tasks=")]
    cfg = compose_train(
        out,
        [
            "+experiment=demo",
            *overrides,
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1",
            "logger=wandb",
            "logger.wandb.log_model=best",
            "logger.wandb.examples=3",
            TASKS,
            *FAST_EVAL,
        ],
    )
    train(cfg)
    _teardown()
    return out, read_run(out)


def test_summary_holds_the_best_validation_value_and_its_step(trained: tuple[Path, OfflineRun]) -> None:
    out, run = trained
    rows = [h for h in run.history if "val/rsum" in h]
    assert len(rows) == 3  # one validation per epoch
    best = max(rows, key=lambda h: h["val/rsum"])
    first_best = next(h for h in rows if h["val/rsum"] == best["val/rsum"])
    summary = run.summary
    assert summary["val/rsum"]["max"] == best["val/rsum"] and summary["val/rsum"]["last"] == rows[-1]["val/rsum"]
    assert summary["val/rsum.best"] == best["val/rsum"]
    assert summary["val/rsum.best_step"] == first_best["trainer/global_step"]
    assert summary["val/rsum.best_epoch"] == first_best["epoch"]
    # the tested checkpoint is the one of that epoch
    (ckpt,) = (out / "checkpoints").glob("epoch*.ckpt")
    assert int(re.match(r"epoch(\d+)", ckpt.stem)[1]) == summary["val/rsum.best_epoch"]
    assert summary["best_model_score"] == pytest.approx(best["val/rsum"])
    assert summary["val/loss"].keys() == {"min", "last"}
    assert [h["val/rsum_best"] for h in rows] == [max(h["val/rsum"] for h in rows[: i + 1]) for i in range(3)]


def test_test_and_eval_metrics_sit_in_the_summary_on_one_step_axis(trained: tuple[Path, OfflineRun]) -> None:
    out, run = trained
    metrics = json.loads((out / "metrics.json").read_text())
    final = {k: v for k, v in metrics.items() if k.startswith(("test/", "eval/")) and v is not None}
    assert final and any(k.startswith("eval/zeroshot/") for k in final)
    for key, value in final.items():
        assert run.summary[key] == pytest.approx(value), key
    assert all("trainer/global_step" in h for h in run.history)
    last_train_step = max(h["trainer/global_step"] for h in run.history if "train/loss" in h)
    eval_rows = [h for h in run.history if any(k.startswith("eval/") for k in h)]
    assert eval_rows and all(h["trainer/global_step"] > last_train_step for h in eval_rows)


def test_tables_columns_and_rows(trained: tuple[Path, OfflineRun]) -> None:
    from cxr_vlp.text.labels import CHEXPERT_LABELS

    out, run = trained
    assert run.tables() == ["eval/label_auroc", "eval/retrieval_examples"]
    labels = run.table("eval/label_auroc")
    assert labels["columns"] == [
        "task",
        "label",
        "n_pos",
        "auroc",
        "ci_low",
        "ci_high",
        "threshold",
        "sensitivity",
        "specificity",
        "f1",
        "accuracy",
    ]
    assert [(r[0], r[1]) for r in labels["data"]] == [
        (t, name) for t in ("zeroshot", "probe_linear") for name in CHEXPERT_LABELS
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    for task, label, _, auroc, *_ in labels["data"]:
        assert auroc == (
            None
            if metrics[f"eval/{task}/auroc/{label}"] is None
            else pytest.approx(metrics[f"eval/{task}/auroc/{label}"])
        )
    examples = run.table("eval/retrieval_examples")
    assert examples["columns"][:5] == ["study_id", "image", "true_report", "true_rank", "hit@5"]
    assert examples["columns"][5:] == [f"{c}_{j}" for j in range(1, 6) for c in ("report", "score")]
    assert len(examples["data"]) == 3  # logger.wandb.examples=3
    first = dict(zip(examples["columns"], examples["data"][0]))
    # the run's copy of a table names its media; the images themselves travel in the table's artifact
    (table_artifact,) = [a for a in run.artifacts if a["type"] == "run_table" and "retrieval_examples" in a["name"]]
    assert len([f for f in table_artifact["files"] if f.startswith("media/images/") and f.endswith(".png")]) == 3
    scores = [first[f"score_{j}"] for j in range(1, 6)]
    assert scores == sorted(scores, reverse=True)
    assert first["hit@5"] == (
        first["true_rank"] <= 5 or first["true_report"] in [first[f"report_{j}"] for j in range(1, 6)]
    )


def test_best_model_and_its_exported_folder_are_artifacts_of_the_run(trained: tuple[Path, OfflineRun]) -> None:
    _, run = trained
    models = {a["name"]: a for a in run.artifacts if a["type"] == "model"}
    assert set(models) == {f"model-{run.id}", f"hf-model-{run.id}"}
    ckpt = models[f"model-{run.id}"]
    assert ckpt["files"] == ["model.ckpt"] and "best" in ckpt["aliases"]
    assert ckpt["metadata"]["monitor"] == "val/rsum" and ckpt["metadata"]["epoch"] == run.summary["val/rsum.best_epoch"]
    assert ckpt["metadata"]["score"] == pytest.approx(run.summary["val/rsum.best"])
    folder = models[f"hf-model-{run.id}"]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(folder["files"])
    assert not any(f.endswith((".ckpt", ".pt", ".bin", ".pkl")) for f in folder["files"])
    assert folder["description"].lstrip().startswith("---")  # the model card (front matter first)


def test_credentialed_evaluation_logs_only_patient_free_tables(
    trained: tuple[Path, OfflineRun], tiny_dataset: Path, tmp_path: Path
) -> None:
    from cxr_vlp.eval.__main__ import evaluate

    out, _ = trained
    data = [o for o in tiny_overrides(tiny_dataset) if o.startswith(("data=", "data.root=", "data.reader."))]
    cfg = compose_train(
        tmp_path,
        [
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            *data,
            "data.credentialed=true",
            "data.image_cache=null",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "logger=wandb",
            TASKS,
            *FAST_EVAL,
        ],
        config_name="eval",
    )
    evaluate(cfg)
    import wandb

    wandb.finish()
    _teardown()
    run = read_run(tmp_path)
    assert run.tables() == ["eval/label_auroc"]
    assert len(run.table("eval/label_auroc")["data"]) == 2 * 14  # the patient-free table is still there
    tables = [a for a in run.artifacts if a["type"] == "run_table"]
    assert [f for a in tables for f in a["files"]] == ["eval/label_auroc.table.json"]  # no media
    assert not [p for p in (run.dir / "files").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    logged = "\n".join(p.read_text() for p in (run.dir / "files").rglob("*.json"))
    with tiny_dataset.open() as f:
        texts = {v for row in csv.DictReader(f) for k, v in row.items() if k in ("findings", "impression") and v}
    assert texts and not [t for t in texts if t in logged]
    assert not [t for t in texts if t in json.dumps(run.summary)]


def test_sweep_table_is_a_run_of_the_sweeps_group(tiny_dataset: Path, tmp_path: Path) -> None:
    from cxr_vlp import wandb_workspace
    from cxr_vlp.tracking.workspace import build_workspace

    sweep = tmp_path / "sweep"
    res = run_cli(
        [
            "-m",
            "+experiment=mcsl_demo",
            *tiny_overrides(tiny_dataset),
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
            "test=false",
            "logger=wandb",
            "loss.lam=-1.0,0.5",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 1, res.stderr[-3000:]  # job 0 fails (lam < 0): the sweep goes on and says so
    job1 = read_run(sweep / "1")
    summary_runs = [read_run(p) for p in find_runs(sweep)]
    assert len(summary_runs) == 1
    srun = summary_runs[0]
    assert (srun.job_type, srun.group) == ("sweep-summary", job1.group)
    assert job1.group == f"mcsl_demo-{sweep.name}"
    table = srun.table("sweep/results")
    assert table["columns"][:5] == ["job", "status", "run_id", "loss.lam", "error"]
    assert "val/rsum" in table["columns"] and not any(c.endswith("/Cardiomegaly") for c in table["columns"])
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [(r["job"], r["status"], r["loss.lam"]) for r in rows] == [(0, "failed", -1.0), (1, "ok", 0.5)]
    assert rows[0]["run_id"] is None and "ConfigValidationError" in rows[0]["error"] and rows[0]["val/rsum"] is None
    assert rows[1]["run_id"] == job1.id and rows[1]["error"] is None
    metrics1 = json.loads((sweep / "1" / "metrics.json").read_text())
    assert rows[1]["val/rsum"] == pytest.approx(metrics1["val/rsum"])
    assert srun.config["swept"] == ["loss.lam"] and srun.config["failed"] == [0] and srun.config["best_job"] == 1
    spec = wandb_workspace.spec_from_args(
        {**wandb_workspace.DEFAULTS, "project": "cxr_vlp", "group": job1.group, "sweep_dir": str(sweep), "save": False}
    )
    assert spec.swept == ["loss.lam"]
    workspace = build_workspace(spec)
    (pc,) = [p for s in workspace.sections for p in s.panels if type(p).__name__ == "ParallelCoordinatesPlot"]
    assert [getattr(c.metric, "name", c.metric) for c in pc.columns][:2] == ["loss.lam", "val/rsum.best"]
