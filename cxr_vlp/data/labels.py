"""The one label policy of the project: CheXpert's 14 observations and how their values are read.

CheXpert convention for a label cell: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank unknown.
Every reader, loss and metric goes through :func:`apply_policy` so the convention lives in one place.
Unknown is represented as ``NaN`` in float arrays; losses and metrics mask it.
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


class UncertainPolicy(str, Enum):
    """What an uncertain (-1) mention becomes."""

    ZEROS = "zeros"
    ONES = "ones"
    UNKNOWN = "unknown"


def apply_policy(raw: np.ndarray, uncertain: UncertainPolicy | str = UncertainPolicy.UNKNOWN) -> np.ndarray:
    """Map raw CheXpert values (1, 0, -1, NaN) to floats in {1, 0, NaN}.

    ``raw`` is any array-like of shape ``[..., 14]``. Values other than 1, 0, -1 and NaN raise
    ``ValueError`` naming the offending value.
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
    return out


def labels_for_loss(labels: np.ndarray) -> np.ndarray:
    """Binary view for concept-similarity losses: positive stays 1, negative and unknown become 0."""
    return np.nan_to_num(np.asarray(labels, dtype=np.float32), nan=0.0)
