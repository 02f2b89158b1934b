"""ProbCLIP-VIB loss head (PCME++ matching + variational information bottleneck), DDP-exact.

Every view is a :class:`~cxr_vlp.losses.heads.GaussianEmbedding` ``(μ, log σ²)`` (docs/design.md §3). With
V_I image views and V_T text views:

    match-logit   z = −a·d + b,  d = CSD distance (:func:`~cxr_vlp.losses.probabilistic.csd_distance`)
                  a = exp(a_log) > 0 and b learnable (PCME++ init a = b = 5)
    cross         = (1 / (V_I·V_T)) Σ_{v,u} pm(I_v, T_u),  pm = prob_match_loss: BCE over all global
                    pairs + α·(the BCE with pseudo-positives relabelled 1, both directions), α =
                    pseudo_positive_weight (PCME++ §2.3)
    i2i           = ½ [pm(I_0, I_1) + pm(I_1, I_0)]          (same probabilistic match; if V_I ≥ 2, w_i2i ≠ 0)
    t2t           = the same for text views 0 and 1       (if V_T ≥ 2 and w_t2t ≠ 0)
    kl            = KL(N(μ, σ²) ‖ N(0, I)) reduced as ``kl_reduction`` says:
                    mean_over_dims (default)  ½ [mean_v KL̄(I_v) + mean_u KL̄(T_u)],  KL̄ = mean over B·D elements
                    sum_over_dims             mean_v KL(I_v) + mean_u KL(T_u),     KL = per-sample sum over D,
                                              batch mean  (= 2D × the mean_over_dims value)
    clip          = multi-view CLIP on the means μ with its own learnable temperature (if clip_weight ≠ 0)
    loss          = cross + w_i2i·i2i + w_t2t·t2t + kl_weight·kl + clip_weight·clip

Weight conventions against PCME++ (naver-ai/pcmepp ``pcmepp/criterions/pcmepp.py``): PCME++ sums its two
(equal) BCE directions, adds α times both relabelled BCEs and β·(KL̄_img + KL̄_txt). With one view each,
no intra-modal or CLIP term and ``kl_reduction="mean_over_dims"``, this loss is exactly half of PCME++'s,
so α = 0.1 and ``kl_weight`` = β = 1e-4 carry PCME++'s strengths. With ``"sum_over_dims"`` the same
strength is ``kl_weight`` = β / (2D).

The deterministic CLIP term is there because from scratch the CSD distances can collapse (pcmepp issue
#4); the demo mixes it in with weight 1.

Retrieval / ranking: :meth:`ProbClipHead.similarity` (on :class:`~cxr_vlp.models.outputs.Embeddings`) is the
match logit −a·d + b between two sets of Gaussians (:meth:`ProbClipHead.match_logit` on tensors). It is *not*
equivalent to ranking by μ cosine: d contains Σσ² of the gallery item, so an
uncertain gallery item ranks lower. ``similarity_scale()`` (for cosine-only consumers such as zero-shot
on μ) is 2a, since −a‖μa − μb‖² = 2a·cos − 2a for unit μ.

Variant ``distance="medprobclip"`` (FOURM-LAB/MedProbCLIP's released code): d = MedProbCLIP's distance
(:func:`~cxr_vlp.losses.probabilistic.medprobclip_distance`) and every match term (cross and intra-modal)
is the symmetric softmax InfoNCE ½[CE(z_xy) + CE(z_yx)] on z = −a·d + b instead of the BCE (b cancels in
the softmax; no pseudo-positives, so ``pseudo_positive_weight`` is ignored and ``pseudo`` logs 0). Unlike
the released code μ stays L2-normalised. Retrieval then ranks by −a·d_medprobclip + b.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxr_vlp.losses import distributed as _dist
from cxr_vlp.losses.functional import multi_view_clip_loss
from cxr_vlp.losses.heads import GaussianEmbedding, HeadSpec, LossHead, LossOutput
from cxr_vlp.losses.probabilistic import (
    KL_REDUCTIONS,
    csd_distance,
    medprobclip_distance,
    prob_match_loss,
    uncertainty,
    vib_kl,
)
from cxr_vlp.models.outputs import Embeddings

__all__ = ["DISTANCES", "ProbClipHead", "medprobclip_infonce"]

DISTANCES = ("csd", "medprobclip")


def medprobclip_infonce(
    x: GaussianEmbedding, y: GaussianEmbedding, a: Tensor | float, b: Tensor | float, gather: bool = True
) -> dict[str, Tensor]:
    """MedProbCLIP's match loss: ½[CE(z_xy, diag) + CE(z_yx, diag)], z = −a·d_medprobclip + b.

    DDP as the CLIP loss: local rows against the columns gathered with gradients, own column
    ``offset + r``, each CE a mean over local rows. Returns the same keys as ``prob_match_loss``
    (``pseudo`` and ``pseudo_share`` are 0; the logit statistics are those of the x → y direction).
    """
    batch = x.mu.shape[0]
    offset = _dist.rank_offset(batch, device=x.mu.device) if gather else 0
    gathered = [
        (_dist.gather_with_grad(v.mu), _dist.gather_with_grad(v.logvar)) if gather else (v.mu, v.logvar) for v in (x, y)
    ]
    (x_mu, x_lv), (y_mu, y_lv) = gathered
    z_xy = -a * medprobclip_distance(x.mu, x.logvar, y_mu, y_lv) + b
    z_yx = -a * medprobclip_distance(y.mu, y.logvar, x_mu, x_lv) + b
    target = torch.arange(batch, device=z_xy.device) + offset
    loss = 0.5 * (F.cross_entropy(z_xy, target) + F.cross_entropy(z_yx, target))
    with torch.no_grad():
        positive = F.one_hot(target, z_xy.shape[1]).bool()
        n_neg = max(z_xy.numel() - batch, 1)
        zero = torch.zeros((), dtype=z_xy.dtype, device=z_xy.device)
        stats = {
            "pseudo": zero,
            "pseudo_share": zero,
            "pos_logit": z_xy[positive].mean(),
            "neg_logit": z_xy.masked_fill(positive, 0.0).sum() / n_neg,
        }
    return {"loss": loss, "match": loss, **stats}


def _as_gaussian_views(views: GaussianEmbedding | Sequence, name: str) -> list[GaussianEmbedding]:
    if isinstance(views, GaussianEmbedding):
        return [views]
    if isinstance(views, Tensor):
        raise TypeError(
            f"ProbClipHead needs Gaussian {name} views (mu, logvar), got a plain tensor: build the model with "
            "model.probabilistic=true"
        )
    out = []
    for v in views:
        if isinstance(v, Tensor) or len(v) != 2:
            raise TypeError(
                f"ProbClipHead needs each {name} view as (mu, logvar), got {type(v).__name__}: "
                "build the model with model.probabilistic=true"
            )
        out.append(GaussianEmbedding(*v))
    if not out:
        raise ValueError(f"need at least one {name} view")
    return out


class ProbClipHead(LossHead):
    """ProbCLIP-VIB head: probabilistic (CSD) BCE matching with PCME++ pseudo-positives over all pairings
    + VIB KL (+ optional CLIP).

    Args:
        a_init, b_init: initial match scale a (> 0, parametrised as exp of a parameter) and shift b.
        learn_ab: if False, a and b are frozen.
        pseudo_positive_weight: α of PCME++'s pseudo-positive term (the matching BCE recomputed with the
            pairs scoring at least as high as a true pair relabelled positive, in both directions);
            0.1 by default, 0 turns it off.
        w_i2i, w_t2t: weights of the intra-modal probabilistic match terms between views 0 and 1.
        kl_weight: β of the VIB KL term (default 1e-4: PCME++'s strength with the default reduction).
        kl_reduction: ``"mean_over_dims"`` (PCME++; default) or ``"sum_over_dims"`` (per-sample KL
            summed over D, 2D times larger); see the module docstring.
        clip_weight: weight of a deterministic multi-view CLIP term on the means (0 = off).
        temperature_init, max_scale: the CLIP term's learnable temperature (as ClipHead), only created
            when ``clip_weight != 0``.
        gather: gather embeddings (with gradients) across ranks under DDP.
        distance: ``"csd"`` (PCME++, BCE; default) or ``"medprobclip"`` (released MedProbCLIP: its
            distance, softmax InfoNCE; see the module docstring).

    Logs: ``loss``, ``match`` (mean BCE of the cross-modal pairings), ``pseudo`` (the relabelled BCE),
    ``pseudo_share`` (pseudo-positives per negative pair, both directions),
    ``pos_logit``, ``neg_logit``, ``i2i`` / ``t2t`` when computed, ``kl``, ``clip`` and ``logit_scale``
    when ``clip_weight != 0``, ``a``, ``b``, and the mean per-sample uncertainty Σσ²
    (``uncertainty_image``, ``uncertainty_text``, and their mean ``uncertainty``).
    """

    spec = HeadSpec(embedding="gaussian")

    def __init__(
        self,
        a_init: float = 5.0,
        b_init: float = 5.0,
        learn_ab: bool = True,
        pseudo_positive_weight: float = 0.1,
        w_i2i: float = 0.0,
        w_t2t: float = 0.0,
        kl_weight: float = 1e-4,
        kl_reduction: str = "mean_over_dims",
        clip_weight: float = 0.0,
        temperature_init: float = 0.07,
        max_scale: float = 100.0,
        gather: bool = True,
        distance: str = "csd",
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance = distance
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        self.kl_reduction = kl_reduction
        if a_init <= 0:
            raise ValueError(f"a_init must be > 0, got {a_init}")
        for name, value in (
            ("pseudo_positive_weight", pseudo_positive_weight),
            ("kl_weight", kl_weight),
            ("clip_weight", clip_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.a_log = nn.Parameter(torch.tensor(math.log(a_init)), requires_grad=learn_ab)
        self.b = nn.Parameter(torch.tensor(float(b_init)), requires_grad=learn_ab)
        self.pseudo_positive_weight = float(pseudo_positive_weight)
        self.w_i2i = float(w_i2i)
        self.w_t2t = float(w_t2t)
        self.kl_weight = float(kl_weight)
        self.clip_weight = float(clip_weight)
        self.gather = bool(gather)
        self.max_scale = float(max_scale)
        if self.clip_weight != 0.0:
            if temperature_init <= 0:
                raise ValueError(f"temperature_init must be > 0, got {temperature_init}")
            self.logit_scale_log = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))

    # ------------------------------------------------------------------ scoring
    def match_scale(self) -> Tensor:
        """a = exp(a_log) (0-dim, differentiable)."""
        return self.a_log.exp()

    def match_logit(self, mu_a: Tensor, logvar_a: Tensor, mu_b: Tensor, logvar_b: Tensor) -> Tensor:
        """Match logits −a·d + b ``[Na, Nb]`` (d: CSD, or MedProbCLIP's distance with ``distance="medprobclip"``)."""
        fn = csd_distance if self.distance == "csd" else medprobclip_distance
        return -self.match_scale() * fn(mu_a, logvar_a, mu_b, logvar_b) + self.b

    def similarity(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """The score retrieval ranks by: :meth:`match_logit` of the query and gallery Gaussians."""
        q, g = self.loss_view(query), self.loss_view(gallery)
        return self.match_logit(q.mu, q.logvar, g.mu, g.logvar)

    def loss_view(self, embeddings: Embeddings) -> GaussianEmbedding:
        """One view as ``(μ, log σ²)``; embeddings without a log-variance are refused."""
        if embeddings.logvar is None:
            raise TypeError(
                "ProbClipHead needs Gaussian embeddings (mu, logvar) but the dual encoder has no "
                "log-variance heads: build the model with model.probabilistic=true"
            )
        return GaussianEmbedding(embeddings.mean, embeddings.logvar)

    def eval_metrics(self, image: Embeddings, text: Embeddings) -> dict[str, float]:
        """Mean per-sample uncertainty Σσ² of an evaluated split, per modality and their mean."""
        unc_img, unc_txt = float(uncertainty(image.logvar).mean()), float(uncertainty(text.logvar).mean())
        return {
            "uncertainty_image_mean": unc_img,
            "uncertainty_text_mean": unc_txt,
            "uncertainty_mean": 0.5 * (unc_img + unc_txt),
        }

    def similarity_scale(self) -> Tensor:
        """2a: the scale of μ-cosine similarities in the CSD match logit (−a‖μa−μb‖² = 2a·cos − 2a).

        For cosine-only consumers (zero-shot on μ); ranking with uncertainty uses :meth:`similarity`."""
        return 2.0 * self.match_scale()

    # ------------------------------------------------------------------ loss
    def _match(self, x: GaussianEmbedding, y: GaussianEmbedding, a: Tensor) -> dict[str, Tensor]:
        if self.distance == "medprobclip":
            return medprobclip_infonce(x, y, a, self.b, gather=self.gather)
        return prob_match_loss(
            x.mu,
            x.logvar,
            y.mu,
            y.logvar,
            a,
            self.b,
            pseudo_positive_weight=self.pseudo_positive_weight,
            gather=self.gather,
        )

    def _kl(self, views: list[GaussianEmbedding]) -> Tensor:
        return torch.stack([vib_kl(v.mu, v.logvar, reduction=self.kl_reduction) for v in views]).mean()

    def _intra(self, views: list[GaussianEmbedding], a: Tensor) -> Tensor:
        return 0.5 * (self._match(views[0], views[1], a)["loss"] + self._match(views[1], views[0], a)["loss"])

    def forward(
        self,
        image_views: Sequence[GaussianEmbedding] | GaussianEmbedding,
        text_views: Sequence[GaussianEmbedding] | GaussianEmbedding,
        labels: Tensor | None = None,
    ) -> LossOutput:
        """Compute the loss; ``labels`` is accepted for interface compatibility and ignored."""
        imgs = _as_gaussian_views(image_views, "image")
        txts = _as_gaussian_views(text_views, "text")
        a = self.match_scale()
        pairs = [self._match(i, t, a) for i in imgs for t in txts]
        logs: dict[str, Tensor] = {
            key: torch.stack([p[key] for p in pairs]).mean()
            for key in ("loss", "match", "pseudo", "pseudo_share", "pos_logit", "neg_logit")
        }
        total = logs["loss"]
        if self.w_i2i != 0.0 and len(imgs) >= 2:
            logs["i2i"] = self._intra(imgs, a)
            total = total + self.w_i2i * logs["i2i"]
        if self.w_t2t != 0.0 and len(txts) >= 2:
            logs["t2t"] = self._intra(txts, a)
            total = total + self.w_t2t * logs["t2t"]
        kl = self._kl(imgs) + self._kl(txts)
        if self.kl_reduction == "mean_over_dims":
            kl = 0.5 * kl
        logs["kl"] = kl
        if self.kl_weight != 0.0:
            total = total + self.kl_weight * kl
        if self.clip_weight != 0.0:
            scale = self.logit_scale_log.exp().clamp(max=self.max_scale)
            logs["clip"] = multi_view_clip_loss([v.mu for v in imgs], [v.mu for v in txts], scale, gather=self.gather)[
                "loss"
            ]
            logs["logit_scale"] = scale
            total = total + self.clip_weight * logs["clip"]
        logs["loss"] = total
        logs["a"] = a
        logs["b"] = self.b
        unc_i = torch.stack([uncertainty(v.logvar).mean() for v in imgs]).mean()
        unc_t = torch.stack([uncertainty(v.logvar).mean() for v in txts]).mean()
        logs.update(uncertainty_image=unc_i, uncertainty_text=unc_t, uncertainty=0.5 * (unc_i + unc_t))
        return LossOutput(loss=total, logs={k: v.detach() for k, v in logs.items()})

    def extra_repr(self) -> str:
        return (
            f"distance={self.distance!r}, pseudo_positive_weight={self.pseudo_positive_weight}, "
            f"w_i2i={self.w_i2i}, w_t2t={self.w_t2t}, "
            f"kl_weight={self.kl_weight}, kl_reduction={self.kl_reduction!r}, "
            f"clip_weight={self.clip_weight}, gather={self.gather}"
        )
