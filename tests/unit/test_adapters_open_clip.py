"""open_clip models through load_model: folders (safetensors / .bin, built-in and Hugging Face text towers), an
OpenAI-layout state dict (architecture inferred or named), each checked against open_clip's own encode_image /
encode_text on the same input; hub ids that are not cached fail clearly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.inference.adapters import load_model
from cxr_vlp.inference.adapters.open_clip import OpenClipModel
from cxr_vlp.utils.hub import ModelNotAvailableError
from tests import adapter_models as am

TEXTS = ["small left pleural effusion", "no pneumothorax", "the heart is enlarged"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("open_clip_models")
    return {
        "folder": am.open_clip_folder(root / "oc"),
        "bin": am.open_clip_folder(root / "oc_bin", safetensors=False),
        "other_seed": am.open_clip_folder(root / "oc_seed", seed=7),
        "hf_text": am.open_clip_hf_text_folder(root / "oc_hf"),
        "openai": am.openai_state_dict_file(root / "openai" / "clip_weights.pt"),
    }


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((50, 40)) * 255).astype(np.uint8), (rng.random((37, 61)) * 255).astype(np.uint8)]


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image).convert("RGB")


def _reference(model, preprocess, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's own path: its preprocess on PIL RGB images, encode_image / encode_text, then L2 normalisation."""
    model = model.float().eval()
    with torch.no_grad():
        pixels = torch.stack([preprocess(_pil(i)) for i in _images()])
        return (
            F.normalize(model.encode_image(pixels), dim=-1),
            F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1),
        )


def _check_against(adapter: OpenClipModel, ref_image: torch.Tensor, ref_text: torch.Tensor) -> None:
    torch.testing.assert_close(adapter.encode_images(_images()), ref_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter.encode_texts(TEXTS), ref_text, rtol=1e-5, atol=1e-5)
    norms = adapter.encode_images(_images()).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("which", ["folder", "bin"])
def test_folder_equals_open_clip_own_path(models: dict[str, Path], which: str) -> None:
    import open_clip

    adapter = load_model(models[which])
    assert isinstance(adapter, OpenClipModel) and not adapter.probabilistic
    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{models[which]}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{models[which]}")
    _check_against(adapter, *_reference(ref, preprocess, tokenizer))
    assert adapter.zero_shot_scale == pytest.approx(float(np.exp(2.5)), rel=1e-6)
    assert adapter.context_length == am.TINY_OPEN_CLIP["text_cfg"]["context_length"]
    assert adapter.tokens(TEXTS).shape == (3, 16)
    # the model's own normalisation (mean 0.5, std 0.25), not ours: a mid-grey image maps to 0
    grey = adapter.preprocess([np.full((40, 40), 128, np.uint8)])
    assert grey.shape == (1, 3, 32, 32) and grey.abs().max() < 0.02


def test_features_are_the_pooled_image_features_before_the_projection(models: dict[str, Path]) -> None:
    adapter = load_model(models["folder"])
    enc = adapter.encode_pixels(adapter.preprocess(_images()))
    width = am.TINY_OPEN_CLIP["vision_cfg"]["width"]
    assert enc.features.shape == (2, width) and enc.embeddings.mean.shape == (2, am.TINY_OPEN_CLIP["embed_dim"])
    projected = F.normalize(enc.features @ adapter.model.visual.proj.detach(), dim=-1)
    torch.testing.assert_close(projected, enc.embeddings.mean, rtol=1e-5, atol=1e-5)


def test_scores_are_scaled_cosines(models: dict[str, Path]) -> None:
    adapter = load_model(models["folder"])
    images, texts = adapter.encode_images(_images()), adapter.encode_texts(TEXTS)
    torch.testing.assert_close(adapter.similarity(_images(), TEXTS), adapter.scale * images @ texts.T)
    probs = adapter.zero_shot(_images(), labels=["Pneumonia", "Cardiomegaly"])
    assert probs.shape == (2, 2) and ((probs > 0) & (probs < 1)).all().all()


def test_fingerprint_follows_the_weights(models: dict[str, Path]) -> None:
    same = [load_model(models[k]).fingerprint for k in ("folder", "bin")]
    assert same[0] == same[1] != load_model(models["other_seed"]).fingerprint


def test_hf_text_tower_and_its_tokenizer(models: dict[str, Path]) -> None:
    """BiomedCLIP's layout: CustomTextCLIP with a Hugging Face BERT and its tokenizer, at the config's length."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    folder = models["hf_text"]
    adapter = load_model(folder)
    assert isinstance(adapter.tokenizer, HFTokenizer) and adapter.tokens(TEXTS).shape == (3, 12)
    config = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = HFTokenizer(config["hf_tokenizer_name"], context_length=12)
    _check_against(adapter, *_reference(ref, preprocess, tokenizer))


def test_openai_state_dict_inferred_or_named(models: dict[str, Path], tmp_path: Path) -> None:
    """CheXzero's format: an OpenAI-layout state dict, read off its shapes or through a named open_clip config."""
    import open_clip

    path = models["openai"]
    inferred = load_model(path)
    cfg = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }
    ref = open_clip.CLIP(**cfg)
    ref.load_state_dict(torch.load(path, weights_only=True))
    preprocess = open_clip.image_transform(32, is_train=False)  # OpenAI mean / std, bicubic, centre crop
    ref_image, ref_text = _reference(ref, preprocess, open_clip.SimpleTokenizer(context_length=16))
    _check_against(inferred, ref_image, ref_text)
    assert inferred.context_length == 16

    (tmp_path / "TinyOpenAI.json").write_text(json.dumps({**cfg, "quick_gelu": False}))
    open_clip.add_model_config(tmp_path / "TinyOpenAI.json")
    named = load_model(path, arch="TinyOpenAI")  # QuickGELU forced: OpenAI-layout weights
    _check_against(named, ref_image, ref_text)
    gelu = load_model(path, arch="TinyOpenAI", quick_gelu=False)
    assert not torch.allclose(gelu.encode_images(_images()), ref_image, atol=1e-4)


def test_transform_pickles_for_loader_workers(models: dict[str, Path]) -> None:
    adapter = load_model(models["folder"])
    again = pickle.loads(pickle.dumps(adapter.image_transform))
    image = _images()[0]
    torch.testing.assert_close(again(image=image)["image"], adapter.image_transform(image=image)["image"])


def test_what_is_not_a_model_fails_naming_it(models: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, bare)
    with pytest.raises(ValueError, match=r"plain\.pt: not an OpenAI-layout CLIP state dict.*arch="):
        load_model(bare)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is not a model folder"):
        load_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a model this version can load"):
        load_model(str(tmp_path / "no" / "such" / "thing"))
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "open_clip_config.json").write_text((models["folder"] / "open_clip_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model(weightless)
    with pytest.raises(ValueError, match=r"apply to open_clip models only"):
        load_model(str(tmp_path / "x.ckpt"), arch="ViT-B-32")


@pytest.mark.parametrize("spec", ["hf-hub:cxr-vlp-tests/not-cached-anywhere", "cxr-vlp-tests/not-cached-anywhere"])
def test_uncached_hub_id_is_a_clear_error(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"cxr-vlp-tests/not-cached-anywhere.*hf download"):
        load_model(spec)


def test_uncached_text_tower_named_by_the_config_is_a_clear_error(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BiomedCLIP's config names PubMedBERT by hub id: when that is not cached, the error names it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "hub_text"
    folder.mkdir()
    config = json.loads((models["hf_text"] / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = "cxr-vlp-tests/uncached-bert"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    (folder / "open_clip_pytorch_model.bin").write_bytes(
        (models["hf_text"] / "open_clip_pytorch_model.bin").read_bytes()
    )
    with pytest.raises(ModelNotAvailableError, match=r"text tower of .*cxr-vlp-tests/uncached-bert"):
        load_model(folder)
