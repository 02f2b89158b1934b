"""Evaluation figures (cxr_vlp.eval.figures) and Grad-CAM (cxr_vlp.eval.gradcam) on tiny synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.metrics import roc_curve
from torch import nn

from cxr_vlp.eval.figures import (
    dominant_labels,
    gradcam_figure,
    is_valid_png,
    retrieval_grid,
    roc_figure,
    text_to_image_grid,
    tsne_figure,
    uncertainty_figure,
)
from cxr_vlp.eval.gradcam import (
    EmbeddingModel,
    ViTTokensToGrid,
    backbone_kind,
    default_target_layers,
    gradcam_maps,
    nhwc_to_nchw,
    reshape_transform_for,
    text_similarity_target,
)
from cxr_vlp.metrics.classification import RocCurve
from cxr_vlp.models.dual_encoder import DualEncoder
from cxr_vlp.models.image_encoder import ImageEncoder
from cxr_vlp.models.text_encoder import TextEncoder
from cxr_vlp.text.labels import CHEXPERT_LABELS

REPORT = (
    "Heart size is normal. The mediastinal and hilar contours are unremarkable. There is a small left "
    "pleural effusion with adjacent atelectasis. No pneumothorax. Osseous structures are intact and "
    "there is no acute fracture identified in the visualised ribs."
)


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish synthetic 'X-rays' (a blob plus noise), normalised like model inputs."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) * 3)
    return (blob + 0.3 * torch.randn(*shape, generator=g) - 0.5) / 0.25


# ---------------------------------------------------------------------------------------------- is_valid_png
def test_is_valid_png_rejects_blank_small_and_non_png(tmp_path: Path) -> None:
    """The checker accepts a real image and rejects blank, tiny, non-PNG, corrupt and missing files."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    assert is_valid_png(tmp_path / "noise.png")

    Image.new("RGB", (300, 200), "white").save(tmp_path / "white.png")
    assert not is_valid_png(tmp_path / "white.png")
    two = np.full((100, 100, 3), 255, np.uint8)
    two[40:60, 40:60] = 0  # a figure with an empty axis box: 2 colours, not content
    Image.fromarray(two).save(tmp_path / "two.png")
    assert not is_valid_png(tmp_path / "two.png")
    Image.fromarray(noise[:40, :40]).save(tmp_path / "tiny.png")
    assert not is_valid_png(tmp_path / "tiny.png")
    Image.fromarray(noise).save(tmp_path / "noise.jpg", format="JPEG")
    assert not is_valid_png(tmp_path / "noise.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert not is_valid_png(tmp_path / "broken.png")
    assert not is_valid_png(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------- figures
def test_retrieval_grid_hits_and_misses(tmp_path: Path) -> None:
    """Image→text grid with a hit at rank 1, a miss and a hit at rank 5 writes a valid PNG."""
    q = 3
    topk = [[f"candidate {j}: {REPORT}" for j in range(5)] for _ in range(q)]
    out = retrieval_grid(tmp_path / "sub" / "i2t.png", _images(q, 1, 32, 32), topk, [REPORT] * q, [0, None, 4])
    assert out == tmp_path / "sub" / "i2t.png"
    assert is_valid_png(out)


def test_text_to_image_grid(tmp_path: Path) -> None:
    """Text→image grid ([Q, 5, 1, H, W] images) with a hit and a miss writes a valid PNG."""
    out = text_to_image_grid(tmp_path / "t2i.png", [REPORT, "short report"], _images(2, 5, 1, 32, 32), [2, None])
    assert is_valid_png(out)


def test_retrieval_figures_reject_bad_inputs(tmp_path: Path) -> None:
    """Mismatched lengths, out-of-range hit indices and wrong image shapes raise ValueError."""
    imgs = _images(2, 1, 16, 16)
    topk = [["a"] * 5, ["b"] * 5]
    with pytest.raises(ValueError, match="hit_index"):
        retrieval_grid(tmp_path / "x.png", imgs, topk, ["a", "b"], [0, 5])
    with pytest.raises(ValueError, match="hit_index"):
        retrieval_grid(tmp_path / "x.png", imgs, topk, ["a", "b"], [0])
    with pytest.raises(ValueError, match="true_texts"):
        retrieval_grid(tmp_path / "x.png", imgs, topk, ["a"], [0, None])
    with pytest.raises(ValueError, match="one channel"):
        retrieval_grid(tmp_path / "x.png", torch.zeros(2, 3, 16, 16), topk, ["a", "b"], [0, None])
    with pytest.raises(ValueError, match="topk_images"):
        text_to_image_grid(tmp_path / "x.png", ["a"], torch.zeros(1, 16, 16), [None])
    assert not (tmp_path / "x.png").exists()


def test_dominant_labels_priority_no_finding_other() -> None:
    """First positive of the priority list wins; else No Finding; else 'other' (NaN counts as not positive)."""
    names = list(CHEXPERT_LABELS)
    lab = np.full((4, len(names)), np.nan)
    lab[0, names.index("Edema")] = 1
    lab[0, names.index("Cardiomegaly")] = 1
    lab[1, names.index("No Finding")] = 1
    lab[2, names.index("Fracture")] = 1
    assert dominant_labels(lab, names) == ["Cardiomegaly", "No Finding", "other", "other"]
    assert dominant_labels(lab, names, ["Edema", "Fracture"]) == ["Edema", "No Finding", "Fracture", "other"]
    with pytest.raises(ValueError, match="Nonexistent"):
        dominant_labels(lab, names, ["Nonexistent"])


def test_tsne_figure_with_subsampling(tmp_path: Path) -> None:
    """t-SNE of clustered embeddings with NaN labels, subsampled to max_points, writes a valid PNG."""
    rng = np.random.default_rng(0)
    n, d, c = 70, 8, len(CHEXPERT_LABELS)
    centers = rng.normal(size=(3, d)) * 4
    group = rng.integers(0, 3, size=n)
    emb = centers[group] + rng.normal(size=(n, d))
    labels = np.where(rng.random((n, c)) < 0.3, np.nan, (rng.random((n, c)) < 0.15).astype(float))
    labels[group == 0, 0] = 1.0
    out = tsne_figure(tmp_path / "tsne.png", emb, labels, CHEXPERT_LABELS, seed=1, max_points=50, max_iter=300)
    assert is_valid_png(out)
    with pytest.raises(ValueError, match="labels"):
        tsne_figure(tmp_path / "bad.png", emb, labels[:, :3], CHEXPERT_LABELS)


def test_roc_figure_tuples_and_roc_curve_objects(tmp_path: Path) -> None:
    """ROC panels from (name, fpr, tpr, auc, point|None) tuples and from RocCurve objects."""
    rng = np.random.default_rng(0)
    curves = []
    for i, name in enumerate(CHEXPERT_LABELS[:5]):
        y = rng.integers(0, 2, 80)
        score = y * (0.5 + 0.2 * i) + rng.normal(size=80)
        fpr, tpr, _ = roc_curve(y, score)
        j = int(np.argmax(tpr - fpr))
        auc = float(np.trapezoid(tpr, fpr))
        curves.append((name, fpr, tpr, auc, (float(fpr[j]), float(tpr[j])) if i != 2 else None))
    assert is_valid_png(roc_figure(tmp_path / "roc.png", curves))
    objs = [RocCurve(n, f, t, a, a - 0.05, a + 0.05, 0.5, 0.3, 0.7) for n, f, t, a, _ in curves[:2]]
    assert is_valid_png(roc_figure(tmp_path / "roc_obj.png", objs))
    with pytest.raises(ValueError, match="at least one"):
        roc_figure(tmp_path / "none.png", [])


def test_uncertainty_figure(tmp_path: Path) -> None:
    """Decile bars + risk–coverage curve (with an empty-bin NaN) writes a valid PNG."""
    rng = np.random.default_rng(0)
    hit = rng.random(200) < np.linspace(0.9, 0.2, 200)
    m = np.arange(1, 201)
    risk = 1 - np.cumsum(hit) / m
    recall = np.linspace(0.9, 0.2, 10)
    recall[5] = np.nan
    out = uncertainty_figure(tmp_path / "unc.png", np.linspace(0.1, 1.0, 10), recall, m / 200, risk, float(risk.mean()))
    assert is_valid_png(out)
    with pytest.raises(ValueError, match="coverage"):
        uncertainty_figure(tmp_path / "bad.png", np.ones(10), np.ones(10), np.ones(5), np.ones(4), 0.1)


def test_gradcam_figure(tmp_path: Path) -> None:
    """Overlay figure from images [B, 1, H, W] and maps [B, H, W] is valid; mismatched maps raise."""
    imgs = _images(3, 1, 32, 32)
    maps = np.random.default_rng(0).random((3, 32, 32))
    assert is_valid_png(gradcam_figure(tmp_path / "cam.png", imgs, maps, ["a", "b", "c"]))
    with pytest.raises(ValueError, match="maps"):
        gradcam_figure(tmp_path / "bad.png", imgs, maps[:, :16], ["a", "b", "c"])
    with pytest.raises(ValueError, match="titles"):
        gradcam_figure(tmp_path / "bad.png", imgs, maps, ["a"])


# ---------------------------------------------------------------------------------------------- Grad-CAM
class _TimmTower(nn.Module):
    """An ImageEncoder look-alike for timm models built with architecture kwargs ImageEncoder does not take."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__()
        self.name = name
        self.model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0, **kwargs)
        self.num_features = self.model.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def _text_encoder() -> TextEncoder:
    return TextEncoder(
        vocab_size=50,
        local_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 32},
    )


def _tower(kind: str) -> tuple[nn.Module, int]:
    if kind == "resnet":
        return ImageEncoder("resnet10t", pretrained=False, in_chans=1), 64
    if kind == "swin":
        return _TimmTower(
            "swin_tiny_patch4_window7_224",
            embed_dim=24,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
            img_size=128,
            window_size=4,
        ), 128
    if kind == "vit":
        return _TimmTower("vit_tiny_patch16_224", depth=1, img_size=64, reg_tokens=2), 64
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["resnet", "swin", "vit"])
def test_gradcam_maps_per_backbone(kind: str, tmp_path: Path) -> None:
    """On a DualEncoder with a CNN / Swin (NHWC) / ViT (class + register tokens) image tower, Grad-CAM maps
    are [B, H, W], finite, in [0, 1], not constant, depend on the text embedding, and leave the model's
    train/eval modes, requires_grad flags and parameter gradients as they were."""
    torch.manual_seed(0)
    tower, size = _tower(kind)
    encoder = DualEncoder(tower, _text_encoder(), embed_dim=16)
    assert backbone_kind(encoder) == kind
    encoder.train()
    first = next(encoder.parameters())
    first.grad = torch.ones_like(first)
    images = _images(2, 1, size, size, seed=1)
    g = torch.Generator().manual_seed(0)
    t1, t2 = torch.randn(16, generator=g), torch.randn(16, generator=g)

    maps1 = gradcam_maps(encoder, images, t1)
    maps2 = gradcam_maps(encoder, images, t2.unsqueeze(0))
    for maps in (maps1, maps2):
        assert maps.shape == (2, size, size)
        assert maps.dtype == np.float32
        assert np.isfinite(maps).all()
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        assert all(float(m.std()) > 1e-3 for m in maps)  # not constant
    assert float(np.abs(maps1 - maps2).max()) > 0.05  # the text embedding matters
    assert encoder.training and all(m.training for m in encoder.modules())
    assert all(p.requires_grad for p in encoder.parameters())
    assert torch.equal(first.grad, torch.ones_like(first))
    assert sum(p.grad is not None for p in encoder.parameters()) == 1
    assert is_valid_png(gradcam_figure(tmp_path / "cam.png", images, maps1, ["a: Cardiomegaly", "b"]))


def test_gradcam_on_frozen_encoder() -> None:
    """A fully frozen encoder (no parameter requires grad) still yields maps: the input carries the graph."""
    torch.manual_seed(0)
    encoder = DualEncoder(ImageEncoder("resnet10t", in_chans=1, freeze=True), _text_encoder(), embed_dim=16)
    encoder.requires_grad_(False)
    maps = gradcam_maps(encoder, _images(1, 1, 64, 64), torch.randn(16))
    assert maps.shape == (1, 64, 64) and float(maps.std()) > 1e-3
    assert not any(p.requires_grad for p in encoder.parameters())


def test_target_layers_and_reshape_per_backbone() -> None:
    """Layer choice and activation reshapes: CNN → layer4 / no reshape; Swin → final norm / NHWC→NCHW;
    ViT → last block's norm1 / prefix tokens dropped and tokens laid on the patch grid."""
    resnet, _ = _tower("resnet")
    assert default_target_layers(resnet) == [resnet.model.layer4]
    assert reshape_transform_for(resnet) is None
    swin, _ = _tower("swin")
    assert default_target_layers(swin) == [swin.model.norm]
    assert reshape_transform_for(swin) is nhwc_to_nchw
    assert nhwc_to_nchw(torch.zeros(2, 4, 5, 7)).shape == (2, 7, 4, 5)
    vit, _ = _tower("vit")
    assert default_target_layers(vit) == [vit.model.blocks[-1].norm1]
    tf = reshape_transform_for(vit)
    assert isinstance(tf, ViTTokensToGrid) and tf.num_prefix_tokens == 3 and tf.grid == (4, 4)
    tokens = torch.arange(2 * 19 * 3, dtype=torch.float32).reshape(2, 19, 3)
    grid = tf(tokens)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[:, :, 0, 1], tokens[:, 4])  # 0-2: prefix; 3: patch (0, 0); 4: (0, 1)
    with pytest.raises(ValueError, match="grid"):
        ViTTokensToGrid(1, None)(torch.zeros(1, 1 + 7, 3))


def test_unsupported_backbone_error_names_it() -> None:
    """An unknown image tower raises a ValueError that names the backbone."""

    class Mystery(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.name = "mystery_net"
            self.model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    with pytest.raises(ValueError, match="mystery_net"):
        default_target_layers(Mystery())
    with pytest.raises(ValueError, match="mystery_net"):
        reshape_transform_for(Mystery())


def test_text_similarity_target_and_embedding_model() -> None:
    """The target is the cosine similarity with the text embedding; EmbeddingModel returns unit vectors."""
    text = torch.tensor([1.0, 0.0, 0.0])
    target = text_similarity_target(text)
    out = torch.tensor([2.0, 2.0, 0.0])
    assert torch.isclose(target(out), torch.tensor(2.0**-0.5))
    with pytest.raises(ValueError, match="dimension"):
        target(torch.ones(4))
    with pytest.raises(ValueError, match="text_emb"):
        text_similarity_target(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="encode_image"):
        EmbeddingModel(nn.Linear(2, 2))
    encoder = DualEncoder(ImageEncoder("resnet10t", in_chans=1), _text_encoder(), embed_dim=8)
    z = EmbeddingModel(encoder)(_images(2, 1, 32, 32))
    assert z.shape == (2, 8) and torch.allclose(z.norm(dim=-1), torch.ones(2), atol=1e-5)
