"""Grad-CAM of image embeddings towards a text embedding, with the ``pytorch_grad_cam`` library.

The differentiated score is the cosine similarity between an image's normalised embedding
(:class:`EmbeddingModel`) and a text embedding, e.g. a label prompt ensemble
(:func:`text_similarity_target`). Target layers and the activation reshape depend on the image backbone
(:func:`default_target_layers`, :func:`reshape_transform_for`):

* CNNs (timm ResNet, DenseNet, EfficientNet, ConvNeXt): the last feature map, already ``[B, C, h, w]``;
* Swin / SwinV2: the final norm, whose output is NHWC ``[B, h, w, C]``, permuted to NCHW;
* ViT (incl. DeiT): the last block's first norm ``[B, P + h·w, C]``; the ``P`` prefix tokens (class and
  register tokens) are dropped and the patch tokens laid out on their ``h × w`` grid.

Other backbones raise ``ValueError`` naming the backbone; pass ``target_layers`` / ``reshape_transform``
to :func:`gradcam_maps` to use them anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_vlp.eval.figures import gradcam_figure

__all__ = [
    "EmbeddingModel",
    "TextSimilarityTarget",
    "ViTTokensToGrid",
    "backbone_kind",
    "default_target_layers",
    "gradcam_figure",
    "gradcam_maps",
    "nhwc_to_nchw",
    "reshape_transform_for",
    "text_similarity_target",
]

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- target
class TextSimilarityTarget:
    """pytorch_grad_cam target: cosine similarity of a model output embedding ``[D]`` (or ``[B, D]``) with a
    fixed text embedding ``[D]``."""

    def __init__(self, text_emb: torch.Tensor | np.ndarray) -> None:
        emb = torch.as_tensor(text_emb).detach().float()
        if emb.ndim == 2 and emb.shape[0] == 1:
            emb = emb[0]
        if emb.ndim != 1 or emb.numel() == 0:
            raise ValueError(f"text_emb must be one embedding [D], got shape {tuple(emb.shape)}")
        if not torch.isfinite(emb).all() or float(emb.norm()) == 0.0:
            raise ValueError("text_emb must be finite and non-zero")
        self.text_emb = emb

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.shape[-1] != self.text_emb.shape[0]:
            raise ValueError(
                f"the image embedding has dimension {output.shape[-1]} but text_emb has {self.text_emb.shape[0]}"
            )
        text = self.text_emb.to(device=output.device, dtype=output.dtype)
        return F.cosine_similarity(output, text.expand_as(output), dim=-1)


def text_similarity_target(text_emb: torch.Tensor | np.ndarray) -> TextSimilarityTarget:
    """A pytorch_grad_cam target whose value is cos(image embedding, ``text_emb``)."""
    return TextSimilarityTarget(text_emb)


# ---------------------------------------------------------------------------------------------- model
class EmbeddingModel(nn.Module):
    """``forward(images [B, C, H, W]) -> [B, D]`` L2-normalised image embeddings of any module with an
    ``encode_image`` method (e.g. :class:`cxr_vlp.models.dual_encoder.DualEncoder`)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(encoder, "encode_image", None)):
            raise TypeError(
                f"EmbeddingModel needs a module with an encode_image method (e.g. DualEncoder), "
                f"got {type(encoder).__name__}"
            )
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder.encode_image(images)
        z = getattr(z, "embedding", z)  # a DualEncoder's EncoderOutput, or a bare tensor
        return F.normalize(z.float(), dim=-1)


# ---------------------------------------------------------------------------------------------- backbones
def _timm_model(image_encoder: nn.Module) -> nn.Module:
    """The timm model inside a DualEncoder / ImageEncoder (``.image_encoder`` / ``.model``), or the module."""
    if isinstance(getattr(image_encoder, "image_encoder", None), nn.Module):
        image_encoder = image_encoder.image_encoder
    inner = getattr(image_encoder, "model", None)
    return inner if isinstance(inner, nn.Module) else image_encoder


def _backbone_name(image_encoder: nn.Module, model: nn.Module) -> str:
    if isinstance(getattr(image_encoder, "image_encoder", None), nn.Module):
        image_encoder = image_encoder.image_encoder
    name = getattr(image_encoder, "name", None)
    if not isinstance(name, str):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{name} ({type(model).__name__})" if name else type(model).__name__


def backbone_kind(image_encoder: nn.Module) -> str:
    """``"vit"``, ``"swin"``, ``"resnet"``, ``"densenet"``, ``"efficientnet"`` or ``"convnext"``;
    ``ValueError`` naming the backbone otherwise."""
    from timm.models.convnext import ConvNeXt
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.swin_transformer_v2 import SwinTransformerV2
    from timm.models.vision_transformer import VisionTransformer

    model = _timm_model(image_encoder)
    kinds: Sequence[tuple[type, str]] = (
        (VisionTransformer, "vit"),
        (SwinTransformer, "swin"),
        (SwinTransformerV2, "swin"),
        (ResNet, "resnet"),
        (DenseNet, "densenet"),
        (EfficientNet, "efficientnet"),
        (ConvNeXt, "convnext"),
    )
    for cls, kind in kinds:
        if isinstance(model, cls):
            return kind
    raise ValueError(
        f"Grad-CAM does not support the image backbone {_backbone_name(image_encoder, model)}: supported are "
        "timm ResNet, DenseNet, EfficientNet, ConvNeXt, Swin/SwinV2 and ViT models; pass target_layers= and "
        "reshape_transform= to gradcam_maps to use another one"
    )


def default_target_layers(image_encoder: nn.Module) -> list[nn.Module]:
    """The layer(s) whose activations Grad-CAM weighs: the last feature map of the backbone (see the
    module docstring). Accepts an ImageEncoder, a DualEncoder or a bare timm model."""
    kind = backbone_kind(image_encoder)
    m = _timm_model(image_encoder)
    if kind == "resnet":
        return [m.layer4]
    if kind == "densenet":
        return [m.features[-1]]  # norm5 (BatchNorm + ReLU) over the last dense block
    if kind == "efficientnet":
        return [m.bn2]  # BatchNorm + act after conv_head: the map that is pooled
    if kind == "convnext":
        return [m.stages[-1] if isinstance(m.norm_pre, nn.Identity) else m.norm_pre]
    if kind == "swin":
        return [m.norm]  # final LayerNorm, NHWC
    # ViT: the class token only sees the patch tokens through attention in the last block, so its
    # gradient w.r.t. the last block's *output* patch tokens is zero; take the input norm of that block
    block = m.blocks[-1]
    return [block.norm1 if isinstance(getattr(block, "norm1", None), nn.Module) else block]


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C] -> [B, C, H, W]`` (Swin activations and gradients)."""
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC activation [B, H, W, C], got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


class ViTTokensToGrid:
    """``[B, P + h·w, C] -> [B, C, h, w]``: drops ``P`` prefix tokens (class / register / distillation) and
    lays the patch tokens on the ``h × w`` grid (``grid`` if it matches the token count, else square)."""

    def __init__(self, num_prefix_tokens: int, grid: tuple[int, int] | None = None) -> None:
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grid = tuple(int(g) for g in grid) if grid is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"expected ViT tokens [B, N, C], got shape {tuple(x.shape)}")
        patches = x[:, self.num_prefix_tokens :]
        n = patches.shape[1]
        if self.grid is not None and self.grid[0] * self.grid[1] == n:
            h, w = self.grid
        else:
            h = w = math.isqrt(n)
            if h * w != n or n == 0:
                raise ValueError(
                    f"cannot lay {n} ViT patch tokens (after {self.num_prefix_tokens} prefix tokens) "
                    f"on a grid {self.grid or 'square'}"
                )
        return patches.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def reshape_transform_for(image_encoder: nn.Module) -> ReshapeTransform | None:
    """The activation → ``[B, C, h, w]`` transform for the target layers of :func:`default_target_layers`:
    ``None`` for CNNs, :func:`nhwc_to_nchw` for Swin, a :class:`ViTTokensToGrid` for ViT."""
    kind = backbone_kind(image_encoder)
    if kind == "swin":
        return nhwc_to_nchw
    if kind == "vit":
        m = _timm_model(image_encoder)
        grid = getattr(getattr(m, "patch_embed", None), "grid_size", None)
        prefix = getattr(m, "num_prefix_tokens", None)
        if prefix is None:
            prefix = int(getattr(m, "cls_token", None) is not None) + int(getattr(m, "num_reg_tokens", 0) or 0)
        return ViTTokensToGrid(int(prefix), tuple(grid) if grid is not None else None)
    return None


# ---------------------------------------------------------------------------------------------- Grad-CAM
def gradcam_maps(
    encoder: nn.Module,
    images: torch.Tensor,
    text_emb: torch.Tensor | np.ndarray,
    *,
    target_layers: list[nn.Module] | None = None,
    reshape_transform: ReshapeTransform | None | str = "auto",
) -> np.ndarray:
    """Grad-CAM maps ``[B, H, W]`` in ``[0, 1]`` (float32) of ``cos(encode_image(images), text_emb)``.

    Args:
        encoder: a module with ``encode_image`` and ``.image_encoder`` (e.g. DualEncoder); target layers and
            reshape come from ``encoder.image_encoder`` unless given.
        images: ``[B, C, H, W]`` model inputs.
        text_emb: ``[D]`` (or ``[1, D]``) text embedding, e.g. a label prompt ensemble.
        target_layers / reshape_transform: overrides (``reshape_transform="auto"``: from the backbone).

    The encoder is run in eval mode and every module's train/eval mode is restored afterwards; parameter
    gradients are left untouched (the input is what requires grad, so frozen encoders work too).
    """
    from pytorch_grad_cam import GradCAM

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty [B, C, H, W] tensor, got {shape}")
    model = EmbeddingModel(encoder)
    target = text_similarity_target(text_emb)
    if target_layers is None or reshape_transform == "auto":
        tower = getattr(encoder, "image_encoder", encoder)
        if target_layers is None:
            target_layers = default_target_layers(tower)
        if reshape_transform == "auto":
            reshape_transform = reshape_transform_for(tower)
    if not target_layers:
        raise ValueError("target_layers must name at least one layer")

    params = list(model.parameters())
    if not params:
        raise ValueError("the encoder has no parameters")
    device = params[0].device
    modes = {m: m.training for m in model.modules()}
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    x = images.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    cam = None
    try:
        cam = GradCAM(model=model, target_layers=list(target_layers), reshape_transform=reshape_transform)
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            maps = cam(input_tensor=x, targets=[target] * x.shape[0])
    finally:
        if cam is not None:
            cam.activations_and_grads.release()
        for p, r, g in zip(params, requires, grads):
            p.requires_grad_(r)
            p.grad = g
        for m, training in modes.items():
            m.train(training)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise RuntimeError(
            f"Grad-CAM returned maps of shape {maps.shape}, expected {(x.shape[0], x.shape[2], x.shape[3])}"
        )
    return np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0)
