"""The dual encoder: image and text towers projected into one L2-normalised embedding space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxr_vlp.models.image_encoder import ImageEncoder
from cxr_vlp.models.outputs import EncoderOutput
from cxr_vlp.models.text_encoder import TextEncoder


def projection_head(in_dim: int, out_dim: int, kind: str = "linear", dropout: float = 0.0) -> nn.Module:
    """``linear``: one bias-free linear map (CLIP); ``mlp``: Linear-GELU-Dropout-Linear."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    raise ValueError(f"projection must be 'linear' or 'mlp', got {kind!r}")


LOGVAR_DIMS = ("embed", "1")


def logvar_head(in_dim: int, embed_dim: int, logvar_dim: str | int = "embed", init: float = -4.0) -> nn.Linear:
    """Linear map from tower features to log σ²: ``[.., embed_dim]`` (``"embed"``, diagonal) or ``[.., 1]``
    (``1``, isotropic: one σ² per sample shared by every dimension).

    The weight starts at 0 and the bias at ``init``, so every sample starts with the same small σ² = exp(init)
    per dimension (the weight still receives gradients from the first step on).
    """
    kind = str(logvar_dim)
    if kind not in LOGVAR_DIMS:
        raise ValueError(f"logvar_dim must be one of {LOGVAR_DIMS}, got {logvar_dim!r}")
    head = nn.Linear(in_dim, embed_dim if kind == "embed" else 1)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, float(init))
    return head


class DualEncoder(nn.Module):
    """Image tower + text tower + projections to ``embed_dim``.

    :meth:`encode_image` / :meth:`encode_text` return an :class:`~cxr_vlp.models.outputs.EncoderOutput`. With
    ``probabilistic=True`` each tower also gets a log-variance head (``image_logvar`` / ``text_logvar``, see
    :func:`logvar_head`) and the output carries log σ² beside μ (the same L2-normalised embedding). With
    ``probabilistic=False`` (default) the module is exactly the deterministic dual encoder (same parameters, same
    state-dict keys) and ``logvar`` is ``None``.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        embed_dim: int = 256,
        projection: str = "linear",
        projection_dropout: float = 0.0,
        probabilistic: bool = False,
        logvar_dim: str | int = "embed",
        logvar_init: float = -4.0,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_proj = projection_head(image_encoder.num_features, embed_dim, projection, projection_dropout)
        self.text_proj = projection_head(text_encoder.num_features, embed_dim, projection, projection_dropout)
        self.embed_dim = embed_dim
        self.probabilistic = bool(probabilistic)
        if self.probabilistic:
            self.image_logvar = logvar_head(image_encoder.num_features, embed_dim, logvar_dim, logvar_init)
            self.text_logvar = logvar_head(text_encoder.num_features, embed_dim, logvar_dim, logvar_init)

    @property
    def embedding_kind(self) -> str:
        """``"gaussian"`` with log-variance heads, else ``"deterministic"`` (compared with a loss head's spec)."""
        return "gaussian" if self.probabilistic else "deterministic"

    def _output(
        self, features: torch.Tensor, proj: nn.Module, logvar: nn.Module | None, normalize: bool
    ) -> EncoderOutput:
        z = proj(features)
        return EncoderOutput(
            embedding=F.normalize(z.float(), dim=-1) if normalize else z,
            features=features,
            logvar=None if logvar is None else logvar(features).float(),
        )

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> EncoderOutput:
        """Images ``[B, C, H, W]`` -> :class:`EncoderOutput`: embedding ``[B, D]`` (L2-normalised, float32), pooled
        backbone features ``[B, F]``, log σ² ``[B, D]`` or ``[B, 1]`` (float32) when probabilistic."""
        return self._output(
            self.image_encoder(images), self.image_proj, self.image_logvar if self.probabilistic else None, normalize
        )

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, normalize: bool = True
    ) -> EncoderOutput:
        """Token ids ``[B, L]`` -> :class:`EncoderOutput` of the texts, as :meth:`encode_image`."""
        return self._output(
            self.text_encoder(input_ids, attention_mask),
            self.text_proj,
            self.text_logvar if self.probabilistic else None,
            normalize,
        )
