"""Loss heads: modules that own the loss's learnable parameters (e.g. the temperature) and its contract.

A head declares what it needs in its :class:`HeadSpec` (deterministic or Gaussian embeddings, a concept bank),
turns the towers' :class:`~cxr_vlp.models.outputs.Embeddings` into its loss views (:meth:`LossHead.loss_view`),
computes any extra input of its loss from the text tower (:meth:`LossHead.loss_inputs`) and scores retrieval
(:meth:`LossHead.similarity`). The Lightning module and the evaluation suite ask the head; neither branches on
the head's type.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from cxr_vlp.losses.functional import multi_view_clip_loss
from cxr_vlp.models.outputs import Embeddings

log = logging.getLogger(__name__)

__all__ = ["LossOutput", "GaussianEmbedding", "HeadSpec", "LossHead", "ClipHead", "EncodeText"]

# ``(input_ids [K, L], attention_mask [K, L]) -> [K, D]`` L2-normalised text-tower embeddings
EncodeText = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class HeadSpec:
    """What a loss head needs from the model.

    ``embedding``: ``"deterministic"`` (views are ``[B, D]`` tensors) or ``"gaussian"`` (views are
    :class:`GaussianEmbedding` ``(μ, log σ²)``: the dual encoder needs ``model.probabilistic=true``).
    ``concepts``: the head has a concept bank (``concept_names``) whose text-tower embeddings its loss takes.
    """

    embedding: Literal["deterministic", "gaussian"] = "deterministic"
    concepts: bool = False

    def __post_init__(self) -> None:
        if self.embedding not in ("deterministic", "gaussian"):
            raise ValueError(f"HeadSpec.embedding must be 'deterministic' or 'gaussian', got {self.embedding!r}")

    def check_encoder(self, encoder_kind: str, head_name: str, loss_target: str | None = None) -> None:
        """The dual encoder's embedding kind must be this spec's: Gaussian heads need its log-variance heads (an
        error); a probabilistic encoder under a deterministic head leaves them unused (a warning)."""
        if encoder_kind == self.embedding:
            return
        if self.embedding == "gaussian":
            raise ValueError(
                f"loss head {head_name} (loss._target_={loss_target}) needs Gaussian embeddings (mu, "
                "logvar) but model.probabilistic=false: set model.probabilistic=true"
            )
        log.warning(
            "model.probabilistic=true but loss head %s ignores the log-variance heads (unused parameters: "
            "DDP will fail unless find_unused_parameters)",
            head_name,
        )


@dataclass
class LossOutput:
    """Result of a loss head: the scalar to backpropagate and detached scalars to log."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class GaussianEmbedding(NamedTuple):
    """One view of a batch as diagonal Gaussians: ``mu`` ``[B, D]`` (L2-normalised) and ``logvar`` = log σ²
    (``[B, D]``, or ``[B, 1]`` for one shared σ² per sample). What heads with ``spec.embedding == "gaussian"``
    train on."""

    mu: Tensor
    logvar: Tensor


def _as_views(views: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [views] if isinstance(views, Tensor) else list(views)


class LossHead(nn.Module):
    """Interface of all loss heads (CLIP, MCSL, ProbCLIP, CLEAR, ...).

    ``forward(image_views, text_views, labels=None) -> LossOutput`` where each view list holds
    ``[B_local, D]`` embeddings of the same B studies (a single tensor is accepted as one view) and
    ``labels`` is an optional ``[B_local, C]`` label matrix for label-aware heads.

    The contract (see the module docstring): ``spec`` (:class:`HeadSpec`), :meth:`loss_view`,
    :meth:`prepare` / :meth:`loss_inputs` (concept heads), :meth:`similarity` and :meth:`similarity_scale`
    (cosine-only consumers such as zero-shot), :attr:`concept_names` (empty without a concept bank).
    """

    spec: ClassVar[HeadSpec] = HeadSpec()
    concept_names: Sequence[str] = ()

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

    def loss_view(self, embeddings: Embeddings) -> Any:
        """One view as this head's loss takes it: the ``[B, D]`` means (deterministic heads)."""
        return embeddings.mean

    def similarity(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """Retrieval scores ``[Nq, Ng]``: the scaled cosine s·q gᵀ of the (unit) means."""
        return self.similarity_scale().to(query.mean.dtype) * (query.mean @ gallery.mean.T)

    def ranking_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """Scores that rank a gallery for the retrieval metrics (ties are exact equality of these values): the
        :meth:`similarity` unless a head says otherwise."""
        return self.similarity(query, gallery)

    def prepare(self, tokenizer: Any = None) -> None:
        """Get ready for a run with ``tokenizer`` (the data module's); a no-op without a concept bank."""

    def loss_inputs(self, encode_text: EncodeText) -> dict[str, Tensor]:
        """Extra keyword inputs of :meth:`forward` computed with the text tower (none by default)."""
        return {}

    def eval_scores(self, image: Embeddings, inputs: dict[str, Tensor]) -> Tensor | None:
        """Per-study scores kept for the evaluation suite (image concept scores for concept heads), else None."""
        return None

    def eval_metrics(self, image: Embeddings, text: Embeddings) -> dict[str, float]:
        """Head-specific scalars of an evaluated split (e.g. mean uncertainty), logged beside retrieval."""
        return {}


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

    def ranking_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """The unscaled cosine q gᵀ: a positive scale cannot change the order, but its rounding can merge distinct
        cosines into ties."""
        return query.mean @ gallery.mean.T

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

    def _terms(
        self, image_views: list[Tensor], text_views: list[Tensor], labels: Tensor | None, scale: Tensor
    ) -> dict[str, Tensor]:
        """The loss terms (``loss`` plus components); ``labels`` is ignored by CLIP. Subclasses override."""
        return multi_view_clip_loss(
            image_views, text_views, scale, w_i2i=self.w_i2i, w_t2t=self.w_t2t, gather=self.gather
        )

    def extra_repr(self) -> str:
        return f"max_scale={self.max_scale}, w_i2i={self.w_i2i}, w_t2t={self.w_t2t}, gather={self.gather}"
