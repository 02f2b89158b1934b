"""Towers, tokenizer, offline hub behaviour, schedule and evaluation helpers of the module."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from cxr_vlp.data import tokenizer as tokenizer_module
from cxr_vlp.data.tokenizer import (
    build_tokenizer,
    cached_wordpiece,
    tokenizer_from_json,
    tokenizer_to_json,
    train_wordpiece,
)
from cxr_vlp.lit.module import _first_occurrence
from cxr_vlp.lit.schedule import cosine_with_warmup, resolve_warmup
from cxr_vlp.models.dual_encoder import DualEncoder
from cxr_vlp.models.image_encoder import ImageEncoder
from cxr_vlp.models.text_encoder import TextEncoder
from cxr_vlp.utils.hub import ModelNotAvailableError, resolve_hf_model

REPORTS = [
    "Small left pleural effusion. No pneumothorax.",
    "The heart is enlarged. Mild pulmonary edema.",
    "No acute cardiopulmonary process. Lungs are clear.",
    "Endotracheal tube terminates 4 cm above the carina.",
] * 5


def test_wordpiece_tokenizer_round_trips_through_json() -> None:
    # The tokenizer travels in checkpoints as JSON: what is loaded tokenises exactly as what was saved.
    a = train_wordpiece(REPORTS, vocab_size=200, min_frequency=1)
    assert len(a) <= 200
    restored = tokenizer_from_json(tokenizer_to_json(a))
    enc = a(["small left pleural effusion"], return_token_type_ids=False)
    assert enc["input_ids"] == restored(["small left pleural effusion"])["input_ids"]
    ids = enc["input_ids"][0]
    assert ids[0] == a.cls_token_id and ids[-1] == a.sep_token_id and a.pad_token_id == 0
    assert "token_type_ids" not in enc
    assert a.decode(ids, skip_special_tokens=True) == "small left pleural effusion"


def test_build_tokenizer_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="training report texts"):
        build_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tokenizer("sentencepiece", train_texts=REPORTS)
    local = train_wordpiece(REPORTS, vocab_size=200, min_frequency=1)
    local.save_pretrained(tmp_path / "tok")
    loaded = build_tokenizer("pretrained", name_or_path=str(tmp_path / "tok"))
    assert loaded("no pneumothorax")["input_ids"] == local("no pneumothorax")["input_ids"]


def test_cached_wordpiece_is_trained_once_per_texts_and_settings(tmp_path: Path) -> None:
    """The cache trains once per training split and settings, and never overwrites a tokenizer another job saved
    first."""
    texts = [
        f"{a} {b} {c}."
        for a in ("small", "large", "mild")
        for b in ("left", "right", "bilateral")
        for c in ("effusion", "opacity", "atelectasis", "pneumothorax", "consolidation")
    ] * 3
    first = cached_wordpiece(texts, tmp_path, vocab_size=80, min_frequency=1)
    files = sorted(tmp_path.glob("wordpiece_*.json"))
    assert len(files) == 1
    for _ in range(3):  # later runs load the saved vocabulary, ids included
        assert cached_wordpiece(texts, tmp_path, vocab_size=80, min_frequency=1).get_vocab() == first.get_vocab()
    assert tokenizer_from_json(files[0].read_text()).get_vocab() == first.get_vocab()
    # other settings or other training texts: another tokenizer file
    cached_wordpiece(texts, tmp_path, vocab_size=90, min_frequency=1)
    cached_wordpiece(texts[:-1], tmp_path, vocab_size=80, min_frequency=1)
    assert len(list(tmp_path.glob("wordpiece_*.json"))) == 3
    # a tokenizer saved by a concurrent job in between is what this job uses (first link wins, nothing overwritten)
    other = tmp_path / "other"
    theirs = train_wordpiece(["completely different words here"] * 3, vocab_size=60, min_frequency=1)
    real_train = tokenizer_module.train_wordpiece

    def racing_train(*args, **kwargs):
        (other / files[0].name).write_text(tokenizer_to_json(theirs))
        return real_train(*args, **kwargs)

    other.mkdir()
    tokenizer_module.train_wordpiece = racing_train
    try:
        got = cached_wordpiece(texts, other, vocab_size=80, min_frequency=1)
    finally:
        tokenizer_module.train_wordpiece = real_train
    assert got.get_vocab() == theirs.get_vocab()
    assert [p.name for p in other.iterdir()] == [files[0].name]  # no temp file left behind


def _tiny_bert_dir(tmp_path: Path) -> Path:
    cfg = BertConfig(vocab_size=200, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    path = tmp_path / "tiny-bert"
    BertModel(cfg).save_pretrained(path)
    return path


def test_text_encoder_local_dir_pretrained_weights_and_pooling(tmp_path: Path) -> None:
    path = _tiny_bert_dir(tmp_path)
    saved = BertModel.from_pretrained(path)
    enc = TextEncoder(name_or_path=str(path), pretrained=True, pooling="mean")
    torch.testing.assert_close(enc.model.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)
    assert enc.model.pooler is None  # no parameters left without gradients under DDP
    fresh = TextEncoder(name_or_path=str(path), pretrained=False)
    assert not torch.equal(fresh.model.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)
    # mean pooling ignores padding: changing padded token ids does not change the output
    enc.eval()
    ids = torch.tensor([[2, 10, 11, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    other = ids.clone()
    other[0, 4:] = 57
    torch.testing.assert_close(enc(ids, mask), enc(other, mask))
    assert enc(ids, mask).shape == (1, 16)


def test_text_encoder_local_bert_and_errors() -> None:
    enc = TextEncoder(
        name_or_path=None,
        vocab_size=300,
        local_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    )
    assert enc.num_features == 32 and enc.model.config.vocab_size == 300
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(name_or_path=None)
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(name_or_path=None, vocab_size=10, pooling="max")


def test_uncached_hub_name_fails_fast_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_hf_model("emilyalsentzer/Bio_ClinicalBERT")
    message = str(err.value)
    assert "emilyalsentzer/Bio_ClinicalBERT" in message and "hf download" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(ModelNotAvailableError):
        TextEncoder(name_or_path="emilyalsentzer/Bio_ClinicalBERT")
    with pytest.raises(ModelNotAvailableError, match="resnet18"):
        ImageEncoder("resnet18", pretrained=True)


def test_image_encoder_local_checkpoint_and_grayscale(tmp_path: Path) -> None:
    source = ImageEncoder("resnet10t", pretrained=False, in_chans=1)
    weights = tmp_path / "resnet10t.pth"
    torch.save(source.model.state_dict(), weights)
    loaded = ImageEncoder("resnet10t", in_chans=1, checkpoint_path=str(weights))
    for (name, a), (_, b) in zip(source.model.state_dict().items(), loaded.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    out = loaded(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, loaded.num_features)


def test_dual_encoder_outputs_unit_vectors() -> None:
    model = DualEncoder(
        ImageEncoder("resnet10t", in_chans=1),
        TextEncoder(
            vocab_size=50,
            local_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        ),
        embed_dim=24,
        projection="mlp",
    )
    img_out = model.encode_image(torch.randn(3, 1, 32, 32))
    txt_out = model.encode_text(torch.randint(5, 50, (3, 7)), torch.ones(3, 7, dtype=torch.long))
    assert img_out.logvar is None and txt_out.logvar is None
    assert img_out.features.shape == (3, model.image_encoder.num_features)
    img, txt = img_out.embedding, txt_out.embedding
    assert img.shape == txt.shape == (3, 24)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))


def test_cosine_with_warmup_schedule() -> None:
    total, warm = 100, 10
    values = [cosine_with_warmup(s, warm, total, min_lr_ratio=0.1) for s in range(total + 5)]
    assert values[0] == pytest.approx(1 / 11) and values[9] == pytest.approx(10 / 11)
    assert all(a < b for a, b in zip(values[:warm], values[1:warm]))  # warm-up increases
    assert values[warm] == pytest.approx(1.0)
    mid = warm + (total - warm) // 2
    assert values[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[total] == pytest.approx(0.1) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1 :]))  # decay never increases
    assert resolve_warmup(0.05, 200) == 10 and resolve_warmup(7, 200) == 7
    with pytest.raises(ValueError):
        resolve_warmup(-1, 10)


def test_first_occurrence_drops_distributed_sampler_padding() -> None:
    index = torch.tensor([4, 0, 2, 1, 3, 4, 0])  # rank-interleaved with two padded repeats
    first = _first_occurrence(index)
    assert index[first].tolist() == [0, 1, 2, 3, 4]
    assert first.tolist() == [1, 3, 2, 4, 0]
