"""The scan's one-pass internals (group maxima, counting only the groups that can pass, top-k from the best groups,
relevant pairs only, precision from the top list) against direct dense transcriptions of the rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.metrics import retrieval as R


def _dense_counts(block: torch.Tensor, target: torch.Tensor) -> tuple[list[int], list[int]]:
    """Direct transcription: scores strictly above / exactly equal to each row's target."""
    t = target[:, None]
    return (block > t).sum(dim=1).tolist(), (block == t).sum(dim=1).tolist()


def _blocks(seed: int, n: int, quantised: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    block = torch.randn(37, n, generator=g)
    return (block * 4).round() / 4 if quantised else block  # quantised: many exact ties


@pytest.mark.parametrize("n", [5, 31, 32, 100, 2049, 4000])
@pytest.mark.parametrize("quantised", [False, True])
def test_count_pass_equals_direct_counts(n: int, quantised: bool) -> None:
    block = _blocks(n, n, quantised)
    g = torch.Generator().manual_seed(1)
    # targets from the row itself (the match), its maximum (sparse groups) and far below (every group dense)
    cols = torch.randint(0, n, (37,), generator=g)
    targets = [block[torch.arange(37), cols], block.amax(dim=1), torch.full((37,), -10.0)]
    for target in targets:
        higher, at, _, _ = R._rank_pass(block, target)
        assert (higher.tolist(), at.tolist()) == _dense_counts(block, target)
    kth = torch.stack(targets, dim=1)
    first = R._count_pass(block, kth, (False, True, False))
    given = R._count_pass(block, kth, (False, True, False), first.gmax)  # group maxima handed back in
    for p in (first, given):
        expect = [(block >= kth[:, 0:1]).sum(1), (block > kth[:, 1:2]).sum(1), (block >= kth[:, 2:3]).sum(1)]
        assert torch.equal(p.counts, torch.stack(expect, dim=1))


@pytest.mark.parametrize("col", [0, 17, 2047, 2070])  # in a group, the last group, the columns after the groups
def test_nan_anywhere_is_an_error(col: int) -> None:
    block = torch.randn(3, 2071)
    block[1, col] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        R.ranks_in_block(block, 0)
    sim = torch.randn(2071, 2071)
    sim[5, col] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        R.scan_retrieval(lambda s, e: sim[s:e], 2071, 2071, k=10, chunk_size=512)


def _emb(n: int, d: int, seed: int, quantised: bool) -> torch.Tensor:
    x = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return (x * 2).round() / 2 if quantised else x  # quantised: many exactly tied scores


def _check_topk(scan: R.RetrievalScan, sim: torch.Tensor, k: int) -> None:
    """Top-k scores are the k highest of each row, the indices carry them, equal scores by ascending index."""
    assert torch.equal(scan.topk_scores, sim.sort(dim=1, descending=True).values[:, :k])
    assert torch.equal(sim.gather(1, scan.topk), scan.topk_scores)
    assert all(len(set(row)) == k for row in scan.topk.tolist())
    same = scan.topk_scores[:, 1:] == scan.topk_scores[:, :-1]
    assert bool((scan.topk[:, 1:] > scan.topk[:, :-1])[same].all())


@pytest.mark.parametrize("quantised", [False, True])
def test_identity_scan_equals_direct_rule(quantised: bool) -> None:
    n, k = 1500, 10  # 1500 > 4 k 32: the top-k comes from the best groups
    q, g = _emb(n, 16, 0, quantised), _emb(n, 16, 1, quantised)
    sim = q @ g.T
    scan = R.scan_retrieval(R.dot_score_rows(q, g), n, n, k=k, chunk_size=256)
    higher, equal = _dense_counts(sim, sim.diagonal())
    assert scan.ranks.higher.tolist() == higher
    assert scan.ranks.tied.tolist() == [e - 1 for e in equal]
    assert (sum(scan.ranks.tied.tolist()) > 0) == quantised
    _check_topk(scan, sim, k)


def test_scan_does_not_depend_on_chunk_size_or_threads() -> None:
    n = 1400
    q, g = _emb(n, 16, 2, True), _emb(n, 16, 3, True)
    sim = q @ g.T
    ref = R.scan_retrieval(lambda s, e: sim[s:e], n, n, k=10, chunk_size=n)
    threads = torch.get_num_threads()
    try:
        for chunk, t in ((7, threads), (300, 1)):
            torch.set_num_threads(t)
            scan = R.scan_retrieval(lambda s, e: sim[s:e], n, n, k=10, chunk_size=chunk)
            assert torch.equal(scan.ranks.higher, ref.ranks.higher) and torch.equal(scan.ranks.tied, ref.ranks.tied)
            assert torch.equal(scan.topk, ref.topk) and torch.equal(scan.topk_scores, ref.topk_scores)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("quantised", [False, True])
def test_grouped_scan_from_relevant_pairs_equals_the_dense_rule(quantised: bool) -> None:
    nq, ng = 600, 1700
    gen = torch.Generator().manual_seed(4)
    gallery_group = torch.randint(0, nq, (ng,), generator=gen)
    gallery_group[:nq] = torch.arange(nq)  # every query has a relevant item; many have several
    q, g = _emb(nq, 16, 5, quantised), _emb(ng, 16, 6, quantised)
    sim = q @ g.T
    scan = R.scan_retrieval(R.dot_score_rows(q, g), nq, ng, torch.arange(nq), gallery_group, k=10, chunk_size=128)
    dense = R.grouped_ranks_in_block(sim, torch.arange(nq), gallery_group)  # the rule, one dense block
    assert torch.equal(scan.ranks.higher, dense.higher) and torch.equal(scan.ranks.tied, dense.tied)
    _check_topk(scan, sim, 10)


def test_dot_score_rows_into_a_buffer_equals_the_product() -> None:
    q, g = _emb(70, 16, 7, False), _emb(90, 16, 8, False)
    rows = R.dot_score_rows(q, g)
    buf = rows.new_buffer(32)
    assert torch.equal(rows(10, 42, out=buf), q[10:42] @ g.T) and torch.equal(rows(10, 42), q[10:42] @ g.T)


@pytest.mark.parametrize("quantised", [False, True])
def test_precision_from_the_top_list_equals_the_dense_rule(quantised: bool) -> None:
    n, ks = 1400, (1, 5, 10)
    q, g = _emb(n, 16, 9, quantised), _emb(n, 16, 10, quantised)
    labels = (torch.rand(n, 5, generator=torch.Generator().manual_seed(11)) > 0.7).float()
    sim = q @ g.T
    scan = R.scan_retrieval(
        R.dot_score_rows(q, g), n, n, k=10, chunk_size=500, query_labels=labels, gallery_labels=labels, precision_ks=ks
    )
    pos = R.positive_sets(labels)
    shared = (pos.float() @ pos.float().T) > 0
    kth = sim.sort(dim=1, descending=True).values[:, [k - 1 for k in ks]]
    expect = R.precision_in_block(sim, shared, kth, ks)  # the rule, one dense block
    expect[~pos.any(dim=1)] = float("nan")
    assert torch.equal(scan.precision.isnan(), expect.isnan())
    keep = ~expect.isnan()
    assert torch.equal(scan.precision[keep], expect[keep])
