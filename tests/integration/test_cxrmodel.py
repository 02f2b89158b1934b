"""CXRModel on checkpoints of short trainings through the real configs: the eval suite's embeddings, the folder
round trip (bit-identical, offline), the model card, refused folders, the push path, head-specific methods and the
README example run verbatim."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from cxr_vlp import CXRModel
from cxr_vlp.data.dataset import choose_image_indices
from cxr_vlp.data.transforms import load_grayscale
from cxr_vlp.eval.embed import embed_split
from cxr_vlp.inference import Gallery, UnsupportedByModel
from cxr_vlp.inference.hub_io import FolderRefused
from cxr_vlp.inference.payload import split_fingerprint
from cxr_vlp.utils.hub import ModelNotAvailableError
from tests.conftest import REPO_ROOT
from tests.integration.hydra_helpers import train_tiny_checkpoint

pytestmark = pytest.mark.slow

# a test split and the zero-shot task of the evaluation suite: metrics.json then holds validation-fitted thresholds
WITH_ZEROSHOT = [
    "test=true",
    "trainer.limit_test_batches=1",
    "evaluation.tasks=[zeroshot]",
    "evaluation.bootstrap.n_resamples=10",
    "evaluation.figures=false",
    "evaluation.device=cpu",
]
README_CKPT = "logs/demo/runs/<time>/checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def clip_ckpt(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("clip_run"), "demo", WITH_ZEROSHOT)


@pytest.fixture(scope="module")
def clip_model(clip_ckpt: Path) -> CXRModel:
    return CXRModel.from_checkpoint(clip_ckpt)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> dict[str, Path]:
    """One chest image of the tiny set as 8-bit PNG / JPEG and 16-bit PNG files of odd sizes."""
    out = tmp_path_factory.mktemp("odd_images")
    base = load_grayscale(str(sorted(tiny_dataset.parent.glob("images/*/*/*.jpg"))[0]))
    files = {}
    big = cv2.resize(base, (97, 131), interpolation=cv2.INTER_CUBIC)
    files["png8"] = out / "a8.png"
    cv2.imwrite(str(files["png8"]), big)
    files["jpg8"] = out / "b8.jpg"
    cv2.imwrite(str(files["jpg8"]), cv2.resize(base, (211, 53)))
    files["png16"] = out / "c16.png"
    cv2.imwrite(str(files["png16"]), (cv2.resize(base, (73, 89)).astype(np.uint16) * 257 + 113).astype(np.uint16))
    return files


def _images(tiny_dataset: Path, n: int = 4) -> list[Path]:
    return sorted(tiny_dataset.parent.glob("images/*/*/*.jpg"))[:n]


# ------------------------------------------------------------------ preprocessing as in the evaluation suite
def test_encode_images_equals_the_eval_suite_embedding_of_the_test_split(clip_ckpt: Path, clip_model: CXRModel) -> None:
    data_cfg = clip_model.payload.record.data
    datamodule = instantiate(OmegaConf.create(data_cfg), tokenizer=None)
    datamodule.use_tokenizer(clip_model.tokenizer)
    datamodule.setup("test")
    suite = embed_split(clip_model, datamodule, "test")
    with torch.no_grad():  # the validation path of training: the data module's loader, the module's image tower
        validation = torch.cat(
            [
                clip_model.module.encoder.encode_image(batch.images[:, 0]).embedding
                for batch in datamodule.test_dataloader()
            ]
        )
    torch.testing.assert_close(suite.image, validation, atol=1e-6, rtol=0)
    table = datamodule.tables["test"]
    rng = np.random.default_rng(0)
    paths = [
        table.image_paths[i][choose_image_indices(table.view_names[i], 1, False, rng)[0]] for i in range(len(table))
    ]
    ours = clip_model.encode_images(paths)
    assert ours.shape == suite.image.shape and len(paths) >= 2
    torch.testing.assert_close(ours, suite.image, atol=1e-6, rtol=0)


def test_odd_sizes_and_bit_depths_are_preprocessed_as_in_training(
    clip_model: CXRModel, clip_ckpt: Path, odd_images: dict[str, Path]
) -> None:
    """Files, arrays and PIL images of 8 / 16 bits and odd sizes give the embedding of the eval pipeline (the data
    module's evaluation transform on the image as the dataset reads it)."""
    data_cfg = clip_model.payload.record.data
    datamodule = instantiate(OmegaConf.create(data_cfg), tokenizer=None)
    datamodule.use_tokenizer(clip_model.tokenizer)
    datamodule.setup("test")
    transform = datamodule.datasets["test"].transform
    paths = list(odd_images.values())
    with torch.no_grad():
        x = torch.stack([transform(image=datamodule.datasets["test"]._load(str(p)))["image"] for p in paths])
        expected = clip_model.module.encoder.encode_image(x).embedding
    size = int(data_cfg["transforms"]["image_size"])
    assert x.shape[-2:] == (size, size)
    torch.testing.assert_close(clip_model.encode_images(paths), expected, atol=1e-6, rtol=0)
    raw16 = cv2.imread(str(odd_images["png16"]), cv2.IMREAD_UNCHANGED)
    assert raw16.dtype == np.uint16
    from_array = clip_model.encode_images([raw16, Image.open(odd_images["png16"])])
    assert torch.equal(from_array[0], from_array[1])
    torch.testing.assert_close(from_array[0], expected[2], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ the exported folder
def test_round_trip_is_bit_identical_and_loads_offline(
    clip_model: CXRModel,
    tiny_dataset: Path,
    tmp_path: Path,
    odd_images: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = clip_model.save_pretrained(tmp_path / "export")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not [n for n in names if Path(n).suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = CXRModel.from_pretrained(folder)
    images = [*_images(tiny_dataset), *odd_images.values()]
    texts = ["no acute cardiopulmonary process", "there is a large left pleural effusion"]
    assert torch.equal(loaded.encode_images(images), clip_model.encode_images(images))
    assert torch.equal(loaded.encode_texts(texts), clip_model.encode_texts(texts))
    assert torch.equal(loaded.similarity(images, texts), clip_model.similarity(images, texts))
    a, b = clip_model.zero_shot(images), loaded.zero_shot(images)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a.attrs["thresholds"] == b.attrs["thresholds"] and len(a.attrs["thresholds"]) == 14
    assert ((a >= 0) & (a <= 1)).all().all()
    state_a, state_b = clip_model.module.state_dict(), loaded.module.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_model_card_has_use_data_split_metrics_and_no_patient_content(
    clip_model: CXRModel, clip_ckpt: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard

    folder = clip_model.save_pretrained(tmp_path / "export", repo_id="someone/cxr-demo")
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "cxr_vlp" and "research-only" in card.data.tags
    text = card.text
    assert "Research only" in text and "clinical decision" in text and "someone/cxr-demo" in text
    assert clip_model.payload.training_data["name"] in text and "openly available" in text
    assert split_fingerprint(clip_ckpt.parents[1] / "split.json") in text
    assert "eval/zeroshot/auroc_mean" in text and "thresholds are stored for 14 labels" in text
    config = (folder / "config.json").read_text()
    studies = pd.read_csv(tiny_dataset)
    everything = (folder / "README.md").read_text() + config
    assert str(tiny_dataset.parent) not in everything and str(clip_ckpt.parents[1]) not in everything
    for column in ("study_id", "subject_id"):
        assert not [v for v in studies[column].astype(str) if re.search(rf"\b{re.escape(v)}\b", everything)]
    for column in ("findings", "impression"):
        sentences = {s.strip() for t in studies[column].dropna() for s in str(t).split(".") if len(s.strip()) > 25}
        assert not [s for s in sentences if s in everything]


def test_unknown_hub_id_offline_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="not in the Hugging Face cache"):
        CXRModel.from_pretrained("nobody-here/no-such-cxr-model")


def test_push_to_hub_uploads_the_exported_folder(clip_model: CXRModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    calls: dict[str, object] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload"] = {
            "repo_id": repo_id,
            "files": sorted(p.name for p in folder.iterdir()),
            "card": (folder / "README.md").read_text(),
            "config": json.loads((folder / "config.json").read_text()),
        }
        return "commit-oid"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert clip_model.push_to_hub("someone/cxr-demo", private=True) == "commit-oid"
    assert calls["create"] == ("someone/cxr-demo", {"repo_type": "model", "private": True, "exist_ok": True})
    up = calls["upload"]
    assert up["repo_id"] == "someone/cxr-demo"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(up["files"])
    assert "someone/cxr-demo" in up["card"] and up["config"]["format"] == "cxr_vlp"


def _tamper(folder: Path, how: str) -> str:
    """Change an exported folder; returns a pattern the refusal message must match."""
    config_path = folder / "config.json"
    if how == "bin":
        torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
        return "pytorch_model.bin: a pickle-format file"
    if how == "disguised_pickle":
        import pickle

        (folder / "notes.txt").write_bytes(pickle.dumps({"a": 1}))
        return "notes.txt: a pickle-format file"
    if how == "target":
        config = json.loads(config_path.read_text())
        config["hyper_parameters"]["loss"]["_target_"] = "os.system"
        config_path.write_text(json.dumps(config))
        return r"hyper_parameters.loss._target_ = 'os.system' is outside cxr_vlp"
    if how == "weights":
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        key = next(iter(state))
        state[key] = state[key] + 1
        save_file(state, str(folder / "model.safetensors"))
        return "model.safetensors: sha256 .* differs"
    if how == "format":
        config = json.loads(config_path.read_text())
        config["format_version"] = 99
        config_path.write_text(json.dumps(config))
        return "format_version 99 is not supported"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["bin", "disguised_pickle", "target", "weights", "format"])
def test_refuses_unsafe_or_tampered_folders(clip_model: CXRModel, tmp_path: Path, how: str) -> None:
    folder = clip_model.save_pretrained(tmp_path / "export")
    pattern = _tamper(folder, how)
    with pytest.raises(FolderRefused, match=pattern):
        CXRModel.from_pretrained(folder)


# ------------------------------------------------------------------ retrieval, explanations, head-specific calls
def test_retrieve_both_ways_with_a_saved_gallery(clip_model: CXRModel, tiny_dataset: Path, tmp_path: Path) -> None:
    images = _images(tiny_dataset)
    texts = ["no acute cardiopulmonary process", "there is a large left pleural effusion", "cardiomegaly"]
    path = clip_model.gallery(images).save(tmp_path / "images.safetensors")
    gallery = Gallery.load(path)
    assert gallery.modality == "image" and gallery.ids == [str(p) for p in images]
    sim = clip_model.similarity(images, texts)
    t2i = clip_model.retrieve(texts, gallery, k=2)
    assert list(t2i.columns) == ["query", "rank", "item", "score"] and len(t2i) == 2 * len(texts)
    top = t2i[t2i["rank"] == 1]
    assert list(top["item"]) == [str(images[int(j)]) for j in sim.argmax(dim=0)]
    np.testing.assert_allclose(top["score"].to_numpy(), sim.max(dim=0).values.numpy(), rtol=1e-6)
    i2t = clip_model.retrieve(images, clip_model.gallery(texts), k=1)
    assert list(i2t["item"]) == [texts[int(j)] for j in sim.argmax(dim=1)]


def test_explain_gives_a_heat_map_and_an_overlay(clip_model: CXRModel, odd_images: dict[str, Path]) -> None:
    size = clip_model.transform_config.image_size
    for target in ("Cardiomegaly", "a small right pleural effusion"):
        cam = clip_model.explain(odd_images["png16"], target)
        assert cam.heatmap.shape == (size, size) and cam.heatmap.dtype == np.float32
        assert 0.0 <= cam.heatmap.min() and cam.heatmap.max() <= 1.0 and np.isfinite(cam.heatmap).all()
        assert cam.overlay.size == (size, size) and cam.overlay.mode == "RGB" and cam.target == target


def test_bf16_embeddings_are_close_to_float32(clip_model: CXRModel, tiny_dataset: Path, clip_ckpt: Path) -> None:
    bf16 = CXRModel.from_checkpoint(clip_ckpt, dtype=torch.bfloat16, batch_size=3)
    images = _images(tiny_dataset)
    a, b = clip_model.encode_images(images), bf16.encode_images(images)
    assert b.dtype == torch.float32 and (a * b).sum(dim=1).min() > 0.99


def test_methods_a_clip_head_lacks_name_the_head(clip_model: CXRModel, tiny_dataset: Path) -> None:
    image = _images(tiny_dataset, 1)[0]
    for call in (
        lambda: clip_model.concepts(image),
        lambda: clip_model.uncertainty([image]),
        lambda: clip_model.generate_report(image),
    ):
        with pytest.raises(UnsupportedByModel, match="ClipHead"):
            call()
    with pytest.raises(ValueError, match="no prompts for label"):
        clip_model.zero_shot(image, labels=["Dextrocardia"])
    prompts = {"Dextrocardia": {"positive": ["dextrocardia"], "negative": ["normal heart"]}}
    custom = clip_model.zero_shot(image, labels=["Dextrocardia"], prompts=prompts)
    assert list(custom.columns) == ["Dextrocardia"] and custom.attrs["thresholds"] == {}


@pytest.mark.parametrize("experiment", ["probclip_vib_demo", "clear_demo"])
def test_head_specific_methods_and_their_round_trip(experiment: str, tiny_dataset: Path, tmp_path: Path) -> None:
    model = CXRModel.from_checkpoint(train_tiny_checkpoint(tiny_dataset, tmp_path / "run", experiment))
    loaded = CXRModel.from_pretrained(model.save_pretrained(tmp_path / "export"))
    images = _images(tiny_dataset, 3)
    assert torch.equal(model.similarity(images, ["cardiomegaly"]), loaded.similarity(images, ["cardiomegaly"]))
    if experiment == "probclip_vib_demo":
        unc = model.uncertainty(images)
        assert unc.shape == (3,) and (unc > 0).all() and torch.equal(unc, loaded.uncertainty(images))
        assert model.uncertainty(["no acute findings", "effusion"]).shape == (2,)
        enc = model.module.encoder.encode_image(model.preprocess(images)).embeddings
        head_scores = model.module.loss_head.similarity(
            enc, model.module.encoder.encode_text(*model._tokens(["cardiomegaly"])).embeddings
        )
        torch.testing.assert_close(model.similarity(images, ["cardiomegaly"]), head_scores.detach(), atol=1e-5, rtol=0)
        with pytest.raises(UnsupportedByModel, match="ProbClipHead"):
            model.concepts(images[0])
    else:
        top = model.concepts(images[0], top=5)
        assert list(top.columns) == ["concept", "score"] and len(top) == 5
        assert top["score"].is_monotonic_decreasing and set(top["concept"]) <= set(model.module.loss_head.concept_names)
        pd.testing.assert_frame_equal(top, loaded.concepts(images[0], top=5), check_exact=True)
        with pytest.raises(UnsupportedByModel, match="ClearHead"):
            model.uncertainty(images)


def test_report_generation_checkpoint(clip_ckpt: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    rg = [
        "test=false",
        f"pretrained_ckpt={clip_ckpt}",
        "reportgen.generation.max_new_tokens=8",
        "reportgen.generation.num_beams=1",
        "reportgen.decoder.local_config.hidden_size=32",
        "reportgen.decoder.local_config.intermediate_size=64",
        "reportgen.decoder.local_config.num_hidden_layers=1",
    ]
    model = CXRModel.from_checkpoint(train_tiny_checkpoint(tiny_dataset, tmp_path / "run", "reportgen_demo", rg))
    images = _images(tiny_dataset, 2)
    reports = model.generate_report(images)
    assert len(reports) == 2 and all(isinstance(r.report, str) for r in reports)
    loaded = CXRModel.from_pretrained(model.save_pretrained(tmp_path / "export"))
    assert [r.report for r in loaded.generate_report(images)] == [r.report for r in reports]
    with pytest.raises(UnsupportedByModel, match="ReportGenModule"):
        model.encode_images(images)


# ------------------------------------------------------------------ the README example
def readme_python_example() -> str:
    """The first ``python`` block of the README's "Python API" section, as written."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_example_runs_verbatim(clip_ckpt: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    code = readme_python_example()
    assert README_CKPT in code and len(code.strip().splitlines()) <= 12
    shutil.copy(_images(tiny_dataset, 1)[0], tmp_path / "cxr.jpg")
    second = load_grayscale(str(_images(tiny_dataset, 3)[2]))
    cv2.imwrite(str(tmp_path / "cxr2.png"), second.astype(np.uint16) * 257)  # a 16-bit PNG
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", code.replace(README_CKPT, str(clip_ckpt))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    print(res.stdout)
    assert "torch.Size([2," in res.stdout and "Cardiomegaly" in res.stdout and "rank" in res.stdout
    assert (tmp_path / "cxr_cardiomegaly.png").is_file()
