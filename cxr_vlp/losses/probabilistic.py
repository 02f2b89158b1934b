"""Pure functions of the ProbCLIP-VIB objective (PCME++ / MedProbCLIP), DDP-exact.

Each sample is a diagonal Gaussian N(μ, diag σ²) given as ``mu`` ``[B, D]`` and ``logvar`` = log σ²
(``[B, D]``, or ``[B, 1]`` for one shared variance per sample, broadcast over D). Following PCME++
(Chun, ICLR 2024; naver-ai/pcmepp):

    CSD distance (PCME++'s closed-form sampled distance)
        d(a, b) = ‖μa − μb‖² + Σ_k (σa,k² + σb,k²)
    match logit   z = −a·d + b  (a > 0 and b learnable; PCME++ inits a = b = 5)
    match loss    mean over all pairs of BCE(z, y), y = 1 on the true pairs, plus α times the same BCE
                  with the pseudo-positives relabelled 1, once per direction (:func:`prob_match_loss`)
    VIB           KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_k (μ_k² + σ_k² − log σ_k² − 1), per sample, averaged over
                  samples, or averaged over all B·D elements (PCME++; :func:`vib_kl`)
    MedProbCLIP's released variant (FOURM-LAB/MedProbCLIP):
        d(x, y) = ½ Σ_k [ (μx,k − μy,k)² / (σx,k² + σy,k²) + log(σx,k² + σy,k²) ]

DDP: :func:`prob_match_loss` takes the local image rows against the text columns gathered (with
gradients) from every rank, exactly like the CLIP loss; local rows × global columns cover every pair
of the global batch once, and every normalisation is by the (equal) local pair count, so DDP's
gradient averaging reproduces the single-process gradients on the concatenated batch. The
text→image pseudo-positives compare each column with its true-pair logit, which the owning rank
computes; those logits are all-gathered without gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_vlp.losses import distributed as _dist

__all__ = [
    "KL_REDUCTIONS",
    "csd_distance",
    "vib_kl",
    "uncertainty",
    "prob_match_loss",
    "medprobclip_distance",
]

KL_REDUCTIONS = ("mean_over_dims", "sum_over_dims")


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


def vib_kl(mu: Tensor, logvar: Tensor, reduction: str = "sum_over_dims") -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) of a batch, elementwise ½ (μ_k² + σ_k² − log σ_k² − 1).

    ``reduction``: ``"sum_over_dims"`` sums the elements over the D dimensions (the per-sample KL) and
    averages over the batch; ``"mean_over_dims"`` averages over all B·D elements (PCME++'s
    ``kl_divergence``), i.e. the former divided by D. A ``[B, 1]`` logvar is broadcast over D first.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    m = _as_float(mu)
    var = _variance(m, logvar)
    lv = _as_float(logvar).expand_as(var)
    elements = 0.5 * (m * m + var - lv - 1.0)
    return elements.sum(dim=1).mean() if reduction == "sum_over_dims" else elements.mean()


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
    """PCME++ matching loss with pseudo-positives: L_match + α·L_pseudo on z = −a·d + b.

    Rows are the B local images, columns the M = W·B global texts (gathered with gradients under
    DDP; M = B otherwise); true pairs at (r, offset + r). P is the true-pair mask and BCE̅(z, Y) the mean
    over the B·M pairs of BCE(z_rj, Y_rj) (Chun, "Improved Probabilistic Image-Text Representations",
    ICLR 2024, §2.3; naver-ai/pcmepp ``pcmepp/criterions/pcmepp.py``):

        match    = BCE̅(z, P)
        R_i2t    = {(r, j) ∉ P : z_rj ≥ z_r,offset+r}   image rows against their own true-pair logit
        R_t2i    = {(r, j) ∉ P : z_rj ≥ z_jj}           text columns against their own true-pair logit
        pseudo   = ½ [BCE̅(z, P ∪ R_i2t) + BCE̅(z, P ∪ R_t2i)]   the matching BCE with those pairs relabelled 1
        loss     = match + α · pseudo,   α = pseudo_positive_weight

    The masks are compared without gradient, ties count (≥). Convention: PCME++ sums the two BCE
    directions (equal for the symmetric CSD) and adds α times both relabelled BCEs, so its loss is exactly
    2 × this one; α has the same meaning in both. Under DDP the text→image direction needs the true-pair
    logit z_jj of every global text column, so the local true-pair logits are all-gathered (no gradient:
    they only select pairs). Each term is a mean over the local B·M pairs, so DDP's gradient average
    reproduces the single-process loss on the concatenated batch.

    Args:
        mu_i, logvar_i: image means ``[B, D]`` and log-variances ``[B, D]`` / ``[B, 1]``.
        mu_t, logvar_t: the paired text means / log-variances (same B).
        a, b: scale (> 0, e.g. softplus / exp of a parameter, chosen by the caller) and shift.
        pseudo_positive_weight: α; 0 gives the plain matching loss (``pseudo`` is still reported).
        gather: gather the text side (and the true-pair logits) across ranks under DDP.

    Returns ``{"loss", "match", "pseudo", "pseudo_share", "pos_logit", "neg_logit"}``;
    ``pseudo_share`` = (|R_i2t| + |R_t2i|) / (2 · negative pairs), ``pos_logit`` / ``neg_logit`` = mean
    logit of true / other pairs (the last three detached).
    """
    if mu_i.shape != mu_t.shape:
        raise ValueError(f"image and text means differ in shape: {tuple(mu_i.shape)} vs {tuple(mu_t.shape)}")
    if pseudo_positive_weight < 0:
        raise ValueError(f"pseudo_positive_weight must be >= 0, got {pseudo_positive_weight}")
    batch = mu_i.shape[0]
    offset = _dist.rank_offset(batch, device=mu_i.device) if gather else 0
    mu_t_all = _dist.gather_with_grad(mu_t) if gather else mu_t
    logvar_t_all = _dist.gather_with_grad(logvar_t) if gather else logvar_t

    logits = -a * csd_distance(mu_i, logvar_i, mu_t_all, logvar_t_all) + b
    rows = torch.arange(batch, device=logits.device)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[rows, rows + offset] = True
    match = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype))

    with torch.no_grad():
        true_logit = logits[rows, rows + offset]  # z of this rank's true pairs, i.e. of its texts' columns
        true_logit_all = _dist.gather_no_grad(true_logit) if gather else true_logit  # [M], column order
        pseudo_i2t = (logits >= true_logit.unsqueeze(1)) & ~positive
        pseudo_t2i = (logits >= true_logit_all.unsqueeze(0)) & ~positive
    pseudo = 0.5 * (
        F.binary_cross_entropy_with_logits(logits, (positive | pseudo_i2t).to(logits.dtype))
        + F.binary_cross_entropy_with_logits(logits, (positive | pseudo_t2i).to(logits.dtype))
    )
    loss = match + pseudo_positive_weight * pseudo if pseudo_positive_weight != 0.0 else match

    n_neg = max(logits.numel() - batch, 1)  # 0 negatives (B_global == 1) reports 0, not NaN
    with torch.no_grad():
        stats = {
            "pseudo_share": (pseudo_i2t.sum() + pseudo_t2i.sum()).to(logits.dtype) / (2 * n_neg),
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
