"""Pure functions of the ProbCLIP-VIB objective (PCME++ / MedProbCLIP), DDP-exact.

Each sample is a diagonal Gaussian N(μ, diag σ²) given as ``mu`` ``[B, D]`` and ``logvar`` = log σ²
(``[B, D]``, or ``[B, 1]`` for one shared variance per sample, broadcast over D). DESIGN.md §3:

    CSD distance (PCME++'s closed-form sampled distance)
        d(a, b) = ‖μa − μb‖² + Σ_k (σa,k² + σb,k²)
    match logit   z = −a·d + b  (a > 0 and b learnable; PCME++ inits a = b = 5)
    match loss    mean over all pairs of BCE(z, y), y = 1 on the true pairs
    VIB           KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_k (μ_k² + σ_k² − log σ_k² − 1), averaged over samples
    MedProbCLIP's released variant (FOURM-LAB/MedProbCLIP):
        d(x, y) = ½ Σ_k [ (μx,k − μy,k)² / (σx,k² + σy,k²) + log(σx,k² + σy,k²) ]

DDP: :func:`prob_match_loss` takes the local image rows against the text columns gathered (with
gradients) from every rank, exactly like the CLIP loss; local rows × global columns cover every pair
of the global batch once, and every normalisation is by the (equal) local pair count, so DDP's
gradient averaging reproduces the single-process gradients on the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_vlp.losses import distributed as _dist

__all__ = [
    "csd_distance",
    "vib_kl",
    "uncertainty",
    "prob_match_loss",
    "medprobclip_distance",
]


def _as_float(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _variance(mu: Tensor, logvar: Tensor) -> Tensor:
    """σ² broadcast to ``mu``'s shape ``[B, D]`` (``logvar`` is ``[B, D]`` or ``[B, 1]``)."""
    if mu.ndim != 2:
        raise ValueError(f"mu must be [B, D], got {tuple(mu.shape)}")
    if logvar.ndim != 2 or logvar.shape[0] != mu.shape[0] or logvar.shape[1] not in (1, mu.shape[1]):
        raise ValueError(f"logvar must be [B, D] or [B, 1] for mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    return _as_float(logvar).exp().expand(mu.shape[0], mu.shape[1])


def csd_distance(mu_a: Tensor, logvar_a: Tensor, mu_b: Tensor, logvar_b: Tensor) -> Tensor:
    """Closed-form sampled distance ``[Ba, Bb]``: d_ij = ‖μa_i − μb_j‖² + Σ_k (σa,ik² + σb,jk²).

    The squared Euclidean part is expanded as ‖μa‖² + ‖μb‖² − 2 μa·μb (no ``[Ba, Bb, D]`` tensor)
    and clamped at 0 against rounding; the variance part is a sum of two per-sample totals.
    """
    if mu_a.ndim != 2 or mu_b.ndim != 2 or mu_a.shape[1] != mu_b.shape[1]:
        raise ValueError(f"expected [Ba, D] and [Bb, D] means, got {tuple(mu_a.shape)}, {tuple(mu_b.shape)}")
    ma, mb = _as_float(mu_a), _as_float(mu_b)
    va = _variance(ma, logvar_a).sum(dim=1)
    vb = _variance(mb, logvar_b).sum(dim=1)
    sq = (ma * ma).sum(1, keepdim=True) + (mb * mb).sum(1).unsqueeze(0) - 2.0 * (ma @ mb.transpose(0, 1))
    return sq.clamp_min(0.0) + va.unsqueeze(1) + vb.unsqueeze(0)


def vib_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Mean over the batch of KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_k (μ_k² + σ_k² − log σ_k² − 1)."""
    m = _as_float(mu)
    var = _variance(m, logvar)
    lv = _as_float(logvar).expand_as(var)
    return 0.5 * (m * m + var - lv - 1.0).sum(dim=1).mean()


def uncertainty(logvar: Tensor) -> Tensor:
    """Per-sample uncertainty Σ_k σ_k² (``[B]``); a ``[B, 1]`` logvar is one shared σ² (not × D)."""
    return _as_float(logvar).exp().sum(dim=-1)


def prob_match_loss(
    mu_i: Tensor,
    logvar_i: Tensor,
    mu_t: Tensor,
    logvar_t: Tensor,
    a: Tensor | float,
    b: Tensor | float,
    pseudo_positive_weight: float = 0.0,
    gather: bool = True,
) -> dict[str, Tensor]:
    """PCME++ matching loss: BCE on z = −a·d + b over every (image, text) pair, plus pseudo-positives.

    Rows are the B local images, columns the M = W·B global texts (gathered with gradients under
    DDP; M = B otherwise); true pairs at (r, offset + r).

        match  = mean over the B·M pairs of BCE(z_rj, y_rj),   y = 1 on true pairs else 0
        pseudo = (1 / (B·M)) Σ_{(r, j) pseudo} BCE(z_rj, 1)
        loss   = match + pseudo_positive_weight · pseudo

    A pair (r, j ≠ offset + r) is a pseudo-positive when its logit is at least the logit of image r's
    true pair (z_rj ≥ z_r,offset+r, compared without gradient). It stays a negative in ``match`` (so
    weight 0 is exactly the plain loss) and is additionally pulled towards 1 with the given weight,
    like PCME++'s α·L_pseudo. ``pseudo`` is normalised by the fixed pair count, not by the number
    of pseudo-positives, which keeps the DDP average exact.

    Args:
        mu_i, logvar_i: image means ``[B, D]`` and log-variances ``[B, D]`` / ``[B, 1]``.
        mu_t, logvar_t: the paired text means / log-variances (same B).
        a, b: scale (> 0, e.g. softplus / exp of a parameter, chosen by the caller) and shift.
        pseudo_positive_weight: weight of the pseudo-positive term; 0 turns it off.
        gather: gather the text side across ranks under DDP.

    Returns ``{"loss", "match", "pseudo", "pseudo_share", "pos_logit", "neg_logit"}``;
    ``pseudo_share`` = pseudo-positives / negative pairs, ``pos_logit`` / ``neg_logit`` = mean logit
    of true / other pairs (the last three detached).
    """
    if mu_i.shape != mu_t.shape:
        raise ValueError(f"image and text means differ in shape: {tuple(mu_i.shape)} vs {tuple(mu_t.shape)}")
    if pseudo_positive_weight < 0:
        raise ValueError(f"pseudo_positive_weight must be >= 0, got {pseudo_positive_weight}")
    batch = mu_i.shape[0]
    offset = _dist.rank_offset(batch, device=mu_i.device) if gather else 0
    mu_t_all = _dist.gather_with_grad(mu_t) if gather else mu_t
    logvar_t_all = _dist.gather_with_grad(logvar_t) if gather else logvar_t

    dist = csd_distance(mu_i, logvar_i, mu_t_all, logvar_t_all)
    logits = -a * dist + b
    rows = torch.arange(batch, device=logits.device)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[rows, rows + offset] = True
    match = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype))

    with torch.no_grad():
        true_logit = logits[rows, rows + offset]
        pseudo_mask = (logits >= true_logit.unsqueeze(1)) & ~positive
    # BCE(z, 1) = softplus(−z); masked sum over a fixed count (B·M)
    pseudo = (F.softplus(-logits) * pseudo_mask.to(logits.dtype)).sum() / logits.numel()
    loss = match + pseudo_positive_weight * pseudo if pseudo_positive_weight != 0.0 else match

    n_neg = max(logits.numel() - batch, 1)  # 0 negatives (B_global == 1) reports 0, not NaN
    with torch.no_grad():
        stats = {
            "pseudo_share": pseudo_mask.sum().to(logits.dtype) / n_neg,
            "pos_logit": true_logit.mean(),
            "neg_logit": logits.masked_fill(positive, 0.0).sum() / n_neg,
        }
    return {"loss": loss, "match": match, "pseudo": pseudo, **stats}


def medprobclip_distance(
    mu_x: Tensor, logvar_x: Tensor, mu_y: Tensor, logvar_y: Tensor, chunk_size: int = 256
) -> Tensor:
    """MedProbCLIP's distance ``[Bx, By]``: ½ Σ_k [(μx−μy)² / (σx²+σy²) + log(σx²+σy²)].

    The per-dimension pairwise variance sum does not factorise, so ``[chunk, By, D]`` blocks are
    formed, ``chunk_size`` rows of x at a time, to bound memory.
    """
    if mu_x.ndim != 2 or mu_y.ndim != 2 or mu_x.shape[1] != mu_y.shape[1]:
        raise ValueError(f"expected [Bx, D] and [By, D] means, got {tuple(mu_x.shape)}, {tuple(mu_y.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mx, my = _as_float(mu_x), _as_float(mu_y)
    vx, vy = _variance(mx, logvar_x), _variance(my, logvar_y)
    blocks = []
    for start in range(0, mx.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        var = vx[sl].unsqueeze(1) + vy.unsqueeze(0)  # [c, By, D]
        diff = mx[sl].unsqueeze(1) - my.unsqueeze(0)
        blocks.append(0.5 * (diff * diff / var + var.log()).sum(dim=-1))
    return torch.cat(blocks, dim=0)
