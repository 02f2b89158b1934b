"""The frozen pretrained image tower as the decoder's memory: global embedding and, optionally, the patch grid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxr_vlp.models.dual_encoder import projection_head


class FrozenImageTower(nn.Module):
    """``images [B, C, H, W] -> (memory [B, M, D], global [B, D])`` from a contrastive checkpoint's image side.

    ``global`` is the L2-normalised contrastive image embedding (exactly what retrieval uses); with ``grid=True``
    the memory also holds every spatial position (CNN feature map) or token (ViT) of the tower's last feature
    map, projected by the same image projection and normalised: M = 1 + positions. Never trained: parameters
    have ``requires_grad=False`` and the tower stays in eval mode (BatchNorm statistics and dropout frozen).
    """

    def __init__(
        self, image_encoder: nn.Module, embed_dim: int, projection: str = "linear", grid: bool = False
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.image_proj = projection_head(image_encoder.num_features, embed_dim, projection)
        self.embed_dim = embed_dim
        self.grid = bool(grid)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenImageTower:  # noqa: ARG002 - always eval
        return super().train(False)

    def load_from_contrastive(self, state_dict: dict[str, Any], prefix: str = "encoder.") -> None:
        """Copy ``<prefix>image_encoder.*`` and ``<prefix>image_proj.*`` of a ContrastiveModule state dict."""
        own = {
            k: v
            for k, v in state_dict.items()
            if k.startswith(f"{prefix}image_encoder.") or k.startswith(f"{prefix}image_proj.")
        }
        if not own:
            raise KeyError(f"no '{prefix}image_encoder.*' weights in the checkpoint: is it a contrastive checkpoint?")
        self.load_state_dict({k.removeprefix(prefix): v for k, v in own.items()}, strict=True)

    def _grid_tokens(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 3:  # ViT-like [B, N, C]
            return features
        if features.ndim != 4:
            raise ValueError(f"unsupported feature map shape {tuple(features.shape)}")
        if getattr(self.image_encoder.model, "output_fmt", "NCHW") == "NHWC":  # Swin-like
            return features.flatten(1, 2)
        return features.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.image_encoder.model
        if getattr(self.image_encoder, "channels_last", False):
            images = images.contiguous(memory_format=torch.channels_last)
        features = model.forward_features(images)
        pooled = model.forward_head(features, pre_logits=True)
        global_emb = F.normalize(self.image_proj(pooled).float(), dim=-1)
        parts = [global_emb.unsqueeze(1)]
        if self.grid:
            parts.append(F.normalize(self.image_proj(self._grid_tokens(features)).float(), dim=-1))
        return torch.cat(parts, dim=1), global_emb
