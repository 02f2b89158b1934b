"""Data-module splits when the table's official split column is complete, partial or absent."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_vlp.data.datamodule import CXRDataModule
from cxr_vlp.data.table import StudyTable


def _table(split: list[str | None] | None, n_subjects: int = 40, studies_per_subject: int = 2) -> StudyTable:
    subjects = [f"p{i}" for i in range(n_subjects) for _ in range(studies_per_subject)]
    n = len(subjects)
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([1.0, 0.0], dtype=np.float32), size=(n, 14))
    return StudyTable(
        study_ids=[f"s{i}" for i in range(n)],
        subject_ids=subjects,
        image_paths=[["/x.jpg"]] * n,
        view_names=[["PA"]] * n,
        findings=["f"] * n,
        impression=["i"] * n,
        labels=labels,
        split=split,
    )


def _module(table: StudyTable, **kwargs) -> CXRDataModule:
    dm = CXRDataModule(reader=lambda: table, **kwargs)
    dm.setup("fit")
    return dm


def test_partial_official_split_keeps_given_rows_and_splits_the_rest() -> None:
    split = [("test" if s in {"p0", "p1", "p2", "p3"} else None) for s in _table(None).subject_ids]
    dm = _module(_table(split), split_fractions=(0.6, 0.2, 0.2))
    tables = dm.tables
    assert set(tables["test"].subject_ids) == {"p0", "p1", "p2", "p3"}
    # the other 36 subjects go to train / val in the ratio 0.6 : 0.2 (27 : 9), none to test
    assert len(set(tables["train"].subject_ids)) == 27 and len(set(tables["val"].subject_ids)) == 9
    assert sum(len(t) for t in tables.values()) == 80


def test_unassigned_rows_of_an_officially_assigned_subject_follow_that_subject() -> None:
    table = _table(None)
    split: list[str | None] = [None] * len(table)
    split[0] = "test"  # p0's first study is official test, its second is unassigned
    dm = _module(_table(split))
    assert dm.tables["test"].subject_ids == ["p0", "p0"]


def test_complete_official_split_and_no_split() -> None:
    table = _table(None)
    split = ["validate" if s == "p5" else ("test" if s == "p6" else "train") for s in table.subject_ids]
    dm = _module(_table(split))
    assert set(dm.tables["val"].subject_ids) == {"p5"} and set(dm.tables["test"].subject_ids) == {"p6"}
    dm = _module(_table(split), use_official_split=False, split_fractions=(0.5, 0.25, 0.25))
    assert len(set(dm.tables["test"].subject_ids)) == 10


def test_official_split_with_a_subject_in_two_splits_is_refused() -> None:
    table = _table(None)
    split = ["train"] * len(table)
    split[1] = "test"  # p0 in train (row 0) and test (row 1)
    with pytest.raises(Exception, match="p0"):
        _module(_table(split))


def test_keep_official_test_only_resplits_train_and_validate() -> None:
    """CLIP-XRad protocol: the official test set is kept, validation is carved out of the other patients."""
    table = _table(None)
    official = {s: ("test" if int(s[1:]) < 4 else "validate" if int(s[1:]) < 8 else "train") for s in table.subject_ids}
    split = [official[s] for s in table.subject_ids]
    dm = _module(_table(split), keep_official=["test"], split_fractions=(0.85, 0.15, 0.0))
    assert set(dm.tables["test"].subject_ids) == {"p0", "p1", "p2", "p3"}
    val = set(dm.tables["val"].subject_ids)
    assert len(val) == round(0.15 * 36) and val != {f"p{i}" for i in range(4, 8)}
    dm_all = _module(_table(split))
    assert set(dm_all.tables["val"].subject_ids) == {f"p{i}" for i in range(4, 8)}
