"""Zero-shot classification with prompt pairs (cxr_vlp.eval.zeroshot)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.eval.zeroshot import (
    DEFAULT_PROMPTS,
    PromptSet,
    class_text_embeddings,
    zeroshot_classify,
    zeroshot_probs,
)
from cxr_vlp.metrics.classification import auroc_per_label
from cxr_vlp.text.labels import CHEXPERT_LABELS

D = 32


class FakeEncoder:
    """Deterministic text 'encoder': each string maps to its own seeded random vector; records its calls."""

    def __init__(self, normalise: bool = True) -> None:
        self.calls: list[list[str]] = []
        self.normalise = normalise

    def vector(self, text: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        scale = 1.0 + (seed % 7)  # unnormalised lengths differ per prompt
        return v / v.norm() if self.normalise else v * scale

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.vector(t) for t in texts]).float()


def unit(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, D, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------------------------------------- probabilities
def test_probs_equal_loop_transcription_of_two_way_softmax():
    img, pos, neg = unit(7, 0), unit(3, 1), unit(3, 2)
    s = 9.5
    got = zeroshot_probs(img, pos, neg, s)
    assert got.shape == (7, 3)
    for i in range(7):
        for c in range(3):
            cos_p = sum(float(img[i, k]) * float(pos[c, k]) for k in range(D))
            cos_n = sum(float(img[i, k]) * float(neg[c, k]) for k in range(D))
            expected = math.exp(s * cos_p) / (math.exp(s * cos_p) + math.exp(s * cos_n))
            assert float(got[i, c]) == pytest.approx(expected, abs=1e-6)


def test_probs_are_stable_for_large_scales_and_symmetric():
    img, pos, neg = unit(20, 3), unit(4, 4), unit(4, 5)
    p = zeroshot_probs(img, pos, neg, 1e4)
    assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    # swapping the prompt sides gives the complement
    torch.testing.assert_close(zeroshot_probs(img, neg, pos, 7.0), 1 - zeroshot_probs(img, pos, neg, 7.0))


def test_temperature_changes_probabilities_but_not_auroc():
    img, pos, neg = unit(200, 6), unit(5, 7), unit(5, 8)
    labels = (torch.rand(200, 5, generator=torch.Generator().manual_seed(9)) < 0.4).double().numpy()
    p1, p8 = zeroshot_probs(img, pos, neg, 1.0), zeroshot_probs(img, pos, neg, 8.0)
    assert (p1 - p8).abs().max() > 0.05
    for c in range(5):  # same order per label
        assert torch.equal(torch.argsort(p1[:, c]), torch.argsort(p8[:, c]))
    np.testing.assert_allclose(
        auroc_per_label(p1.double().numpy(), labels), auroc_per_label(p8.double().numpy(), labels), atol=1e-12
    )


def test_probs_reject_bad_shapes_and_scale():
    img, pos, neg = unit(4, 0), unit(3, 1), unit(3, 2)
    with pytest.raises(ValueError, match="image_emb"):
        zeroshot_probs(img[0], pos, neg, 1.0)
    with pytest.raises(ValueError, match="pos_emb"):
        zeroshot_probs(img, pos[:, :5], neg, 1.0)
    with pytest.raises(ValueError, match="neg_emb"):
        zeroshot_probs(img, pos, neg[:2], 1.0)
    with pytest.raises(ValueError, match="logit_scale"):
        zeroshot_probs(img, pos, neg, 0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        zeroshot_probs(img, pos, neg, float("nan"))


# ---------------------------------------------------------------------------------------------- ensembles
def test_ensemble_is_renormalised_mean_of_normalised_prompt_embeddings():
    enc = FakeEncoder(normalise=False)
    prompts = ["cardiomegaly", "enlarged cardiac silhouette", "the heart is enlarged"]
    got = class_text_embeddings(enc, prompts)
    vs = [enc.vector(q) for q in prompts]
    mean = [sum(float(v[k]) / float(v.norm()) for v in vs) / len(vs) for k in range(D)]
    norm = math.sqrt(sum(m * m for m in mean))
    np.testing.assert_allclose(got.numpy(), np.array(mean) / norm, atol=1e-6)
    assert float(got.norm()) == pytest.approx(1.0, abs=1e-6)


def test_ensemble_of_identical_prompts_equals_single_and_order_does_not_matter():
    enc = FakeEncoder()
    single = class_text_embeddings(enc, ["pleural effusion"])
    torch.testing.assert_close(class_text_embeddings(enc, ["pleural effusion"] * 4), single)
    torch.testing.assert_close(single, F.normalize(enc.vector("pleural effusion").float(), dim=0))
    a = class_text_embeddings(enc, ["no effusion", "sharp costophrenic angles", "no pleural effusion"])
    b = class_text_embeddings(enc, ["no pleural effusion", "no effusion", "sharp costophrenic angles"])
    torch.testing.assert_close(a, b)


def test_ensemble_rejects_bad_prompts_and_encoder_output():
    enc = FakeEncoder()
    with pytest.raises(ValueError, match="prompts"):
        class_text_embeddings(enc, [])
    with pytest.raises(TypeError, match="prompts"):
        class_text_embeddings(enc, "cardiomegaly")
    with pytest.raises(ValueError, match="encode_text"):
        class_text_embeddings(lambda texts: torch.zeros(len(texts) + 1, D), ["a", "b"])


# ---------------------------------------------------------------------------------------------- prompt sets
def test_default_prompts_cover_every_label():
    assert set(DEFAULT_PROMPTS) == set(CHEXPERT_LABELS)
    ps = PromptSet.from_config(None)
    for name in CHEXPERT_LABELS:
        assert len(ps.positive[name]) >= 3 and len(ps.negative[name]) >= 3
        assert set(ps.positive[name]).isdisjoint(ps.negative[name])
    assert "enlarged cardiac silhouette" in ps.positive["Cardiomegaly"]
    assert "no acute cardiopulmonary process" in ps.positive["No Finding"]
    assert "acute cardiopulmonary abnormality" in ps.negative["No Finding"]
    # a PromptSet is a copy: editing it leaves the module defaults alone
    ps.positive["Cardiomegaly"].append("x")
    assert "x" not in DEFAULT_PROMPTS["Cardiomegaly"]["positive"]


def test_overrides_replace_one_side_and_accept_omegaconf():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "Cardiomegaly": {"positive": ["big heart"]},
            "Edema": {"positive": ["edema"], "negative": ["no edema", "clear lungs"]},
        }
    )
    ps = PromptSet.from_config(cfg)
    assert ps.positive["Cardiomegaly"] == ["big heart"]
    assert ps.negative["Cardiomegaly"] == DEFAULT_PROMPTS["Cardiomegaly"]["negative"]
    assert ps.negative["Edema"] == ["no edema", "clear lungs"]
    assert ps.positive["Fracture"] == DEFAULT_PROMPTS["Fracture"]["positive"]


def test_unknown_label_or_side_raises_naming_it():
    with pytest.raises(ValueError, match="Cardiomegally"):
        PromptSet.from_config({"Cardiomegally": {"positive": ["big heart"]}})
    with pytest.raises(ValueError, match="positives"):
        PromptSet.from_config({"Cardiomegaly": {"positives": ["big heart"]}})
    with pytest.raises(ValueError, match="Cardiomegaly"):
        PromptSet.from_config({"Cardiomegaly": {"positive": []}})
    with pytest.raises(TypeError, match="Cardiomegaly"):
        PromptSet.from_config({"Cardiomegaly": {"positive": "big heart"}})
    with pytest.raises(TypeError, match="Cardiomegaly"):
        PromptSet.from_config({"Cardiomegaly": ["big heart"]})


# ---------------------------------------------------------------------------------------------- classify
def test_classify_ties_it_together_and_encodes_each_list_once():
    enc = FakeEncoder()
    ps = PromptSet.from_config({"Edema": {"positive": ["edema", "pulmonary edema"]}})
    names = ["Edema", "Cardiomegaly", "No Finding"]
    img = unit(9, 11)
    got = zeroshot_classify(enc, img, names, ps, 4.0)
    assert got.shape == (9, 3)
    assert enc.calls == [ps.positive[n] for n in names] + [ps.negative[n] for n in names]
    pos = torch.stack([class_text_embeddings(enc, ps.positive[n]) for n in names])
    neg = torch.stack([class_text_embeddings(enc, ps.negative[n]) for n in names])
    torch.testing.assert_close(got, zeroshot_probs(img, pos, neg, 4.0))


def test_classify_with_informative_text_beats_chance():
    # images lie near the positive or negative ensemble of their label → AUROC near 1
    enc = FakeEncoder()
    ps = PromptSet.default()
    names = list(CHEXPERT_LABELS[:4])
    pos = torch.stack([class_text_embeddings(enc, ps.positive[n]) for n in names])
    neg = torch.stack([class_text_embeddings(enc, ps.negative[n]) for n in names])
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(100, 4, generator=g) < 0.5).float()
    img = F.normalize(y @ pos + (1 - y) @ neg + 0.5 * torch.randn(100, D, generator=g), dim=-1)
    auc = auroc_per_label(zeroshot_classify(enc, img, names, ps, 10.0).double().numpy(), y.double().numpy())
    assert np.all(auc > 0.9)


def test_classify_missing_label_raises_naming_it():
    ps = PromptSet.default()
    del ps.negative["Fracture"]
    with pytest.raises(ValueError, match="Fracture"):
        zeroshot_classify(FakeEncoder(), unit(3, 0), ["Edema", "Fracture"], ps, 1.0)
