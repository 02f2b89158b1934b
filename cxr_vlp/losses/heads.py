"""Loss heads: modules that own the loss's learnable parameters (e.g. the temperature).

Every head takes lists of L2-normalised views and returns a :class:`LossOutput`; the Lightning
module only calls ``head(image_views, text_views, labels)`` and logs ``output.logs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cxr_vlp.losses.functional import multi_view_clip_loss

__all__ = ["LossOutput", "GaussianEmbedding", "LossHead", "ClipHead"]


@dataclass
class LossOutput:
    """Result of a loss head: the scalar to backpropagate and detached scalars to log."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class GaussianEmbedding(NamedTuple):
    """One view of a batch as diagonal Gaussians: ``mu`` ``[B, D]`` (L2-normalised) and ``logvar`` = log σ²
    (``[B, D]``, or ``[B, 1]`` for one shared σ² per sample). What heads with ``needs_uncertainty`` receive."""

    mu: Tensor
    logvar: Tensor


def _as_views(views: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [views] if isinstance(views, Tensor) else list(views)


class LossHead(nn.Module):
    """Interface of all loss heads (CLIP, MCSL, ProbCLIP, CLEAR, ...).

    ``forward(image_views, text_views, labels=None) -> LossOutput`` where each view list holds
    ``[B_local, D]`` embeddings of the same B studies (a single tensor is accepted as one view) and
    ``labels`` is an optional ``[B_local, C]`` label matrix for label-aware heads.

    Probabilistic heads set ``needs_uncertainty = True``: the module then builds the dual encoder's
    log-variance heads and passes every view as a :class:`GaussianEmbedding` ``(mu, logvar)`` instead of a
    tensor, and ranks retrieval with the head's ``similarity(mu_a, logvar_a, mu_b, logvar_b)``.
    """

    needs_uncertainty: bool = False

    def __call__(self, *args, **kwargs) -> LossOutput:
        """Run the head in fp32 even inside a bf16 / fp16 autocast region (``precision=bf16-mixed``).

        Autocast casts matmul inputs to the low precision whatever their dtype, and the heads' pairwise terms
        (cosines times a scale near 100, squared distances ‖μ_a‖² + ‖μ_b‖² − 2μ_a·μ_b, Jaccard targets) lose
        several per cent in bf16; the towers keep the fast path, the [B, B] loss algebra is cheap.
        """
        device = next((p.device.type for p in self.parameters()), None)
        device = device or next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return super().__call__(*args, **kwargs)

    def forward(  # noqa: D102
        self,
        image_views: Sequence[Tensor],
        text_views: Sequence[Tensor],
        labels: Tensor | None = None,
    ) -> LossOutput:
        raise NotImplementedError

    def similarity_scale(self) -> Tensor:
        """Multiplicative scale applied to cosine similarities at evaluation / zero-shot."""
        raise NotImplementedError(f"{type(self).__name__} does not define a similarity scale")


class ClipHead(LossHead):
    """CLIP (InfoNCE) head with a learnable temperature and optional CXR-CLIP intra-modal terms.

    Scale s = min(exp(logit_scale_log), max_scale), with ``logit_scale_log`` initialised to
    log(1 / temperature_init). Loss: :func:`~cxr_vlp.losses.functional.multi_view_clip_loss`
    = mean over (image view, text view) pairings of ½[CE_i2t + CE_t2i] + w_i2i·i2i + w_t2t·t2t.
    Note that once exp(param) exceeds ``max_scale`` the clamp makes the parameter's gradient 0, so
    it stays where it is until the caller changes it.

    Args:
        temperature_init: initial τ (s = 1/τ).
        max_scale: upper bound on s (CLIP uses 100).
        learn_temperature: if False the parameter is frozen (``requires_grad=False``).
        w_i2i, w_t2t: weights of the image–image and text–text terms (views 0 and 1).
        gather: gather embeddings across ranks (with gradients) under DDP.
    """

    def __init__(
        self,
        temperature_init: float = 0.07,
        max_scale: float = 100.0,
        learn_temperature: bool = True,
        w_i2i: float = 0.0,
        w_t2t: float = 0.0,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if temperature_init <= 0:
            raise ValueError(f"temperature_init must be > 0, got {temperature_init}")
        if max_scale <= 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale}")
        self.max_scale = float(max_scale)
        self.w_i2i = float(w_i2i)
        self.w_t2t = float(w_t2t)
        self.gather = bool(gather)
        self.logit_scale_log = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature_init)), requires_grad=learn_temperature
        )

    def similarity_scale(self) -> Tensor:
        """s = exp(logit_scale_log).clamp(max=max_scale) (differentiable, 0-dim)."""
        return self.logit_scale_log.exp().clamp(max=self.max_scale)

    def forward(
        self,
        image_views: Sequence[Tensor],
        text_views: Sequence[Tensor],
        labels: Tensor | None = None,
    ) -> LossOutput:
        """Compute the loss from :meth:`_terms` and log its components with the temperature."""
        scale = self.similarity_scale()
        terms = self._terms(_as_views(image_views), _as_views(text_views), labels, scale)
        logs = {k: v.detach() for k, v in terms.items()}
        logs["logit_scale"] = scale.detach()
        logs["temperature"] = 1.0 / scale.detach()
        return LossOutput(loss=terms["loss"], logs=logs)

    def _terms(self, image_views: list[Tensor], text_views: list[Tensor], labels: Tensor | None,
               scale: Tensor) -> dict[str, Tensor]:
        """The loss terms (``loss`` plus components); ``labels`` is ignored by CLIP. Subclasses override."""
        return multi_view_clip_loss(image_views, text_views, scale, w_i2i=self.w_i2i, w_t2t=self.w_t2t,
                                    gather=self.gather)

    def extra_repr(self) -> str:
        return f"max_scale={self.max_scale}, w_i2i={self.w_i2i}, w_t2t={self.w_t2t}, gather={self.gather}"
