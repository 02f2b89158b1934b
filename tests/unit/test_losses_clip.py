"""CLIP / intra-modal / multi-view losses against slow loop transcriptions of docs/design.md §3."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.losses import ClipHead, LossOutput, clip_loss, intra_modal_loss, multi_view_clip_loss
from cxr_vlp.losses.heads import LossHead

# ---------------------------------------------------------------- slow references (float64 loops)


def _ref_ce_rows(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """−(1/B) Σ_i log( exp(s a_i·b_i) / Σ_j exp(s a_i·b_j) ), written with explicit loops."""
    n = a.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        logits = [s * sum(a[i, d] * b[j, d] for d in range(a.shape[1])) for j in range(n)]
        denom = sum(torch.exp(logit) for logit in logits)
        total = total - (logits[i] - torch.log(denom))
    return total / n


def ref_clip(img: torch.Tensor, txt: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """½[CE(logits, diag) + CE(logitsᵀ, diag)]: rows of logitsᵀ are the columns of logits."""
    return 0.5 * (_ref_ce_rows(img, txt, s) + _ref_ce_rows(txt, img, s))


def ref_multi_view(imgs, txts, s, w_i2i, w_t2t):
    pairs = [ref_clip(i, t, s) for i in imgs for t in txts]
    contrastive = sum(pairs) / len(pairs)
    out = {"contrastive": contrastive, "loss": contrastive}
    if w_i2i and len(imgs) >= 2:
        out["i2i"] = ref_clip(imgs[0], imgs[1], s)
        out["loss"] = out["loss"] + w_i2i * out["i2i"]
    if w_t2t and len(txts) >= 2:
        out["t2t"] = ref_clip(txts[0], txts[1], s)
        out["loss"] = out["loss"] + w_t2t * out["t2t"]
    return out


def _emb(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------- clip_loss


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_clip_loss_value_and_gradients_match_reference(batch: int) -> None:
    img = _emb(batch, 4, seed=1).requires_grad_()
    txt = _emb(batch, 4, seed=2).requires_grad_()
    s = torch.tensor(7.3, dtype=torch.float64, requires_grad=True)

    fast = clip_loss(img, txt, s)
    slow = ref_clip(img, txt, s)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)

    g_fast = torch.autograd.grad(fast, (img, txt, s))
    g_slow = torch.autograd.grad(slow, (img, txt, s))
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_clip_loss_single_process_equals_cross_entropy_formula() -> None:
    img, txt = _emb(6, 8, seed=3), _emb(6, 8, seed=4)
    logits = 10.0 * img @ txt.T
    diag = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, diag) + F.cross_entropy(logits.T, diag))
    torch.testing.assert_close(clip_loss(img, txt, 10.0), expected)
    torch.testing.assert_close(clip_loss(img, txt, 10.0, gather=False), expected)


def test_clip_loss_is_symmetric_in_modalities() -> None:
    img, txt = _emb(5, 3, seed=5), _emb(5, 3, seed=6)
    torch.testing.assert_close(clip_loss(img, txt, 3.0), clip_loss(txt, img, 3.0))


def test_clip_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        clip_loss(_emb(4, 3, seed=0), _emb(5, 3, seed=0), 1.0)


def test_clip_loss_half_precision_is_computed_in_float32() -> None:
    img, txt = _emb(4, 8, seed=7).bfloat16(), _emb(4, 8, seed=8).bfloat16()
    out = clip_loss(img, txt, torch.tensor(20.0))
    assert out.dtype == torch.float32 and torch.isfinite(out)


# ---------------------------------------------------------------- intra-modal and multi-view


def test_intra_modal_loss_matches_reference_with_gradients() -> None:
    a = _emb(4, 5, seed=9).requires_grad_()
    b = _emb(4, 5, seed=10).requires_grad_()
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    fast, slow = intra_modal_loss(a, b, s), ref_clip(a, b, s)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for x, y in zip(torch.autograd.grad(fast, (a, b, s)), torch.autograd.grad(slow, (a, b, s))):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("n_img", "n_txt", "w_i2i", "w_t2t"),
    [(1, 1, 0.0, 0.0), (2, 2, 1.0, 0.5), (2, 1, 1.0, 0.5), (1, 2, 0.0, 0.5), (3, 2, 0.3, 0.0)],
)
def test_multi_view_matches_reference(n_img: int, n_txt: int, w_i2i: float, w_t2t: float) -> None:
    imgs = [_emb(4, 3, seed=20 + k).requires_grad_() for k in range(n_img)]
    txts = [_emb(4, 3, seed=40 + k).requires_grad_() for k in range(n_txt)]
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)

    fast = multi_view_clip_loss(imgs, txts, s, w_i2i=w_i2i, w_t2t=w_t2t)
    slow = ref_multi_view(imgs, txts, s, w_i2i, w_t2t)
    assert set(fast) == set(slow)
    assert next(iter(fast)) == "loss"
    for key in slow:
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-12, atol=1e-12)
    inputs = (*imgs, *txts, s)
    for x, y in zip(torch.autograd.grad(fast["loss"], inputs), torch.autograd.grad(slow["loss"], inputs)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_multi_view_needs_views() -> None:
    with pytest.raises(ValueError):
        multi_view_clip_loss([], [_emb(2, 3, seed=0)], 1.0)


# ---------------------------------------------------------------- ClipHead


def test_cliphead_is_a_losshead_and_init_scale() -> None:
    head = ClipHead()
    assert isinstance(head, LossHead)
    assert head.logit_scale_log.requires_grad
    torch.testing.assert_close(head.similarity_scale(), torch.tensor(1 / 0.07))
    assert not ClipHead(learn_temperature=False).logit_scale_log.requires_grad


def test_cliphead_clamp_applies_and_blocks_gradient() -> None:
    head = ClipHead(max_scale=100.0)
    with torch.no_grad():
        head.logit_scale_log.fill_(math.log(1000.0))
    assert head.similarity_scale().item() == pytest.approx(100.0)
    img, txt = _emb(4, 3, seed=1).float(), _emb(4, 3, seed=2).float()
    out = head([img], [txt])
    assert out.logs["logit_scale"].item() == pytest.approx(100.0)
    out.loss.backward()
    # clamp's gradient is 0 above the bound: the parameter is stuck while clamped.
    assert head.logit_scale_log.grad is not None
    assert head.logit_scale_log.grad.item() == 0.0

    # below the bound the gradient flows.
    head2 = ClipHead()
    head2([img], [txt]).loss.backward()
    assert head2.logit_scale_log.grad.abs().item() > 0


def test_cliphead_forward_logs_and_matches_functional() -> None:
    head = ClipHead(w_i2i=1.0, w_t2t=0.5)
    imgs = [_emb(6, 8, seed=k).float() for k in (1, 2)]
    txts = [_emb(6, 8, seed=k).float() for k in (3, 4)]
    out = head(imgs, txts, labels=torch.zeros(6, 14))
    assert isinstance(out, LossOutput)
    expected = multi_view_clip_loss(imgs, txts, head.similarity_scale(), w_i2i=1.0, w_t2t=0.5)
    torch.testing.assert_close(out.loss, expected["loss"])
    assert {"loss", "contrastive", "i2i", "t2t", "logit_scale", "temperature"} <= set(out.logs)
    assert all(not v.requires_grad for v in out.logs.values())
    torch.testing.assert_close(out.logs["temperature"], torch.tensor(0.07))
    # a single tensor is accepted as one view; no intra-modal terms then.
    single = head(imgs[0], txts[0])
    assert "i2i" not in single.logs and "t2t" not in single.logs


def test_aligned_embeddings_give_near_zero_loss_and_random_near_log_b() -> None:
    b = 16
    eye = torch.eye(b)  # perfectly aligned, orthogonal (well separated) pairs
    head = ClipHead(temperature_init=0.01)  # scale 100
    # exact value: log(1 + (B-1)·e^(-100)) ≈ 15·e^(-100)
    assert 0.0 <= head(eye, eye).loss.item() < 1e-6

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(256, 512, generator=g), dim=-1)
    txt = F.normalize(torch.randn(256, 512, generator=g), dim=-1)
    loss = clip_loss(img, txt, 1.0).item()
    assert loss == pytest.approx(math.log(256), abs=0.02)


def test_functional_module_exposes_every_formula() -> None:
    from cxr_vlp.losses import clear_head, functional, mcsl, probabilistic
    from cxr_vlp.losses.functional import csd_distance, mcsl_loss, vib_kl  # noqa: F401  (importable by name)

    assert functional.mcsl_loss is mcsl.mcsl_loss and functional.clear_loss is clear_head.clear_loss
    assert functional.csd_distance is probabilistic.csd_distance and functional.vib_kl is probabilistic.vib_kl
    assert set(functional.__all__) >= {"clip_loss", "mcsl_loss", "csd_distance", "vib_kl"}
