"""Text tower: any Hugging Face encoder (name or local path), or a small BERT built from a config.

The small local BERT needs nothing downloaded: it is the default for the demo and the tests, paired with
a WordPiece tokenizer trained on the training reports.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

from cxr_vlp.utils.hub import resolve_hf_model

LOCAL_BERT_DEFAULTS = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 512,
    "max_position_embeddings": 256,
}


class TextEncoder(nn.Module):
    """``(input_ids [B, L], attention_mask [B, L]) -> [B, F]`` with CLS or masked-mean pooling."""

    def __init__(
        self,
        name_or_path: str | None = None,
        pretrained: bool = True,
        pooling: str = "cls",
        vocab_size: int | None = None,
        local_config: dict | None = None,
        allow_download: bool = True,
        freeze: bool = False,
        gradient_checkpointing: bool = False,
        compile: dict | None = None,
    ) -> None:
        super().__init__()
        if pooling not in {"cls", "mean"}:
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        if name_or_path is None:
            if vocab_size is None:
                raise ValueError("the local BERT needs vocab_size (the size of the trained tokenizer)")
            config = BertConfig(
                vocab_size=vocab_size, pad_token_id=0, **{**LOCAL_BERT_DEFAULTS, **(local_config or {})}
            )
            self.model = BertModel(config, add_pooling_layer=False)
        else:
            path = resolve_hf_model(name_or_path, allow_download=allow_download)
            if pretrained:
                self.model = AutoModel.from_pretrained(path)
            else:
                self.model = AutoModel.from_config(AutoConfig.from_pretrained(path))
            if getattr(self.model, "pooler", None) is not None:
                self.model.pooler = None  # unused: would leave parameters without gradients under DDP
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.num_features: int = self.model.config.hidden_size
        if freeze:
            self.model.requires_grad_(False)
        if compile is not None:  # torch.compile kwargs; in place, so parameter names stay the same
            self.model.compile(**dict(compile))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
