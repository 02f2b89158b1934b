"""Real 2-process CPU DDP (gloo): the CLEAR head (CLIP + concept projection, two views each) reproduces the
single-process loss, logged values and ALL parameter gradients (towers, through C too, and both temperatures)
of the concatenated batch after DDP's gradient averaging."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_helpers_clear as helpers
from ddp_spawn import spawn_and_collect

# all multi-process tests run in one xdist worker (--dist loadgroup), never two gloo jobs at once
pytestmark = pytest.mark.xdist_group("ddp")
WORLD = 2


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Spawn the two ranks once; each runs the model with and without gradient-carrying gathers."""
    out = tmp_path_factory.mktemp("ddp_clear")
    return spawn_and_collect(helpers.worker, WORLD, out)


@pytest.fixture(scope="module")
def reference() -> dict:
    return helpers.single_process_reference()


def test_reference_exercises_every_parameter(reference) -> None:
    names = set(reference["grads"])
    assert names == {
        "image_tower.weight",
        "image_tower.bias",
        "text_tower.weight",
        "text_tower.bias",
        "head.logit_scale_log",
        "head.concept_logit_scale_log",
    }
    assert all(g.abs().max().item() > 0 for g in reference["grads"].values())
    assert {"clip", "concept", "i2i", "t2t", "concept_logit_scale"} <= set(reference["logs"])
    # part of the text tower's gradient comes through C (the concept embeddings), not only through the reports
    detached = helpers.single_process_reference(detach_concepts=True)
    assert detached["loss"] == pytest.approx(reference["loss"], abs=1e-12)
    diff = (detached["grads"]["text_tower.weight"] - reference["grads"]["text_tower.weight"]).abs().max().item()
    assert diff > 1e-4


def test_ddp_equals_single_process(ddp_results, reference) -> None:
    local = [r["clear"]["local_loss"] for r in ddp_results]
    assert local[0] != pytest.approx(local[1])  # the ranks really saw different data
    for res in ddp_results:
        res = res["clear"]
        assert res["loss"] == pytest.approx(reference["loss"], abs=1e-10)
        assert set(res["logs"]) == set(reference["logs"])
        for key, value in reference["logs"].items():
            assert res["logs"][key] == pytest.approx(value, abs=1e-10), key
        assert set(res["grads"]) == set(reference["grads"])
        for name, grad in res["grads"].items():
            torch.testing.assert_close(grad, reference["grads"][name], atol=1e-10, rtol=1e-8, msg=name)


def test_text_tower_gradient_through_concepts_differs_without_gathered_gradients(ddp_results, reference) -> None:
    for res in ddp_results:
        # same forward value, wrong backward: the gather's gradient path matters (also for C's contribution)
        assert res["clear_nograd"]["loss"] == pytest.approx(reference["loss"], abs=1e-10)
        diff = max((res["clear_nograd"]["grads"][n] - g).abs().max().item() for n, g in reference["grads"].items())
        assert diff > 1e-4
