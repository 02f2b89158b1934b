"""transformers CLIP-style models through load_model, checked against the model's own get_image_features /
get_text_features on its processor's and tokenizer's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.inference.adapters import load_model
from cxr_vlp.inference.adapters.hf_clip import HFClipModel
from tests import adapter_models as am

TEXTS = ["small left pleural effusion", "no pneumothorax", "there is a right lower lobe pneumonia and edema"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return am.hf_clip_folder(tmp_path_factory.mktemp("hf_clip") / "clip")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(rng.random((48, 40)) * 255).astype(np.uint8), (rng.random((33, 70)) * 255).astype(np.uint8)]


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_embeddings_equal_the_model_own_features(folder: Path) -> None:
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    adapter = load_model(folder)
    assert isinstance(adapter, HFClipModel) and not adapter.probabilistic
    model = CLIPModel.from_pretrained(str(folder)).eval()
    processor = AutoImageProcessor.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.no_grad():
        pixels = processor(images=[Image.fromarray(i).convert("RGB") for i in _images()], return_tensors="pt")[
            "pixel_values"
        ]
        ref_image = F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
        tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
        ref_text = F.normalize(
            _features(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])),
            dim=-1,
        )
        pooled = model.vision_model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(adapter.encode_images(_images()), ref_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter.encode_texts(TEXTS), ref_text, rtol=1e-5, atol=1e-5)
    enc = adapter.encode_pixels(adapter.preprocess(_images()))
    torch.testing.assert_close(enc.features, pooled, rtol=1e-5, atol=1e-5)  # before visual_projection
    assert adapter.zero_shot_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    assert adapter.max_length == 24  # the text tower's position limit


def test_long_texts_are_truncated_to_the_position_limit(folder: Path) -> None:
    adapter = load_model(folder)
    long = " ".join(am.TEXTS * 5)
    assert adapter.tokens([long])["input_ids"].shape[1] == 24
    assert adapter.encode_texts([long]).shape == (1, 16)


def test_scores_and_zero_shot(folder: Path) -> None:
    adapter = load_model(folder)
    sims = adapter.similarity(_images(), TEXTS)
    torch.testing.assert_close(sims, adapter.scale * adapter.encode_images(_images()) @ adapter.encode_texts(TEXTS).T)
    probs = adapter.zero_shot(_images(), labels=["Edema"])
    assert probs.shape == (2, 1) and probs.notna().all().all()
    top = adapter.retrieve(TEXTS[:1], adapter.gallery(_images(), ids=["a", "b"]), k=2)
    assert list(top["rank"]) == [1, 2] and set(top["item"]) == {"a", "b"}


def test_a_model_without_image_features_is_refused(folder: Path) -> None:
    from transformers import BertConfig, BertModel

    with pytest.raises(TypeError, match="has no get_image_features"):
        HFClipModel(
            BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)),
            None,
            None,
            name="bert",
        )
