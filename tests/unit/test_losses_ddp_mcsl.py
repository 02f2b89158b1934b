"""Real 2-process CPU DDP (gloo): MCSL (embeddings and labels gathered) and the ProbCLIP matching loss
reproduce the single-process loss, logged values and parameter gradients of the concatenated batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_helpers_mcsl as helpers  # noqa: E402
from ddp_spawn import spawn_and_collect  # noqa: E402

# all multi-process tests run in one xdist worker (--dist loadgroup), never two gloo jobs at once
pytestmark = pytest.mark.xdist_group("ddp")
WORLD = 2


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Spawn the two ranks once; each runs every model and saves its results."""
    out = tmp_path_factory.mktemp("ddp_mcsl")
    return spawn_and_collect(helpers.worker, WORLD, out)


@pytest.fixture(scope="module")
def reference() -> dict[str, dict]:
    return helpers.single_process_reference()


def _assert_matches(res: dict, ref: dict) -> None:
    assert res["loss"] == pytest.approx(ref["loss"], abs=1e-10)
    assert set(res["logs"]) == set(ref["logs"])
    for key, value in ref["logs"].items():
        assert res["logs"][key] == pytest.approx(value, abs=1e-10), key
    assert set(res["grads"]) == set(ref["grads"])
    for name, grad in res["grads"].items():
        torch.testing.assert_close(grad, ref["grads"][name], atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("mode", ["identity", "uniform", "prob"])
def test_ddp_equals_single_process(ddp_results, reference, mode: str) -> None:
    ref = reference[mode]
    assert all(g.abs().max().item() > 0 for g in ref["grads"].values())
    local = [r[mode]["local_loss"] for r in ddp_results]
    assert local[0] != pytest.approx(local[1])  # the ranks really saw different data
    for res in ddp_results:
        _assert_matches(res[mode], ref)


def test_labels_are_gathered_across_ranks(reference) -> None:
    # rows 1 and 7 are empty (no overlap with anyone in the global batch); row 5's only overlaps
    # (rows 0, 2) live on the other rank, so per-rank label handling would make it empty too
    logs = reference["identity"]["logs"]
    assert logs["empty_rows"] == pytest.approx(2 / 8)
    assert logs["concept_mass"] == pytest.approx(0.7 / 1.7 * 6 / 8)
    assert reference["uniform"]["logs"]["concept_mass"] == pytest.approx(0.7 / 1.7)


def test_prob_reference_exercises_pseudo_positives(reference) -> None:
    assert 0 < reference["prob"]["logs"]["pseudo_share"] < 1


@pytest.mark.parametrize("mode", ["identity", "prob"])
def test_no_grad_gather_gives_different_gradients(ddp_results, reference, mode: str) -> None:
    ref = reference[mode]
    for res in ddp_results:
        # same forward value, wrong backward: the gather's gradient path matters
        assert res[f"{mode}_nograd"]["loss"] == pytest.approx(ref["loss"], abs=1e-10)
        diff = max((res[f"{mode}_nograd"]["grads"][n] - g).abs().max().item() for n, g in ref["grads"].items())
        assert diff > 1e-4
