"""The model card (``README.md`` of an exported folder) with ``huggingface_hub.ModelCard``.

It states intended and out-of-scope use (research only, never clinical decisions), the training data by name and
access class, the patient-split fingerprint, the configuration and the run's test metrics. It never holds patient
content: no report text, no study or subject ids, and every string of the configuration that looks like a file path
is replaced by ``<path>`` (the data root and its files included).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

import cxr_vlp
from cxr_vlp.inference.payload import Payload

__all__ = ["model_card", "scrub_paths"]

_PATH_KEYS = ("path", "root", "dir", "file", "cache", "csv", "ckpt")


def _looks_like_path(key: str, value: str) -> bool:
    if value.startswith(("/", "~", "./", "../")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/"):
        return True
    return os.sep in value and any(k in key.lower() for k in _PATH_KEYS)


def scrub_paths(node: Any, key: str = "") -> Any:
    """A copy of a config tree with path-like strings replaced by ``"<path>"`` (``_target_`` names kept)."""
    if isinstance(node, dict):
        return {k: scrub_paths(v, str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [scrub_paths(v, key) for v in node]
    if isinstance(node, str) and key != "_target_" and _looks_like_path(key, node):
        return "<path>"
    return node


def _head_name(payload: Payload) -> str:
    if payload.kind == "reportgen":
        return "report generation (frozen image tower + concept classifier + decoder)"
    return str(payload.hparams.get("loss", {}).get("_target_", "?")).rsplit(".", 1)[-1]


def _metrics_table(metrics: dict[str, float], limit: int = 60) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items()) if math.isfinite(v) and "/n_pos/" not in k]
    if not rows:
        return "No held-out test metrics: the run's `metrics.json` next to the checkpoint is missing or has none."
    shown = rows[:limit]
    lines = ["| metric | value |", "|---|---|", *(f"| `{k}` | {v:.4g} |" for k, v in shown)]
    if len(rows) > limit:
        lines.append(f"\n{len(rows) - limit} more metrics are in `config.json` (`metrics`).")
    return "\n".join(lines)


def model_card(payload: Payload, repo_id: str | None = None) -> ModelCard:
    """The card of an exported model (see the module docstring)."""
    from cxr_vlp.inference.hub_io import exported_hparams

    data = payload.training_data
    name, credentialed = data.get("name", "dataset"), bool(data.get("credentialed", False))
    access = (
        "credentialed access (a data use agreement is required; the weights are derived from restricted data: "
        "share them only as that agreement allows)"
        if credentialed
        else "openly available"
    )
    card_data = ModelCardData(
        library_name="cxr_vlp",
        tags=["chest-x-ray", "vision-language", "contrastive", "research-only", "cxr_vlp"],
        datasets=[name],
        pipeline_tag="zero-shot-image-classification",
    )
    model = payload.hparams.get("model") or {}
    image = (model.get("image_encoder") or payload.hparams.get("image_encoder") or {}).get("name", "?")
    config = json.dumps(
        scrub_paths(
            {
                "kind": payload.kind,
                "hyper_parameters": exported_hparams(payload.hparams),
                "preprocessing": payload.preprocessing,
            }
        ),
        indent=1,
        default=str,
    )
    thresholds = (
        f"Validation-fitted zero-shot thresholds are stored for {len(payload.thresholds)} labels and "
        "applied by `CXRModel.zero_shot`."
        if payload.thresholds
        else "No validation-fitted zero-shot thresholds were found for this run."
    )
    body = f"""
# {repo_id or "cxr_vlp chest X-ray model"}

A chest X-ray vision-language model trained with cxr_vlp ({payload.kind}; loss head
{_head_name(payload)}; image backbone `{image}`), exported with `python -m cxr_vlp.export`, version
{cxr_vlp.__version__}.

```python
from cxr_vlp import CXRModel
model = CXRModel.from_pretrained("{repo_id or "<folder or hub id>"}")
```

## Intended use

Research on chest X-ray representation learning: embedding images and report text, retrieval, zero-shot label
scoring and Grad-CAM explanations, for benchmarking and method development.

## Out-of-scope use

**Research only. Not a medical device, not validated for clinical use: do not use it for diagnosis, triage,
treatment or any other clinical decision.** Its outputs have not been assessed on real patient populations,
may be miscalibrated outside the training distribution and can carry the biases of its training data.

## Training data

- Dataset: **{name}**, {access}.
- Patient-level split (no patient in two splits); split fingerprint (sha256 of the subject ids per split):
  `{payload.split_fingerprint or "not available (no split.json next to the checkpoint)"}`.
- This card holds no patient content: no report text, no study or patient identifiers, no data paths.

## Preprocessing

Grayscale, 8 bits (16-bit images keep their high byte), the run's evaluation transforms: shorter side resized to
{payload.preprocessing.get("transforms", {}).get("image_size", 224)} px, centre crop, normalised; texts truncated
to {payload.preprocessing.get("max_length")} tokens. `CXRModel.encode_images` applies them.

## Evaluation (the run's held-out test split)

{_metrics_table(payload.metrics)}

{thresholds}

## Configuration

```json
{config}
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body.lstrip()}")
