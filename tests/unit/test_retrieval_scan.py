"""Large-gallery retrieval scan: grouped ranks, top-k, both protocols (full gallery, de-duplicated texts) and
class-based precision against loops, with ties broken at random (expectations over all tie orders)."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.metrics.retrieval import (
    RankCounts,
    class_precision_at_k,
    evaluate_retrieval,
    metrics_from_ranks,
    ranks_from_similarity,
    scan_retrieval,
    text_groups,
)


def _emb(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def brute_grouped_counts(sim: np.ndarray, qg: list[int], gg: list[int]) -> tuple[list[int], list[int]]:
    """Relevant items merged into one scored by the best of them: (non-relevant above it, non-relevant equal)."""
    higher, tied = [], []
    for q in range(sim.shape[0]):
        best = max(sim[q, j] for j in range(sim.shape[1]) if gg[j] == qg[q])
        others = [sim[q, j] for j in range(sim.shape[1]) if gg[j] != qg[q]]
        higher.append(sum(1 for s in others if s > best))
        tied.append(sum(1 for s in others if s == best))
    return higher, tied


def brute_expected_precision(sim: np.ndarray, qlab: np.ndarray, glab: np.ndarray, k: int) -> float:
    """Mean over queries with a positive label of the precision of the top k, averaged over every ordering of
    the gallery (all permutations, then a stable sort by descending score)."""
    values = []
    ng = sim.shape[1]
    for q in range(sim.shape[0]):
        qpos = {c for c in range(qlab.shape[1]) if qlab[q, c] == 1}
        if not qpos:
            continue
        hit = [bool(qpos & {c for c in range(glab.shape[1]) if glab[j, c] == 1}) for j in range(ng)]
        kk = min(k, ng)
        per_order = []
        for perm in itertools.permutations(range(ng)):
            top = sorted(perm, key=lambda j: -sim[q, j])[:kk]
            per_order.append(sum(hit[j] for j in top) / kk)
        values.append(statistics.fmean(per_order))
    return statistics.fmean(values)


def _counts(counts: RankCounts) -> tuple[list[int], list[int]]:
    return counts.higher.tolist(), counts.tied.tolist()


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_identity_groups_reproduce_the_plain_definition_ties_included(chunk: int) -> None:
    sim = torch.randint(0, 4, (13, 13), generator=torch.Generator().manual_seed(0)).double()  # many ties
    scan = scan_retrieval(lambda s, e: sim[s:e], 13, 13, k=5, chunk_size=chunk)
    assert _counts(scan.ranks) == _counts(ranks_from_similarity(sim))
    grouped = scan_retrieval(lambda s, e: sim[s:e], 13, 13, torch.arange(13), torch.arange(13), k=5, chunk_size=chunk)
    assert _counts(grouped.ranks) == _counts(scan.ranks)


@pytest.mark.parametrize("chunk", [2, 5, 100])
def test_grouped_ranks_and_topk_match_loops(chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    sim = torch.randint(0, 5, (9, 14), generator=g).double()  # ties within and across groups
    gg = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6, 7, 8, 8])
    qg = torch.arange(9)
    scan = scan_retrieval(lambda s, e: sim[s:e], 9, 14, qg, gg, k=4, chunk_size=chunk)
    assert _counts(scan.ranks) == brute_grouped_counts(sim.numpy(), qg.tolist(), gg.tolist())
    assert sum(scan.ranks.tied.tolist()) > 0
    torch.testing.assert_close(scan.topk_scores, sim.sort(dim=1, descending=True).values[:, :4])
    assert torch.equal(sim.gather(1, scan.topk), scan.topk_scores)


@pytest.mark.parametrize("chunk", [1, 4, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collapsed_model_gives_chance_in_both_protocols_and_directions(chunk: int, dtype: torch.dtype) -> None:
    texts = ["normal"] * 4 + ["effusion"] * 2 + [f"finding {i}" for i in range(6)]  # 12 studies, 8 distinct texts
    n, u = len(texts), 8
    emb = torch.full((n, 16), 0.25, dtype=dtype)
    m, scans = evaluate_retrieval(emb, emb.clone(), texts=texts, chunk_size=chunk, ks=(1, 5, 10))
    for d in ("i2t", "t2i"):  # full gallery: N items, one match
        for k in (1, 5, 10):
            assert m[f"{d}/R@{k}"] == pytest.approx(k / n, abs=1e-15)
        assert m[f"{d}/MeanR"] == m[f"{d}/MedR"] == pytest.approx((n + 1) / 2)
        assert m[f"{d}/nDCG@10"] == pytest.approx(sum(1 / math.log2(p + 1) for p in range(1, 11)) / n, abs=1e-15)
        assert m[f"{d}/tied_match_share"] == 1.0
    # merged reports, image -> text: U gallery items, one relevant
    assert m["dedup/i2t/R@1"] == pytest.approx(1 / u, abs=1e-15) and m["dedup/i2t/MeanR"] == pytest.approx((u + 1) / 2)
    # merged reports, text -> image: the r images of a report count as one item among the N - r others
    sizes = [4, 2] + [1] * 6
    for k in (1, 5):
        assert m[f"dedup/t2i/R@{k}"] == pytest.approx(statistics.fmean(min(1, k / (n - r + 1)) for r in sizes))
    assert m["dedup/t2i/MeanR"] == pytest.approx(statistics.fmean((n - r + 2) / 2 for r in sizes))
    assert m["dedup/i2t/tied_match_share"] == m["dedup/t2i/tied_match_share"] == 1.0
    assert m["num_distinct_reports"] == u and m["num_studies"] == n
    assert scans["dedup/i2t"].ranks.tied.tolist() == [u - 1] * n


def test_blocks_never_exceed_chunk_rows() -> None:
    q, g = _emb(50, seed=1), _emb(50, seed=2)
    seen = []

    def rows(s: int, e: int) -> torch.Tensor:
        seen.append(e - s)
        return q[s:e] @ g.T

    scan_retrieval(rows, 50, 50, k=3, chunk_size=8)
    assert max(seen) == 8 and sum(seen) == 50


def test_scan_keeps_float64_and_upcasts_half() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, 0.0], [1.0 - 1e-12, 1.0]], dtype=torch.float64)
    scan = scan_retrieval(lambda s, e: q[s:e] @ g.T, 2, 2, k=2)
    assert scan.topk_scores.dtype == torch.float64 and scan.ranks.tied.tolist() == [0, 0]
    half = scan_retrieval(lambda s, e: (q[s:e] @ g.T).to(torch.bfloat16), 2, 2, k=2)
    assert half.topk_scores.dtype == torch.float32 and half.ranks.tied.tolist() == [1, 0]


def test_query_without_relevant_item_is_an_error() -> None:
    sim = torch.randn(2, 3)
    with pytest.raises(ValueError, match="no relevant gallery item"):
        scan_retrieval(lambda s, e: sim[s:e], 2, 3, torch.tensor([0, 9]), torch.tensor([0, 1, 2]))


def test_score_rows_of_the_wrong_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"score_rows\(0, 3\) returned \(3, 4\)"):
        scan_retrieval(lambda s, e: torch.zeros(e - s, 4), 3, 3)


@pytest.mark.parametrize("seed", range(3))
def test_class_precision_with_ties_at_the_cut_equals_the_expectation_over_orderings(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sim = torch.randint(0, 3, (6, 6), generator=g).double()  # the k-th score is tied in most rows
    labels = (torch.rand(6, 4, generator=g) > 0.6).float()
    labels[2] = 0.0  # no positive: left out
    labels[3, 1] = float("nan")  # unknown is not a positive
    out = class_precision_at_k(sim, labels, labels, ks=(1, 2, 5, 10), chunk_size=4)
    for k in (1, 2, 5, 10):
        want = brute_expected_precision(sim.numpy(), labels.numpy(), labels.numpy(), k)
        assert out[f"P@{k}"] == pytest.approx(want, abs=1e-12), k
    assert out["P_queries"] == float((labels.nan_to_num(0) == 1).any(1).sum())


def test_class_precision_hand_checked_tie_at_the_cut() -> None:
    # one query, gallery scores 3, 2, 2, 2, 1: top 2 = the 3 and one of three tied 2s; of the tied, one shares
    sim = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    glab = torch.tensor([[1.0], [1.0], [0.0], [0.0], [1.0]])
    out = class_precision_at_k(sim, torch.tensor([[1.0]]), glab, ks=(1, 2, 4))
    assert out["P@1"] == 1.0
    assert out["P@2"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["P@4"] == pytest.approx((1 + 1) / 4)


def test_class_precision_matches_loops_without_ties() -> None:
    g = torch.Generator().manual_seed(3)
    sim = torch.randn(12, 12, generator=g, dtype=torch.float64)
    labels = (torch.rand(12, 5, generator=g) > 0.6).float()
    out = class_precision_at_k(sim, labels, labels, ks=(1, 5, 10))
    order = sim.argsort(dim=1, descending=True)
    pos = labels == 1
    keep = pos.any(1)
    for k in (1, 5, 10):
        shared = (pos[order[:, :k]] & pos[:, None, :]).any(2).double().mean(1)
        assert out[f"P@{k}"] == pytest.approx(float(shared[keep].mean()), abs=1e-12)


def test_text_groups_normalise_case_and_spaces() -> None:
    group, first = text_groups(["No acute process.", "no  acute process.", "Effusion.", " no acute PROCESS. "])
    assert group.tolist() == [0, 0, 1, 0] and first.tolist() == [0, 2]


def test_dedup_protocol_collapses_identical_reports_both_ways() -> None:
    n = 10
    img = _emb(n, seed=4)
    texts = ["normal"] * 4 + [f"finding {i}" for i in range(6)]
    txt = _emb(n, seed=5)
    txt[:4] = txt[0]  # identical texts have identical embeddings
    m, scans = evaluate_retrieval(img, txt, texts=texts, ks=(1, 5))
    group, first = text_groups(texts)
    uniq = txt[first]
    # image -> text: 7 distinct reports, each image's match is its report's group
    i2t = brute_grouped_counts((img @ uniq.T).numpy(), group.tolist(), list(range(len(first))))
    assert _counts(scans["dedup/i2t"].ranks) == i2t
    # text -> image: one query per distinct report, any of its images is a hit
    t2i = brute_grouped_counts((uniq @ img.T).numpy(), list(range(len(first))), group.tolist())
    assert _counts(scans["dedup/t2i"].ranks) == t2i
    assert m["num_distinct_reports"] == 7
    assert m["dedup/i2t/R@1"] == pytest.approx(metrics_from_ranks(scans["dedup/i2t"].ranks, ks=(1,))["R@1"])
    # the full gallery keeps the duplicates: the four "normal" images' matches are tied with three copies
    assert scans["i2t"].ranks.tied[:4].tolist() == [3, 3, 3, 3] and m["i2t/tied_match_share"] == pytest.approx(0.4)
    assert m["dedup/i2t/tied_match_share"] == 0.0
    assert _counts(scans["i2t"].ranks) == _counts(ranks_from_similarity(img @ txt.T))


def test_distinct_texts_give_identical_protocols() -> None:
    n = 9
    img, txt = _emb(n, seed=11), _emb(n, seed=12)
    m, scans = evaluate_retrieval(img, txt, texts=[f"t{i}" for i in range(n)])
    for d in ("i2t", "t2i"):
        for key in ("R@1", "R@5", "MeanR", "nDCG@10", "tied_match_share"):
            assert m[f"dedup/{d}/{key}"] == m[f"{d}/{key}"]
    plain, plain_scans = evaluate_retrieval(img, txt)
    assert "num_distinct_reports" not in plain and set(plain_scans) == {"i2t", "t2i"}


def test_evaluate_retrieval_keys_and_precision() -> None:
    n = 30
    img, txt = _emb(n, seed=6), _emb(n, seed=7)
    labels = (torch.rand(n, 14, generator=torch.Generator().manual_seed(8)) > 0.7).float()
    texts = ["same"] * 3 + [f"r{i}" for i in range(n - 3)]
    m, _ = evaluate_retrieval(img, txt, labels=labels, texts=texts, prefix="test/", chunk_size=7)
    for proto in ("", "dedup/"):
        for d in ("i2t", "t2i"):
            for key in ("R@1", "R@5", "R@10", "MedR", "MeanR", "nDCG@10", "P@1", "P@5", "P@10", "tied_match_share"):
                assert math.isfinite(m[f"test/{proto}{d}/{key}"]), (proto, d, key)
    sim = img @ txt.T
    assert m["test/i2t/P@5"] == pytest.approx(class_precision_at_k(sim, labels, labels, ks=(5,))["P@5"])
    assert m["test/t2i/P@10"] == pytest.approx(class_precision_at_k(sim.T, labels, labels, ks=(10,))["P@10"])


def test_custom_score_function_gets_study_rows_in_both_protocols() -> None:
    n = 8
    img, txt = _emb(n, seed=9), _emb(n, seed=10)
    texts = ["a", "a"] + [f"b{i}" for i in range(n - 2)]

    def score(d: str, q_rows: torch.Tensor, g_rows: torch.Tensor) -> torch.Tensor:
        q, g = (img, txt) if d == "i2t" else (txt, img)
        return -torch.cdist(q[q_rows], g[g_rows])

    m, scans = evaluate_retrieval(img, txt, texts=texts, score_fn=score)
    assert _counts(scans["i2t"].ranks) == _counts(ranks_from_similarity(-torch.cdist(img, txt)))
    group, first = text_groups(texts)
    want = brute_grouped_counts((-torch.cdist(img, txt[first])).numpy(), group.tolist(), list(range(len(first))))
    assert _counts(scans["dedup/i2t"].ranks) == want
