"""The dual encoder: image and text towers projected into one L2-normalised embedding space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxr_vlp.models.image_encoder import ImageEncoder
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

    With ``probabilistic=True`` each tower also gets a log-variance head (``image_logvar`` / ``text_logvar``,
    see :func:`logvar_head`) and :meth:`encode_image_gaussian` / :meth:`encode_text_gaussian` return
    ``(μ, log σ²)`` with μ the same L2-normalised embedding :meth:`encode_image` / :meth:`encode_text`
    return. With ``probabilistic=False`` (default) the module is exactly the deterministic dual encoder
    (same parameters, same state-dict keys).
    """

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder, embed_dim: int = 256,
                 projection: str = "linear", projection_dropout: float = 0.0, probabilistic: bool = False,
                 logvar_dim: str | int = "embed", logvar_init: float = -4.0) -> None:
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

    def _require_probabilistic(self) -> None:
        if not self.probabilistic:
            raise RuntimeError("this DualEncoder has no log-variance heads: build it with probabilistic=True "
                               "(config: model.probabilistic=true)")

    def encode_image_gaussian(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)``: μ ``[B, D]`` L2-normalised (float32), log σ² ``[B, D]`` or ``[B, 1]`` (float32)."""
        self._require_probabilistic()
        features = self.image_encoder(images)
        mu = F.normalize(self.image_proj(features).float(), dim=-1)
        return mu, self.image_logvar(features).float()

    def encode_text_gaussian(self, input_ids: torch.Tensor,
                             attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` of the texts, as :meth:`encode_image_gaussian`."""
        self._require_probabilistic()
        features = self.text_encoder(input_ids, attention_mask)
        mu = F.normalize(self.text_proj(features).float(), dim=-1)
        return mu, self.text_logvar(features).float()

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.image_proj(self.image_encoder(images))
        return F.normalize(z.float(), dim=-1) if normalize else z

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.text_proj(self.text_encoder(input_ids, attention_mask))
        return F.normalize(z.float(), dim=-1) if normalize else z
