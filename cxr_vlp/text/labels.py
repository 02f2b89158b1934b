"""The one label policy of the project: CheXpert's 14 observations and how their values are read.

CheXpert convention for a label cell: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank unknown.
Every reader, loss and metric goes through :func:`apply_policy` so the convention lives in one place.
Unknown is represented as ``NaN`` in float arrays; losses and metrics mask it.

"No Finding" consistency (CheXpert's definition: no pathology; support devices do not count): after the
uncertain policy, a row with any positive pathology has No Finding = 0, and a row with No Finding = 1 has
its unknown pathologies set to 0 (a normal study is negative for each of them). A row that claims both
No Finding and a positive pathology is resolved in favour of the pathology.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_LABELS = len(CHEXPERT_LABELS)
NO_FINDING = CHEXPERT_LABELS.index("No Finding")
SUPPORT_DEVICES = CHEXPERT_LABELS.index("Support Devices")
# the observations that make a study abnormal (everything but No Finding and Support Devices)
PATHOLOGIES: tuple[int, ...] = tuple(i for i in range(NUM_LABELS) if i not in (NO_FINDING, SUPPORT_DEVICES))


class UncertainPolicy(str, Enum):
    """What an uncertain (-1) mention becomes."""

    ZEROS = "zeros"
    ONES = "ones"
    UNKNOWN = "unknown"


def apply_policy(
    raw: np.ndarray,
    uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN,
    no_finding_consistency: bool = True,
) -> np.ndarray:
    """Map raw CheXpert values (1, 0, -1, NaN) to floats in {1, 0, NaN}.

    ``raw`` is any array-like of shape ``[..., 14]``. Values other than 1, 0, -1 and NaN raise
    ``ValueError`` naming the offending value. With ``no_finding_consistency`` the result then goes through
    :func:`make_no_finding_consistent`.
    """
    policy = UncertainPolicy(uncertain)
    out = np.asarray(raw, dtype=np.float32).copy()
    known = ~np.isnan(out)
    bad = known & ~np.isin(out, (1.0, 0.0, -1.0))
    if bad.any():
        raise ValueError(f"label values must be 1, 0, -1 or blank; found {sorted(set(out[bad].tolist()))}")
    uncertain_mask = out == -1.0
    if policy is UncertainPolicy.ZEROS:
        out[uncertain_mask] = 0.0
    elif policy is UncertainPolicy.ONES:
        out[uncertain_mask] = 1.0
    else:
        out[uncertain_mask] = np.nan
    if no_finding_consistency and out.shape[-1] == NUM_LABELS:
        out = make_no_finding_consistent(out)
    return out


def make_no_finding_consistent(labels: np.ndarray) -> np.ndarray:
    """Enforce the No Finding rule on policy-applied labels (values 1, 0, NaN), returning a new array.

    Any positive pathology sets No Finding to 0; otherwise No Finding = 1 sets the unknown pathologies
    to 0. Support Devices is left alone either way.
    """
    out = np.array(labels, dtype=np.float32, copy=True)
    if out.shape[-1] != NUM_LABELS:
        raise ValueError(f"labels must have {NUM_LABELS} columns, got shape {out.shape}")
    path = out[..., list(PATHOLOGIES)]
    abnormal = (path == 1.0).any(axis=-1)
    out[..., NO_FINDING] = np.where(abnormal, 0.0, out[..., NO_FINDING])
    normal = out[..., NO_FINDING] == 1.0
    out[..., list(PATHOLOGIES)] = np.where(normal[..., None] & np.isnan(path), 0.0, path)
    return out


def labels_for_loss(labels: np.ndarray) -> np.ndarray:
    """Binary view for concept-similarity losses: positive stays 1, negative and unknown become 0."""
    return np.nan_to_num(np.asarray(labels, dtype=np.float32), nan=0.0)
