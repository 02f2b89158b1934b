"""ProbClipHead against a slow, direct float64 transcription of the PCME++ objective, values and gradients.

The reference follows Chun, "Improved Probabilistic Image-Text Representations" (ICLR 2024), §2.3 and
naver-ai/pcmepp ``pcmepp/criterions/pcmepp.py`` (``ClosedFormSampledDistanceLoss`` with ``vib_beta`` = β,
``smoothness_alpha`` = α), written as loops over pairs:

    z_ij      = −a·[Σ_k (μ_i,k − ν_j,k)² + Σ_k (σ_i,k² + τ_j,k²)] + b        (image i, caption j)
    z'_ji     = the same with the caption as the query (caption j, image i)
    L         = 2 · mean_ij BCE(z_ij, [i = j])                            (i2t and t2i BCE, equal)
    S_i2t     = mean_ij BCE(z_ij, [z_ij ≥ z_ii])                           (row i relabelled against z_ii)
    S_t2i     = mean_ji BCE(z'_ji, [z'_ji ≥ z'_jj])                        (caption rows against z'_jj)
    KL̄        = mean over the B·D elements of −½ (1 + log σ² − μ² − σ²), per tower
    PCME++    = L + β (KL̄_img + KL̄_txt) + α (S_i2t + S_t2i)

Conventions that differ here: PCME++ sums the two BCE directions, ProbClipHead takes one (the mean over
the B² pairs) and the mean of the two relabelled BCEs, and with ``kl_reduction="mean_over_dims"``
averages the two towers' KL̄: the head's loss is PCME++ / 2 exactly, with the same α and β. With
``kl_reduction="sum_over_dims"`` (per-sample KL summed over D) the same strength needs β / (2D).
PCME++'s guard that drops a KL above 10⁴ is not reproduced. The head parametrises a = exp(a_log), so
∂/∂a_log = a · ∂/∂a.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from cxr_vlp.losses.heads import GaussianEmbedding
from cxr_vlp.losses.prob_head import ProbClipHead
from cxr_vlp.utils.config import config_dir

B, D = 5, 3


def _bce(z: Tensor, y: float) -> Tensor:
    """−[y log σ(z) + (1 − y) log(1 − σ(z))], written with the sigmoid."""
    p = 1.0 / (1.0 + torch.exp(-z))
    return -(y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p))


def _logit(mu_q: Tensor, lv_q: Tensor, mu_g: Tensor, lv_g: Tensor, q: int, g: int, a: Tensor, b: Tensor) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for k in range(mu_q.shape[1]):
        total = total + (mu_q[q, k] - mu_g[g, k]) ** 2 + torch.exp(lv_q[q, k]) + torch.exp(lv_g[g, k])
    return -a * total + b


def _kl_element_mean(mu: Tensor, lv: Tensor) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(mu.shape[0]):
        for k in range(mu.shape[1]):
            total = total - 0.5 * (1.0 + lv[i, k] - mu[i, k] ** 2 - torch.exp(lv[i, k]))
    return total / mu.numel()


def pcmepp_loss(img_mu, img_lv, cap_mu, cap_lv, a, b, alpha: float, beta: float) -> dict[str, Tensor | int]:
    """The PCME++ objective above, one pair at a time."""
    n = img_mu.shape[0]
    z = [[_logit(img_mu, img_lv, cap_mu, cap_lv, i, j, a, b) for j in range(n)] for i in range(n)]
    zt = [[_logit(cap_mu, cap_lv, img_mu, img_lv, j, i, a, b) for i in range(n)] for j in range(n)]
    match = sum(_bce(z[i][j], float(i == j)) for i in range(n) for j in range(n)) / n**2
    s_i2t = sum(_bce(z[i][j], float(z[i][j].item() >= z[i][i].item())) for i in range(n) for j in range(n)) / n**2
    s_t2i = sum(_bce(zt[j][i], float(zt[j][i].item() >= zt[j][j].item())) for j in range(n) for i in range(n)) / n**2
    n_pseudo = sum(
        int(z[i][j].item() >= z[i][i].item()) + int(zt[j][i].item() >= zt[j][j].item())
        for i in range(n)
        for j in range(n)
        if i != j
    )
    kl = _kl_element_mean(img_mu, img_lv) + _kl_element_mean(cap_mu, cap_lv)
    loss = 2 * match + beta * kl + alpha * (s_i2t + s_t2i)
    return {"loss": loss, "n_pseudo": n_pseudo}


def _gaussians(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
    lv = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.5 - 2.0
    return mu.requires_grad_(), lv.requires_grad_()


def _close(x: Tensor, y: Tensor, msg: str = "") -> None:
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10, msg=msg)


@pytest.mark.parametrize(
    ("a0", "b0", "alpha", "beta", "kl_reduction"),
    [
        (5.0, 5.0, 0.1, 1e-4, "mean_over_dims"),  # PCME++ defaults
        (1.5, 0.5, 0.3, 0.5, "mean_over_dims"),  # strong pseudo-positives and KL
        (1.5, 0.5, 0.3, 0.5, "sum_over_dims"),  # same strength with the per-sample-sum KL
        (2.0, 1.0, 0.0, 0.0, "mean_over_dims"),
    ],  # plain matching BCE
)
def test_head_is_half_of_pcmepp_values_and_gradients(a0, b0, alpha, beta, kl_reduction) -> None:
    img_mu, img_lv = _gaussians(1)
    cap_mu, cap_lv = _gaussians(2)
    kl_weight = beta if kl_reduction == "mean_over_dims" else beta / (2 * D)
    head = ProbClipHead(
        a_init=a0, b_init=b0, pseudo_positive_weight=alpha, kl_weight=kl_weight, kl_reduction=kl_reduction
    ).double()
    out = head(GaussianEmbedding(img_mu, img_lv), GaussianEmbedding(cap_mu, cap_lv))

    # a = exp(a_log) with a_log initialised in float32: take the head's exact value
    a = head.match_scale().detach().clone().requires_grad_()
    b = head.b.detach().clone().requires_grad_()
    ref = pcmepp_loss(img_mu, img_lv, cap_mu, cap_lv, a, b, alpha, beta)
    if alpha and a0 < 5.0:
        # the pseudo-positive relabelling is really exercised, in both directions
        assert ref["n_pseudo"] > 0 and out.logs["pseudo_share"].item() > 0
        assert out.logs["pseudo_share"].item() == pytest.approx(ref["n_pseudo"] / (2 * B * (B - 1)))
    _close(out.loss, ref["loss"] / 2, "loss")

    inputs = (img_mu, img_lv, cap_mu, cap_lv)
    fast = torch.autograd.grad(out.loss, [*inputs, head.a_log, head.b])
    slow = torch.autograd.grad(ref["loss"] / 2, [*inputs, a, b])
    for name, f, s in zip(("img_mu", "img_lv", "cap_mu", "cap_lv"), fast[:4], slow[:4]):
        assert s.abs().max() > 0
        _close(f, s, name)
    _close(fast[4], a.detach() * slow[4], "a_log")
    _close(fast[5], slow[5], "b")


def test_pcmepp_reference_relabels_both_directions_differently() -> None:
    """On this batch the row (image) and column (caption) criteria select different pairs, so a head
    that used one direction twice would disagree with the reference."""
    img_mu, img_lv = _gaussians(1)
    cap_mu, cap_lv = _gaussians(2)
    a, b = torch.tensor(1.5, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    with torch.no_grad():
        z = torch.stack(
            [torch.stack([_logit(img_mu, img_lv, cap_mu, cap_lv, i, j, a, b) for j in range(B)]) for i in range(B)]
        )
    off = ~torch.eye(B, dtype=torch.bool)
    rows = (z >= z.diagonal().unsqueeze(1)) & off
    cols = (z >= z.diagonal().unsqueeze(0)) & off
    assert rows.any() and cols.any() and not torch.equal(rows, cols)
    assert math.isfinite(pcmepp_loss(img_mu, img_lv, cap_mu, cap_lv, a, b, 0.1, 1e-4)["loss"].item())


def test_shipped_config_reproduces_pcmepp_defaults() -> None:
    """conf/loss/probclip_vib.yaml as shipped is PCME++ (α 0.1, β 1e-4, a = b = 5) at PCME++'s strength."""
    cfg = OmegaConf.load(Path(config_dir()) / "loss" / "probclip_vib.yaml")
    head = instantiate(cfg).double()
    assert isinstance(head, ProbClipHead) and head.kl_reduction == "mean_over_dims"
    img_mu, img_lv = _gaussians(3)
    cap_mu, cap_lv = _gaussians(4)
    out = head(GaussianEmbedding(img_mu, img_lv), GaussianEmbedding(cap_mu, cap_lv))
    ref = pcmepp_loss(img_mu, img_lv, cap_mu, cap_lv, head.match_scale().detach(), head.b.detach(), 0.1, 1e-4)
    _close(out.loss, ref["loss"] / 2)
