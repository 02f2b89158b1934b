"""The one label policy: uncertain mapping, blank → unknown, No Finding consistency, bad values."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_vlp.text.labels import (
    CHEXPERT_LABELS,
    NO_FINDING,
    NUM_LABELS,
    PATHOLOGIES,
    SUPPORT_DEVICES,
    apply_policy,
    labels_for_loss,
    make_no_finding_consistent,
)

NAN = np.nan


def _row(**values: float) -> np.ndarray:
    row = np.full(NUM_LABELS, NAN, dtype=np.float32)
    for name, value in values.items():
        row[CHEXPERT_LABELS.index(name.replace("_", " "))] = value
    return row


def test_fourteen_chexpert_observations_in_order() -> None:
    assert NUM_LABELS == 14 and CHEXPERT_LABELS[0] == "No Finding" and CHEXPERT_LABELS[-1] == "Support Devices"
    assert len(PATHOLOGIES) == 12 and NO_FINDING not in PATHOLOGIES and SUPPORT_DEVICES not in PATHOLOGIES


@pytest.mark.parametrize(("policy", "expected"), [("zeros", 0.0), ("ones", 1.0), ("unknown", NAN)])
def test_uncertain_policy(policy: str, expected: float) -> None:
    raw = np.stack([_row(Edema=-1, Cardiomegaly=0), _row(Edema=1)])
    out = apply_policy(raw, policy, no_finding_consistency=False)
    edema, cardio = CHEXPERT_LABELS.index("Edema"), CHEXPERT_LABELS.index("Cardiomegaly")
    np.testing.assert_array_equal(out[0, edema], np.float32(expected))
    assert out[0, cardio] == 0.0 and out[1, edema] == 1.0
    assert np.isnan(out[0, NO_FINDING])  # blank stays unknown
    assert np.isnan(raw[0, NO_FINDING]) and raw[0, edema] == -1  # input untouched


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match=r"\[2\.0\]"):
        apply_policy(np.stack([_row(Edema=2)]))


def test_positive_pathology_clears_no_finding() -> None:
    raw = np.stack([_row(No_Finding=1, Pneumothorax=1)])
    out = apply_policy(raw)
    assert out[0, NO_FINDING] == 0.0
    assert out[0, CHEXPERT_LABELS.index("Pneumothorax")] == 1.0


def test_uncertain_as_ones_counts_as_positive_for_no_finding() -> None:
    raw = np.stack([_row(No_Finding=1, Atelectasis=-1)])
    assert apply_policy(raw, "ones")[0, NO_FINDING] == 0.0
    # as unknown, the uncertain mention becomes NaN and then 0 under a normal study
    out = apply_policy(raw, "unknown")
    assert out[0, NO_FINDING] == 1.0 and out[0, CHEXPERT_LABELS.index("Atelectasis")] == 0.0


def test_no_finding_fills_unknown_pathologies_but_not_devices() -> None:
    raw = np.stack([_row(No_Finding=1, Support_Devices=1, Edema=0)])
    out = apply_policy(raw)
    assert out[0, NO_FINDING] == 1.0 and out[0, SUPPORT_DEVICES] == 1.0
    assert (out[0, list(PATHOLOGIES)] == 0.0).all()
    blank_devices = apply_policy(np.stack([_row(No_Finding=1)]))
    assert np.isnan(blank_devices[0, SUPPORT_DEVICES])


def test_devices_alone_do_not_clear_no_finding_and_rows_are_independent() -> None:
    raw = np.stack([_row(No_Finding=1, Support_Devices=1), _row(Edema=1), _row()])
    out = apply_policy(raw)
    assert out[0, NO_FINDING] == 1.0
    assert out[1, NO_FINDING] == 0.0 and np.isnan(out[1, CHEXPERT_LABELS.index("Cardiomegaly")])
    assert np.isnan(out[2]).all()  # an all-blank row stays all unknown


def test_consistency_is_idempotent_and_matches_a_direct_rule() -> None:
    rng = np.random.default_rng(0)
    raw = rng.choice(np.array([1.0, 0.0, -1.0, NAN], dtype=np.float32), size=(200, NUM_LABELS))
    out = apply_policy(raw, "zeros")
    np.testing.assert_array_equal(make_no_finding_consistent(out), out)
    for r in range(len(raw)):
        mapped = np.where(raw[r] == -1, 0.0, raw[r])
        abnormal = any(mapped[j] == 1 for j in PATHOLOGIES)
        if abnormal:
            assert out[r, NO_FINDING] == 0
        elif mapped[NO_FINDING] == 1:
            assert all(out[r, j] == 0 for j in PATHOLOGIES)
        else:
            np.testing.assert_array_equal(out[r], mapped)


def test_labels_for_loss_unknown_is_absent() -> None:
    out = labels_for_loss(np.stack([_row(Edema=1)]))
    assert out.sum() == 1.0 and not np.isnan(out).any()
