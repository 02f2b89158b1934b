"""The real command lines, as subprocesses: Hydra entry point and Lightning DDP on CPU (gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.hydra_helpers import run_cli

# all multi-process tests run in one xdist worker (--dist loadgroup), never two gloo jobs at once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]


def _run(args: list[str], cwd: Path):
    return run_cli(args, cwd, timeout=600)


def test_ddp_two_cpu_processes_from_the_command_line(tiny_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = _run(
        [
            "+experiment=demo",
            "data=csv",
            f"data.root={tiny_dataset.parent}",
            "data.transforms.image_size=64",
            "data.batch_size=4",
            "data.eval_batch_size=8",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "model.embed_dim=32",
            "model.text_encoder.tokenizer.vocab_size=500",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "callbacks.progress_bar=null",
            "evaluation.tasks=[retrieval]",
            "evaluation.figures=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the evaluation suite ran once, on rank 0, after the DDP test (same study count, class precision added)
    assert metrics["eval/num_studies"] == metrics["test/num_studies"]
    assert 0.0 <= metrics["eval/i2t/P@5"] <= 1.0
    assert (run_dir / "eval" / "report.md").is_file()
    split = json.loads((run_dir / "split.json").read_text())
    # every test study counted once although DistributedSampler pads the shards
    from cxr_vlp.data.table import read_generic_csv

    table = read_generic_csv(tiny_dataset)
    n_test = sum(s in set(split["test"]) for s in table.subject_ids)
    assert metrics["test/num_studies"] == n_test
    assert "image → text" in result.stdout
    # one run directory only: the second rank did not start its own (data/ holds the tokenizer cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cache"]
