"""Faults through the real configs: a diverging run (optim.lr=1e6) stops loudly without writing non-finite
checkpoints, and a mistyped value stops the command line before any data work, naming the key."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from cxr_vlp.lit.divergence import TrainingDivergedError, non_finite_entries
from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, run_cli, tiny_overrides

MESSAGE_PARTS = (
    r"training diverged: 3 consecutive optimizer steps with a non-finite loss or gradient norm",
    r"last at step \d+, epoch \d+, batch \d+: (non-finite loss|gradient norm (nan|inf))",
    r"Loss components at step \d+: .*train/loss=\S+",
    r"Learning rate: \d",
    r"Last good checkpoint: ",
)


def _assert_checkpoints_finite(run_dir: Path) -> list[Path]:
    found = sorted(run_dir.rglob("*.ckpt"))
    for path in found:
        bad, total = non_finite_entries(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        assert total > 0 and bad == [], (path, bad[:5])
    return found


def test_diverging_run_stops_with_the_step_losses_and_learning_rate(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path, ["+experiment=demo", *tiny_overrides(tiny_dataset), "optim.lr=1e6", "trainer.max_epochs=2"]
    )
    with pytest.raises(TrainingDivergedError) as err:
        train(cfg)
    message = str(err.value)
    for part in MESSAGE_PARTS:
        assert re.search(part, message), (part, message)
    assert "train/temperature=" in message  # the loss head's components, not only the total
    _assert_checkpoints_finite(tmp_path)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_diverging_run_without_validation_exits_non_zero(tiny_dataset: Path, tmp_path: Path) -> None:
    """Validation off, two batches an epoch: last.ckpt is written at epoch ends (finite weights only) and named as
    the last good checkpoint when the third bad step in a row stops the process with a non-zero status."""
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "+experiment=demo",
            *tiny_overrides(tiny_dataset),
            "optim.lr=1e6",
            "trainer.max_epochs=4",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=0",
            "test=false",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "TrainingDivergedError" in output, output[-3000:]
    for part in MESSAGE_PARTS:
        assert re.search(part, output), (part, output[-3000:])
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"Last good checkpoint: {last}" in output
    assert _assert_checkpoints_finite(run_dir) == [last]


@pytest.mark.slow
def test_mistyped_trainer_value_fails_at_once_naming_the_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    start = time.monotonic()
    result = run_cli(
        ["trainer.max_epochs=abc", f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "trainer.max_epochs='abc' (str): expected an integer >= -1 or null" in result.stderr, result.stderr[-3000:]
    assert not data_dir.exists()  # the synthetic dataset was not generated
    # interpreter start-up and imports only (about 10 s on a loaded 2-core machine); generation alone took 18 s
    assert elapsed < 60, elapsed
