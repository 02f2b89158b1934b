"""Sweeps through the real command line: a 2-job multirun with a failing job, a resumable 2-trial Optuna search,
the submitit local launcher, ckpt_path=auto resume, and every experiment / search config composing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.hydra_helpers import run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def _tiny(csv: Path) -> list[str]:
    return tiny_overrides(csv)


def _run(args: list[str], cwd: Path):
    return run_cli(args, cwd)


def test_multirun_goes_on_after_a_failed_job_and_reports_it(tiny_dataset: Path, tmp_path: Path) -> None:
    # the sweep directory as users get it: logs/<task>/multiruns/<time>/ under the working directory (resolving it
    # needs the paths before Hydra's runtime config exists)
    res = _run(
        ["-m", "+experiment=mcsl_demo", *_tiny(tiny_dataset), "trainer.fast_dev_run=true", "loss.lam=-1.0,0.5"],
        cwd=tmp_path,
    )
    # the sweep goes on after the failed job, and the command then exits non-zero naming it
    assert res.returncode == 1, res.stderr[-3000:]
    assert "2 jobs, 1 failed or incomplete: jobs 0" in res.stderr
    (sweep,) = (tmp_path / "logs" / "mcsl_demo" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    assert re.search(r"lam.*>= 0", (sweep / "0" / "error.txt").read_text())
    assert not (sweep / "0" / "metrics.json").exists()
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "1" / "error.txt").exists()
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in summary] == [("0", "failed"), ("1", "ok")]
    assert "loss.lam=-1.0" in summary[0]["overrides"] and summary[0]["error"]
    assert "2 jobs, 1 failed or incomplete: jobs 0" in res.stdout


def test_optuna_two_trials_then_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    # the default storage: logs/optuna/<study>.db under the working directory
    storage = f"sqlite:///{tmp_path / 'logs' / 'optuna' / 't.db'}"
    common = [
        "-m",
        "+experiment=mcsl_demo",
        "hparams_search=mcsl_optuna",
        *_tiny(tiny_dataset),
        "trainer.fast_dev_run=true",
        "hydra.sweeper.study_name=t",
    ]
    first = _run([*common, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 's1'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="t", storage=storage)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all(0.0 <= t.params["loss.lam"] <= 1.0 for t in study.trials)
    # the value Optuna saw is the run's optimized metric (val/rsum) in that job's metrics.json
    job0 = json.loads((tmp_path / "s1" / "0" / "metrics.json").read_text())
    assert study.trials[0].value == pytest.approx(job0["val/rsum"])
    second = _run([*common, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 's2'}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 3  # resumed, not restarted


def test_optuna_failed_trials_are_recorded_and_the_search_goes_on(tiny_dataset: Path, tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    res = _run(
        [
            "-m",
            "+experiment=mcsl_demo",
            "hparams_search=mcsl_optuna",
            *_tiny(tiny_dataset),
            f"data.reader.csv_path={tmp_path / 'missing.csv'}",
            "trainer.fast_dev_run=true",
            "hydra.sweeper.study_name=f",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={tmp_path / 's'}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode != 0
    study = optuna.load_study(study_name="f", storage=f"sqlite:///{tmp_path / 'logs' / 'optuna' / 'f.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert "missing.csv" in (tmp_path / "s" / "1" / "error.txt").read_text()


def test_submitit_local_launcher_runs_a_job(tiny_dataset: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = _run(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "+experiment=demo",
            *_tiny(tiny_dataset),
            "trainer.fast_dev_run=true",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file()


def test_ckpt_path_auto_resumes_from_last(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = [
        "+experiment=demo",
        *_tiny(tiny_dataset),
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "test=false",
        "ckpt_path=auto",
        f"hydra.run.dir={run}",
    ]
    first = _run([*base, "trainer.max_epochs=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no " in first.stderr + first.stdout and (run / "checkpoints" / "last.ckpt").is_file()
    second = _run([*base, "trainer.max_epochs=2"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in log
    import torch

    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4  # 2 steps per epoch, continued from epoch 1 rather than restarted


def test_wandb_one_run_per_sweep_job(tiny_dataset: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = _run(
        [
            "-m",
            "+experiment=demo",
            *_tiny(tiny_dataset),
            "trainer.max_steps=2",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
            "test=false",
            "logger=wandb",
            "optim.lr=1e-3,2e-3",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = {job: sorted((sweep / job / "wandb").glob("offline-run-*")) for job in ("0", "1")}
    assert all(len(r) == 1 for r in runs.values()), runs  # one run per job, in the job's folder
    ids = {r[0].name.rsplit("-", 1)[-1] for r in runs.values()}
    assert len(ids) == 2  # no run reused across jobs


def test_run_name_and_group_follow_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict, read_write

    from tests.integration.hydra_helpers import compose_train

    cfg = compose_train(tmp_path, ["+experiment=demo", "logger=wandb", "loss.temperature_init=0.05"])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "2026-11-24_18-00-00")
        cfg.hydra.job.num = 3
        cfg.hydra.job.override_dirname = "loss.temperature_init=0.05"
    HydraConfig.instance().set_config(cfg)
    # the command that launched the sweep: the overrides shared by every job stay out of the name
    monkeypatch.setattr(
        sys, "argv", ["train.py", "-m", "+experiment=demo", "logger=wandb", "loss.temperature_init=0.05,0.1"]
    )
    node = OmegaConf.to_container(cfg.logger, resolve=True)["wandb"]
    assert node["group"] == "demo-2026-11-24_18-00-00"
    assert node["name"] == "demo-3-loss.temperature_init=0.05"
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    node = OmegaConf.to_container(cfg.logger, resolve=True)["wandb"]
    assert node["group"] == "demo" and node["name"] == f"demo-{tmp_path.name}"


def test_slurm_launcher_and_multi_node_trainer_compose(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from tests.integration.hydra_helpers import compose_train

    cfg = compose_train(
        tmp_path,
        [
            "+experiment=mcsl_mimic",
            "data.root=/data/mimic",
            "hydra/launcher=slurm",
            "trainer=slurm_ddp",
            "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=4",
        ],
    )
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert (trainer["num_nodes"], trainer["devices"], trainer["accelerator"]) == (2, 4, "gpu")
    assert trainer["plugins"][0]["auto_requeue"] is False
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["max_num_timeout"] > 0


def test_ddp_spawn_sweep_job_trains_tests_and_evaluates(tiny_dataset: Path, tmp_path: Path) -> None:
    """trainer=ddp_spawn (2 CPU processes): the launching process writes the split, the metrics and the evaluation."""
    sweep = tmp_path / "sweep"
    tiny = [o for o in _tiny(tiny_dataset) if not o.startswith(("trainer.devices=", "evaluation.tasks="))]
    res = _run(
        [
            "-m",
            "+experiment=demo",
            *tiny,
            "trainer=ddp_spawn",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "evaluation.tasks=[retrieval]",
            "evaluation.figures=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    job = sweep / "0"
    assert not (job / "error.txt").exists()
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["eval/num_studies"] == metrics["test/num_studies"] > 0
    assert "best_model_score" in metrics and (job / "eval" / "report.md").is_file()
    split = json.loads((job / "split.json").read_text())
    assert split["test"] and not set(split["test"]) & set(split["train"])


def _wait_for(path_glob: str, root: Path, proc, timeout: float = 240.0) -> None:
    import time

    start = time.monotonic()
    while not list(root.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() - start < timeout, f"no {path_glob} under {root} after {timeout} s"
        time.sleep(0.2)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_one_signal_stops_the_whole_sweep(signame: str, tiny_dataset: Path, tmp_path: Path) -> None:
    """A real 2-job sweep sent one SIGTERM / SIGINT while job 0 trains: job 0 is recorded as stopped, job 1 never
    starts, the summary is written and the exit status is 128 + the signal number."""
    import os
    import signal
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "+experiment=demo",
        *_tiny(tiny_dataset),
        "trainer.max_epochs=1000",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "optim.lr=1e-3,2e-3",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr_vlp.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for("0/checkpoints/*.ckpt", sweep, proc)  # training has run an epoch and goes on
        proc.send_signal(getattr(signal, signame))
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    signum = int(getattr(signal, signame))
    assert proc.returncode == 128 + signum, out[-3000:]
    assert not (sweep / "1").exists()
    assert f"stopped by {signame}" in (sweep / "0" / "error.txt").read_text()
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in summary] == [("0", "failed")]
    assert f"sweep stopped by {signame}: 1 jobs" in out


def test_lambda_sweep_script_writes_into_its_sweep_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    """experiments/lambda_sweep/run.sh leaves the committed results alone unless UPDATE_RESULTS=1."""
    import hashlib
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    committed = REPO_ROOT / "experiments" / "lambda_sweep"
    before = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in committed.iterdir() if p.is_file()}
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "PY": sys.executable,
        "LAMS": "0.0,1.0",
        "TAUS": "0.1,1.0",
        "SWEEP_DIR": str(sweep),
        "PROJECT_ROOT": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
    }
    env.pop("UPDATE_RESULTS", None)
    res = subprocess.run(
        ["bash", str(committed / "run.sh"), *_tiny(tiny_dataset), "trainer.fast_dev_run=true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (sweep / "results.md").is_file() and (sweep / "results.csv").is_file()
    assert list(sweep.glob("*_vs_loss.lam.png"))
    after = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in committed.iterdir() if p.is_file()}
    assert after == before
