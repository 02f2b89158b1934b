"""The tie rule on the ProbCLIP path (match-logit ranking in the evaluation suite and in validation) and in the
uncertainty analysis that consumes the rank counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_vlp.eval.uncertainty import recall_by_uncertainty_bins, risk_coverage
from cxr_vlp.lit.module import head_retrieval
from cxr_vlp.losses.prob_head import ProbClipHead
from cxr_vlp.metrics.retrieval import RankCounts, evaluate_retrieval, retrieval_metrics
from cxr_vlp.models.outputs import Embeddings

N, D = 10, 8


def _collapsed() -> tuple[torch.Tensor, torch.Tensor]:
    """Every study has the same μ and log σ²: a collapsed probabilistic model."""
    return torch.full((N, D), 0.25), torch.full((N, D), -2.0)


def _chance(m: dict[str, float], prefix: str, n: int) -> None:
    for k in (1, 5, 10):
        assert m[f"{prefix}R@{k}"] == pytest.approx(min(k, n) / n, abs=1e-15)
    assert m[f"{prefix}MeanR"] == pytest.approx((n + 1) / 2) and m[f"{prefix}MedR"] == pytest.approx((n + 1) / 2)
    assert m[f"{prefix}tied_match_share"] == 1.0


def test_collapsed_probabilistic_model_gives_chance_in_the_evaluation_suite() -> None:
    head = ProbClipHead()
    mu, lv = _collapsed()

    def score(d: str, q_rows: torch.Tensor, g_rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head.match_logit(mu[q_rows], lv[q_rows], mu[g_rows], lv[g_rows])

    m, scans = evaluate_retrieval(
        mu, mu.clone(), texts=["same"] * 2 + [f"r{i}" for i in range(N - 2)], score_fn=score, chunk_size=3
    )
    for d in ("i2t", "t2i"):
        _chance(m, f"{d}/", N)
    _chance(m, "dedup/i2t/", N - 1)  # merged reports: N − 1 distinct texts
    # text -> image: the report with two images sees them as one item among N − 1, the others among N
    assert m["dedup/t2i/R@1"] == pytest.approx((1 / (N - 1) + (N - 2) / N) / (N - 1), abs=1e-15)


def test_collapsed_probabilistic_model_gives_chance_in_validation() -> None:
    head = ProbClipHead()
    mu, lv = _collapsed()
    m = head_retrieval(head, Embeddings(mu, lv), Embeddings(mu.clone(), lv.clone()), prefix="val/", chunk_size=3)
    for d in ("i2t", "t2i"):
        _chance(m, f"val/{d}/", N)


def test_validation_ranks_by_match_logit_with_the_tie_rule() -> None:
    head = ProbClipHead()
    g = torch.Generator().manual_seed(0)
    mu = torch.randint(0, 2, (N, D), generator=g).float()  # binary μ: many exactly tied match logits
    lv = torch.full((N, D), -1.0)
    m = head_retrieval(head, Embeddings(mu, lv), Embeddings(mu.flip(0), lv), prefix="val/", chunk_size=4)
    with torch.no_grad():
        sim = head.match_logit(mu, lv, mu.flip(0), lv)
    want = retrieval_metrics(sim)
    assert want["tied_match_share"] > 0
    for key, value in want.items():
        assert m[f"val/i2t/{key}"] == pytest.approx(value, abs=1e-12)


def test_uncertainty_uses_tie_fair_hits() -> None:
    n = 20
    counts = RankCounts(torch.zeros(n, dtype=torch.long), torch.full((n,), 3))  # every match tied 4 ways
    u = np.arange(n, dtype=float)
    bins = recall_by_uncertainty_bins(counts, u, n_bins=4, k=1)
    np.testing.assert_allclose(bins.recall, 0.25)
    rc = risk_coverage(counts, u, k=2)
    np.testing.assert_allclose(rc.risk, 0.5)
    assert rc.random_risk == pytest.approx(0.5) and rc.aurc == pytest.approx(0.5)


def test_oracle_risk_orders_fractional_hits() -> None:
    counts = RankCounts(torch.tensor([0, 0, 0, 5]), torch.tensor([0, 1, 3, 0]))  # hits 1, 1/2, 1/4, 0 at k = 1
    rc = risk_coverage(counts, np.array([3.0, 2.0, 1.0, 0.0]))
    hits = np.array([1.0, 0.5, 0.25, 0.0])
    m = np.arange(1, 5)
    np.testing.assert_allclose(rc.oracle_risk, 1 - np.cumsum(hits) / m)
    np.testing.assert_allclose(rc.risk, 1 - np.cumsum(hits[::-1]) / m)  # most certain = the worst query here
    assert rc.oracle_aurc < rc.aurc
    # integer ranks keep the 0/1 oracle: 1 − min(m, H) / m
    plain = risk_coverage(np.array([1, 4, 1, 2]), np.array([0.0, 1.0, 2.0, 3.0]))
    np.testing.assert_allclose(plain.oracle_risk, 1 - np.minimum(m, 2) / m)
