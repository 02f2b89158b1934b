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


class DualEncoder(nn.Module):
    """Image tower + text tower + projections to ``embed_dim``."""

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder, embed_dim: int = 256,
                 projection: str = "linear", projection_dropout: float = 0.0) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_proj = projection_head(image_encoder.num_features, embed_dim, projection, projection_dropout)
        self.text_proj = projection_head(text_encoder.num_features, embed_dim, projection, projection_dropout)
        self.embed_dim = embed_dim

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.image_proj(self.image_encoder(images))
        return F.normalize(z.float(), dim=-1) if normalize else z

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.text_proj(self.text_encoder(input_ids, attention_mask))
        return F.normalize(z.float(), dim=-1) if normalize else z
