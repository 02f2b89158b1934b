"""The data module on generated data: patient-safe splits, typed batches, tokenizer state."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_vlp.data.datamodule import CXRDataModule
from cxr_vlp.data.splits import SplitLeakageError
from cxr_vlp.data.table import read_generic_csv
from cxr_vlp.data.tokenizer import tokenizer_to_json

TOKENIZER = {"kind": "wordpiece", "vocab_size": 300, "min_frequency": 1}


def _datamodule(csv: Path, **kw) -> CXRDataModule:
    return CXRDataModule(
        reader=partial(read_generic_csv, csv),
        transforms={"image_size": 32},
        batch_size=4,
        eval_batch_size=8,
        tokenizer=TOKENIZER,
        **kw,
    )


def test_patient_level_split_and_batches(tiny_dataset: Path) -> None:
    dm = _datamodule(tiny_dataset, num_image_views=2, text_views={"num_views": 2})
    dm.setup("fit")
    subjects = {name: set(t.subject_ids) for name, t in dm.tables.items()}
    assert not subjects["train"] & subjects["val"] and not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    assert sum(len(t) for t in dm.tables.values()) == len(read_generic_csv(tiny_dataset))
    train = next(iter(dm.train_dataloader()))
    assert train.images.shape == (4, 2, 1, 32, 32) and train.input_ids.shape[:2] == (4, 2)
    assert train.labels.dtype == torch.float32 and train.labels.shape == (4, 14)
    assert set(train.subject_ids) <= subjects["train"]
    val = next(iter(dm.val_dataloader()))
    assert val.images.shape[1] == 1 and val.input_ids.shape[1] == 1
    assert val.index.tolist() == list(range(len(val)))  # evaluation order is the table order


def test_official_split_with_a_leaking_subject_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tiny_dataset)
    frame["split"] = np.where(np.arange(len(frame)) % 5 == 0, "test", "train")
    leaking = frame.groupby("subject_id")["split"].nunique()
    assert (leaking > 1).any()
    frame["image_paths"] = [";".join(str(tiny_dataset.parent / p) for p in v.split(";")) for v in frame["image_paths"]]
    csv = tmp_path / "with_split.csv"
    frame.to_csv(csv, index=False)
    dm = _datamodule(csv)
    with pytest.raises(SplitLeakageError) as err:
        dm.setup("fit")
    assert str(leaking[leaking > 1].index[0]) in str(err.value)


def test_tokenizer_is_trained_on_train_split_and_restored_from_state(tiny_dataset: Path) -> None:
    dm = _datamodule(tiny_dataset)
    dm.setup("fit")
    state = dm.state_dict()
    assert "tokenizer_json" not in state  # checkpoints keep the tokenizer once, in the cxr_vlp payload
    # a data-module state written before payload format 1 (with its tokenizer copy) still restores it
    old_state = {"tokenizer_json": tokenizer_to_json(dm.tokenizer)}
    fresh = _datamodule(tiny_dataset)
    fresh.load_state_dict(old_state)
    fresh.setup("fit")
    assert tokenizer_to_json(fresh.tokenizer) == old_state["tokenizer_json"]
