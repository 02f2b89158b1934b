"""Crash and resume gives the run you would have had.

A tiny CPU run is trained uninterrupted; the same run (same seed) is started as a real ``python -m cxr_vlp.train``
process that SIGKILLs itself a few steps after a ``last.ckpt`` (a mid-epoch one; an end-of-epoch one with a data
worker process); it is then resumed both ways (``ckpt_path=<killed run>/checkpoints/last.ckpt`` into a new run
directory, and
``ckpt_path=auto`` in the killed run's directory). Both resumed runs must end with the uninterrupted run's weights
(``torch.equal``), test the same best checkpoint, and hold a ``metrics.csv`` with every logged step once and the
uninterrupted run's values.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cxr_vlp.train import train
from tests.integration.hydra_helpers import compose_train, run_cli, tiny_overrides

STEPS_PER_CHECKPOINT = 4
# columns that measure wall time, not the run
TIMING_COLUMNS = ("samples_per_sec", "batches_per_sec", "time")


class SigkillAtStep(Callback):
    """Kills its own process with SIGKILL before training step ``step`` (no cleanup, as a node failure would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _overrides(tiny_dataset: Path, tmp: Path, workers: int) -> list[str]:
    return [
        "+experiment=demo",
        *tiny_overrides(tiny_dataset),
        f"data.num_workers={workers}",
        "+data.max_studies={train:48}",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        f"callbacks.last_checkpoint.every_n_train_steps={STEPS_PER_CHECKPOINT}",
        "callbacks.throughput=null",  # its wall-time columns differ between runs
        # one tokenizer for all runs (HF's WordPiece trainer is not deterministic across processes)
        f"data.tokenizer_cache={tmp / 'tokenizers'}",
        "seed=7",
    ]


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _best(run: Path) -> Path:
    (best,) = [p for p in (run / "checkpoints").glob("epoch*.ckpt")]
    return best


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cells(run: Path) -> dict[tuple[int, str], str]:
    """(step, column) -> value of every non-empty metric cell; asserts that no metric appears twice at one step
    (``epoch`` is in every row, so it is compared but not counted)."""
    out: dict[tuple[int, str], str] = {}
    for row in _rows(run):
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or value == "" or any(t in key for t in TIMING_COLUMNS):
                continue
            assert key == "epoch" or (step, key) not in out, f"{run}: {key} logged twice at step {step}"
            out[step, key] = value
    return out


def _row_multiset(run: Path) -> list[tuple]:
    """Every row as (step, its non-empty cells), sorted: equal lists mean every row once, as in the other run."""
    return sorted(
        (int(r["step"]), tuple(sorted((k, v) for k, v in r.items() if v != "" and k != "step"))) for r in _rows(run)
    )


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


@pytest.fixture(scope="module")
def reference(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (no worker processes: the augmentation does not depend on them)."""
    root = tmp_path_factory.mktemp("resume")
    run = root / "reference"
    train(compose_train(run, _overrides(tiny_dataset, root, workers=0)))
    return run


# (data.num_workers, SIGKILL before this step, the step of the last.ckpt that the resume starts from). 6 steps per
# epoch, last.ckpt every 4 steps and at every epoch end: step 16 is 4 batches into epoch 3; step 12 is the end of
# epoch 2 (saved after its validation), resumed with a worker process. Later steps are trained and logged before the
# kill in both.
SCENARIOS = [(0, 17, 16), (1, 14, 12)]


@pytest.mark.parametrize(("workers", "kill_at", "ckpt_step"), SCENARIOS, ids=["mid-epoch", "epoch-end-1-worker"])
def test_sigkill_and_resume_gives_the_uninterrupted_run(
    reference: Path, tiny_dataset: Path, tmp_path: Path, workers: int, kill_at: int, ckpt_step: int
) -> None:
    overrides = _overrides(tiny_dataset, reference.parent, workers)
    ref_best = _best(reference)
    # the best epoch is not the last, so a resume that forgot the best score would test the last epoch instead
    assert ref_best.name == "epoch001-step12.ckpt", f"the reference run's best checkpoint is {ref_best.name}"

    killed = tmp_path / "killed"
    result = run_cli(
        [
            *overrides,
            f"hydra.run.dir={killed}",
            f"paths.root_dir={tmp_path}",
            "+callbacks.sigkill._target_=tests.integration.test_resume.SigkillAtStep",
            f"+callbacks.sigkill.step={kill_at}",
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == ckpt_step
    in_place = tmp_path / "in_place"
    shutil.copytree(killed, in_place)
    killed_files = sorted((p.relative_to(killed), p.stat().st_size) for p in killed.rglob("*") if p.is_file())

    new_dir = tmp_path / "new_dir"
    train(compose_train(new_dir, [*overrides, f"ckpt_path={last}"]))
    # resuming elsewhere leaves the source run alone
    assert sorted((p.relative_to(killed), p.stat().st_size) for p in killed.rglob("*") if p.is_file()) == killed_files
    train(compose_train(in_place, [*overrides, "ckpt_path=auto"]))

    ref_w, ref_cells = _final_weights(reference), _cells(reference)
    ref_best_w = torch.load(ref_best, map_location="cpu", weights_only=True)["state_dict"]
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    for run in (new_dir, in_place):
        w = _final_weights(run)
        print(
            f"{run.name}: max|dW|={_max_abs_diff(ref_w, w):.3g} tested={_best(run).name} "
            f"csv rows={len(_rows(run))} (reference {len(_rows(reference))})"
        )
        assert all(torch.equal(ref_w[k], w[k]) for k in ref_w), f"{run.name}: max |dW| {_max_abs_diff(ref_w, w)}"
        # the same checkpoint is tested: same file name, weights and test metrics
        assert _best(run).name == ref_best.name
        best_w = torch.load(_best(run), map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.equal(ref_best_w[k], best_w[k]) for k in ref_best_w)
        metrics = json.loads((run / "metrics.json").read_text())
        assert {k: v for k, v in metrics.items() if k.startswith("test/")} == {
            k: v for k, v in ref_metrics.items() if k.startswith("test/")
        }
        assert metrics["best_model_score"] == ref_metrics["best_model_score"]
        # metrics.csv: every logged step once, with the uninterrupted run's values
        cells = _cells(run)
        assert cells.keys() == ref_cells.keys(), sorted(set(cells) ^ set(ref_cells))
        assert cells == ref_cells
        assert _row_multiset(run) == _row_multiset(reference)


# ---------------------------------------------------------------------------------------------- the parts, quickly


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch_and_skips_once() -> None:
    from cxr_vlp.data.sampling import EpochSampler, TrainIndex, TrainPosition

    data = list(range(10))
    a, b = EpochSampler(data, seed=3), EpochSampler(data, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    order = list(a)
    assert order == list(b) and all(k.epoch == 2 for k in order) and sorted(k.index for k in order) == data
    assert [k.index for k in order] == torch.randperm(10, generator=torch.Generator().manual_seed(5)).tolist()
    TrainPosition(epoch=2, batches_taken=2, epoch_done=False, batch_size=3).apply(b, batch_size=3)
    assert list(b) == order[6:] and list(b) == order  # the skip applies to one iteration only
    TrainPosition(epoch=2, batches_taken=3, epoch_done=True, batch_size=3).apply(b, batch_size=3)
    assert b.epoch == 3 and len(list(b)) == 10
    with pytest.raises(ValueError, match="batch_size=3.*data.batch_size=4"):
        TrainPosition(2, 1, False, 3).apply(b, batch_size=4)
    # two ranks: disjoint halves of the same permutation
    shards = [list(EpochSampler(data, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(k.index for s in shards for k in s) == data and shards[0][0] == TrainIndex(0, shards[0][0].index)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    from cxr_vlp.lit.resume import collect_rng_states, set_rng_states

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save({"rng": collect_rng_states()}, tmp_path / "c.ckpt")
    expected = torch.rand(3), np.random.rand(3), random.random()
    set_rng_states(torch.load(tmp_path / "c.ckpt", weights_only=True)["rng"])
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_csv_logger_resume_keeps_rows_before_the_next_step_and_appends(tmp_path: Path) -> None:
    from cxr_vlp.lit.csv_logger import ResumableCSVLogger

    source = ResumableCSVLogger(save_dir=tmp_path / "a", name="csv", version="")
    for step in range(5):
        source.log_metrics({"loss": float(step)}, step=step)  # on disk at once: no buffering
    assert [r["step"] for r in _rows(tmp_path / "a")] == ["0", "1", "2", "3", "4"]
    for target_dir in (tmp_path / "a", tmp_path / "b"):  # in place, and into a new run directory
        logger = ResumableCSVLogger(save_dir=target_dir, name="csv", version="")
        logger.log_hyperparams({"x": 1})  # as train.py does before fitting: the file stays
        logger.resume(tmp_path / "a" / "csv" / "metrics.csv", next_step=3)
        logger.log_metrics({"loss": 30.0, "val": 1.0}, step=3)  # a new column rewrites the header
        assert [(r["step"], r["loss"], r["val"]) for r in _rows(target_dir)] == [
            ("0", "0.0", ""),
            ("1", "1.0", ""),
            ("2", "2.0", ""),
            ("3", "30.0", "1.0"),
        ]
    fresh = ResumableCSVLogger(save_dir=tmp_path / "a", name="csv", version="")
    fresh.log_metrics({"loss": 9.0}, step=0)  # a run that does not resume replaces the file
    assert [r["loss"] for r in _rows(tmp_path / "a")] == ["9.0"]


def test_run_checkpoint_copies_the_best_into_a_new_directory(tmp_path: Path) -> None:
    from cxr_vlp.lit.checkpoint import RunCheckpoint

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / "epoch001.ckpt").write_bytes(b"best")
    best = str(old / "epoch001.ckpt")
    state = {
        "monitor": "val/rsum",
        "best_model_score": torch.tensor(2.5),
        "best_model_path": best,
        "current_score": torch.tensor(1.0),
        "dirpath": str(old),
        "kth_value": torch.tensor(2.5),
        "best_k_models": {str(old / "epoch001.ckpt"): torch.tensor(2.5)},
        "kth_best_model_path": str(old / "epoch001.ckpt"),
        "last_model_path": "",
    }
    callback = RunCheckpoint(dirpath=new, monitor="val/rsum", mode="max", save_top_k=1)
    callback.load_state_dict(state)
    assert callback.best_model_path == str(new / "epoch001.ckpt") and (new / "epoch001.ckpt").read_bytes() == b"best"
    assert float(callback.best_model_score) == 2.5 and list(callback.best_k_models) == [str(new / "epoch001.ckpt")]
    assert (old / "epoch001.ckpt").read_bytes() == b"best"
    (old / "epoch001.ckpt").unlink()  # a source run whose best file is gone: tracking starts afresh
    fresh = RunCheckpoint(dirpath=tmp_path / "newer", monitor="val/rsum", mode="max", save_top_k=1)
    fresh.load_state_dict(state)
    assert fresh.best_model_path == "" and fresh.best_model_score is None
    with pytest.raises(ValueError, match="every_n_train_steps=5 is for the monitor-less"):
        RunCheckpoint(dirpath=new, monitor="val/rsum", every_n_train_steps=5)
