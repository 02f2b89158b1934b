"""Real 2-process CPU DDP (gloo): the gathered CLIP loss reproduces the single-process gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_helpers  # noqa: E402
from ddp_spawn import spawn_and_collect  # noqa: E402

# all multi-process tests run in one xdist worker (--dist loadgroup), never two gloo jobs at once
pytestmark = pytest.mark.xdist_group("ddp")
WORLD = 2


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Spawn the two ranks once; each runs every mode and saves its results."""
    out = tmp_path_factory.mktemp("ddp")
    return spawn_and_collect(ddp_helpers.worker, WORLD, out)


@pytest.fixture(scope="module")
def reference() -> tuple[float, dict[str, torch.Tensor]]:
    return ddp_helpers.single_process_reference()


def test_ddp_loss_and_grads_match_single_process(ddp_results, reference) -> None:
    ref_loss, ref_grads = reference
    assert ref_grads["head.logit_scale_log"].abs().item() > 0
    local_losses = [r["grad"]["local_loss"] for r in ddp_results]
    assert local_losses[0] != pytest.approx(local_losses[1])  # ranks really saw different data
    for res in ddp_results:
        assert res["grad"]["loss"] == pytest.approx(ref_loss, abs=1e-10)
        assert set(res["grad"]["grads"]) == set(ref_grads)
        for name, grad in res["grad"]["grads"].items():
            torch.testing.assert_close(grad, ref_grads[name], atol=1e-10, rtol=1e-8, msg=name)


def test_no_grad_gather_gives_different_gradients(ddp_results, reference) -> None:
    ref_loss, ref_grads = reference
    for res in ddp_results:
        # Same forward value, wrong backward: the gather's gradient path matters.
        assert res["nograd"]["loss"] == pytest.approx(ref_loss, abs=1e-10)
        diff = max((res["nograd"]["grads"][n] - g).abs().max().item() for n, g in ref_grads.items())
        assert diff > 1e-3


def test_collective_helpers(ddp_results) -> None:
    for rank, res in enumerate(ddp_results):
        rows, requires_grad = res["gather_no_grad"]
        assert rows == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
        assert requires_grad is False
        assert res["offset"] == 4 * rank
        assert res["unequal_error"] is not None and "[3, 4]" in res["unequal_error"]
