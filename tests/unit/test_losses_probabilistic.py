"""ProbCLIP-VIB pure functions against slow float64 loop transcriptions of docs/design.md §3."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.losses.probabilistic import (
    csd_distance,
    medprobclip_distance,
    prob_match_loss,
    uncertainty,
    vib_kl,
)

# ---------------------------------------------------------------- slow references (float64 loops)


def _var(logvar: torch.Tensor, i: int, k: int):
    return torch.exp(logvar[i, k if logvar.shape[1] > 1 else 0])


def ref_csd(mu_a, lv_a, mu_b, lv_b) -> torch.Tensor:
    d = mu_a.shape[1]
    rows = []
    for i in range(mu_a.shape[0]):
        row = []
        for j in range(mu_b.shape[0]):
            total = torch.zeros((), dtype=torch.float64)
            for k in range(d):
                total = total + (mu_a[i, k] - mu_b[j, k]) ** 2 + _var(lv_a, i, k) + _var(lv_b, j, k)
            row.append(total)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_medprob(mu_x, lv_x, mu_y, lv_y) -> torch.Tensor:
    rows = []
    for i in range(mu_x.shape[0]):
        row = []
        for j in range(mu_y.shape[0]):
            total = torch.zeros((), dtype=torch.float64)
            for k in range(mu_x.shape[1]):
                v = _var(lv_x, i, k) + _var(lv_y, j, k)
                total = total + (mu_x[i, k] - mu_y[j, k]) ** 2 / v + torch.log(v)
            row.append(0.5 * total)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_kl(mu, lv) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(mu.shape[0]):
        for k in range(mu.shape[1]):
            lvk = lv[i, k if lv.shape[1] > 1 else 0]
            total = total + 0.5 * (mu[i, k] ** 2 + torch.exp(lvk) - lvk - 1.0)
    return total / mu.shape[0]


def _bce(z, y: float):
    """−[y log σ(z) + (1−y) log(1−σ(z))], written with the sigmoid."""
    p = 1.0 / (1.0 + torch.exp(-z))
    return -(y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p))


def ref_prob_match(mu_i, lv_i, mu_t, lv_t, a, b, w):
    """Loops over pairs: match BCE, the two relabelled BCEs (rows vs z_ii, columns vs z_jj), α-mix."""
    d = ref_csd(mu_i, lv_i, mu_t, lv_t)
    n, m = d.shape
    z = [[-a * d[i, j] + b for j in range(m)] for i in range(n)]
    match = torch.zeros((), dtype=torch.float64)
    relabelled = {"i2t": torch.zeros((), dtype=torch.float64), "t2i": torch.zeros((), dtype=torch.float64)}
    count = 0
    for i in range(n):
        for j in range(m):
            match = match + _bce(z[i][j], 1.0 if i == j else 0.0)
            for direction, own in (("i2t", z[i][i]), ("t2i", z[j][j])):
                pseudo_pair = j != i and z[i][j].item() >= own.item()
                count += int(pseudo_pair)
                relabelled[direction] = relabelled[direction] + _bce(z[i][j], 1.0 if i == j or pseudo_pair else 0.0)
    match = match / (n * m)
    pseudo = 0.5 * (relabelled["i2t"] + relabelled["t2i"]) / (n * m)
    return {"loss": match + w * pseudo, "match": match, "pseudo": pseudo, "count": count}


def _gauss(n: int, d: int, seed: int, normalise: bool = True, scalar_var: bool = False):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    mu = F.normalize(mu, dim=-1) if normalise else mu
    lv = torch.randn(n, 1 if scalar_var else d, generator=g, dtype=torch.float64) - 2.0
    return mu.requires_grad_(), lv.requires_grad_()


def _close(a, b, rtol=1e-12, atol=1e-12, msg=None):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=msg)


def _check_grads(fast, slow, inputs, rtol=1e-10, atol=1e-12):
    for x, y in zip(torch.autograd.grad(fast, inputs), torch.autograd.grad(slow, inputs)):
        _close(x, y, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- distances


@pytest.mark.parametrize(("na", "nb", "scalar_var"), [(4, 4, False), (3, 5, False), (4, 2, True), (1, 1, False)])
def test_csd_distance_matches_reference_with_gradients(na: int, nb: int, scalar_var: bool) -> None:
    mu_a, lv_a = _gauss(na, 3, seed=1, scalar_var=scalar_var)
    mu_b, lv_b = _gauss(nb, 3, seed=2, scalar_var=scalar_var)
    fast, slow = csd_distance(mu_a, lv_a, mu_b, lv_b), ref_csd(mu_a, lv_a, mu_b, lv_b)
    _close(fast, slow)
    weights = torch.randn(na, nb, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _check_grads((fast * weights).sum(), (slow * weights).sum(), (mu_a, lv_a, mu_b, lv_b))


def test_csd_distance_identical_means_is_the_variance_sum_and_never_negative() -> None:
    mu, lv = _gauss(5, 8, seed=4)
    d = csd_distance(mu, lv, mu, lv)
    var = lv.exp().sum(1)
    _close(d.diagonal(), 2 * var)
    zero = torch.full((5, 8), -60.0, dtype=torch.float64)  # σ² ≈ 1e-26: pure squared distance
    assert (csd_distance(mu, zero, mu, zero) >= 0).all()
    with pytest.raises(ValueError):
        csd_distance(mu, lv, mu[:, :4], lv[:, :4])
    with pytest.raises(ValueError):
        csd_distance(mu, lv[:, :3], mu, lv)


@pytest.mark.parametrize(("chunk", "scalar_var"), [(256, False), (2, False), (1, True)])
def test_medprobclip_distance_matches_reference_with_gradients(chunk: int, scalar_var: bool) -> None:
    mu_x, lv_x = _gauss(5, 3, seed=5, normalise=False, scalar_var=scalar_var)
    mu_y, lv_y = _gauss(4, 3, seed=6, normalise=False, scalar_var=scalar_var)
    fast = medprobclip_distance(mu_x, lv_x, mu_y, lv_y, chunk_size=chunk)
    slow = ref_medprob(mu_x, lv_x, mu_y, lv_y)
    assert fast.shape == (5, 4)
    _close(fast, slow)
    weights = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    _check_grads((fast * weights).sum(), (slow * weights).sum(), (mu_x, lv_x, mu_y, lv_y))
    with pytest.raises(ValueError):
        medprobclip_distance(mu_x, lv_x, mu_y, lv_y, chunk_size=0)


# ---------------------------------------------------------------- VIB


@pytest.mark.parametrize("scalar_var", [False, True])
def test_vib_kl_matches_loop_and_torch_distributions(scalar_var: bool) -> None:
    mu, lv = _gauss(6, 4, seed=8, normalise=False, scalar_var=scalar_var)
    fast, slow = vib_kl(mu, lv), ref_kl(mu, lv)
    _close(fast, slow)
    _check_grads(fast, slow, (mu, lv))

    std = torch.exp(0.5 * lv).expand_as(mu)
    q = torch.distributions.Independent(torch.distributions.Normal(mu, std), 1)
    p = torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    _close(fast, torch.distributions.kl_divergence(q, p).mean(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scalar_var", [False, True])
def test_vib_kl_mean_over_dims_is_the_element_mean(scalar_var: bool) -> None:
    mu, lv = _gauss(6, 4, seed=14, normalise=False, scalar_var=scalar_var)
    lv_full = lv.expand(6, 4)
    # PCME++'s kl_divergence: −½ (1 + log σ² − μ² − σ²).mean() over all B·D elements
    pcmepp = -0.5 * (1 + lv_full - mu.pow(2) - lv_full.exp()).mean()
    fast = vib_kl(mu, lv, reduction="mean_over_dims")
    _close(fast, pcmepp)
    _close(fast, ref_kl(mu, lv) / 4)
    _check_grads(fast, ref_kl(mu, lv) / 4, (mu, lv))
    with pytest.raises(ValueError, match="reduction"):
        vib_kl(mu, lv, reduction="sum")


def test_vib_kl_is_zero_at_the_prior_and_uncertainty() -> None:
    mu = torch.zeros(3, 5, dtype=torch.float64)
    lv = torch.zeros(3, 5, dtype=torch.float64)
    assert vib_kl(mu, lv).item() == 0.0
    lv = torch.log(torch.tensor([[1.0, 2.0], [0.5, 0.25]], dtype=torch.float64))
    _close(uncertainty(lv), torch.tensor([3.0, 0.75], dtype=torch.float64))


# ---------------------------------------------------------------- matching loss


@pytest.mark.parametrize(("weight", "a0", "b0"), [(0.0, 5.0, 5.0), (0.1, 5.0, 5.0), (1.0, 0.5, -1.0)])
def test_prob_match_loss_matches_reference_with_gradients(weight: float, a0: float, b0: float) -> None:
    mu_i, lv_i = _gauss(5, 3, seed=9)
    mu_t, lv_t = _gauss(5, 3, seed=10)
    a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    fast = prob_match_loss(mu_i, lv_i, mu_t, lv_t, a, b, pseudo_positive_weight=weight)
    slow = ref_prob_match(mu_i, lv_i, mu_t, lv_t, a, b, weight)
    assert slow["count"] > 0  # random embeddings: some pseudo-positives exist
    for key in ("loss", "match", "pseudo"):
        _close(fast[key], slow[key], msg=key)
    _close(fast["pseudo_share"], torch.tensor(slow["count"] / (2 * 20), dtype=torch.float64))
    _check_grads(fast["loss"], slow["loss"], (mu_i, lv_i, mu_t, lv_t, a, b))


def test_prob_match_loss_is_bce_with_logits_formula() -> None:
    mu_i, lv_i = _gauss(4, 6, seed=11)
    mu_t, lv_t = _gauss(4, 6, seed=12)
    logits = -3.0 * csd_distance(mu_i, lv_i, mu_t, lv_t) + 2.0
    expected = F.binary_cross_entropy_with_logits(logits, torch.eye(4, dtype=torch.float64))
    out = prob_match_loss(mu_i, lv_i, mu_t, lv_t, 3.0, 2.0)
    _close(out["loss"], expected)
    _close(out["pos_logit"], logits.diagonal().mean())
    _close(out["neg_logit"], (logits.sum() - logits.diagonal().sum()) / 12)


def test_pseudo_positive_selection_hand_built() -> None:
    # 3 studies, 2-d means, tiny equal variances: distances are the squared Euclidean ones.
    # image 0 sits exactly on text 1 (closer than its own text 0, farther from text 2), image 1 is on
    # its own text, image 2 is equidistant from all three texts (a tie counts: "at least as high").
    e = torch.tensor
    mu_t = e([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    mu_i = e([[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    lv = torch.full((3, 2), -30.0, dtype=torch.float64)
    out = prob_match_loss(mu_i, lv, mu_t, lv, 1.0, 0.0, pseudo_positive_weight=0.5)
    # d = [[2, 0, 4], [2, 0, 4], [1, 1, 1]], true-pair logits −2, 0, −1.
    # image rows: (0, 1) [0 ≥ −2], (2, 0) and (2, 1) [tie −1 ≥ −1]; none in row 1.
    # text columns: column 0 (−2): (1, 0) [tie] and (2, 0); column 1 (0): (0, 1) [tie]; none in column 2.
    logits = -csd_distance(mu_i, lv, mu_t, lv)
    eye = torch.eye(3, dtype=torch.float64)
    i2t = eye + e([[0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.float64)
    t2i = eye + e([[0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits
    expected_pseudo = 0.5 * (bce(logits, i2t) + bce(logits, t2i))
    _close(out["match"], bce(logits, eye))
    _close(out["pseudo"], expected_pseudo)
    _close(out["pseudo_share"], torch.tensor(6 / 12, dtype=torch.float64))
    _close(out["loss"], out["match"] + 0.5 * expected_pseudo)
    # weight 0: the pseudo term is reported but the loss is the plain BCE
    off = prob_match_loss(mu_i, lv, mu_t, lv, 1.0, 0.0, pseudo_positive_weight=0.0)
    _close(off["loss"], off["match"])
    _close(off["match"], out["match"])


def test_prob_match_loss_validation() -> None:
    mu, lv = _gauss(3, 4, seed=13)
    with pytest.raises(ValueError):
        prob_match_loss(mu, lv, mu[:2], lv[:2], 1.0, 0.0)
    with pytest.raises(ValueError):
        prob_match_loss(mu, lv, mu, lv, 1.0, 0.0, pseudo_positive_weight=-0.1)
    out = prob_match_loss(mu[:1], lv[:1], mu[:1], lv[:1], 1.0, 0.0)  # B = 1: no negatives, no NaN
    assert all(torch.isfinite(v) for v in out.values())
    half = prob_match_loss(mu.bfloat16(), lv.bfloat16(), mu.bfloat16(), lv.bfloat16(), 5.0, 5.0)
    assert half["loss"].dtype == torch.float32 and math.isfinite(half["loss"].item())
