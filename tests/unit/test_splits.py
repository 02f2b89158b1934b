"""Patient-level splits: leakage refusal, determinism, fractions, stratification, official splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_vlp.data.splits import (
    PatientSplit,
    SplitLeakageError,
    _subject_labels,
    patient_split,
    split_from_column,
)
from cxr_vlp.text.labels import NUM_LABELS


def _study_table(n_subjects: int, rng: np.random.Generator, max_studies: int = 4) -> tuple[list[str], np.ndarray]:
    """Per-study subject ids and labels in {1, 0, NaN} with several studies per subject."""
    per_subject = rng.integers(1, max_studies + 1, size=n_subjects)
    ids = [f"p{i:05d}" for i, k in enumerate(per_subject) for _ in range(k)]
    prevalence = rng.uniform(0.01, 0.4, size=NUM_LABELS)
    labels = (rng.random((len(ids), NUM_LABELS)) < prevalence).astype(np.float32)
    labels[rng.random(labels.shape) < 0.3] = np.nan
    return ids, labels


def _assert_partition(split: PatientSplit, ids: list[str]) -> None:
    assert not split.train & split.val
    assert not split.train & split.test
    assert not split.val & split.test
    assert split.train | split.val | split.test == set(ids)


# ------------------------------------------------------------------ PatientSplit
def test_constructor_refuses_overlap_and_names_ids() -> None:
    with pytest.raises(SplitLeakageError) as err:
        PatientSplit(train=frozenset({"a", "b", "c"}), val=frozenset({"b", "d"}), test=frozenset({"c", "e"}))
    message = str(err.value)
    assert "'train' and 'val'" in message and "'train' and 'test'" in message
    assert "'b'" in message and "'c'" in message
    assert "1 subject(s)" in message
    assert isinstance(err.value, ValueError)


def test_constructor_message_lists_at_most_ten_ids() -> None:
    shared = {f"s{i:02d}" for i in range(25)}
    with pytest.raises(SplitLeakageError, match=r"25 subject\(s\).*\+15 more"):
        PatientSplit(train=frozenset(shared), val=frozenset(shared), test=frozenset())


def test_split_of_assign_and_summary() -> None:
    split = PatientSplit(train=frozenset({"a", "b"}), val=frozenset({"c"}), test=frozenset({"d"}))
    assert split.split_of("c") == "val"
    with pytest.raises(KeyError, match="zz"):
        split.split_of("zz")
    names = split.assign(["d", "a", "c", "a"])
    assert names.tolist() == ["test", "train", "val", "train"]
    with pytest.raises(KeyError, match="'x1'"):
        split.assign(["a", "x1", "x2"])
    assert split.summary() == {"train": 2, "val": 1, "test": 1, "total": 4}
    assert split.assign([]).shape == (0,)


def test_integer_ids_are_strings() -> None:
    split = PatientSplit(train=frozenset({10000032}), val=frozenset({10000033.0}), test=frozenset())
    assert split.train == {"10000032"} and split.val == {"10000033"}
    assert split.assign(np.array([10000033, 10000032])).tolist() == ["val", "train"]


def test_json_round_trip_is_sorted(tmp_path) -> None:
    split = patient_split([f"s{i}" for i in range(50)], None, seed=3)
    path = tmp_path / "split.json"
    split.to_json(path)
    assert PatientSplit.from_json(path) == split
    payload = json.loads(path.read_text())
    assert all(payload[k] == sorted(payload[k]) for k in ("train", "val", "test"))
    path.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": []}))
    with pytest.raises(SplitLeakageError):
        PatientSplit.from_json(path)


# ------------------------------------------------------------------ patient_split
def test_never_leaks_over_many_seeds_and_label_matrices() -> None:
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        ids, labels = _study_table(int(rng.integers(5, 120)), rng)
        use_labels = seed % 4 != 0
        fractions = [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.6, 0.4, 0.0), (0.5, 0.0, 0.5)][seed % 4]
        split = patient_split(ids, labels if use_labels else None, fractions=fractions, seed=seed)
        _assert_partition(split, ids)
        # every study of a subject lands in the same split
        per_row = pd.Series(split.assign(ids)).groupby(pd.Series(ids)).nunique()
        assert (per_row == 1).all()


@pytest.mark.parametrize("with_labels", [True, False])
def test_deterministic_and_row_order_invariant(with_labels: bool) -> None:
    rng = np.random.default_rng(0)
    ids, labels = _study_table(300, rng)
    lab = labels if with_labels else None
    first = patient_split(ids, lab, seed=7)
    assert patient_split(ids, lab, seed=7) == first
    perm = rng.permutation(len(ids))
    shuffled = patient_split([ids[i] for i in perm], None if lab is None else lab[perm], seed=7)
    assert shuffled == first
    assert patient_split(ids, lab, seed=8) != first


@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.9, 0.1, 0.0)])
def test_fractions_respected(with_labels: bool, fractions: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(1)
    ids, labels = _study_table(1000, rng)
    split = patient_split(ids, labels if with_labels else None, fractions=fractions, seed=0)
    counts = split.summary()
    assert counts["total"] == 1000
    for name, frac in zip(("train", "val", "test"), fractions):
        assert abs(counts[name] - 1000 * frac) <= 2


def test_stratification_keeps_rare_label_prevalence() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    ids = [f"p{i}" for i in range(n)]
    labels = (rng.random((n, NUM_LABELS)) < rng.uniform(0.05, 0.4, NUM_LABELS)).astype(np.float32)
    rare = 4
    labels[:, rare] = 0.0
    labels[rng.choice(n, size=100, replace=False), rare] = 1.0  # 5 % of subjects
    overall = labels[:, rare].mean()

    def worst_gap(split: PatientSplit) -> float:
        names = split.assign(ids)
        return max(abs(labels[names == s, rare].mean() - overall) for s in ("val", "test"))

    random_violations = 0
    for seed in range(10):
        assert worst_gap(patient_split(ids, labels, seed=seed)) <= 0.015
        random_violations += worst_gap(patient_split(ids, None, seed=seed)) > 0.015
    # the band is tight enough that an unstratified split does break it
    assert random_violations >= 2


def test_subject_positive_if_any_study_positive() -> None:
    ids = np.array(["b", "a", "a", "c", "b"])
    labels = np.array([[0, np.nan], [np.nan, 0], [1, np.nan], [np.nan, np.nan], [0, 1]], dtype=np.float32)
    subjects, positive = _subject_labels(ids, labels)
    assert subjects.tolist() == ["a", "b", "c"]
    assert positive.tolist() == [[True, False], [False, True], [False, False]]
    # uncertain (-1) is not positive
    assert not _subject_labels(np.array(["a"]), np.array([[-1.0]]))[1].any()


def test_tiny_inputs() -> None:
    for seed in range(20):
        for lab in (None, np.eye(3, NUM_LABELS), np.full((3, NUM_LABELS), np.nan)):
            split = patient_split(["x", "y", "z"], lab, seed=seed)
            assert split.summary() == {"train": 1, "val": 1, "test": 1, "total": 3}
    two = patient_split(["x", "y"], None, fractions=(0.5, 0.5, 0.0))
    assert len(two.train) == 1 and len(two.val) == 1 and not two.test
    assert patient_split(["x"], np.ones((1, 3)), fractions=(1.0, 0.0, 0.0)).train == {"x"}
    with pytest.raises(ValueError, match="2 subject"):
        patient_split(["x", "y", "x"], None)
    with pytest.raises(ValueError, match="at least one"):
        patient_split([], None)


def test_single_label_column_and_bad_arguments() -> None:
    ids = [f"s{i}" for i in range(30)]
    split = patient_split(ids, (np.arange(30) % 3 == 0).astype(float), seed=1)
    _assert_partition(split, ids)
    with pytest.raises(ValueError, match="sum to 1"):
        patient_split(ids, None, fractions=(0.8, 0.1, 0.05))
    with pytest.raises(ValueError, match=">= 0"):
        patient_split(ids, None, fractions=(1.2, -0.1, -0.1))
    with pytest.raises(ValueError, match="n_rows=30"):
        patient_split(ids, np.zeros((29, 14)))


# ------------------------------------------------------------- official splits
def _mimic_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dicom_id": [f"d{i}" for i in range(7)],
            "study_id": [50000001, 50000001, 50000002, 50000003, 50000004, 50000005, 50000006],
            "subject_id": [10000032, 10000032, 10000032, 10000764, 10000898, 10001122, 10001176],
            "split": ["train", "train", "train", "validate", "test", "train", "Validate "],
        }
    )


def test_split_from_column_mimic_values() -> None:
    split = split_from_column(_mimic_frame())
    assert split.train == {"10000032", "10001122"}
    assert split.val == {"10000764", "10001176"}
    assert split.test == {"10000898"}


def test_split_from_column_leak_names_the_subject() -> None:
    df = _mimic_frame()
    df.loc[2, "split"] = "test"  # subject 10000032 now in train and test
    with pytest.raises(SplitLeakageError, match="10000032"):
        split_from_column(df)
    with pytest.raises(SplitLeakageError, match="10000032"):
        PatientSplit.check_frame(df)


def test_split_from_column_unknown_value() -> None:
    df = _mimic_frame()
    df.loc[4, "split"] = "holdout"
    with pytest.raises(ValueError, match=r"'holdout'.*row 4"):
        split_from_column(df)
    df.loc[4, "split"] = None
    with pytest.raises(ValueError, match="row 4"):
        split_from_column(df)


def test_split_from_column_custom_names() -> None:
    df = pd.DataFrame({"patient": ["a", "b", "c"], "fold": ["TR", "VA", "TE"]})
    split = split_from_column(df, "patient", "fold", names={"tr": "train", "va": "val", "te": "test"})
    assert split.summary() == {"train": 1, "val": 1, "test": 1, "total": 3}
    with pytest.raises(ValueError, match="names must map"):
        split_from_column(df, "patient", "fold", names={"tr": "training"})
