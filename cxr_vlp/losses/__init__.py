"""Contrastive losses, their DDP collectives and the loss heads."""

from cxr_vlp.losses.clear_head import ClearHead, clear_loss
from cxr_vlp.losses.functional import (
    clip_loss,
    contrastive_ce,
    intra_modal_loss,
    multi_view_clip_loss,
    symmetric_infonce,
)
from cxr_vlp.losses.heads import ClipHead, GaussianEmbedding, LossHead, LossOutput
from cxr_vlp.losses.prob_head import ProbClipHead

__all__ = [
    "ClearHead",
    "ClipHead",
    "GaussianEmbedding",
    "LossHead",
    "LossOutput",
    "ProbClipHead",
    "clear_loss",
    "clip_loss",
    "contrastive_ce",
    "intra_modal_loss",
    "multi_view_clip_loss",
    "symmetric_infonce",
]
