"""Concept prompts for report generation (CLIP-XRad Algorithm 1, the prompt constructor and classifier).

A light classifier on the frozen image embedding predicts the 14 CheXpert labels; the positive findings
become a text prompt, ``"Findings: cardiomegaly, pleural effusion."``, that the decoder reads before
``<report>``. "No Finding" is never listed (it is the absence of findings, and the prompt says so with
``"Findings: none."``); "Support Devices" is listed, since reports describe tubes and lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxr_vlp.text.labels import CHEXPERT_LABELS, NUM_LABELS

PROMPT_PREFIX = "Findings:"
NO_FINDINGS_PROMPT = f"{PROMPT_PREFIX} none."

# CheXpert label -> phrase in the prompt, in CHEXPERT_LABELS order; "No Finding" has no phrase.
FINDING_NAMES: dict[str, str] = {
    name: ("other pleural abnormality" if name == "Pleural Other" else name.lower())
    for name in CHEXPERT_LABELS
    if name != "No Finding"
}


def concept_prompt(positive: Sequence[str]) -> str:
    """``["Cardiomegaly", "Pleural Effusion"] -> "Findings: cardiomegaly, pleural effusion."``.

    Findings are listed once each in CHEXPERT_LABELS order whatever the input order; "No Finding" is
    accepted and never listed; nothing listed gives ``"Findings: none."``. Unknown names raise ValueError.
    """
    unknown = [name for name in positive if name not in CHEXPERT_LABELS]
    if unknown:
        raise ValueError(f"unknown CheXpert label(s) {unknown}; expected names from {list(CHEXPERT_LABELS)}")
    wanted = set(positive)
    phrases = [phrase for name, phrase in FINDING_NAMES.items() if name in wanted]
    if not phrases:
        return NO_FINDINGS_PROMPT
    return f"{PROMPT_PREFIX} {', '.join(phrases)}."


def _prompts_from_mask(positive: torch.Tensor) -> list[str]:
    if positive.ndim != 2 or positive.shape[1] != NUM_LABELS:
        raise ValueError(f"expected a [B, {NUM_LABELS}] tensor in CHEXPERT_LABELS order, got {tuple(positive.shape)}")
    rows = positive.detach().cpu().tolist()
    return [concept_prompt([name for name, flag in zip(CHEXPERT_LABELS, row) if flag]) for row in rows]


def prompts_from_probabilities(probs: torch.Tensor, threshold: float | torch.Tensor = 0.5) -> list[str]:
    """One prompt per row of ``probs [B, 14]``: a label is positive when ``prob >= threshold``.

    ``threshold`` is a float or a per-label tensor ``[14]`` (e.g. thresholds tuned on validation).
    """
    thr = torch.as_tensor(threshold, dtype=probs.dtype, device=probs.device)
    if thr.ndim not in (0, 1) or (thr.ndim == 1 and thr.shape[0] != NUM_LABELS):
        raise ValueError(f"threshold must be a float or a [{NUM_LABELS}] tensor, got shape {tuple(thr.shape)}")
    return _prompts_from_mask(probs >= thr)


def prompts_from_labels(labels: torch.Tensor) -> list[str]:
    """Prompts from ground-truth labels ``[B, 14]`` (1 positive; 0, -1 and NaN are not listed): "oracle" prompts."""
    return _prompts_from_mask(labels == 1)


class ConceptClassifier(nn.Module):
    """The light classifier on the frozen image embedding: ``features [B, in_dim] -> logits [B, num_labels]``.

    Linear when ``hidden`` is None, else Linear -> GELU -> Dropout -> Linear. ``dropout`` also acts on the
    input features.
    """

    def __init__(
        self, in_dim: int, num_labels: int = NUM_LABELS, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_dim, self.num_labels = in_dim, num_labels
        if hidden is None:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_labels))
        else:
            self.net = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(in_dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_labels),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the known entries of ``labels`` only.

    Known means finite and ``>= 0``: NaN (unknown) is ignored, and so is an uncertain ``-1`` that reached the
    loss without an uncertainty policy (the data module normally maps it already, see ``apply_policy``).
    Returns a zero that still carries a gradient when nothing is known.
    """
    labels = labels.to(logits.dtype)
    known = torch.isfinite(labels) & (labels >= 0)
    targets = torch.where(known, labels, torch.zeros_like(labels))
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per_entry = per_entry * known.to(per_entry.dtype)
    return per_entry.sum() / known.sum().clamp_min(1)  # no host sync; 0 (with grad) when nothing is known
