"""CLEAR concept projection (docs/design.md §3), as pure tensor functions.

* ``s = f_img Cᵀ`` — concept scores: cosine similarities of image and concept embeddings (tower space);
* ``z = normalise(s E)`` — the image projected into the frozen text-embedding ("LLM") space;
* ``p = sigmoid(t·z·(e⁺ − e⁻))`` — zero-shot probability, the two-way softmax of ``t·z·e±``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["concept_scores", "project_to_llm", "top_concepts", "zero_shot_probability"]


def concept_scores(image_emb: torch.Tensor, concept_emb_tower: torch.Tensor) -> torch.Tensor:
    """``[B, D] × [K, D] -> [B, K]``: cosine similarity of each image with each concept (both normalised)."""
    if image_emb.dim() != 2 or concept_emb_tower.dim() != 2 or image_emb.shape[1] != concept_emb_tower.shape[1]:
        raise ValueError(
            f"expected [B, D] and [K, D], got {tuple(image_emb.shape)} and {tuple(concept_emb_tower.shape)}"
        )
    return F.normalize(image_emb, dim=-1) @ F.normalize(concept_emb_tower, dim=-1).t()


def project_to_llm(scores: torch.Tensor, concept_emb_llm: torch.Tensor) -> torch.Tensor:
    """``[B, K] × [K, E] -> [B, E]``: ``z = normalise(s E)``."""
    if scores.dim() != 2 or concept_emb_llm.dim() != 2 or scores.shape[1] != concept_emb_llm.shape[0]:
        raise ValueError(f"expected [B, K] and [K, E], got {tuple(scores.shape)} and {tuple(concept_emb_llm.shape)}")
    return F.normalize(scores @ concept_emb_llm.to(scores.dtype), dim=-1)


def zero_shot_probability(z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``[B, E]``, ``[L, E]``, ``[L, E]`` -> ``[B, L]`` probability that each label is present.

    Computed as ``sigmoid(scale · (z·e⁺ − z·e⁻))``, equal to the two-way softmax but stable for large scales.
    """
    if pos.shape != neg.shape or z.dim() != 2 or pos.dim() != 2 or z.shape[1] != pos.shape[1]:
        raise ValueError(
            f"expected z [B, E], pos/neg [L, E]; got {tuple(z.shape)}, {tuple(pos.shape)}, {tuple(neg.shape)}"
        )
    return torch.sigmoid(scale * (z @ pos.t() - z @ neg.t()))


def top_concepts(scores: torch.Tensor, concepts: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """For each row of ``scores [B, K]`` (or a single ``[K]`` row) the ``k`` highest ``(concept, score)``."""
    if scores.dim() == 1:
        scores = scores.unsqueeze(0)
    if scores.shape[1] != len(concepts):
        raise ValueError(f"scores have {scores.shape[1]} columns but there are {len(concepts)} concepts")
    k = min(k, len(concepts))
    values, idx = scores.detach().float().topk(k, dim=1)
    return [[(concepts[j], float(v)) for v, j in zip(vr.tolist(), ir.tolist())] for vr, ir in zip(values, idx)]
