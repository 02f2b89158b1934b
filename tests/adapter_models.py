"""Tiny models of other projects, saved as a user finds them (no downloads): open_clip folders, an OpenAI-layout
CLIP state dict, a transformers ``CLIPModel`` folder. Shared by the adapter unit and integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXTS = [
    "no acute cardiopulmonary abnormality",
    "small left pleural effusion",
    "the heart is enlarged",
    "there is a right lower lobe pneumonia",
    "no pneumothorax",
    "mild pulmonary edema",
    "support devices in place",
    "atelectasis at the left base",
    "lungs are clear",
    "stable cardiomegaly",
]

# open_clip's own VisionTransformer and TextTransformer at toy sizes (OpenAI BPE vocabulary: 49408 tokens)
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic", "resize_mode": "shortest"}


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def wordpiece_tokenizer(out: Path):
    """A WordPiece tokenizer trained on :data:`TEXTS` (cxr_vlp's local trainer), saved with ``save_pretrained``."""
    from cxr_vlp.data.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(TEXTS * 3, vocab_size=200, min_frequency=1)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def open_clip_folder(out: Path, safetensors: bool = True, seed: int = 0) -> Path:
    """``open_clip_config.json`` + weights of a tiny open_clip CLIP (built-in towers, BPE tokenizer)."""
    import open_clip

    _seeded(seed)
    out.mkdir(parents=True, exist_ok=True)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": PREPROCESS}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(out / "open_clip_model.safetensors"))
    else:
        torch.save(state, out / "open_clip_pytorch_model.bin")
    return out


def open_clip_hf_text_folder(out: Path, seed: int = 1) -> Path:
    """BiomedCLIP's layout at toy size: an open_clip ``CustomTextCLIP`` whose text tower is a Hugging Face BERT
    named by ``hf_model_name`` / ``hf_tokenizer_name`` (here a local folder holding its config and tokenizer)."""
    from open_clip.model import CustomTextCLIP
    from transformers import BertConfig

    _seeded(seed)
    bert = out.parent / f"{out.name}_bert"
    bert.mkdir(parents=True, exist_ok=True)
    tokenizer = wordpiece_tokenizer(bert)
    BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    ).save_pretrained(str(bert))
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": TINY_OPEN_CLIP["vision_cfg"],
        "text_cfg": {
            "hf_model_name": str(bert),
            "hf_tokenizer_name": str(bert),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 12,
        },
    }
    model = CustomTextCLIP(**{**model_cfg, "text_cfg": {**model_cfg["text_cfg"], "hf_model_pretrained": False}})
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS}))
    torch.save(model.state_dict(), out / "open_clip_pytorch_model.bin")
    return out


def openai_state_dict_file(out: Path, seed: int = 2) -> Path:
    """A tiny CLIP state dict in the OpenAI layout (what CheXzero publishes): the keys of OpenAI's ``clip.model``,
    which open_clip's ``CLIP`` shares; widths are multiples of 64 (OpenAI's head width), QuickGELU."""
    import open_clip

    _seeded(seed)
    cfg = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }
    model = open_clip.CLIP(**cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return out


def hf_clip_folder(out: Path, seed: int = 3) -> Path:
    """A tiny transformers ``CLIPModel``, ``CLIPImageProcessor`` and local WordPiece tokenizer (``save_pretrained``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    _seeded(seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = wordpiece_tokenizer(out)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 24,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(str(out))
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
    ).save_pretrained(str(out))
    return out
