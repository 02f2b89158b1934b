"""Loss heads compute in fp32 inside a bf16 autocast region (``precision=bf16-mixed``): autocast would otherwise
cast their pairwise matmuls to bf16 and move the loss by per cents (ProbCLIP's squared distances most)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.losses import ClipHead
from cxr_vlp.losses.clear_head import ClearHead
from cxr_vlp.losses.heads import GaussianEmbedding, LossHead
from cxr_vlp.losses.mcsl import McslHead
from cxr_vlp.losses.prob_head import ProbClipHead

B, D, K = 24, 64, 12


def _inputs(head: LossHead) -> tuple[list, list, dict]:
    g = torch.Generator().manual_seed(0)
    views = [F.normalize(torch.randn(B, D, generator=g), dim=-1) for _ in range(4)]
    labels = (torch.rand(B, 14, generator=g) > 0.7).float()
    if isinstance(head, ProbClipHead):
        lv = [torch.randn(B, D, generator=g) - 3.0 for _ in range(4)]
        return (
            [GaussianEmbedding(views[0], lv[0]), GaussianEmbedding(views[1], lv[1])],
            [GaussianEmbedding(views[2], lv[2]), GaussianEmbedding(views[3], lv[3])],
            {"labels": labels},
        )
    extra = {"labels": labels}
    if isinstance(head, ClearHead):
        head.prepare()
        extra["concepts"] = F.normalize(torch.randn(len(head.concept_names), D, generator=g), dim=-1)
    return views[:2], views[2:], extra


HEADS = {
    "clip": lambda: ClipHead(temperature_init=0.01, w_i2i=1.0, w_t2t=0.5),
    "mcsl": lambda: McslHead(lam=0.7, concept_temperature=0.5, temperature_init=0.01),
    "probclip_vib": lambda: ProbClipHead(a_init=20.0, b_init=5.0, pseudo_positive_weight=0.3, clip_weight=1.0),
    "clear": lambda: ClearHead(concepts=[f"finding {i}" for i in range(K)], embedder={"kind": "hashing", "dim": 32}),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_loss_is_fp32_under_bf16_autocast(name: str) -> None:
    head = HEADS[name]()
    image_views, text_views, extra = _inputs(head)
    reference = head(image_views, text_views, **extra).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(image_views, text_views, **extra)
    assert mixed.loss.dtype == torch.float32
    torch.testing.assert_close(mixed.loss, reference, rtol=1e-6, atol=1e-6)
    # and autocast is back on after the head returned
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head(image_views, text_views, **extra)
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_without_the_guard_bf16_would_move_the_loss() -> None:
    """The control: the same ProbCLIP loss through forward() directly (no guard) differs in bf16 autocast."""
    head = HEADS["probclip_vib"]()
    image_views, text_views, extra = _inputs(head)
    reference = head.forward(image_views, text_views, **extra).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unguarded = head.forward(image_views, text_views, **extra).loss
    assert (unguarded.float() - reference).abs().item() > 1e-3
