"""The prompt / negation audit against a slow transcription with a toy text encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_vlp.benchmark.audit import prompt_audit
from cxr_vlp.benchmark.prompts import BenchmarkPrompts
from cxr_vlp.text.labels import CHEXPERT_LABELS

D = 8


def _encode(texts: list[str]) -> torch.Tensor:
    """A deterministic toy text encoder: a seeded random vector per word, summed (not normalised)."""
    out = []
    for t in texts:
        v = np.zeros(D)
        for w in t.split():
            v += np.random.default_rng(sum(map(ord, w)) * 31 + len(w)).normal(size=D)
        out.append(v)
    return torch.tensor(np.array(out), dtype=torch.float32)


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _slow_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def _ensemble(texts) -> list[float]:
    vecs = [_unit(v) for v in _encode(texts).double().tolist()]
    return _unit([sum(col) / len(vecs) for col in zip(*vecs)])


def test_audit_matches_slow_transcription() -> None:
    prompts = BenchmarkPrompts.from_config(
        {
            "templates": ["{phrase}", "there is {phrase}", "a large {phrase}"],
            "negative": "no {phrase}",
            "phrases": {"Edema": "edema"},
            "labels": {"No Finding": {"positive": ["normal study", "clear lungs"], "negative": ["abnormal study"]}},
        }
    )
    rng = np.random.default_rng(0)
    n = 60
    labels = torch.full((n, len(CHEXPERT_LABELS)), float("nan"))
    edema, normal = CHEXPERT_LABELS.index("Edema"), CHEXPERT_LABELS.index("No Finding")
    labels[:, edema] = torch.tensor((rng.random(n) < 0.4).astype(np.float32))
    labels[:5, edema] = float("nan")
    labels[:, normal] = 1 - torch.nan_to_num(labels[:, edema], 0.0)
    edema_dir = torch.nn.functional.normalize(_encode(["edema"])[0], dim=0)
    images = (
        torch.tensor(rng.normal(size=(n, D)), dtype=torch.float32)
        + 1.5 * torch.nan_to_num(labels[:, edema : edema + 1], 0.0) * edema_dir
    )
    rows = prompt_audit("toy", _encode, images, labels, ["Edema", "No Finding"], [edema, normal], prompts)
    assert [r.label for r in rows] == ["Edema", "No Finding"]

    for row, col in zip(rows, (edema, normal)):
        pos = prompts.positive(row.label)
        neg = _ensemble(prompts.negatives(row.label))
        keep = [i for i in range(n) if not math.isnan(float(labels[i, col]))]
        y = [float(labels[i, col]) for i in keep]
        v = [_unit(images[i].double().tolist()) for i in keep]
        per = []
        for p in pos:
            e = _unit(_encode([p])[0].double().tolist())
            per.append(_slow_auroc([_dot(x, e) - _dot(x, neg) for x in v], y))
        ens = _ensemble(pos)
        assert row.per_prompt == pytest.approx(dict(zip(pos, per)), abs=1e-9)
        assert row.mean == pytest.approx(sum(per) / len(per))
        assert row.spread == pytest.approx(max(per) - min(per))
        assert row.worst == pytest.approx(min(per)) and row.worst_prompt == pos[per.index(min(per))]
        assert row.ensemble == pytest.approx(_slow_auroc([_dot(x, ens) - _dot(x, neg) for x in v], y))
        assert row.negative_only == pytest.approx(_slow_auroc([_dot(x, neg) for x in v], y))
        assert (row.n_pos, row.n_known) == (int(sum(y)), len(y))
    # a bag-of-words encoder finds "no edema" close to edema images: the negation blind spot the audit shows
    assert rows[0].negative_only > 0.7


def test_audit_skips_a_label_with_one_class() -> None:
    prompts = BenchmarkPrompts.from_config(
        {"templates": ["{phrase}"], "negative": "no {phrase}", "phrases": {"Edema": "edema"}}
    )
    labels = torch.zeros(10, len(CHEXPERT_LABELS))
    assert (
        prompt_audit("toy", _encode, torch.randn(10, D), labels, ["Edema"], [CHEXPERT_LABELS.index("Edema")], prompts)
        == []
    )
