"""Real 2-process CPU DDP (gloo): ProbClipHead (cross-modal and intra-modal probabilistic matching,
PCME++ pseudo-positives in both directions, VIB KL in both reductions, CLIP mix; and the MedProbCLIP
InfoNCE variant) reproduces the single-process loss, logged values and every parameter gradient of the
concatenated batch. The text→image pseudo-positives need the true-pair logits of the other rank's texts:
the batch has such pairs, and using the local ones instead changes the result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_helpers_prob as helpers  # noqa: E402
from ddp_spawn import spawn_and_collect  # noqa: E402

# all multi-process tests run in one xdist worker (--dist loadgroup), never two gloo jobs at once
pytestmark = pytest.mark.xdist_group("ddp")
WORLD = 2


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_prob")
    return spawn_and_collect(helpers.worker, WORLD, out)


@pytest.fixture(scope="module")
def reference() -> dict[str, dict]:
    return helpers.single_process_reference()


@pytest.mark.parametrize("variant", list(helpers.VARIANTS))
def test_ddp_equals_single_process(ddp_results, reference, variant: str) -> None:
    ref = reference[variant]
    # a, b, logit scale, towers (b cancels in MedProbCLIP's softmax)
    grads = {n: g for n, g in ref["grads"].items() if not (variant == "medprob" and n == "head.b")}
    assert all(g.abs().max().item() > 0 for g in grads.values())
    if variant != "medprob":
        assert 0 < ref["logs"]["pseudo_share"] < 1  # pseudo-positives are exercised
    local = [r[variant]["local_loss"] for r in ddp_results]
    assert local[0] != pytest.approx(local[1])  # the ranks really saw different data
    for res in ddp_results:
        assert res[variant]["loss"] == pytest.approx(ref["loss"], abs=1e-10)
        assert set(res[variant]["logs"]) == set(ref["logs"])
        for key, value in ref["logs"].items():
            assert res[variant]["logs"][key] == pytest.approx(value, abs=1e-10), key
        assert set(res[variant]["grads"]) == set(ref["grads"])
        for name, grad in res[variant]["grads"].items():
            torch.testing.assert_close(grad, ref["grads"][name], atol=1e-10, rtol=1e-8, msg=name)


def test_text_to_image_pseudo_positives_cross_ranks(ddp_results, reference) -> None:
    rows, cols = helpers.pseudo_masks()
    half = helpers.GLOBAL_BATCH // WORLD
    # column pairs whose column (text) lives on the other rank than the row (image), in both directions
    cross = torch.zeros_like(cols)
    cross[:half, half:] = True
    cross[half:, :half] = True
    assert (cols & cross).any() and not torch.equal(rows, cols)
    ref = reference["diag_clip"]
    for res in ddp_results:
        wrong = res["diag_clip_local_true"]
        diff = max((wrong["grads"][n] - g).abs().max().item() for n, g in ref["grads"].items())
        assert wrong["loss"] != pytest.approx(ref["loss"], abs=1e-8) or diff > 1e-6


def test_no_grad_gather_gives_different_gradients(ddp_results, reference) -> None:
    ref = reference["diag_clip"]
    for res in ddp_results:
        assert res["diag_clip_nograd"]["loss"] == pytest.approx(ref["loss"], abs=1e-10)
        diff = max((res["diag_clip_nograd"]["grads"][n] - g).abs().max().item() for n, g in ref["grads"].items())
        assert diff > 1e-4
