"""Prompt and negation audit of a model's zero-shot classification (docs/benchmark.md).

For label c with positive prompts q_1 … q_T, negative prompts (ensembled into t⁻, as in
:func:`~cxr_vlp.eval.zeroshot.class_text_embeddings`) and L2-normalised image embeddings v_i, the per-prompt score

    s_ij = cos(v_i, e(q_j)) − cos(v_i, t⁻)

ranks images exactly as the two-way prompt softmax of prompt q_j alone does (the softmax is increasing in it), so
AUROC_j is that prompt's zero-shot AUROC. The audit reports, on the study split given:

- ``ensemble``: the AUROC of the ensemble of all T prompts (what the benchmark's zero-shot task scores);
- ``mean`` / ``spread`` / ``worst``: the mean, max − min and min of AUROC_1 … AUROC_T (and the worst prompt);
- ``negative only``: the AUROC of cos(v_i, t⁻) alone as a score for c. A model that reads negation finds images
  with the finding *less* similar to "no <finding>", so it scores well below 0.5; a bag-of-words model that only
  matches the finding's word scores above 0.5.

AUROCs are :func:`~cxr_vlp.metrics.classification.auroc_per_label` on the known cells; a label whose known cells
hold one class is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_vlp.benchmark.prompts import BenchmarkPrompts
from cxr_vlp.eval.zeroshot import class_text_embeddings
from cxr_vlp.metrics.classification import auroc_per_label

__all__ = ["AuditRow", "prompt_audit"]


@dataclass
class AuditRow:
    """One label of one model's audit (module docstring)."""

    model: str
    label: str
    n_pos: int
    n_known: int
    ensemble: float
    mean: float
    spread: float
    worst: float
    worst_prompt: str
    negative_only: float
    per_prompt: dict[str, float]


@torch.no_grad()
def prompt_audit(
    model_name: str,
    encode_text: Callable[[list[str]], Tensor],
    image_emb: Tensor,
    labels: Tensor,
    label_names: Sequence[str],
    label_columns: Sequence[int],
    prompts: BenchmarkPrompts,
) -> list[AuditRow]:
    """Audit rows of ``label_names`` (their columns of ``labels`` ``[N, 14]``) for one model (module docstring)."""
    v = F.normalize(image_emb.float(), dim=-1)
    rows = []
    for name, col in zip(label_names, label_columns):
        y = labels[:, col].double().numpy()[:, None]
        known = y[np.isfinite(y)]
        if not known.size or not 0 < known.sum() < known.size:
            continue
        positives = prompts.positive(name)
        neg = class_text_embeddings(encode_text, prompts.negatives(name))
        pos = F.normalize(encode_text(positives).float(), dim=-1)
        ens = class_text_embeddings(encode_text, positives)
        neg_cos = v @ neg
        per = auroc_per_label(((v @ pos.T) - neg_cos[:, None]).double().numpy(), np.repeat(y, len(positives), 1))
        ensemble = float(auroc_per_label(((v @ ens) - neg_cos).double().numpy()[:, None], y)[0])
        negative_only = float(auroc_per_label(neg_cos.double().numpy()[:, None], y)[0])
        worst = int(np.argmin(per))
        rows.append(
            AuditRow(
                model_name,
                name,
                int(known.sum()),
                int(known.size),
                ensemble,
                float(per.mean()),
                float(per.max() - per.min()),
                float(per[worst]),
                positives[worst],
                negative_only,
                dict(zip(positives, map(float, per))),
            )
        )
    return rows
