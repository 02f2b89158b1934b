"""MCSL (CLIP-XRad eq. 1–7) against slow float64 loop transcriptions of docs/design.md §3."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.losses import ClipHead, LossOutput, multi_view_clip_loss
from cxr_vlp.losses.heads import LossHead
from cxr_vlp.losses.mcsl import (
    McslHead,
    binarize_labels,
    concept_softmax,
    concept_targets,
    jaccard_similarity,
    mcsl_loss,
    soft_contrastive_ce,
)

NAN = float("nan")

# ---------------------------------------------------------------- slow references (float64 loops)


def _pos(value: float) -> float:
    """Label cell → {0, 1}: only a known positive counts (NaN, 0, −1 → 0)."""
    return 1.0 if value == 1.0 else 0.0


def ref_jaccard(labels: torch.Tensor) -> list[list[float]]:
    rows = [[_pos(v) for v in row] for row in labels.tolist()]
    out = []
    for li in rows:
        out_row = []
        for lj in rows:
            inter = sum(a * b for a, b in zip(li, lj))
            union = sum(li) + sum(lj) - inter
            out_row.append(inter / union if union > 0 else 0.0)
        out.append(out_row)
    return out


def ref_targets(
    labels_global: torch.Tensor, offset: int, n_local: int, lam: float, tc: float, empty_row: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ĵ, S) of the local rows offset..offset+n_local−1, written out element by element."""
    jac = ref_jaccard(labels_global)
    m = len(jac)
    jhat = [[0.0] * m for _ in range(n_local)]
    s = [[0.0] * m for _ in range(n_local)]
    for i in range(n_local):
        g = offset + i
        others = [j for j in range(m) if j != g]
        empty = all(jac[g][j] == 0.0 for j in others)
        if others and not (empty and empty_row == "identity"):
            denom = sum(math.exp(jac[g][k] / tc) for k in others)
            for j in others:
                jhat[i][j] = math.exp(jac[g][j] / tc) / denom
        row_sum = sum(jhat[i])  # 1, or 0 for an identity / single-column row
        for j in range(m):
            s[i][j] = ((1.0 if j == g else 0.0) + lam * jhat[i][j]) / (1.0 + lam * row_sum)
    return torch.tensor(jhat, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)


def ref_soft_ce(q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor, s) -> torch.Tensor:
    """−(1/B) Σ_i Σ_j S_ij log( exp(s q_i·k_j) / Σ_l exp(s q_i·k_l) ), explicit loops."""
    n, m = q.shape[0], k.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        logits = [s * sum(q[i, d] * k[j, d] for d in range(q.shape[1])) for j in range(m)]
        log_denom = torch.log(sum(torch.exp(z) for z in logits))
        for j in range(m):
            total = total - targets[i, j] * (logits[j] - log_denom)
    return total / n


def ref_sem(img, txt, targets, s):
    """L_sem = ½[i→t with rows of S + t→i with rows of S (study j's targets over the images)]."""
    return 0.5 * (ref_soft_ce(img, txt, targets, s) + ref_soft_ce(txt, img, targets, s))


def ref_mcsl(imgs, txts, labels, s, lam, tc, empty_row, w_i2i=0.0, w_t2t=0.0):
    n = labels.shape[0]
    _, targets = ref_targets(labels, 0, n, lam, tc, empty_row)
    eye = torch.eye(n, dtype=torch.float64)
    out = {}
    for v, img in enumerate(imgs):
        for u, txt in enumerate(txts):
            out[f"sem_i{v}_t{u}"] = ref_sem(img, txt, targets, s)
    out["semantic"] = sum(out.values()) / len(out)
    out["loss"] = out["semantic"]
    if w_i2i and len(imgs) >= 2:
        out["i2i"] = ref_sem(imgs[0], imgs[1], eye, s)
        out["loss"] = out["loss"] + w_i2i * out["i2i"]
    if w_t2t and len(txts) >= 2:
        out["t2t"] = ref_sem(txts[0], txts[1], eye, s)
        out["loss"] = out["loss"] + w_t2t * out["t2t"]
    return out


# ---------------------------------------------------------------- fixtures


def _emb(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _labels(n: int, seed: int, c: int = 6, p_pos: float = 0.35, p_nan: float = 0.2) -> torch.Tensor:
    """{1, 0, NaN} labels, with row 1 all-unknown and row 2 all-negative when n allows."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, c, generator=g)
    lab = (u < p_pos).double()
    lab[(u > 1 - p_nan)] = NAN
    if n > 2:
        lab[1] = NAN
        lab[2] = 0.0
    return lab


def _close(a, b, rtol=1e-12, atol=1e-12, msg=None):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=msg)


# ---------------------------------------------------------------- labels and Jaccard


def test_binarize_labels_unknown_and_uncertain_become_zero() -> None:
    lab = torch.tensor([[1.0, 0.0, NAN, -1.0]])
    assert binarize_labels(lab).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert binarize_labels(lab.float()).dtype == torch.float32
    assert binarize_labels(torch.ones(1, 2, dtype=torch.int64)).dtype == torch.float32
    with pytest.raises(ValueError):
        binarize_labels(torch.ones(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jaccard_matches_reference_and_is_never_nan(seed: int) -> None:
    lab = _labels(7, seed)
    jac = jaccard_similarity(lab)
    _close(jac, torch.tensor(ref_jaccard(lab), dtype=torch.float64))
    assert torch.isfinite(jac).all()
    _close(jac, jac.T)
    # empty union is 0 (rows 1 and 2 have no positive), a non-empty row has J_ii = 1
    assert jac[1, 1].item() == 0.0 and jac[1, 2].item() == 0.0 and jac[1].abs().sum().item() == 0.0
    has_pos = binarize_labels(lab).sum(1) > 0
    assert torch.equal(jac.diagonal() == 1.0, has_pos)


def test_jaccard_hand_example_and_other_argument() -> None:
    lab = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [NAN, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor(
        [[1, 1 / 3, 1 / 3, 0], [1 / 3, 1, 1 / 3, 0], [1 / 3, 1 / 3, 1, 0], [0, 0, 0, 0]], dtype=torch.float64
    )
    _close(jaccard_similarity(lab), expected)
    _close(jaccard_similarity(lab[1:3], lab), expected[1:3])


# ---------------------------------------------------------------- Ĵ and S


@pytest.mark.parametrize("empty_row", ["identity", "uniform"])
@pytest.mark.parametrize(("offset", "n_local"), [(0, 7), (0, 3), (3, 4), (5, 2)])
@pytest.mark.parametrize(("lam", "tc"), [(0.7, 1.0), (2.0, 0.1), (0.0, 0.5)])
def test_concept_targets_match_reference(empty_row, offset, n_local, lam, tc) -> None:
    lab = _labels(7, seed=3)
    local = lab[offset : offset + n_local]
    jhat, empty = concept_softmax(local, lab, offset, tc, empty_row)
    ref_jhat, ref_s = ref_targets(lab, offset, n_local, lam, tc, empty_row)
    _close(jhat, ref_jhat)
    _close(concept_targets(local, lab, offset, lam, tc, empty_row), ref_s)
    assert not jhat.requires_grad


@pytest.mark.parametrize("empty_row", ["identity", "uniform"])
def test_diagonal_really_excluded_and_rows_sum_to_one(empty_row: str) -> None:
    lam = 0.7
    lab = _labels(8, seed=4)
    # two identical label rows: J = 1 with each other and with themselves; the own column must not win
    lab[5] = lab[6] = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    for offset, n in ((0, 8), (4, 4)):
        local = lab[offset : offset + n]
        jhat, empty = concept_softmax(local, lab, offset, 1.0, empty_row)
        s = concept_targets(local, lab, offset, lam, 1.0, empty_row)
        rows, own = torch.arange(n), torch.arange(n) + offset
        assert (jhat[rows, own] == 0.0).all()
        _close(s.sum(1), torch.ones(n, dtype=torch.float64))
        assert torch.isfinite(s).all() and (s >= 0).all()
        normal = ~empty if empty_row == "identity" else torch.ones(n, dtype=torch.bool)
        # I-only mass on the own column: exactly 1/(1+λ)
        _close(s[rows, own][normal], torch.full((int(normal.sum()),), 1 / (1 + lam), dtype=torch.float64))
        _close(jhat[normal].sum(1), torch.ones(int(normal.sum()), dtype=torch.float64))
    # rows 5 and 6 put their largest concept mass on each other, not on themselves
    jhat, _ = concept_softmax(lab, lab, 0, 0.1, empty_row)
    assert jhat[5].argmax().item() == 6 and jhat[6].argmax().item() == 5


def test_empty_rows_documented_behaviour_for_both_modes() -> None:
    lam = 0.7
    lab = torch.tensor(
        [[NAN] * 4, [1.0, 0.0, NAN, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
    )
    # row 0: all unknown; row 3: a positive shared with nobody → both empty; rows 1, 2 overlap
    _, empty = concept_softmax(lab, lab, 0, 1.0, "identity")
    assert empty.tolist() == [True, False, False, True]

    s_id = concept_targets(lab, lab, 0, lam, 1.0, "identity")
    assert s_id[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert s_id[3].tolist() == [0.0, 0.0, 0.0, 1.0]

    s_un = concept_targets(lab, lab, 0, lam, 1.0, "uniform")
    other = lam / (1 + lam) / 3
    _close(s_un[0], torch.tensor([1 / (1 + lam), other, other, other], dtype=torch.float64))
    _close(s_un[3], torch.tensor([other, other, other, 1 / (1 + lam)], dtype=torch.float64))
    # non-empty rows do not depend on the mode
    _close(s_id[1:3], s_un[1:3])


@pytest.mark.parametrize("empty_row", ["identity", "uniform"])
def test_single_global_column_is_defined_without_nan(empty_row: str) -> None:
    lab = torch.tensor([[1.0, NAN]])
    jhat, empty = concept_softmax(lab, lab, 0, 1.0, empty_row)
    assert jhat.tolist() == [[0.0]] and empty.tolist() == [True]
    assert concept_targets(lab, lab, 0, 0.7, 1.0, empty_row).tolist() == [[1.0]]
    img = _emb(1, 3, seed=0).requires_grad_()
    txt = _emb(1, 3, seed=1).requires_grad_()
    out = mcsl_loss([img], [txt], lab, torch.tensor(10.0, dtype=torch.float64), empty_row=empty_row)
    assert out["loss"].item() == 0.0  # one pair: the softmax over one column is 1
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out["loss"], (img, txt)))


def test_concept_targets_validation() -> None:
    lab = _labels(4, seed=0)
    with pytest.raises(ValueError, match="empty_row"):
        concept_targets(lab, lab, empty_row="zeros")
    with pytest.raises(ValueError, match="lam"):
        concept_targets(lab, lab, lam=-0.1)
    with pytest.raises(ValueError, match="concept_temperature"):
        concept_targets(lab, lab, concept_temperature=0.0)
    with pytest.raises(ValueError, match="out of range"):
        concept_targets(lab[:3], lab, offset=2)


# ---------------------------------------------------------------- soft cross-entropy


@pytest.mark.parametrize(("n", "m", "offset"), [(4, 4, 0), (3, 7, 2), (1, 1, 0)])
def test_soft_contrastive_ce_matches_reference_with_gradients(n: int, m: int, offset: int) -> None:
    q = _emb(n, 4, seed=5).requires_grad_()
    k = _emb(m, 4, seed=6).requires_grad_()
    s = torch.tensor(6.5, dtype=torch.float64, requires_grad=True)
    _, targets = ref_targets(_labels(m, seed=7), offset, n, 0.7, 0.5, "uniform")
    fast = soft_contrastive_ce(q, k, targets, s)
    slow = ref_soft_ce(q, k, targets, s)
    _close(fast, slow)
    for a, b in zip(torch.autograd.grad(fast, (q, k, s)), torch.autograd.grad(slow, (q, k, s))):
        _close(a, b, rtol=1e-10)


def test_soft_ce_with_one_hot_targets_is_cross_entropy() -> None:
    q, k = _emb(5, 3, seed=8), _emb(5, 3, seed=9)
    expected = F.cross_entropy(4.0 * q @ k.T, torch.arange(5))
    _close(soft_contrastive_ce(q, k, torch.eye(5, dtype=torch.float64), 4.0), expected)
    with pytest.raises(ValueError):
        soft_contrastive_ce(q, k, torch.eye(4, dtype=torch.float64), 4.0)


# ---------------------------------------------------------------- mcsl_loss


@pytest.mark.parametrize("empty_row", ["identity", "uniform"])
@pytest.mark.parametrize(
    ("n_img", "n_txt", "w_i2i", "w_t2t", "lam", "tc"),
    [(2, 2, 0.0, 0.0, 0.7, 1.0), (2, 2, 1.0, 0.5, 1.5, 0.2), (1, 1, 0.0, 0.0, 0.7, 1.0), (2, 1, 1.0, 0.5, 0.3, 1.0)],
)
def test_mcsl_loss_matches_reference_with_gradients(empty_row, n_img, n_txt, w_i2i, w_t2t, lam, tc) -> None:
    n = 5
    imgs = [_emb(n, 3, seed=20 + v).requires_grad_() for v in range(n_img)]
    txts = [_emb(n, 3, seed=40 + u).requires_grad_() for u in range(n_txt)]
    lab = _labels(n, seed=11)
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)

    fast = mcsl_loss(imgs, txts, lab, s, lam=lam, concept_temperature=tc, empty_row=empty_row, w_i2i=w_i2i, w_t2t=w_t2t)
    slow = ref_mcsl(imgs, txts, lab, s, lam, tc, empty_row, w_i2i, w_t2t)
    assert next(iter(fast)) == "loss"
    assert set(slow) <= set(fast)
    assert set(fast) - set(slow) == {"concept_mass", "empty_rows"}
    for key in slow:
        _close(fast[key], slow[key], msg=key)
    inputs = (*imgs, *txts, s)
    for a, b in zip(torch.autograd.grad(fast["loss"], inputs), torch.autograd.grad(slow["loss"], inputs)):
        _close(a, b, rtol=1e-10)


def test_lambda_zero_equals_multi_view_clip() -> None:
    imgs = [_emb(6, 4, seed=50 + v) for v in range(2)]
    txts = [_emb(6, 4, seed=60 + u) for u in range(2)]
    lab = _labels(6, seed=12)
    for empty_row in ("identity", "uniform"):
        fast = mcsl_loss(imgs, txts, lab, 7.0, lam=0.0, empty_row=empty_row, w_i2i=1.0, w_t2t=0.5)
        clip = multi_view_clip_loss(imgs, txts, 7.0, w_i2i=1.0, w_t2t=0.5)
        _close(fast["semantic"], clip["contrastive"])
        _close(fast["loss"], clip["loss"])
        assert fast["concept_mass"].item() == 0.0


def test_all_unknown_labels_finite_and_mode_dependent() -> None:
    imgs = [_emb(4, 3, seed=70 + v).requires_grad_() for v in range(2)]
    txts = [_emb(4, 3, seed=80 + u).requires_grad_() for u in range(2)]
    lab = torch.full((4, 14), NAN, dtype=torch.float64)
    s = torch.tensor(8.0, dtype=torch.float64)
    ident = mcsl_loss(imgs, txts, lab, s, lam=0.7, empty_row="identity")
    unif = mcsl_loss(imgs, txts, lab, s, lam=0.7, empty_row="uniform")
    for out in (ident, unif):
        assert all(torch.isfinite(v).all() for v in out.values())
        grads = torch.autograd.grad(out["loss"], (*imgs, *txts))
        assert all(torch.isfinite(g).all() for g in grads)
    # identity: no concept information at all → exactly the CLIP loss; uniform: the literal eq. 2
    _close(ident["loss"], multi_view_clip_loss(imgs, txts, s)["loss"])
    assert ident["empty_rows"].item() == 1.0 and ident["concept_mass"].item() == 0.0
    _close(unif["loss"], ref_mcsl(imgs, txts, lab, s, 0.7, 1.0, "uniform")["loss"])
    _close(unif["concept_mass"], torch.tensor(0.7 / 1.7, dtype=torch.float64))
    assert abs(unif["loss"].item() - ident["loss"].item()) > 1e-3


def test_four_pairings_use_the_right_tensors() -> None:
    n = 5
    i0, i1 = _emb(n, 3, seed=90), _emb(n, 3, seed=91)
    t0, t1 = _emb(n, 3, seed=92), _emb(n, 3, seed=93)
    lab = _labels(n, seed=13)
    s = torch.tensor(6.0, dtype=torch.float64)
    _, targets = ref_targets(lab, 0, n, 0.7, 1.0, "identity")
    out = mcsl_loss([i0, i1], [t0, t1], lab, s)
    for v, img in enumerate((i0, i1)):
        for u, txt in enumerate((t0, t1)):
            _close(out[f"sem_i{v}_t{u}"], ref_sem(img, txt, targets, s))
    values = [out[f"sem_i{v}_t{u}"].item() for v in range(2) for u in range(2)]
    assert len({round(x, 9) for x in values}) == 4  # four really different pairings
    # swapping views permutes the pairing entries accordingly and leaves the average unchanged
    swapped = mcsl_loss([i1, i0], [t1, t0], lab, s)
    for v in range(2):
        for u in range(2):
            _close(swapped[f"sem_i{v}_t{u}"], out[f"sem_i{1 - v}_t{1 - u}"])
    _close(swapped["semantic"], out["semantic"])
    _close(out["semantic"], torch.stack([out[f"sem_i{v}_t{u}"] for v in range(2) for u in range(2)]).mean())


def test_mcsl_loss_input_validation_and_half_precision() -> None:
    img, txt = _emb(4, 3, seed=1), _emb(4, 3, seed=2)
    with pytest.raises(ValueError, match="labels"):
        mcsl_loss([img], [txt], torch.zeros(3, 14), 1.0)
    with pytest.raises(ValueError):
        mcsl_loss([img], [_emb(5, 3, seed=3)], torch.zeros(4, 14), 1.0)
    with pytest.raises(ValueError):
        mcsl_loss([], [txt], torch.zeros(4, 14), 1.0)
    out = mcsl_loss([img.bfloat16()], [txt.bfloat16()], _labels(4, seed=0).float(), torch.tensor(20.0))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


# ---------------------------------------------------------------- McslHead


def test_mcsl_head_shares_cliphead_temperature_handling() -> None:
    head = McslHead()
    assert isinstance(head, LossHead) and isinstance(head, ClipHead)
    assert [n for n, _ in head.named_parameters()] == ["logit_scale_log"]
    _close(head.similarity_scale(), torch.tensor(1 / 0.07), rtol=1e-6, atol=1e-6)
    assert not McslHead(learn_temperature=False).logit_scale_log.requires_grad
    assert (head.lam, head.concept_temperature, head.empty_row) == (0.7, 1.0, "identity")
    assert "lam=0.7" in repr(head) and "max_scale=100.0" in repr(head)
    with torch.no_grad():
        head.logit_scale_log.fill_(math.log(1000.0))
    assert head.similarity_scale().item() == pytest.approx(100.0)


@pytest.mark.parametrize(
    "kwargs", [{"lam": -1.0}, {"concept_temperature": 0.0}, {"empty_row": "none"}, {"temperature_init": 0.0}]
)
def test_mcsl_head_rejects_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        McslHead(**kwargs)


def test_mcsl_head_needs_labels() -> None:
    img, txt = _emb(4, 3, seed=1).float(), _emb(4, 3, seed=2).float()
    with pytest.raises(ValueError, match="labels"):
        McslHead()([img], [txt], None)


def test_mcsl_head_forward_logs_and_matches_functional() -> None:
    head = McslHead(lam=0.7, w_i2i=1.0, w_t2t=0.5)
    imgs = [_emb(6, 8, seed=k).float() for k in (1, 2)]
    txts = [_emb(6, 8, seed=k).float() for k in (3, 4)]
    lab = _labels(6, seed=14, c=14).float()
    out = head(imgs, txts, labels=lab)
    assert isinstance(out, LossOutput)
    expected = mcsl_loss(imgs, txts, lab, head.similarity_scale(), lam=0.7, w_i2i=1.0, w_t2t=0.5)
    _close(out.loss, expected["loss"], rtol=1e-6, atol=1e-6)
    assert {
        "loss",
        "semantic",
        "i2i",
        "t2t",
        "logit_scale",
        "temperature",
        "concept_mass",
        "empty_rows",
        "sem_i0_t0",
        "sem_i0_t1",
        "sem_i1_t0",
        "sem_i1_t1",
    } <= set(out.logs)
    assert all(not v.requires_grad for v in out.logs.values())
    _close(out.logs["temperature"], torch.tensor(0.07), rtol=1e-6, atol=1e-6)
    # the off-diagonal target mass: λ/(1+λ) on every row with concept overlap, 0 on empty rows
    _, empty = concept_softmax(lab, lab, 0, 1.0, "identity")
    share = 1.0 - empty.float().mean().item()
    assert 0 < share < 1
    assert out.logs["concept_mass"].item() == pytest.approx(0.7 / 1.7 * share, abs=1e-6)
    assert out.logs["empty_rows"].item() == pytest.approx(1 - share, abs=1e-6)
    out.loss.backward()
    assert head.logit_scale_log.grad.abs().item() > 0
    single = head(imgs[0], txts[0], labels=lab)  # a single tensor is one view; no intra-modal terms
    assert "i2i" not in single.logs and "t2t" not in single.logs


def test_mcsl_config_instantiates() -> None:
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cxr_vlp.utils.config import config_dir

    node = OmegaConf.load(Path(config_dir()) / "loss" / "mcsl.yaml")
    head = instantiate(node)
    assert isinstance(head, McslHead)
    assert (head.lam, head.concept_temperature, head.empty_row, head.w_i2i) == (0.7, 1.0, "identity", 0.0)
    _close(head.similarity_scale(), torch.tensor(1 / 0.07), rtol=1e-6, atol=1e-6)
