"""Concurrent jobs are safe: two real ``python -m cxr_vlp.prepare`` runs released together on a fresh data folder
generate the synthetic set once, share the image cache, and get two run directories; run directories differ even
within one second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.hydra_helpers import compose_train

# Imports the entry point, says it is ready, waits for the go file, then runs it as `python -m cxr_vlp.prepare
# <overrides>` would: the two jobs start within milliseconds of each other, however long their imports took.
_DRIVER = r"""
import sys, time, pathlib
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
from cxr_vlp import prepare
ready.touch()
while not go.exists():
    time.sleep(0.002)
sys.argv = ["cxr_vlp.prepare", *sys.argv[3:]]
prepare.main()
"""


def _start_together(
    cwd: Path, overrides: list[str], n: int = 2, timeout: float = 240
) -> list[subprocess.CompletedProcess]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
        "CXR_VLP_DATA_DIR": str(cwd / "data"),
    }
    env.pop("PROJECT_ROOT", None)
    go = cwd / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DRIVER, str(cwd / f"ready{i}"), str(go), *overrides],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + timeout
    try:
        while not all((cwd / f"ready{i}").exists() for i in range(n)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the jobs did not get ready"
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


@pytest.mark.slow
def test_two_prepare_jobs_on_a_fresh_data_dir(tmp_path: Path) -> None:
    overrides = [
        "data.prepare.num_patients=16",
        "data.prepare.image_size=64",
        "data.prepare.workers=0",
        "cache.size=64",
        "cache.workers=1",
        "cache.progress=false",
    ]
    results = _start_together(tmp_path, overrides)
    for res in results:
        assert res.returncode == 0, res.stderr[-4000:]
    logs = "".join(r.stdout + r.stderr for r in results)  # Hydra's console log goes to stdout
    assert logs.count("wrote ") == 1 and "reusing the synthetic dataset" in logs  # generated once, by one job
    data = tmp_path / "data" / "synthetic"
    (dataset,) = (p for p in data.iterdir() if not p.name.startswith("."))
    assert json.loads((dataset / "manifest.json").read_text())["config"]["num_patients"] == 16
    assert not [p for p in data.iterdir() if ".tmp-" in p.name]  # the loser left no half-written copy
    summaries = [json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("{"))) for r in results]
    total = summaries[0]["total"]
    assert total > 0 and sorted((s["done"], s["skipped"]) for s in summaries) == [(0, total), (total, 0)]
    runs = sorted((tmp_path / "logs" / "prepare" / "runs").iterdir())
    assert len(runs) == 2, runs  # one run directory each, even when started in the same second
    assert all((run / ".hydra" / "config.yaml").is_file() for run in runs)
    assert all(run.name.count("_") >= 2 for run in runs)  # <date>_<time>_<pid>-<hex>


def test_run_directories_differ_within_one_second(tmp_path: Path) -> None:
    dirs = []
    for _ in range(3):
        cfg = compose_train(tmp_path / "out", ["data=csv", "data.root=/nowhere"])
        dirs.append(str(cfg.hydra.run.dir))
        assert str(cfg.hydra.run.dir) == dirs[-1]  # one value per composed config
    assert len(set(dirs)) == 3
    assert len({d.rsplit("_", 1)[0] for d in dirs}) <= 2  # the timestamp part can coincide; the suffix differs
    assert all(d.rsplit("_", 1)[1].split("-")[0] == str(os.getpid()) for d in dirs)
