"""``python -m cxr_vlp.prepare`` killed with SIGKILL leaves no worker process behind.

The last image of the dataset becomes a named pipe once the job has read the study table (the reader wants regular
files) and before its pool starts: the worker that opens the pipe blocks until the test writes, which holds the job
mid-run with its pool up. The test then SIGKILLs the job and watches its descendants.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent (init here) has not reaped it yet


def _dataset(root: Path, n: int = 12) -> Path:
    rows = []
    (root / "img").mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / "img" / f"{i}.jpg"), np.full((80, 64), 20 * i, dtype=np.uint8))
        rows.append(
            {
                "study_id": f"s{i}",
                "subject_id": f"p{i}",
                "image_paths": f"img/{i}.jpg",
                "view_names": "PA",
                "findings": f"Finding {i}.",
                "impression": f"Impression {i}.",
            }
        )
    cv2.imwrite(str(root / "img" / "pipe.jpg"), np.zeros((80, 64), dtype=np.uint8))
    rows.append(
        {
            "study_id": "s_pipe",
            "subject_id": "p_pipe",
            "image_paths": "img/pipe.jpg",
            "view_names": "PA",
            "findings": "Finding.",
            "impression": "Impression.",
        }
    )
    pd.DataFrame(rows).to_csv(root / "studies.csv", index=False)
    return root


def _wait_for_reader(fifo: Path, proc: subprocess.Popen, timeout: float) -> int:
    """A write end of ``fifo`` once a worker has it open for reading (the worker then blocks on read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prepare exited with {proc.returncode}"
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:
                raise
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no worker opened the pipe")


def test_sigkill_of_prepare_takes_its_workers_with_it(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr_vlp.prepare",
            "data=csv",
            f"data.root={data}",
            f"cache.dir={tmp_path / 'cache'}",
            "cache.size=32",
            "cache.workers=2",
            "cache.progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:  # Hydra's console log
        if "caching at 32 px" in line:  # the table is read; the pool starts next
            break
    else:
        raise AssertionError(f"prepare exited early with {proc.wait()}")
    os.mkfifo(tmp_path / "pipe")
    os.replace(tmp_path / "pipe", data / "img" / "pipe.jpg")
    fd = _wait_for_reader(data / "img" / "pipe.jpg", proc, timeout=120)
    try:
        workers = _descendants(proc.pid)
        assert len(workers) >= 2, workers  # the fork server and the pool's workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(p for p in workers if _alive(p))
        for pid in left:  # do not leak them into the rest of the session
            os.kill(pid, signal.SIGKILL)
        assert not left, f"worker processes outlived the killed job: {left}"
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
