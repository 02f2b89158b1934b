"""open_clip models (BiomedCLIP, CheXzero-style OpenAI CLIP weights, ...) as
:class:`~cxr_vlp.inference.base.ImageTextModel`: :class:`OpenClipModel` and :func:`load_open_clip`.

What :func:`load_open_clip` reads:

- a folder with ``open_clip_config.json`` and its weights (``open_clip_model.safetensors`` /
  ``open_clip_pytorch_model.bin``), the layout open_clip models are published in on the Hugging Face hub;
- ``hf-hub:<org>/<name>``: that layout from the local Hugging Face cache (a download when online; with
  ``HF_HUB_OFFLINE=1`` an id that is not cached raises :class:`~cxr_vlp.utils.hub.ModelNotAvailableError`);
- a state-dict file in the OpenAI CLIP layout (``visual.*``, ``transformer.*``, ``token_embedding.weight``, ...;
  CheXzero publishes its weights this way): with ``arch`` (an open_clip architecture such as ``ViT-B-32``) it is
  open_clip's ``create_model(arch, pretrained=<file>)``; without, the architecture is read off the tensor shapes
  (open_clip's OpenAI builder). ``quick_gelu`` defaults to true for this layout, the activation OpenAI CLIP (and
  models fine-tuned from it) was trained with.

The model's own preprocessing (open_clip's evaluation ``preprocess`` on a PIL RGB image made from our decoded
``uint8`` gray image), its own tokenizer (``open_clip.get_tokenizer`` or the Hugging Face tokenizer its config names)
at the context length it was trained with. Embeddings are L2-normalised; scores and the zero-shot scale use the
model's ``logit_scale.exp()``; ``features`` are the pooled image features before the projection for open_clip's
ViT and timm towers, the embedding otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cxr_vlp.inference.adapters.common import (
    PilTransform,
    ScaledCosineModel,
    cached_hf_file,
    l2_embeddings,
    resolve_folder,
    weights_fingerprint,
)
from cxr_vlp.inference.base import ImageEncoding, as_texts
from cxr_vlp.models.outputs import Embeddings

log = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "OpenClipModel", "is_open_clip_folder", "is_openai_state_dict", "load_open_clip"]

CONFIG_NAME = "open_clip_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_OPENAI_KEYS = ("positional_embedding", "token_embedding.weight", "text_projection", "ln_final.weight")


def is_open_clip_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding ``open_clip_config.json``."""
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def is_openai_state_dict(state: dict[str, Any]) -> bool:
    """Whether ``state`` has the OpenAI CLIP layout (text tower at the top level, image tower under ``visual.``)."""
    return all(k in state for k in _OPENAI_KEYS) and any(k.startswith("visual.") for k in state)


def _image_features(visual: torch.nn.Module, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """(pooled features before the projection, projected embedding) of open_clip's ViT / timm towers; the
    embedding twice for other towers."""
    if all(hasattr(visual, a) for a in ("_embeds", "_pool", "transformer", "proj")):
        pooled, _ = visual._pool(visual.transformer(visual._embeds(pixels)))
        return pooled, pooled if visual.proj is None else pooled @ visual.proj
    if hasattr(visual, "trunk") and hasattr(visual, "head"):
        features = visual.trunk(pixels)
        return features, visual.head(features)
    out = visual(pixels)
    return out, out


class OpenClipModel(ScaledCosineModel):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` with its evaluation preprocessing and tokenizer (see the module
    docstring). Build it with :func:`load_open_clip`."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        name: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        self.model = model.float().to(self.device).eval()
        self.preprocess_fn = preprocess
        self.tokenizer = tokenizer
        self._name = name
        self._transform = PilTransform(preprocess)

    @property
    def name(self) -> str:
        return self._name

    @cached_property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.model, ["open_clip", repr(self.preprocess_fn), self.context_length])

    @property
    def context_length(self) -> int:
        """The token length texts are padded / truncated to (the length the model was trained with)."""
        return int(getattr(self.tokenizer, "context_length", 0) or 0)

    @property
    def image_transform(self) -> PilTransform:
        return self._transform

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor) -> ImageEncoding:
        with self.autocast():
            features, embedding = _image_features(self.model.visual, pixels.to(self.device))
        return ImageEncoding(embeddings=l2_embeddings(embedding), features=features.float().cpu())

    def tokens(self, texts: Sequence[str]) -> Tensor:
        """The model's token ids ``[B, context_length]`` for ``texts``."""
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_text_embeddings(self, texts: Sequence[str]) -> Embeddings:
        ids = self.tokens(as_texts(texts))
        with self.autocast():
            return l2_embeddings(self.model.encode_text(ids))

    @property
    def scale(self) -> float:
        """``logit_scale.exp()``: the multiplier of cosines in the model's own logits."""
        return float(self.model.logit_scale.detach().float().exp())


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable open_clip config ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ValueError(f"{path}: an open_clip config needs a 'model_cfg' object (open_clip's published layout)")
    text_cfg = config["model_cfg"].get("text_cfg")
    if not isinstance(text_cfg, dict) or not isinstance(config["model_cfg"].get("vision_cfg"), dict):
        raise ValueError(f"{path}: 'model_cfg' needs 'vision_cfg' and 'text_cfg' objects")
    return config


def _folder_tokenizer(folder: Path, text_cfg: dict[str, Any], context_length: int | None, where: str) -> Any:
    """The tokenizer of an open_clip folder: the Hugging Face tokenizer its ``hf_tokenizer_name`` names (the
    folder's own tokenizer files when it holds them), else open_clip's BPE tokenizer."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    length = int(context_length or text_cfg.get("context_length", 77))
    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return open_clip.get_tokenizer(f"local-dir:{folder}", context_length=length)
    if any((folder / f).is_file() for f in _TOKENIZER_FILES):
        source = str(folder)
    else:
        cached_hf_file(hf_name, "tokenizer_config.json", f"the tokenizer of {where}")
        source = str(resolve_folder(hf_name)) if not Path(hf_name).is_dir() else hf_name
    return HFTokenizer(
        source,
        context_length=length,
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **dict(text_cfg.get("tokenizer_kwargs") or {}),
    )


def _load_folder(folder: Path, where: str, context_length: int | None, **kwargs: Any) -> OpenClipModel:
    import open_clip

    text_cfg = _read_config(folder)["model_cfg"]["text_cfg"]
    if text_cfg.get("hf_model_name"):  # the text tower's architecture comes from its Hugging Face config
        cached_hf_file(text_cfg["hf_model_name"], "config.json", f"the text tower of {where}")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")) and not any(folder.glob("*.pth")):
        raise FileNotFoundError(
            f"{where}: {CONFIG_NAME} but no weights (open_clip_model.safetensors or "
            f"open_clip_pytorch_model.bin) in {folder}"
        )
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{folder}", force_context_length=context_length
    )
    tokenizer = _folder_tokenizer(folder, text_cfg, context_length, where)
    return OpenClipModel(model, preprocess, tokenizer, name=where, **kwargs)


def _load_state_dict_file(
    path: Path, arch: str | None, quick_gelu: bool | None, context_length: int | None, **kwargs: Any
) -> OpenClipModel:
    import open_clip
    from open_clip.factory import load_state_dict
    from open_clip.model import build_model_from_openai_state_dict
    from open_clip.transform import PreprocessCfg, image_transform_v2

    try:
        state = load_state_dict(str(path))
    except Exception as err:
        raise ValueError(f"{path}: not a readable state-dict file ({type(err).__name__}: {err})") from err
    openai_layout = is_openai_state_dict(state)
    gelu = openai_layout if quick_gelu is None else bool(quick_gelu)
    if arch:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(path), force_quick_gelu=gelu, force_context_length=context_length
        )
        tokenizer = open_clip.get_tokenizer(arch, context_length=context_length)
        return OpenClipModel(model, preprocess, tokenizer, name=f"{arch}:{path.name}", **kwargs)
    if not openai_layout:
        missing = [k for k in _OPENAI_KEYS if k not in state]
        raise ValueError(
            f"{path}: not an OpenAI-layout CLIP state dict (missing {missing}); name its open_clip "
            "architecture (load_model(..., arch='ViT-B-32'); model_source.arch=ViT-B-32 in "
            "python -m cxr_vlp.eval)"
        )
    model = build_model_from_openai_state_dict(dict(state), quick_gelu=gelu, cast_dtype=torch.float32).float()
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})  # the builder rounds to fp16
    preprocess = image_transform_v2(PreprocessCfg(size=model.visual.image_size), is_train=False)
    if context_length is not None and int(context_length) != model.context_length:
        raise ValueError(
            f"{path}: the weights were trained with context length {model.context_length}, not {context_length}"
        )
    tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)
    return OpenClipModel(model, preprocess, tokenizer, name=f"openai-clip:{path.name}", **kwargs)


def load_open_clip(
    spec: str | Path,
    arch: str | None = None,
    quick_gelu: bool | None = None,
    context_length: int | None = None,
    **kwargs: Any,
) -> OpenClipModel:
    """The open_clip model ``spec`` names (a folder, ``hf-hub:<id>`` or a state-dict file; module docstring).

    ``arch``: the open_clip architecture of a state-dict file (inferred from an OpenAI-layout one when None);
    ``quick_gelu``: force QuickGELU (default: true for OpenAI-layout weights); ``context_length``: override the
    token length (default: the model's own). ``kwargs`` (``device``, ``dtype``, ``batch_size``) go to
    :class:`OpenClipModel`."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return _load_state_dict_file(path, arch, quick_gelu, context_length, **kwargs)
    folder = resolve_folder(text)
    if not is_open_clip_folder(folder):
        raise ValueError(f"{spec}: no {CONFIG_NAME} in {folder} (not an open_clip model folder)")
    return _load_folder(folder, text, context_length, **kwargs)
