"""W&B tracking pieces on their own, against offline runs read back from their record files: the record reader,
best-value summaries, the table builders, model-upload settings and the workspace object that
``python -m cxr_vlp.wandb_workspace`` builds (its ``main``, with only the upload call replaced)."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from cxr_vlp.tracking.offline import read_records, read_run
from cxr_vlp.tracking.wandb_summary import BestTracker, final_summary, metric_goal


def _finish(run) -> None:
    """Finish ``run`` and wait until W&B's service has written its record file."""
    import wandb

    run.finish()
    wandb.teardown()


def _offline_run(tmp_path: Path, **init):
    import wandb

    return wandb.init(
        project="t",
        dir=str(tmp_path),
        mode="offline",
        settings=wandb.Settings(console="off"),
        reinit="create_new",
        **init,
    )


# ---------------------------------------------------------------------------------------------- record reader
def test_reader_gets_back_what_was_logged_across_record_blocks(tmp_path: Path) -> None:
    import wandb

    run = _offline_run(tmp_path, group="g", job_type="train", name="n", config={"loss": {"lam": 0.5}})
    long_text = "x" * 70_000  # one record longer than two 32 KiB blocks
    for step in range(30):
        run.log({"a": float(step), "note": long_text if step == 5 else "s", "trainer/global_step": step})
    run.log({"tab": wandb.Table(columns=["c", "d"], data=[[1, "u"], [2, "v"], [3, "w"]])})
    run.summary["extra"] = 7
    run_id = run.id
    _finish(run)
    back = read_run(tmp_path)
    assert (back.id, back.group, back.job_type, back.name) == (run_id, "g", "train", "n")
    assert back.config["loss"] == {"lam": 0.5}
    rows = [h for h in back.history if "a" in h]
    assert [h["a"] for h in rows] == [float(s) for s in range(30)]
    assert rows[5]["note"] == long_text
    assert back.summary["a"] == 29.0 and back.summary["extra"] == 7
    assert back.table("tab") == {"columns": ["c", "d"], "data": [[1, "u"], [2, "v"], [3, "w"]]}
    with pytest.raises(KeyError, match="no table 'nope'"):
        back.table("nope")


def test_reader_names_a_file_that_is_not_a_record_file(tmp_path: Path) -> None:
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"PK\x03\x04 not a log")
    with pytest.raises(ValueError, match=str(bad)):
        list(read_records(bad))


# ---------------------------------------------------------------------------------------------- summaries
@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_tracker_matches_a_direct_scan(mode: str) -> None:
    rng = np.random.default_rng(0)
    values = list(np.round(rng.normal(size=40), 1))  # rounding makes ties
    values[7] = math.nan
    tracker = BestTracker("val/rsum", mode)
    for step, v in enumerate(values):
        tracker.update({"val/rsum": v, "epoch": step // 4}, step * 10)
    finite = [(v, s) for s, v in enumerate(values) if math.isfinite(v)]
    best = (max if mode == "max" else min)(v for v, _ in finite)
    first = next(s for v, s in finite if v == best)  # the first of equal values, as ModelCheckpoint keeps it
    assert tracker.summary() == {
        "val/rsum.best": best,
        "val/rsum.best_step": first * 10,
        "val/rsum.best_epoch": first // 4,
    }
    assert tracker.curve() == {"val/rsum_best": best}


def test_best_tracker_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="'val/loss'.*'max' or 'min'"):
        BestTracker("val/loss", "lowest")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "goal"),
    [
        ("val/rsum", "max"),
        ("val/i2t/R@10", "max"),
        ("val/loss", "min"),
        ("val/t2i/MedR", "min"),
        ("val/clinical/micro_f1", "max"),
        ("val/num_studies", None),
        ("val/i2t/tied_match_share", "min"),
    ],
)
def test_metric_goal(name: str, goal: str | None) -> None:
    assert metric_goal(name) == goal


def test_final_summary_keeps_finite_test_and_eval_metrics() -> None:
    out = final_summary(
        {
            "test/i2t/R@1": 0.2,
            "eval/x": 1,
            "eval/nan": math.nan,
            "val/rsum": 3.0,
            "best_model_score": 2.5,
            "test/flag": True,
        }
    )
    assert out == {"test/i2t/R@1": 0.2, "eval/x": 1.0, "best_model_score": 2.5}


def test_logger_summarises_validation_by_its_best_on_one_step_axis(tmp_path: Path) -> None:
    from cxr_vlp.tracking.logger import WandbRunLogger

    logger = WandbRunLogger(project="t", save_dir=str(tmp_path), offline=True)
    series = [(1, 0, 2.0, 1.5), (3, 1, 2.6, 1.2), (5, 2, 2.4, 1.1)]  # step, epoch, val/rsum, val/loss
    for step, epoch, rsum, loss in series:
        logger.log_metrics({"train/loss": loss + 0.3, "epoch": epoch}, step=step - 1)
        logger.log_metrics({"val/rsum": rsum, "val/loss": loss, "epoch": epoch}, step=step)
    logger.log_metrics({"validate/time": 0.1}, step=1)  # a counter of its own: the axis does not go back
    logger.log_metrics({"eval/auroc_mean": 0.7})  # no step: the last training step
    _finish(logger.experiment)
    run = read_run(tmp_path)
    assert run.summary["val/rsum"] == {"max": 2.6, "last": 2.4}
    assert run.summary["val/loss"] == {"min": 1.1, "last": 1.1}
    assert (run.summary["val/rsum.best"], run.summary["val/rsum.best_step"], run.summary["val/rsum.best_epoch"]) == (
        2.6,
        3,
        1,
    )
    assert [h["val/rsum_best"] for h in run.history if "val/rsum_best" in h] == [2.0, 2.6, 2.6]
    (eval_row,) = [h for h in run.history if "eval/auroc_mean" in h]
    assert eval_row["trainer/global_step"] == 5
    assert all("trainer/global_step" in h for h in run.history)
    assert {"name": "", "glob_name": "*", "step_metric": "trainer/global_step", "summary": [], "goal": 0} in run.metrics


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(False, None), ("false", None), (None, None), (True, "best"), ("best", "best"), ("all", "all")],
)
def test_log_model_values(value, parsed) -> None:
    from cxr_vlp.tracking.logger import parse_log_model

    assert parse_log_model(value) == parsed


def test_log_model_refuses_an_unknown_value() -> None:
    from cxr_vlp.tracking.logger import parse_log_model

    with pytest.raises(ValueError, match="logger.wandb.log_model='last'"):
        parse_log_model("last")


def test_model_upload_for_credentialed_data_needs_its_own_switch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cxr_vlp.tracking.logger import WandbRunLogger

    caplog.set_level(logging.WARNING)
    refused = WandbRunLogger(project="t", save_dir=str(tmp_path), offline=True, log_model="best", credentialed=True)
    assert not refused.upload_allowed()
    assert "NOT uploaded" in caplog.text and "allow_credentialed_model_upload=true" in caplog.text
    allowed = WandbRunLogger(
        project="t",
        save_dir=str(tmp_path),
        offline=True,
        log_model="all",
        credentialed=True,
        allow_credentialed_model_upload=True,
    )
    assert allowed.upload_allowed()
    assert WandbRunLogger(project="t", save_dir=str(tmp_path), offline=True, log_model="best").upload_allowed()
    assert not WandbRunLogger(project="t", save_dir=str(tmp_path), offline=True).upload_allowed()


# ---------------------------------------------------------------------------------------------- tables
def test_label_rows_transcribe_the_classification_report() -> None:
    from cxr_vlp.metrics.classification import evaluate_binary
    from cxr_vlp.tracking.wandb_tables import LABEL_COLUMNS, label_metric_rows

    rng = np.random.default_rng(1)
    names = ["Cardiomegaly", "Edema", "Fracture"]
    y_val, y_test = (rng.random((40, 3)) < 0.4).astype(float), (rng.random((50, 3)) < 0.4).astype(float)
    y_test[:, 2] = 0.0  # a single class: AUROC undefined
    p_val, p_test = rng.random((40, 3)) + 0.3 * y_val, rng.random((50, 3)) + 0.3 * y_test
    report = evaluate_binary(p_val, y_val, p_test, y_test, names, n_resamples=50)
    metrics = {**report.to_flat("test/zeroshot/"), **report.to_flat("test/probe_mlp/"), "test/i2t/R@1": 0.1}
    rows = label_metric_rows(metrics)
    assert rows.columns == list(LABEL_COLUMNS) and len(rows) == 6
    for r, row in enumerate(rows.data[:3]):
        cells = dict(zip(rows.columns, row))
        assert (cells["task"], cells["label"], cells["n_pos"]) == ("zeroshot", names[r], int(report.n_pos[r]))
        for col in ("auroc", "ci_low", "ci_high", "threshold", "sensitivity", "specificity", "f1", "accuracy"):
            want = float(getattr(report, col)[r])
            assert cells[col] == (want if math.isfinite(want) else None), (names[r], col)
    assert [row[0] for row in rows.data[3:]] == ["probe_mlp"] * 3
    assert dict(zip(rows.columns, rows.data[2]))["auroc"] is None


def test_retrieval_example_rows() -> None:
    from cxr_vlp.tracking.wandb_tables import retrieval_example_rows

    texts = ["a", "b", "c", "d"]
    topk = np.array([[1, 0, 2], [1, 3, 0], [3, 0, 1], [0, 1, 2]])
    scores = -np.arange(12, dtype=float).reshape(4, 3)
    rows = retrieval_example_rows(["s0", "s1", "s2", "s3"], texts, topk, scores, [2.0, 1.0, 4.0, 3.5], None, n=3, k=2)
    assert rows.columns == [
        "study_id",
        "true_report",
        "true_rank",
        "hit@2",
        "report_1",
        "score_1",
        "report_2",
        "score_2",
    ]
    assert rows.data == [
        ["s0", "a", 2.0, True, "b", -0.0, "a", -1.0],
        ["s1", "b", 1.0, True, "b", -3.0, "d", -4.0],
        ["s2", "c", 4.0, False, "d", -6.0, "a", -7.0],
    ]


def test_reportgen_rows_and_a_bad_file(tmp_path: Path) -> None:
    from cxr_vlp.tracking.wandb_tables import reportgen_example_rows

    path = tmp_path / "generations.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["study_id", "prompt", "generated", "oracle", "reference"])
        w.writeheader()
        w.writerows(
            [
                {"study_id": f"s{i}", "prompt": f"p{i}", "generated": f"g{i}", "oracle": "", "reference": f"r{i}"}
                for i in range(5)
            ]
        )
    rows = reportgen_example_rows(path, 3)
    assert rows.columns == ["study_id", "prompt", "generated", "reference"]
    assert rows.data == [[f"s{i}", f"p{i}", f"g{i}", f"r{i}"] for i in range(3)]
    bad = tmp_path / "other.csv"
    bad.write_text("study_id,text\ns1,x\n")
    with pytest.raises(ValueError, match=r"other.csv: no column\(s\) \['prompt', 'generated', 'reference'\]"):
        reportgen_example_rows(bad, 3)


@pytest.mark.parametrize(
    ("credentialed", "allow", "expected"), [(False, False, True), (True, False, False), (True, True, True)]
)
def test_patient_content_rule_is_the_figures_rule(credentialed: bool, allow: bool, expected: bool) -> None:
    from cxr_vlp.tracking.wandb_tables import patient_content_allowed

    assert patient_content_allowed(credentialed, allow) is expected


# ---------------------------------------------------------------------------------------------- workspace
def test_workspace_object_and_its_save(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import wandb
    import wandb_workspaces.workspaces.interface as interface
    import wandb_workspaces.workspaces.internal as internal

    from cxr_vlp import wandb_workspace

    sent = []

    def upsert(view):
        sent.append(view)
        return {"upsertView": {"view": {"name": "nw1", "id": "id1"}}}

    class Api:
        default_entity = "me"

    monkeypatch.setattr(internal, "upsert_view2", upsert)
    monkeypatch.setattr(wandb, "Api", Api)
    monkeypatch.setattr(interface, "get_app_url", lambda api: "https://wandb.example")
    assert (
        wandb_workspace.main(
            [
                "project=cxr_vlp",
                "group=mcsl_demo-2026",
                "swept=loss.lam,loss.concept_temperature",
                "metrics=val/rsum.best,test/i2t/R@10",
            ]
        )
        == 0
    )
    (view,) = sent
    spec = json.loads(view.model_dump_json(by_alias=True))
    assert (view.entity, view.project, view.display_name) == ("me", "cxr_vlp", "cxr_vlp: mcsl_demo-2026")
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == ["Training", "Validation", "Evaluation", "Sweep"]
    text = json.dumps(spec)
    for needle in (
        "trainer/global_step",
        "val/rsum_best",
        "eval/label_auroc",
        "eval/retrieval_examples",
        "sweep/results",
        "loss.concept_temperature",
        "lr-",
        "train/temperature",
        "train/device/samples_per_sec",
        "mcsl_demo-2026",
    ):
        assert needle in text, needle
    (pc,) = [p for s in sections for p in s["panels"] if p["viewType"] == "Parallel Coordinates Plot"]
    accessors = [c["accessor"] for c in pc["config"]["columns"]]
    # config keys as W&B stores a nested config (loss: {value: {lam: ...}}), then the summary metrics
    assert accessors == [
        "config:loss.value.lam",
        "config:loss.value.concept_temperature",
        "summary:val/rsum.best",
        "summary:test/i2t/R@10",
    ]
    out = capsys.readouterr().out
    assert "ParallelCoordinatesPlot" in out and "saved workspace" in out and "https://wandb.example/me/cxr_vlp" in out


def test_workspace_cli_errors() -> None:
    from cxr_vlp import wandb_workspace

    with pytest.raises(SystemExit, match="project=... required"):
        wandb_workspace.main(["group=g"])
    assert wandb_workspace.main(["project=p", "save=false", "swept=model/image_encoder"]) == 2
