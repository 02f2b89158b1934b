"""CLEAR concept-projection loss: formula vs a loop transcription, the hashing embedder, the head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.concepts import embeddings as emb_mod
from cxr_vlp.concepts.bank import ConceptBankError, load_concept_bank
from cxr_vlp.losses import clear_head as clear_mod
from cxr_vlp.losses.clear_head import ClearHead, clear_loss, validate_embedder
from cxr_vlp.losses.functional import multi_view_clip_loss
from cxr_vlp.losses.heads import ClipHead, HeadSpec
from cxr_vlp.utils.hub import ModelNotAvailableError

CONCEPTS = ["pleural effusion", "small pleural effusion", "chest tube", "clear lungs", "enlarged cardiac silhouette"]


# --------------------------------------------------------------------------- loop transcription
def _norm(v: list) -> list:
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def _dot(a: list, b: list):
    return sum(x * y for x, y in zip(a, b))


def _rows(m: torch.Tensor) -> list[list]:
    return [[m[i, j] for j in range(m.shape[1])] for i in range(m.shape[0])]


def _ce(queries: list[list], keys: list[list], s) -> torch.Tensor:
    """mean_i −log( exp(s q_i·k_i) / Σ_j exp(s q_i·k_j) ), written out."""
    total = 0.0
    for i, q in enumerate(queries):
        logits = [s * _dot(q, k) for k in keys]
        total = total + (-logits[i] + torch.log(sum(torch.exp(x) for x in logits)))
    return total / len(queries)


def _sym(a: list[list], b: list[list], s) -> torch.Tensor:
    return 0.5 * (_ce(a, b, s) + _ce(b, a, s))


def _project(view: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> list[list]:
    """z_b = normalise(Σ_k (f̂_b · ĉ_k) E_k) for every row b."""
    cs = [_norm(r) for r in _rows(c)]
    er = _rows(e)
    out = []
    for f in (_norm(r) for r in _rows(view)):
        s = [_dot(f, ck) for ck in cs]
        out.append(_norm([sum(s[k] * er[k][j] for k in range(len(cs))) for j in range(e.shape[1])]))
    return out


def loop_clear(imgs, txts, c, e, s_clip, s_con, w_clip, w_concept, w_i2i, w_t2t) -> torch.Tensor:
    iv = [[_norm(r) for r in _rows(x)] for x in imgs]
    tv = [[_norm(r) for r in _rows(x)] for x in txts]
    pairs = [(i, t) for i in range(len(iv)) for t in range(len(tv))]
    clip = sum(_sym(iv[i], tv[t], s_clip) for i, t in pairs) / len(pairs)
    if len(iv) >= 2:
        clip = clip + w_i2i * _sym(iv[0], iv[1], s_clip)
    if len(tv) >= 2:
        clip = clip + w_t2t * _sym(tv[0], tv[1], s_clip)
    zi = [_project(x, c, e) for x in imgs]
    zt = [_project(x, c, e) for x in txts]
    concept = sum(_sym(zi[i], zt[t], s_con) for i, t in pairs) / len(pairs)
    return w_clip * clip + w_concept * concept


def _inputs(views: int, b: int = 4, d: int = 3, k: int = 5, e: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    imgs = [leaf(b, d) for _ in range(views)]
    txts = [leaf(b, d) for _ in range(views)]
    return (
        imgs,
        txts,
        leaf(k, d),
        leaf(k, e),
        torch.tensor(7.0, dtype=torch.float64, requires_grad=True),
        torch.tensor(4.0, dtype=torch.float64, requires_grad=True),
    )


@pytest.mark.parametrize("views,w_i2i,w_t2t,w_clip,w_concept", [(1, 0.0, 0.0, 1.0, 1.0), (2, 1.0, 0.5, 0.3, 1.7)])
def test_clear_loss_matches_loop_transcription(views, w_i2i, w_t2t, w_clip, w_concept):
    imgs, txts, c, e, s_clip, s_con = _inputs(views)
    leaves = [*imgs, *txts, c, e, s_clip, s_con]
    # the function normalises its inputs itself; feed unnormalised leaves so normalisation is tested too
    out = clear_loss(imgs, txts, c, e, s_clip, s_con, w_clip=w_clip, w_concept=w_concept, w_i2i=w_i2i, w_t2t=w_t2t)
    grads = torch.autograd.grad(out["loss"], leaves)
    ref = loop_clear(imgs, txts, c, e, s_clip, s_con, w_clip, w_concept, w_i2i, w_t2t)
    ref_grads = torch.autograd.grad(ref, leaves)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    assert out["loss"].item() == pytest.approx(w_clip * out["clip"].item() + w_concept * out["concept"].item())
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert all(g.abs().max() > 0 for g in grads)  # gradients reach every view, C, E and both scales
    assert ("i2i" in out) == (views == 2)


def test_clear_loss_terms_and_statistics():
    imgs, txts, c, e, s_clip, s_con = _inputs(2, seed=1)
    with torch.no_grad():
        out = clear_loss(imgs, txts, c, e, s_clip, s_con, w_concept=0.0, w_i2i=1.0)
        clip = multi_view_clip_loss(
            [F.normalize(x, dim=-1) for x in imgs], [F.normalize(x, dim=-1) for x in txts], s_clip, w_i2i=1.0
        )
        assert out["loss"].item() == pytest.approx(clip["loss"].item(), rel=1e-12)
        assert out["contrastive"].item() == pytest.approx(clip["contrastive"].item(), rel=1e-12)
        scores = F.normalize(imgs[0], dim=-1) @ F.normalize(c, dim=-1).T
        scores1 = F.normalize(imgs[1], dim=-1) @ F.normalize(c, dim=-1).T
        assert out["concept_score_max"].item() == pytest.approx(
            0.5 * (scores.max(1).values.mean() + scores1.max(1).values.mean()).item()
        )
        assert -1.0 <= out["concept_score_mean"].item() <= 1.0 and out["concept_score_std"].item() > 0
        # a single tensor is one view
        single = clear_loss(imgs[0], txts[0], c, e, s_clip, s_con)
        listed = clear_loss([imgs[0]], [txts[0]], c, e, s_clip, s_con)
        assert single["loss"].item() == listed["loss"].item()
    with pytest.raises(ValueError, match="same K"):
        clear_loss(imgs, txts, c, e[:3], s_clip, s_con)


def test_concept_term_is_scale_invariant_in_e_rows_only_through_normalisation():
    """Scaling E by a constant leaves z (hence the concept term) unchanged; the projection really uses E."""
    imgs, txts, c, e, s_clip, s_con = _inputs(1, seed=2)
    with torch.no_grad():
        a = clear_loss(imgs, txts, c, e, s_clip, s_con)["concept"]
        b = clear_loss(imgs, txts, c, 3.0 * e, s_clip, s_con)["concept"]
        other = clear_loss(imgs, txts, c, torch.randn_like(e), s_clip, s_con)["concept"]
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert a.item() != pytest.approx(other.item())


# --------------------------------------------------------------------------- hashing embedder
def test_hashing_embedder_deterministic_normalised_lexical():
    bank = load_concept_bank()
    a = emb_mod.hashing_embeddings(bank, dim=256)
    b = emb_mod.HashingEmbedder(256).embed(bank)
    assert a.shape == (len(bank), 256) and a.dtype == torch.float32
    assert torch.equal(a, b)  # deterministic (fixed hash seed, no randomness)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(len(bank)))
    e = emb_mod.hashing_embeddings(CONCEPTS, dim=512)
    sim = e @ e.T
    assert sim[0, 1] > 0.7  # "pleural effusion" vs "small pleural effusion"
    assert sim[0, 1] > sim[0, 2] + 0.5 and sim[0, 1] > sim[0, 3] + 0.5
    assert abs(sim[2, 3]) < 0.3  # unrelated strings are nearly orthogonal
    # case does not matter; a different dimension is a different space
    torch.testing.assert_close(emb_mod.hashing_embeddings(["Chest Tube"], 512), e[2:3])
    assert emb_mod.hashing_embeddings(CONCEPTS, dim=64).shape == (5, 64)


def test_hashing_embedder_errors():
    with pytest.raises(ValueError, match="dim"):
        emb_mod.HashingEmbedder(0)
    with pytest.raises(ValueError, match="ngram_range"):
        emb_mod.HashingEmbedder(16, ngram_range=(4, 2))
    with pytest.raises(ValueError, match="at least one"):
        emb_mod.hashing_embeddings([])
    with pytest.raises(TypeError):
        emb_mod.HashingEmbedder(16).embed("chest tube")
    with pytest.raises(ValueError, match="no character n-grams"):
        emb_mod.HashingEmbedder(16).embed(["chest tube", ""])


# --------------------------------------------------------------------------- head
def _head(**kw) -> ClearHead:
    kw.setdefault("concepts", CONCEPTS)
    kw.setdefault("embedder", {"kind": "hashing", "dim": 32})
    return ClearHead(**kw)


def _views(b=6, d=8, views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [F.normalize(torch.randn(b, d, generator=g), dim=-1) for _ in range(views)]
    txts = [F.normalize(torch.randn(b, d, generator=g), dim=-1) for _ in range(views)]
    return imgs, txts, F.normalize(torch.randn(len(CONCEPTS), d, generator=g), dim=-1)


def test_head_forward_logs_and_matches_function():
    head = _head(w_concept=0.5, w_i2i=1.0, concept_temperature_init=0.1)
    imgs, txts, c = _views()
    out = head(imgs, txts, labels=None, concepts=c)
    expected = {
        "loss",
        "clip",
        "contrastive",
        "i2i",
        "concept",
        "logit_scale",
        "temperature",
        "concept_logit_scale",
        "concept_temperature",
        "concept_score_max",
        "concept_score_mean",
        "concept_score_std",
    }
    assert set(out.logs) == expected
    assert all(torch.isfinite(v) and not v.requires_grad for v in out.logs.values())
    assert out.logs["concept_temperature"].item() == pytest.approx(0.1)
    assert out.logs["temperature"].item() == pytest.approx(0.07)
    e = emb_mod.hashing_embeddings(CONCEPTS, 32)
    ref = clear_loss(imgs, txts, c, e, 1 / 0.07, 1 / 0.1, w_concept=0.5, w_i2i=1.0)
    assert out.loss.item() == pytest.approx(ref["loss"].item(), rel=1e-6)
    out.loss.backward()
    assert head.logit_scale_log.grad is not None and head.concept_logit_scale_log.grad is not None
    assert head.similarity_scale().item() == pytest.approx(1 / 0.07)  # retrieval uses the CLIP scale
    # concept scale clamp: exp(param) above concept_max_scale is clamped
    clamped = _head(concept_temperature_init=0.001, concept_max_scale=50.0)
    assert clamped.concept_similarity_scale().item() == pytest.approx(50.0)
    # w_concept = 0 is the ClipHead loss
    clip_only = _head(w_concept=0.0)(imgs, txts, concepts=c).loss
    assert clip_only.item() == pytest.approx(ClipHead()(imgs, txts).loss.item(), rel=1e-6)


def test_head_needs_concepts_of_the_right_shape():
    head = _head()
    imgs, txts, c = _views()
    assert ClearHead.spec == HeadSpec(embedding="deterministic", concepts=True)
    with pytest.raises(ValueError, match="needs concepts"):
        head(imgs, txts)
    with pytest.raises(ValueError, match=r"K=5"):
        head(imgs, txts, concepts=c[:4])


def test_llm_embeddings_computed_once_lazily(monkeypatch):
    calls = []
    original = emb_mod.hashing_embeddings

    def counting(concepts, dim=512, ngram_range=(3, 5)):
        calls.append(list(concepts))
        return original(concepts, dim, ngram_range)

    monkeypatch.setattr(emb_mod, "hashing_embeddings", counting)
    head = _head()
    assert not calls and not head.llm_ready  # never in __init__
    imgs, txts, c = _views()
    head(imgs, txts, concepts=c)
    head.prepare()
    head(imgs, txts, concepts=c)
    assert calls == [CONCEPTS] and head.llm_ready
    assert head.concept_llm_emb.shape == (5, 32)
    torch.testing.assert_close(head.concept_llm_emb.norm(dim=-1), torch.ones(5))
    assert "concept_llm_emb" in head.state_dict()


def test_state_dict_carries_e_without_calling_the_embedder(monkeypatch):
    trained = _head()
    trained.prepare()
    state = trained.state_dict()

    def boom(*args, **kwargs):
        raise AssertionError("the embedder must not be called when E comes from a checkpoint")

    monkeypatch.setattr(clear_mod, "compute_llm_embeddings", boom)
    # an embedder that could not even run here: E must come from the state dict
    fresh = _head(embedder={"kind": "hf", "name_or_path": "no-such-org/no-such-model", "cache_dir": "/nonexistent"})
    fresh.load_state_dict(state)
    assert fresh.llm_ready
    torch.testing.assert_close(fresh.concept_llm_emb, trained.concept_llm_emb)
    imgs, txts, c = _views()
    fresh(imgs, txts, concepts=c)  # no embedder call
    with pytest.raises(RuntimeError, match="different concept bank"):
        _head(concepts=CONCEPTS[:3]).load_state_dict(state)


def test_default_bank_and_bank_file(tmp_path):
    head = ClearHead(embedder={"kind": "hashing"})
    assert head.concept_names == load_concept_bank() and head.num_concepts == 161
    bank = tmp_path / "mined.txt"
    bank.write_text("# mined\nChest tube\nclear lungs\n")
    assert ClearHead(bank=str(bank)).concept_names == ["chest tube", "clear lungs"]
    # an explicit concept list (what load_module passes) wins over the bank
    assert ClearHead(bank=str(tmp_path / "gone.txt"), concepts=["Chest Tube"]).concept_names == ["chest tube"]


def test_bad_configs_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ClearHead(bank=str(tmp_path / "missing.txt"))
    dup = tmp_path / "dup.txt"
    dup.write_text("chest tube\nChest  tube\n")
    with pytest.raises(ConceptBankError, match="duplicate"):
        ClearHead(bank=str(dup))
    with pytest.raises(ValueError, match="distinct"):
        ClearHead(concepts=["chest tube", "Chest tube"])
    with pytest.raises(ValueError, match="embedder.kind"):
        ClearHead(embedder={"kind": "openai"})
    with pytest.raises(ValueError, match="unknown embedder key"):
        ClearHead(embedder={"kind": "hashing", "dims": 3})
    with pytest.raises(ValueError, match="name_or_path"):
        ClearHead(embedder={"kind": "hf", "cache_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="cache_dir"):
        ClearHead(embedder={"kind": "hf", "name_or_path": "x/y"})
    with pytest.raises(ValueError, match="dim"):
        ClearHead(embedder={"kind": "hashing", "dim": 0})
    with pytest.raises(ValueError, match="not both 0"):
        _head(w_clip=0.0, w_concept=0.0)
    with pytest.raises(ValueError, match="concept_temperature_init"):
        _head(concept_temperature_init=0.0)
    # irrelevant keys of the other kind are ignored (experiments switch kinds by overriding `kind`)
    assert validate_embedder({"kind": "hashing", "name_or_path": "x/y", "cache_dir": "c", "dim": 8}) == {
        "kind": "hashing",
        "dim": 8,
    }
    # a hub name that is neither local nor cached fails at once when offline, at prepare() (never in __init__)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    head = _head(
        embedder={
            "kind": "hf",
            "name_or_path": "no-such-org/no-such-model-cxr-vlp",
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    with pytest.raises(ModelNotAvailableError, match="no-such-model-cxr-vlp"):
        head.prepare()


# --------------------------------------------------------------------------- hf embedder through the cache
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel

    from cxr_vlp.data.tokenizer import train_wordpiece

    root = tmp_path_factory.mktemp("tiny_bert_clear")
    tok = train_wordpiece(load_concept_bank() + CONCEPTS, vocab_size=300, min_frequency=1)
    tok.save_pretrained(root)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(cfg).save_pretrained(root)
    return root


def test_hf_embedder_is_cached_on_disk_once(tiny_bert, tmp_path, monkeypatch):
    loads = []
    original = emb_mod.load_text_model

    def counting(path):
        loads.append(path)
        return original(path)

    monkeypatch.setattr(emb_mod, "load_text_model", counting)
    cfg = {"kind": "hf", "name_or_path": str(tiny_bert), "cache_dir": str(tmp_path / "cache"), "batch_size": 2}
    first = _head(embedder=cfg)
    first.prepare()
    first.prepare()
    second = _head(embedder=cfg)  # e.g. another rank or a later run: read from the disk cache
    second.prepare()
    assert len(loads) == 1 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    assert first.concept_llm_emb.shape == (5, 24)
    torch.testing.assert_close(first.concept_llm_emb, second.concept_llm_emb)
    torch.testing.assert_close(first.concept_llm_emb.norm(dim=-1), torch.ones(5))
    imgs, txts, c = _views()
    assert math.isfinite(first(imgs, txts, concepts=c).loss.item())
