"""MCSL: the Multi-view Concept Similarity Loss of CLIP-XRad (eq. 1–7), DDP-exact.

Notation (docs/design.md §3): labels l ∈ {0,1}^C per study (CheXpert's 14; unknown → 0), s the logit scale,
embeddings L2-normalised, λ the concept weight, τ_c the concept temperature.

    J_ij = l_i·l_j / (|l_i| + |l_j| − l_i·l_j)             (0 where the union is empty)        eq. 1
    Ĵ_i· = softmax_j(J_ij / τ_c) over j ≠ i                 (own column −inf before softmax)    eq. 2
    S    = (I + λ Ĵ) / (1 + λ)                                                                  eq. 3
           (a row with Ĵ_i· = 0 — see ``empty_row`` — is the identity row, so rows always sum to 1)
    L_sem(I, T) = ½ [ −mean_i Σ_j S_ij log softmax_j(s I_i·T_j)
                      −mean_j Σ_i S_ji log softmax_i(s T_j·I_i) ]                             eq. 4–6
    L_MCSL = mean of L_sem over all (image view, text view) pairings — the paper's four          eq. 7
             (I, T), (I, T'), (I', T), (I', T') with two views of each.

Text→image direction: row j of the transposed problem is text j, and its target distribution over
the images is S_j· (row j of S, the soft targets of study j), i.e. the paper's "transposed indexing"
S_ji. Both modalities of a study share its labels, so one S serves both directions; its rows are
probability distributions (the columns of a row-softmax are not, which is why Sᵀ's rows are not used).

DDP (same scheme as :mod:`cxr_vlp.losses.functional`): every rank holds B local studies; embeddings
are gathered *with* gradients and labels *without* (they carry none). Each rank computes its local rows
against the W·B global columns, the local rows' targets are built from their labels against all labels
(own column = ``offset + i``, offset = rank·B), and each term is a mean over local rows; DDP's gradient
averaging then reproduces the single-process gradients of the concatenated batch exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_vlp.losses import distributed as _dist
from cxr_vlp.losses.functional import symmetric_infonce
from cxr_vlp.losses.heads import ClipHead

__all__ = [
    "EMPTY_ROW_MODES",
    "binarize_labels",
    "jaccard_similarity",
    "concept_softmax",
    "concept_targets",
    "soft_contrastive_ce",
    "mcsl_loss",
    "McslHead",
]

EMPTY_ROW_MODES = ("identity", "uniform")
_DEFAULT_EMPTY_ROW = "identity"


def _as_float(x: Tensor) -> Tensor:
    """Upcast half precision to float32; leave float32 / float64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def binarize_labels(labels: Tensor) -> Tensor:
    """{1, 0, NaN, −1} label matrix → {0, 1} floats: only a known positive (value 1) counts.

    NaN (unknown) becomes 0 first; anything ≤ 0.5 (negative, or an uncertain −1 left unmapped by the
    label policy) is 0. Float inputs keep their dtype (float32 for half / integer / bool inputs).
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be [N, C], got shape {tuple(labels.shape)}")
    dtype = labels.dtype if labels.dtype in (torch.float32, torch.float64) else torch.float32
    x = torch.nan_to_num(labels.detach().to(dtype), nan=0.0)
    return (x > 0.5).to(dtype)


def jaccard_similarity(labels: Tensor, other: Tensor | None = None) -> Tensor:
    """Jaccard index between the label rows of ``labels`` [N, C] and ``other`` [M, C] (default: itself).

    J_ij = l_i·l_j / (|l_i| + |l_j| − l_i·l_j) on binarised labels (:func:`binarize_labels`; NaN →
    0), and 0 where the union is empty (two rows without any positive). Returns ``[N, M]``, never NaN.
    """
    a = binarize_labels(labels)
    b = a if other is None else binarize_labels(other).to(a.dtype)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"label widths differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    inter = a @ b.transpose(0, 1)
    union = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - inter
    # binary labels: a non-empty union is ≥ 1, so clamping the denominator only guards the 0/0 case
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def _check_empty_row(empty_row: str) -> str:
    if empty_row not in EMPTY_ROW_MODES:
        raise ValueError(f"empty_row must be one of {EMPTY_ROW_MODES}, got {empty_row!r}")
    return empty_row


def concept_softmax(
    labels_local: Tensor,
    labels_global: Tensor,
    offset: int = 0,
    concept_temperature: float = 1.0,
    empty_row: str = _DEFAULT_EMPTY_ROW,
) -> tuple[Tensor, Tensor]:
    """Ĵ (eq. 2) for the local rows against the global columns, and the rows' "empty" mask.

    Ĵ_i· = softmax over j of J_ij / τ_c where row i's own column ``offset + i`` is set to −inf
    *before* the softmax, so Ĵ_i,offset+i = 0 exactly and the other entries of the row sum to 1.

    A row is *empty* when its Jaccard with every other global row is 0 (no concept overlap with anyone
    in the batch, e.g. all-unknown or all-negative labels). ``empty_row`` decides its Ĵ:

    * ``"identity"`` (default): Ĵ_i· = 0, so S_i· is the identity row (see :func:`concept_targets`)
      and the row reduces to plain CLIP. Rationale: an empty row carries no concept evidence — most
      often its labels are simply unknown (blank in CheXpert / MIMIC), or the study overlaps with
      nobody in this batch — and "uniform" would then pull the sample towards the mean of all other
      samples with λ/(1+λ) ≈ 41 % of its target mass: a fabricated similarity that fights instance
      discrimination.
    * ``"uniform"``: keep the softmax as computed; all logits are equal, so Ĵ_i· is uniform over the
      other columns. This is the literal reading of eq. 2 of the paper.

    With a single global column (B_global == 1) the row has no other column; Ĵ is defined as 0.
    Returns ``(jhat [B_local, B_global], empty [B_local] bool)``, both without gradient.
    """
    _check_empty_row(empty_row)
    if concept_temperature <= 0:
        raise ValueError(f"concept_temperature must be > 0, got {concept_temperature}")
    n, m = labels_local.shape[0], labels_global.shape[0]
    if offset < 0 or offset + n > m:
        raise ValueError(f"own columns {offset}..{offset + n - 1} out of range for {m} global rows")
    jac = jaccard_similarity(labels_local, labels_global)
    rows = torch.arange(n, device=jac.device)
    own = torch.zeros_like(jac, dtype=torch.bool)
    own[rows, rows + offset] = True
    empty = ~((jac > 0) & ~own).any(dim=1)
    if m == 1:
        return torch.zeros_like(jac), empty
    jhat = torch.softmax((jac / concept_temperature).masked_fill(own, float("-inf")), dim=1)
    if empty_row == "identity":
        jhat = jhat.masked_fill(empty.unsqueeze(1), 0.0)
    return jhat, empty


def concept_targets(
    labels_local: Tensor,
    labels_global: Tensor,
    offset: int = 0,
    lam: float = 0.7,
    concept_temperature: float = 1.0,
    empty_row: str = _DEFAULT_EMPTY_ROW,
) -> Tensor:
    """Soft targets S = (I + λĴ) / (1 + λ) (eq. 3) of the local rows over the global columns.

    ``I`` is 1 at (i, offset + i). Every row sums to 1. An ordinary row gives its own column
    exactly 1/(1+λ) (Ĵ is 0 there) and λ/(1+λ) to the others; a row whose Ĵ is 0 (an empty row with
    ``empty_row="identity"``, or B_global == 1) is the exact identity row (normalised by 1 instead of
    1 + λ so it still sums to 1). λ = 0 gives the CLIP targets. See :func:`concept_softmax` for
    ``empty_row``. No gradient, never NaN.
    """
    jhat, _ = concept_softmax(labels_local, labels_global, offset, concept_temperature, empty_row)
    return _blend(jhat, offset, lam)


def _blend(jhat: Tensor, offset: int, lam: float) -> Tensor:
    """S = (I + λĴ) / (1 + λ Σ_j Ĵ_ij), I one at (i, offset + i).

    Σ_j Ĵ_ij is 1 for an ordinary row (giving eq. 3's 1 + λ) and 0 for a row whose Ĵ was set to 0
    (``empty_row="identity"`` or B_global == 1), which thus becomes the exact identity row.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    eye = torch.zeros_like(jhat)
    rows = torch.arange(jhat.shape[0], device=jhat.device)
    eye[rows, rows + offset] = 1.0
    return (eye + lam * jhat) / (1.0 + lam * jhat.sum(dim=1, keepdim=True))


def soft_contrastive_ce(
    queries_local: Tensor, keys_global: Tensor, targets: Tensor, logit_scale: Tensor | float
) -> Tensor:
    """Soft-target InfoNCE: −mean_i Σ_j S_ij log softmax_j(s · q_i · k_j).

    Args:
        queries_local: ``[B, D]`` rows.
        keys_global: ``[M, D]`` columns.
        targets: ``[B, M]`` soft targets S (rows should sum to 1; not checked).
        logit_scale: scalar s.
    """
    if queries_local.ndim != 2 or keys_global.ndim != 2 or queries_local.shape[1] != keys_global.shape[1]:
        raise ValueError(f"expected [B, D] and [M, D], got {tuple(queries_local.shape)}, {tuple(keys_global.shape)}")
    expected = (queries_local.shape[0], keys_global.shape[0])
    if tuple(targets.shape) != expected:
        raise ValueError(f"targets must be {expected}, got {tuple(targets.shape)}")
    q, k = _as_float(queries_local), _as_float(keys_global)
    log_p = F.log_softmax(logit_scale * (q @ k.transpose(0, 1)), dim=1)
    return -(targets.to(log_p.dtype) * log_p).sum(dim=1).mean()


def mcsl_loss(
    image_embs: Sequence[Tensor],
    text_embs: Sequence[Tensor],
    labels: Tensor,
    logit_scale: Tensor | float,
    lam: float = 0.7,
    concept_temperature: float = 1.0,
    empty_row: str = _DEFAULT_EMPTY_ROW,
    w_i2i: float = 0.0,
    w_t2t: float = 0.0,
    gather: bool = True,
) -> dict[str, Tensor]:
    """Multi-view Concept Similarity Loss (CLIP-XRad eq. 7) plus optional intra-modal terms.

        semantic = (1 / (V_I·V_T)) Σ_{v, u} L_sem(I_v, T_u)      (sem_i{v}_t{u} per pairing)
        i2i      = ½[CE(s I_0·I_1ᵀ) + CE(s I_1·I_0ᵀ)]            (only if V_I ≥ 2 and w_i2i ≠ 0)
        t2t      = the same for text views 0 and 1               (only if V_T ≥ 2 and w_t2t ≠ 0)
        loss     = semantic + w_i2i · i2i + w_t2t · t2t

    The intra-modal terms are plain InfoNCE (hard identity targets), as in CXR-CLIP.

    Args:
        image_embs, text_embs: lists of ``[B, D]`` L2-normalised views of the same B studies.
        labels: ``[B, C]`` CheXpert labels (1 / 0 / NaN = unknown); unknown counts as absent.
        logit_scale: s (already exp'd and clamped).
        lam, concept_temperature, empty_row: see :func:`concept_targets`.
        gather: under DDP gather embeddings (with gradients) and labels (without) across ranks.

    Returns ``{"loss", "semantic", "sem_i{v}_t{u}"..., ["i2i"], ["t2t"], "concept_mass",
    "empty_rows"}``: ``concept_mass`` is the mean off-diagonal target mass Σ_{j≠own} S_ij of the
    local rows (λ/(1+λ) for each row whose Ĵ is not 0) and ``empty_rows`` the share of local empty
    rows; both are detached statistics.
    """
    image_embs, text_embs = list(image_embs), list(text_embs)
    if not image_embs or not text_embs:
        raise ValueError("need at least one image view and one text view")
    views = image_embs + text_embs
    for v in views:
        if v.ndim != 2 or v.shape != views[0].shape:
            raise ValueError(f"expected views of equal shape [B, D], got {[tuple(x.shape) for x in views]}")
    batch = views[0].shape[0]
    if labels is None or labels.ndim != 2 or labels.shape[0] != batch:
        shape = None if labels is None else tuple(labels.shape)
        raise ValueError(f"labels must be [B={batch}, C], got {shape}")

    dev = views[0].device
    offset = _dist.rank_offset(batch, device=dev) if gather else 0
    # binary labels are exact in any float dtype: build the targets in the loss's compute dtype
    labels_local = binarize_labels(labels.to(dev)).to(_as_float(views[0]).dtype)
    labels_global = _dist.gather_no_grad(labels_local) if gather else labels_local
    img_all = [_dist.gather_with_grad(v) if gather else v for v in image_embs]
    txt_all = [_dist.gather_with_grad(v) if gather else v for v in text_embs]

    jhat, empty = concept_softmax(labels_local, labels_global, offset, concept_temperature, empty_row)
    targets = _blend(jhat, offset, lam)

    out: dict[str, Tensor] = {}
    pair_losses = []
    for v, (img, img_g) in enumerate(zip(image_embs, img_all)):
        for u, (txt, txt_g) in enumerate(zip(text_embs, txt_all)):
            sem = 0.5 * (
                soft_contrastive_ce(img, txt_g, targets, logit_scale)
                + soft_contrastive_ce(txt, img_g, targets, logit_scale)
            )
            out[f"sem_i{v}_t{u}"] = sem
            pair_losses.append(sem)
    semantic = torch.stack(pair_losses).mean()
    total = semantic
    extra: dict[str, Tensor] = {}
    if w_i2i != 0.0 and len(image_embs) >= 2:
        extra["i2i"] = symmetric_infonce(image_embs[0], image_embs[1], img_all[0], img_all[1], logit_scale, offset)
        total = total + w_i2i * extra["i2i"]
    if w_t2t != 0.0 and len(text_embs) >= 2:
        extra["t2t"] = symmetric_infonce(text_embs[0], text_embs[1], txt_all[0], txt_all[1], logit_scale, offset)
        total = total + w_t2t * extra["t2t"]

    own_mass = targets[torch.arange(batch, device=dev), torch.arange(batch, device=dev) + offset]
    stats = {
        "concept_mass": (targets.sum(1) - own_mass).mean().detach(),
        "empty_rows": empty.to(targets.dtype).mean(),
    }
    return {"loss": total, "semantic": semantic, **out, **extra, **stats}


class McslHead(ClipHead):
    """MCSL loss head (CLIP-XRad): concept-soft CLIP targets from CheXpert labels, multi-view.

    The learnable logit scale (s = min(exp(param), max_scale), init 1/temperature_init) is ClipHead's;
    the loss is :func:`mcsl_loss`. Needs ``labels`` (``[B, C]``, NaN = unknown) in ``forward``.

    Args:
        lam: λ, weight of the concept targets (paper: 0.7; 0 = CLIP averaged over pairings).
        concept_temperature: τ_c of the Jaccard softmax (not given in the paper; its code used 1.0).
        temperature_init, max_scale, learn_temperature, w_i2i, w_t2t, gather: as in ClipHead.
        empty_row: ``"identity"`` (default) or ``"uniform"``, see :func:`concept_softmax`.

    Logs: ``loss``, ``semantic``, ``sem_i{v}_t{u}`` per pairing, ``i2i`` / ``t2t`` when computed,
    ``concept_mass`` (mean off-diagonal target mass actually placed on other rows), ``empty_rows``,
    ``logit_scale`` and ``temperature``.
    """

    def __init__(
        self,
        lam: float = 0.7,
        concept_temperature: float = 1.0,
        temperature_init: float = 0.07,
        max_scale: float = 100.0,
        learn_temperature: bool = True,
        empty_row: str = _DEFAULT_EMPTY_ROW,
        w_i2i: float = 0.0,
        w_t2t: float = 0.0,
        gather: bool = True,
    ) -> None:
        super().__init__(
            temperature_init=temperature_init,
            max_scale=max_scale,
            learn_temperature=learn_temperature,
            w_i2i=w_i2i,
            w_t2t=w_t2t,
            gather=gather,
        )
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if concept_temperature <= 0:
            raise ValueError(f"concept_temperature must be > 0, got {concept_temperature}")
        self.lam = float(lam)
        self.concept_temperature = float(concept_temperature)
        self.empty_row = _check_empty_row(empty_row)

    def _terms(
        self, image_views: list[Tensor], text_views: list[Tensor], labels: Tensor | None, scale: Tensor
    ) -> dict[str, Tensor]:
        """The MCSL terms; raises ``ValueError`` without labels."""
        if labels is None:
            raise ValueError(
                "McslHead needs the batch's CheXpert labels ([B, 14], NaN = unknown); got labels=None "
                "(use a dataset with label columns, or the clip loss)"
            )
        return mcsl_loss(
            image_views,
            text_views,
            labels,
            scale,
            lam=self.lam,
            concept_temperature=self.concept_temperature,
            empty_row=self.empty_row,
            w_i2i=self.w_i2i,
            w_t2t=self.w_t2t,
            gather=self.gather,
        )

    def extra_repr(self) -> str:
        return (
            f"lam={self.lam}, concept_temperature={self.concept_temperature}, empty_row={self.empty_row!r}, "
            + super().extra_repr()
        )
