"""Batch.to moves every tensor field and shares the string lists (the module's transfer_batch_to_device uses it)."""

from __future__ import annotations

from dataclasses import fields

import torch

from cxr_vlp.data.batch import Batch
from cxr_vlp.lit.module import ContrastiveModule


def _batch() -> Batch:
    return Batch(
        images=torch.rand(2, 1, 1, 8, 8),
        input_ids=torch.ones(2, 1, 5, dtype=torch.long),
        attention_mask=torch.ones(2, 1, 5, dtype=torch.long),
        labels=torch.zeros(2, 14),
        index=torch.arange(2),
        study_ids=["s1", "s2"],
        subject_ids=["p1", "p2"],
        texts=[["a"], ["b"]],
    )


def test_batch_to_moves_every_tensor_field_and_shares_strings() -> None:
    batch = _batch()
    moved = batch.to("meta")
    tensor_fields = [f.name for f in fields(Batch) if isinstance(getattr(batch, f.name), torch.Tensor)]
    assert len(tensor_fields) == 5
    for name in tensor_fields:  # a field added to Batch but forgotten in Batch.to would stay on the CPU
        assert getattr(moved, name).device.type == "meta", name
        assert getattr(moved, name).dtype == getattr(batch, name).dtype
    assert moved.study_ids is batch.study_ids and moved.texts is batch.texts


def test_module_transfer_uses_batch_to() -> None:
    moved = ContrastiveModule.transfer_batch_to_device(None, _batch(), torch.device("meta"), 0)
    assert isinstance(moved, Batch) and moved.images.device.type == "meta"
