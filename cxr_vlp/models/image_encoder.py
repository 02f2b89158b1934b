"""Image tower: any timm backbone, pooled to one feature vector per image."""

from __future__ import annotations

import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import nn

from cxr_vlp.utils.hub import ModelNotAvailableError, how_to_make_available, offline


class ImageEncoder(nn.Module):
    """A timm model with its classifier removed (``num_classes=0``): ``[B, C, H, W] -> [B, F]``.

    ``pretrained=True`` loads timm's weights (from the Hugging Face cache or hub); ``checkpoint_path``
    loads a local weight file instead. ``in_chans=1`` adapts pretrained RGB stems to grayscale (timm sums
    the first-layer weights), which is what chest X-rays are.
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        in_chans: int = 1,
        checkpoint_path: str | None = None,
        drop_path_rate: float | None = None,
        img_size: int | None = None,
        freeze: bool = False,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        compile: dict | None = None,
    ) -> None:
        super().__init__()
        kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        if img_size is not None:
            kwargs["img_size"] = img_size
        if checkpoint_path:
            kwargs["pretrained_cfg_overlay"] = {"file": checkpoint_path}
        try:
            self.model = timm.create_model(name, pretrained=pretrained or bool(checkpoint_path), **kwargs)
        except (LocalEntryNotFoundError, OSError) as err:
            where = "HF_HUB_OFFLINE is set" if offline() else f"{type(err).__name__}: {err}"
            hub_id = timm.models.get_pretrained_cfg(name)
            repo = getattr(hub_id, "hf_hub_id", None) or name
            raise ModelNotAvailableError(
                f"pretrained weights for timm model {name!r} are not available ({where}). "
                + how_to_make_available(repo)
                + " Or set model.image_encoder.checkpoint_path to a local weight file."
            ) from err
        self.num_features: int = self.model.num_features
        self.name = name
        if freeze:
            self.model.requires_grad_(False)
        if gradient_checkpointing:  # recompute activations in backward: less memory, ~30 % more compute
            self.model.set_grad_checkpointing(True)
        self.channels_last = bool(channels_last)
        if self.channels_last:  # NHWC: faster convolutions with tensor cores (bf16 / fp16 on GPUs)
            self.model.to(memory_format=torch.channels_last)
        if compile is not None:  # torch.compile in place: parameter names (and checkpoints) stay the same
            self.model.compile(**dict(compile))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)
