"""Feature-cache gradient accumulation: the chunked step reproduces the full-batch contrastive gradients."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grad_cache_helpers as gc  # noqa: E402
from ddp_spawn import spawn_and_collect  # noqa: E402

from cxr_vlp.lit import grad_cache  # noqa: E402

HEADS = ("clip", "mcsl", "prob")


def _assert_same_grads(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], atol: float = 1e-10) -> None:
    assert set(got) == set(ref)
    for name, value in ref.items():
        torch.testing.assert_close(got[name], value, atol=atol, rtol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("size", [1, 5, 12])
def test_cached_step_equals_full_batch_gradient(head: str, size: int) -> None:
    data = gc.make_data()
    ref_loss, ref_grads, _ = gc.full_batch_grads(head, data)
    loss, got, _ = gc.cached_grads(head, data, size)
    assert loss == pytest.approx(ref_loss, abs=1e-12)
    # every tower parameter and the head's own (temperature, a / b) received its full-batch gradient
    assert any(n.startswith("head.") for n in ref_grads) and any(n.startswith("image.") for n in ref_grads)
    _assert_same_grads(got, ref_grads)


def test_cached_step_differs_from_naive_accumulation() -> None:
    """The control: averaging the losses of the chunks (Lightning's accumulate_grad_batches) is another objective."""
    data = gc.make_data()
    _, ref_grads, _ = gc.full_batch_grads("clip", data)
    model = gc.Towers("clip")
    parts = gc.chunks(data, 4)
    for part in parts:
        imgs, txts = model.encode(part)
        (model.head(imgs, txts).loss / len(parts)).backward()
    naive = gc.grads(model)
    assert not torch.allclose(naive["image.0.weight"], ref_grads["image.0.weight"], atol=1e-6)


@pytest.mark.parametrize("head", ["clip", "prob"])
def test_dropout_masks_replayed(head: str) -> None:
    """With dropout, the second (gradient) pass of each chunk must draw the masks of the first: the gradient then
    equals that of the chunk-by-chunk forward with the same random state, and the control without replay does not."""
    data = gc.make_data()
    ref_loss, ref_grads, _ = gc.full_batch_grads(head, data, dropout=0.3, chunk_forward=4)
    loss, got, _ = gc.cached_grads(head, data, 4, dropout=0.3)
    assert loss == pytest.approx(ref_loss, abs=1e-12)
    _assert_same_grads(got, ref_grads)
    original = grad_cache._replayed_rng
    grad_cache._replayed_rng = lambda state, device: contextlib.nullcontext()
    try:
        _, unreplayed, _ = gc.cached_grads(head, data, 4, dropout=0.3)
    finally:
        grad_cache._replayed_rng = original
    assert not torch.allclose(unreplayed["image.0.weight"], ref_grads["image.0.weight"], atol=1e-6)


def test_dropout_replay_leaves_global_rng_as_after_first_pass() -> None:
    """The replays do not advance the global generator a second time (the next step draws fresh masks)."""
    data = gc.make_data()
    model = gc.Towers("clip", dropout=0.3)
    torch.manual_seed(5)
    with torch.no_grad():
        for part in gc.chunks(data, 4):
            model.encode(part)
    expected = torch.rand(3)
    torch.manual_seed(5)
    grad_cache.cached_contrastive_step(
        gc.chunks(data, 4),
        model.encode,
        gc.loss_of(model, data["labels"]),
        backward=lambda t: t.backward(),
        norm_module=model,
    )
    assert torch.equal(torch.rand(3), expected)


def test_batch_norm_statistics_updated_once_per_chunk() -> None:
    """BatchNorm towers: per-chunk batch statistics (documented), and the running statistics are those of one
    chunk-by-chunk pass, not two (the no-gradient pass restores them)."""
    data = gc.make_data()
    _, ref_grads, ref_model = gc.full_batch_grads("clip", data, norm="batch", chunk_forward=4)
    _, got, model = gc.cached_grads("clip", data, 4, norm="batch")
    _assert_same_grads(got, ref_grads)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model.image[1], name), getattr(ref_model.image[1], name))
    assert model.image[1].num_batches_tracked.item() == 3 * 2  # three chunks, two image views each


def test_empty_chunk_list_rejected() -> None:
    with pytest.raises(ValueError, match="at least one chunk"):
        grad_cache.cached_contrastive_step([], lambda c: c, lambda i, t: None, backward=lambda t: None)


@pytest.mark.xdist_group("ddp")
def test_cached_step_under_ddp_equals_single_process(tmp_path: Path) -> None:
    """2 gloo processes, DDP with no_sync for all chunks but the last: the reduced gradients on every rank equal the
    single-process full-batch gradients (CLIP, MCSL with labels across ranks, ProbCLIP)."""
    results = spawn_and_collect(gc.worker, 2, tmp_path)
    for head in HEADS:
        ref_loss, ref_grads, _ = gc.full_batch_grads(head, gc.make_data())
        local = [r[head]["local_loss"] for r in results]
        assert sum(local) / 2 == pytest.approx(ref_loss, abs=1e-10)
        assert local[0] != pytest.approx(local[1])  # the ranks saw different rows
        for res in results:
            _assert_same_grads(res[head]["grads"], ref_grads)
