"""ProbClipHead (ProbCLIP-VIB) against a transcription built from the tested pure functions, its
parameters and gradients, the Gaussian dual encoder, and the probabilistic/deterministic config check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxr_vlp.losses.functional import clip_loss
from cxr_vlp.losses.heads import GaussianEmbedding
from cxr_vlp.losses.prob_head import ProbClipHead
from cxr_vlp.losses.probabilistic import csd_distance, medprobclip_distance, prob_match_loss, uncertainty, vib_kl
from cxr_vlp.models.dual_encoder import DualEncoder

B, D = 6, 4


def _views(n: int, seed: int, logvar_dim: int = D) -> list[GaussianEmbedding]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mu = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
        lv = torch.randn(B, logvar_dim, generator=g, dtype=torch.float64) * 0.5 - 2.0
        out.append(GaussianEmbedding(mu.requires_grad_(), lv.requires_grad_()))
    return out


def _kl(imgs, txts, reduction: str = "mean_over_dims") -> torch.Tensor:
    """Per-tower view mean of the KL; mean_over_dims averages the two towers, sum_over_dims sums them."""

    def tower(views):
        return sum(vib_kl(v.mu, v.logvar, reduction=reduction) for v in views) / len(views)

    total = tower(imgs) + tower(txts)
    return 0.5 * total if reduction == "mean_over_dims" else total


def _reference(
    imgs, txts, a, b, pw, w_i2i, w_t2t, beta, clip_weight, clip_scale, kl_reduction="mean_over_dims"
) -> torch.Tensor:
    """Slow transcription: mean over pairings of prob_match + w·intra + β·KL + clip_weight·CLIP."""

    def pm(x, y):
        return prob_match_loss(x.mu, x.logvar, y.mu, y.logvar, a, b, pseudo_positive_weight=pw)["loss"]

    cross = sum(pm(i, t) for i in imgs for t in txts) / (len(imgs) * len(txts))
    total = cross
    if w_i2i:
        total = total + w_i2i * 0.5 * (pm(imgs[0], imgs[1]) + pm(imgs[1], imgs[0]))
    if w_t2t:
        total = total + w_t2t * 0.5 * (pm(txts[0], txts[1]) + pm(txts[1], txts[0]))
    total = total + beta * _kl(imgs, txts, kl_reduction)
    if clip_weight:
        clip = sum(clip_loss(i.mu, t.mu, clip_scale) for i in imgs for t in txts) / (len(imgs) * len(txts))
        total = total + clip_weight * clip
    return total


@pytest.mark.parametrize(
    "pw, w_i2i, w_t2t, beta, clip_weight, logvar_dim, kl_reduction",
    [
        (0.0, 0.0, 0.0, 0.0, 0.0, D, "mean_over_dims"),
        (0.1, 1.0, 0.5, 1e-2, 1.0, D, "mean_over_dims"),
        (0.3, 0.0, 0.7, 1e-2, 0.5, 1, "sum_over_dims"),
    ],
)
def test_head_matches_transcription(pw, w_i2i, w_t2t, beta, clip_weight, logvar_dim, kl_reduction) -> None:
    imgs, txts = _views(2, 1, logvar_dim), _views(2, 2, logvar_dim)
    head = ProbClipHead(
        a_init=3.0,
        b_init=2.0,
        pseudo_positive_weight=pw,
        w_i2i=w_i2i,
        w_t2t=w_t2t,
        kl_weight=beta,
        kl_reduction=kl_reduction,
        clip_weight=clip_weight,
        temperature_init=0.1,
    ).double()
    out = head(imgs, txts)
    ref = _reference(imgs, txts, 3.0, 2.0, pw, w_i2i, w_t2t, beta, clip_weight, 10.0, kl_reduction)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.logs["kl"], _kl(imgs, txts, kl_reduction))
    assert out.logs["a"].item() == pytest.approx(3.0) and out.logs["b"].item() == pytest.approx(2.0)
    expected_keys = {
        "loss",
        "match",
        "pseudo",
        "pseudo_share",
        "pos_logit",
        "neg_logit",
        "kl",
        "a",
        "b",
        "uncertainty",
        "uncertainty_image",
        "uncertainty_text",
    }
    expected_keys |= {"i2i"} if w_i2i else set()
    expected_keys |= {"t2t"} if w_t2t else set()
    expected_keys |= {"clip", "logit_scale"} if clip_weight else set()
    assert set(out.logs) == expected_keys
    unc = torch.cat([uncertainty(v.logvar) for v in imgs]).mean()
    torch.testing.assert_close(out.logs["uncertainty_image"], unc)
    assert all(not v.requires_grad for v in out.logs.values())


def test_single_view_and_default_weights() -> None:
    (img,), (txt,) = _views(1, 3), _views(1, 4)
    head = ProbClipHead().double()  # defaults: a = b = 5, α 0.1, β 1e-4 on the element-mean KL, no intra / clip
    out = head(img, txt)  # a bare GaussianEmbedding is one view
    ref = prob_match_loss(img.mu, img.logvar, txt.mu, txt.logvar, 5.0, 5.0, pseudo_positive_weight=0.1)["loss"]
    kl_sum = vib_kl(img.mu, img.logvar) + vib_kl(txt.mu, txt.logvar)  # per-sample sums over D
    torch.testing.assert_close(out.loss, ref + 1e-4 * kl_sum / (2 * D))
    # the same strength with the per-sample-sum reduction: β / (2D)
    summed = ProbClipHead(kl_weight=1e-4 / (2 * D), kl_reduction="sum_over_dims").double()(img, txt)
    torch.testing.assert_close(summed.loss, out.loss)
    # intra-modal terms need two views: silently skipped with one
    assert "i2i" not in ProbClipHead(w_i2i=1.0).double()([img], [txt]).logs


def test_a_b_and_embeddings_receive_gradients() -> None:
    imgs, txts = _views(2, 5), _views(2, 6)
    head = ProbClipHead(w_i2i=1.0, w_t2t=1.0, clip_weight=1.0, kl_weight=1e-2).double()
    head(imgs, txts).loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs() > 0, name
    for v in imgs + txts:
        assert v.mu.grad.abs().sum() > 0 and v.logvar.grad.abs().sum() > 0
    frozen = ProbClipHead(learn_ab=False)
    assert not frozen.a_log.requires_grad and not frozen.b.requires_grad
    assert not hasattr(ProbClipHead(clip_weight=0.0), "logit_scale_log")


def test_similarity_is_match_logit_and_scale() -> None:
    (img,), (txt,) = _views(1, 7), _views(1, 8)
    head = ProbClipHead(a_init=2.0, b_init=1.5).double()
    sim = head.match_logit(img.mu, img.logvar, txt.mu, txt.logvar)
    torch.testing.assert_close(sim, -2.0 * csd_distance(img.mu, img.logvar, txt.mu, txt.logvar) + 1.5)
    assert head.similarity_scale().item() == pytest.approx(4.0)
    # a more uncertain gallery item ranks lower at equal means: not the μ-cosine ranking
    mu = img.mu[:1].detach()
    gallery_lv = torch.tensor([[-1.0] * D, [-5.0] * D], dtype=torch.float64)
    s = head.match_logit(mu, torch.full((1, D), -3.0, dtype=torch.float64), mu.expand(2, D), gallery_lv)
    assert s[0, 1] > s[0, 0]


def test_rejects_plain_tensors_and_bad_args() -> None:
    x = F.normalize(torch.randn(B, D), dim=-1)
    with pytest.raises(TypeError, match="model.probabilistic=true"):
        ProbClipHead()([x], [x])
    with pytest.raises(ValueError, match="a_init"):
        ProbClipHead(a_init=0.0)
    with pytest.raises(ValueError, match="kl_weight"):
        ProbClipHead(kl_weight=-1.0)
    with pytest.raises(ValueError, match="kl_reduction"):
        ProbClipHead(kl_reduction="sum")


def test_medprobclip_variant_matches_transcription() -> None:
    imgs, txts = _views(2, 11), _views(2, 12)
    head = ProbClipHead(a_init=0.5, b_init=2.0, distance="medprobclip", w_i2i=1.0, kl_weight=1e-2).double()
    out = head(imgs, txts)
    target = torch.arange(B)

    def nce(x, y):  # ½[CE(z_xy) + CE(z_yx)], z = −a·d + b
        z = -0.5 * medprobclip_distance(x.mu, x.logvar, y.mu, y.logvar) + 2.0
        zt = -0.5 * medprobclip_distance(y.mu, y.logvar, x.mu, x.logvar) + 2.0
        return 0.5 * (F.cross_entropy(z, target) + F.cross_entropy(zt, target))

    cross = sum(nce(i, t) for i in imgs for t in txts) / 4
    torch.testing.assert_close(out.loss, cross + nce(imgs[0], imgs[1]) + 1e-2 * _kl(imgs, txts))
    assert out.logs["pseudo"].item() == 0.0
    sim = head.match_logit(imgs[0].mu, imgs[0].logvar, txts[0].mu, txts[0].logvar)
    expected = -0.5 * medprobclip_distance(imgs[0].mu, imgs[0].logvar, txts[0].mu, txts[0].logvar) + 2.0
    torch.testing.assert_close(sim, expected)
    out.loss.backward()
    assert head.a_log.grad.abs() > 0  # b cancels in the softmax (no gradient needed)
    with pytest.raises(ValueError, match="distance"):
        ProbClipHead(distance="kl")


class _Tower(nn.Module):
    def __init__(self, in_dim: int, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.net = nn.Linear(in_dim, num_features)

    def forward(self, x, mask=None):
        return self.net(x.float())


@pytest.mark.parametrize("logvar_dim", ["embed", 1])
def test_gaussian_dual_encoder_logvar_heads_get_gradients(logvar_dim) -> None:
    torch.manual_seed(0)
    enc = DualEncoder(
        _Tower(5, 8), _Tower(3, 7), embed_dim=D, probabilistic=True, logvar_dim=logvar_dim, logvar_init=-4.0
    )
    images, texts = torch.randn(B, 5), torch.randn(B, 3)
    img_out, txt_out = enc.encode_image(images), enc.encode_text(texts, None)
    mu_i, lv_i, mu_t, lv_t = img_out.embedding, img_out.logvar, txt_out.embedding, txt_out.logvar
    width = D if logvar_dim == "embed" else 1
    assert lv_i.shape == (B, width) and lv_t.shape == (B, width)
    torch.testing.assert_close(lv_i, torch.full((B, width), -4.0))  # zero weight, bias = logvar_init
    # μ is the unit embedding of the deterministic dual encoder
    torch.testing.assert_close(mu_i, F.normalize(enc.image_proj(enc.image_encoder(images)), dim=-1))
    torch.testing.assert_close(mu_t, F.normalize(enc.text_proj(enc.text_encoder(texts, None)), dim=-1))
    loss = ProbClipHead(kl_weight=1e-2)([GaussianEmbedding(mu_i, lv_i)], [GaussianEmbedding(mu_t, lv_t)]).loss
    loss.backward()
    for name in ("image_logvar.weight", "image_logvar.bias", "text_logvar.weight", "text_logvar.bias"):
        assert enc.get_parameter(name).grad.abs().sum() > 0, name
    assert math.isfinite(loss.item())


def test_deterministic_dual_encoder_is_unchanged() -> None:
    enc = DualEncoder(_Tower(5, 8), _Tower(3, 7), embed_dim=D)
    assert not enc.probabilistic
    assert not any("logvar" in k for k in enc.state_dict())
    out = enc.encode_image(torch.randn(2, 5))
    assert out.logvar is None and enc.embedding_kind == "deterministic"
    with pytest.raises(TypeError, match="model.probabilistic=true"):  # a Gaussian head refuses these embeddings
        ProbClipHead().loss_view(out.embeddings)
    with pytest.raises(ValueError, match="logvar_dim"):
        DualEncoder(_Tower(5, 8), _Tower(3, 7), embed_dim=D, probabilistic=True, logvar_dim="full")
