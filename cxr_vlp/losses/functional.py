"""Pure contrastive loss functions (CLIP InfoNCE and the CXR-CLIP intra-modal terms).

Notation: s = logit scale (already exp'd and clamped by the caller), embeddings L2-normalised.
Under DDP each rank holds B local rows; with gathering, the columns are the W·B global samples and

    CE_q→k = −(1/B) Σ_{i local} log softmax_j( s · q_i · k_jᵀ )[i + o],   o = rank · B

so each rank's loss is a mean over its *local* rows against the *global* columns. Gradients are
passed back through the gather (see :mod:`cxr_vlp.losses.distributed`), and DDP's gradient averaging
over ranks then yields exactly the gradient of the single-process loss on the global batch.
In a single process (or with ``gather=False``) the inputs are taken as the whole batch (o = 0).

This module is the one place to find every loss formula as a pure function: ``clip_loss`` here,
``csd_distance`` / ``vib_kl`` (defined in :mod:`cxr_vlp.losses.probabilistic`), and ``mcsl_loss`` /
``clear_loss`` (defined beside their heads in :mod:`cxr_vlp.losses.mcsl` and
:mod:`cxr_vlp.losses.clear_head`, resolved lazily here because those modules build on this one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_vlp.losses import distributed as _dist
from cxr_vlp.losses.probabilistic import csd_distance, vib_kl

__all__ = [
    "contrastive_ce",
    "symmetric_infonce",
    "clip_loss",
    "intra_modal_loss",
    "multi_view_clip_loss",
    "csd_distance",
    "vib_kl",
    "mcsl_loss",
    "clear_loss",
]

_LAZY = {"mcsl_loss": "cxr_vlp.losses.mcsl", "clear_loss": "cxr_vlp.losses.clear_head"}


def __getattr__(name: str):  # PEP 562: the formulas whose modules import this one
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_float(x: Tensor) -> Tensor:
    """Upcast half precision to float32 for the softmax; leave float32/float64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def contrastive_ce(queries: Tensor, keys: Tensor, logit_scale: Tensor | float, offset: int = 0) -> Tensor:
    """One InfoNCE direction: mean_i CE( s · queries_i · keysᵀ, target = i + offset ).

    Args:
        queries: ``[B, D]`` (the local rows).
        keys: ``[M, D]`` with ``M ≥ offset + B`` (the local or global columns).
        logit_scale: scalar s.
        offset: column index of query 0's positive.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"expected [B, D] and [M, D], got {tuple(queries.shape)}, {tuple(keys.shape)}")
    if offset + queries.shape[0] > keys.shape[0]:
        raise ValueError(f"targets {offset}..{offset + queries.shape[0] - 1} out of range for {keys.shape[0]} keys")
    q, k = _as_float(queries), _as_float(keys)
    logits = logit_scale * (q @ k.transpose(0, 1))
    targets = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, targets)


def symmetric_infonce(
    a_local: Tensor,
    b_local: Tensor,
    a_all: Tensor,
    b_all: Tensor,
    logit_scale: Tensor | float,
    offset: int = 0,
) -> Tensor:
    """½ [ CE(s · a_local · b_allᵀ) + CE(s · b_local · a_allᵀ) ], targets ``arange(B) + offset``.

    The building block for :func:`clip_loss` / :func:`intra_modal_loss` when the caller has already
    gathered the columns (``a_all``, ``b_all``) and knows its row offset.
    """
    return 0.5 * (
        contrastive_ce(a_local, b_all, logit_scale, offset) + contrastive_ce(b_local, a_all, logit_scale, offset)
    )


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [B, D] tensors of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}")


def _gathered(x: Tensor, gather: bool) -> Tensor:
    return _dist.gather_with_grad(x) if gather else x


def _offset(batch: int, gather: bool, device: torch.device) -> int:
    return _dist.rank_offset(batch, device=device) if gather else 0


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, gather: bool = True) -> Tensor:
    """CLIP loss ½ [CE_i2t + CE_t2i].

    Single process: logits = s · I Tᵀ and loss = ½ [CE(logits, diag) + CE(logitsᵀ, diag)].
    Under DDP (``gather=True``): logits_i2t = s · I_local T_globalᵀ, logits_t2i = s · T_local I_globalᵀ,
    targets = arange(B_local) + rank·B_local, each CE a mean over local rows. With ``gather=False``
    the inputs are treated as the complete batch (e.g. already gathered by the caller).

    Args:
        image_emb, text_emb: ``[B, D]`` L2-normalised embeddings of B matching pairs.
        logit_scale: multiplicative scale s (already exp'd and clamped).
    """
    _check_pair(image_emb, text_emb)
    off = _offset(image_emb.shape[0], gather, image_emb.device)
    return symmetric_infonce(
        image_emb, text_emb, _gathered(image_emb, gather), _gathered(text_emb, gather), logit_scale, off
    )


def intra_modal_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float, gather: bool = True) -> Tensor:
    """Intra-modal InfoNCE between two views of one modality (CXR-CLIP): ½ [CE(s·A Bᵀ) + CE(s·B Aᵀ)].

    Row i of ``a`` and of ``b`` are two views (images or report sections) of the same study. Same
    DDP scheme as :func:`clip_loss`.
    """
    return clip_loss(a, b, logit_scale, gather=gather)


def multi_view_clip_loss(
    image_views: Sequence[Tensor],
    text_views: Sequence[Tensor],
    logit_scale: Tensor | float,
    w_i2i: float = 0.0,
    w_t2t: float = 0.0,
    gather: bool = True,
) -> dict[str, Tensor]:
    """Multi-view CLIP objective.

        contrastive = (1 / (V_I·V_T)) Σ_{v, u} clip_loss(I_v, T_u)
        i2i         = intra_modal_loss(I_0, I_1)      (only if V_I ≥ 2 and w_i2i ≠ 0)
        t2t         = intra_modal_loss(T_0, T_1)      (only if V_T ≥ 2 and w_t2t ≠ 0)
        loss        = contrastive + w_i2i · i2i + w_t2t · t2t

    Each view is gathered once (not once per pairing). Returns ``{"loss", "contrastive"}`` plus
    ``"i2i"`` / ``"t2t"`` when those terms are computed.
    """
    image_views, text_views = list(image_views), list(text_views)
    if not image_views or not text_views:
        raise ValueError("need at least one image view and one text view")
    views = image_views + text_views
    for v in views[1:]:
        _check_pair(views[0], v)
    off = _offset(views[0].shape[0], gather, views[0].device)
    img_all = [_gathered(v, gather) for v in image_views]
    txt_all = [_gathered(v, gather) for v in text_views]

    pair_losses = [
        symmetric_infonce(image_views[i], text_views[j], img_all[i], txt_all[j], logit_scale, off)
        for i in range(len(image_views))
        for j in range(len(text_views))
    ]
    contrastive = torch.stack(pair_losses).mean()
    out: dict[str, Tensor] = {"contrastive": contrastive}
    total = contrastive
    if w_i2i != 0.0 and len(image_views) >= 2:
        out["i2i"] = symmetric_infonce(image_views[0], image_views[1], img_all[0], img_all[1], logit_scale, off)
        total = total + w_i2i * out["i2i"]
    if w_t2t != 0.0 and len(text_views) >= 2:
        out["t2t"] = symmetric_infonce(text_views[0], text_views[1], txt_all[0], txt_all[1], logit_scale, off)
        total = total + w_t2t * out["t2t"]
    out["loss"] = total
    return {"loss": out.pop("loss"), **out}
