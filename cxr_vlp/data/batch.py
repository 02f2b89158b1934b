"""The typed batch every LightningModule receives, and the collator that tokenises text views."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from cxr_vlp.data.dataset import StudySample


@dataclass
class Batch:
    """A collated batch. ``B`` studies, ``Vi`` image views, ``Vt`` text views, ``L`` tokens.

    Lightning moves the tensor fields to the device; strings stay on the host.
    """

    images: torch.Tensor  # [B, Vi, C, H, W] float
    input_ids: torch.Tensor  # [B, Vt, L] long
    attention_mask: torch.Tensor  # [B, Vt, L] long
    labels: torch.Tensor  # [B, 14] float, NaN = unknown
    index: torch.Tensor  # [B] long, row of the split's study table
    study_ids: list[str]
    subject_ids: list[str]
    texts: list[list[str]]  # [B][Vt] raw strings (for logging / evaluation)

    def __len__(self) -> int:
        return self.images.shape[0]

    def image_views(self) -> list[torch.Tensor]:
        """``Vi`` tensors of shape ``[B, C, H, W]``."""
        return list(self.images.unbind(1))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The tensor fields on ``device``; the string lists are shared, not copied (what Lightning's generic
        transfer would deep-copy every step)."""
        return Batch(
            images=self.images.to(device, non_blocking=non_blocking),
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            index=self.index.to(device, non_blocking=non_blocking),
            study_ids=self.study_ids,
            subject_ids=self.subject_ids,
            texts=self.texts,
        )

    def split(self, size: int) -> list[Batch]:
        """Consecutive chunks of at most ``size`` studies (views, labels and strings sliced alike), in order."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        return [self._rows(slice(start, start + size)) for start in range(0, len(self), size)]

    def _rows(self, rows: slice) -> Batch:
        return Batch(
            images=self.images[rows],
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            labels=self.labels[rows],
            index=self.index[rows],
            study_ids=self.study_ids[rows],
            subject_ids=self.subject_ids[rows],
            texts=self.texts[rows],
        )


class Collator:
    """Stacks samples and tokenises all text views in one call (padding to the longest, truncating)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[StudySample]) -> Batch:
        num_text_views = len(samples[0].texts)
        flat = [t for s in samples for t in s.texts]
        shape = (len(samples), num_text_views, -1)
        if self.tokenizer is None:  # a model that tokenises Batch.texts itself: empty token tensors
            ids = mask = torch.zeros((len(samples), num_text_views, 0), dtype=torch.long)
        else:
            tokens = self.tokenizer(
                flat,
                padding="longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_token_type_ids=False,
            )
            ids, mask = tokens["input_ids"].reshape(shape), tokens["attention_mask"].reshape(shape)
        return Batch(
            images=torch.stack([s.images for s in samples]),
            input_ids=ids,
            attention_mask=mask,
            labels=torch.stack([s.labels for s in samples]),
            index=torch.tensor([s.index for s in samples], dtype=torch.long),
            study_ids=[s.study_id for s in samples],
            subject_ids=[s.subject_id for s in samples],
            texts=[s.texts for s in samples],
        )
