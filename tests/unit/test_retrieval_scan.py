"""Large-gallery retrieval scan: grouped ranks, top-k, de-duplication and class-based precision against loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.eval.retrieval import (
    class_precision_at_k,
    evaluate_retrieval,
    metrics_from_ranks,
    ranks_from_similarity,
    scan_retrieval,
    text_groups,
)


def _emb(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def brute_grouped_ranks(sim: np.ndarray, qg: list[int], gg: list[int]) -> list[int]:
    ranks = []
    for q in range(sim.shape[0]):
        best = max(sim[q, j] for j in range(sim.shape[1]) if gg[j] == qg[q])
        ranks.append(1 + sum(1 for j in range(sim.shape[1]) if gg[j] != qg[q] and sim[q, j] > best))
    return ranks


def brute_class_precision(sim: np.ndarray, qlab: np.ndarray, glab: np.ndarray, k: int) -> float:
    values = []
    for q in range(sim.shape[0]):
        qpos = {c for c in range(qlab.shape[1]) if qlab[q, c] == 1}
        if not qpos:
            continue
        order = sorted(range(sim.shape[1]), key=lambda j: -sim[q, j])[:k]
        values.append(sum(1 for j in order if qpos & {c for c in range(glab.shape[1]) if glab[j, c] == 1}) / k)
    return sum(values) / len(values)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_identity_groups_reproduce_the_plain_definition_ties_included(chunk: int) -> None:
    sim = torch.randint(0, 4, (13, 13)).float()  # many ties
    scan = scan_retrieval(lambda s, e: sim[s:e], 13, 13, k=5, chunk_size=chunk)
    assert torch.equal(scan.ranks, ranks_from_similarity(sim))


@pytest.mark.parametrize("chunk", [2, 5, 100])
def test_grouped_ranks_and_topk_match_loops(chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(9, 14, generator=g)
    gg = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6, 7, 8, 8])
    qg = torch.arange(9)
    scan = scan_retrieval(lambda s, e: sim[s:e], 9, 14, qg, gg, k=4, chunk_size=chunk)
    assert scan.ranks.tolist() == brute_grouped_ranks(sim.numpy(), qg.tolist(), gg.tolist())
    assert torch.equal(scan.topk, sim.argsort(dim=1, descending=True)[:, :4])
    torch.testing.assert_close(scan.topk_scores, sim.sort(dim=1, descending=True).values[:, :4])


def test_blocks_never_exceed_chunk_rows() -> None:
    q, g = _emb(50, seed=1), _emb(50, seed=2)
    seen = []

    def rows(s: int, e: int) -> torch.Tensor:
        seen.append(e - s)
        return q[s:e] @ g.T

    scan_retrieval(rows, 50, 50, k=3, chunk_size=8)
    assert max(seen) == 8 and sum(seen) == 50


def test_query_without_relevant_item_is_an_error() -> None:
    sim = torch.randn(2, 3)
    with pytest.raises(ValueError, match="no relevant gallery item"):
        scan_retrieval(lambda s, e: sim[s:e], 2, 3, torch.tensor([0, 9]), torch.tensor([0, 1, 2]))


def test_class_precision_matches_loops_and_skips_queries_without_positives() -> None:
    g = torch.Generator().manual_seed(3)
    sim = torch.randn(12, 12, generator=g)
    labels = (torch.rand(12, 5, generator=g) > 0.6).float()
    labels[2] = 0.0  # no positive: left out
    labels[3, 1] = float("nan")  # unknown is not a positive
    scan = scan_retrieval(lambda s, e: sim[s:e], 12, 12, k=10)
    out = class_precision_at_k(scan.topk, labels, labels, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert out[f"P@{k}"] == pytest.approx(brute_class_precision(sim.numpy(), labels.numpy(), labels.numpy(), k))
    assert out["P_queries"] == float((labels.nan_to_num(0) == 1).any(1).sum())


def test_text_groups_normalise_case_and_spaces() -> None:
    group, first = text_groups(["No acute process.", "no  acute process.", "Effusion.", " no acute PROCESS. "])
    assert group.tolist() == [0, 0, 1, 0] and first.tolist() == [0, 2]


def test_dedup_collapses_identical_reports_both_ways() -> None:
    n = 10
    img = _emb(n, seed=4)
    texts = ["normal"] * 4 + [f"finding {i}" for i in range(6)]
    txt = _emb(n, seed=5)
    txt[:4] = txt[0]  # identical texts have identical embeddings
    m, scans = evaluate_retrieval(img, txt, texts=texts, dedup=True, ks=(1, 5))
    group, first = text_groups(texts)
    uniq = txt[first]
    # image -> text: 7 distinct reports, each image's match is its report's group
    i2t = brute_grouped_ranks((img @ uniq.T).numpy(), group.tolist(), list(range(len(first))))
    assert scans["i2t"].ranks.tolist() == i2t
    # text -> image: one query per distinct report, any of its images is a hit
    t2i = brute_grouped_ranks((uniq @ img.T).numpy(), list(range(len(first))), group.tolist())
    assert scans["t2i"].ranks.tolist() == t2i
    assert m["num_distinct_reports"] == 7 and m["i2t/R@1"] == pytest.approx(metrics_from_ranks(torch.tensor(i2t))["R@1"])
    # without dedup the duplicates crowd the gallery: no i2t rank can be better than with dedup
    plain, plain_scans = evaluate_retrieval(img, txt, texts=texts, dedup=False)
    assert (plain_scans["i2t"].ranks >= scans["i2t"].ranks).all()
    assert "num_distinct_reports" not in plain


def test_evaluate_retrieval_keys_and_precision() -> None:
    n = 30
    img, txt = _emb(n, seed=6), _emb(n, seed=7)
    labels = (torch.rand(n, 14, generator=torch.Generator().manual_seed(8)) > 0.7).float()
    m, _ = evaluate_retrieval(img, txt, labels=labels, prefix="test/", chunk_size=7)
    for d in ("i2t", "t2i"):
        for key in ("R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10", "P@1", "P@5", "P@10"):
            assert math.isfinite(m[f"test/{d}/{key}"]), key
    sim = (img @ txt.T).numpy()
    assert m["test/i2t/P@5"] == pytest.approx(brute_class_precision(sim, labels.numpy(), labels.numpy(), 5))
    assert m["test/t2i/P@10"] == pytest.approx(brute_class_precision(sim.T, labels.numpy(), labels.numpy(), 10))


def test_custom_score_function_is_used() -> None:
    n = 8
    img, txt = _emb(n, seed=9), _emb(n, seed=10)
    m, scans = evaluate_retrieval(img, txt, score_fn=lambda d, s, e: -torch.cdist(
        (img if d == "i2t" else txt)[s:e], txt if d == "i2t" else img))
    assert torch.equal(scans["i2t"].ranks, ranks_from_similarity(-torch.cdist(img, txt)))
