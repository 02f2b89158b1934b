"""CLEAR concepts: bank, mining, cached embeddings, projection."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from cxr_vlp.concepts import bank as bank_mod
from cxr_vlp.concepts import embeddings as emb_mod
from cxr_vlp.concepts.bank import ConceptBankError, load_concept_bank, save_concept_bank
from cxr_vlp.concepts.mine import main as mine_main
from cxr_vlp.concepts.mine import mine_concepts
from cxr_vlp.concepts.projection import concept_scores, project_to_llm, top_concepts, zero_shot_probability
from cxr_vlp.utils.hub import ModelNotAvailableError


# --------------------------------------------------------------------------- bank
def test_default_bank_loads_and_is_unique():
    concepts = load_concept_bank()
    assert len(concepts) >= 120
    assert len(set(concepts)) == len(concepts)
    assert all(c == c.lower() and c.strip() == c and c for c in concepts)
    for expected in (
        "blunted costophrenic angle",
        "enlarged cardiac silhouette",
        "chest tube",
        "skin fold",
        "clear lungs",
        "normal heart size",
    ):
        assert expected in concepts
    assert bank_mod.default_bank_path().is_file()


def test_bank_validation_names_file_and_line(tmp_path):
    p = tmp_path / "bank.txt"
    p.write_text("# header\nPleural Effusion\n\nchest tube\npleural  effusion\n")
    with pytest.raises(ConceptBankError, match=r"bank\.txt, line 5.*first on line 2"):
        load_concept_bank(p)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ConceptBankError, match="empty.txt.*empty"):
        load_concept_bank(empty)
    with pytest.raises(FileNotFoundError):
        load_concept_bank(tmp_path / "missing.txt")


def test_save_refuses_overwrite(tmp_path):
    p = save_concept_bank(["Clear lungs", "chest tube"], tmp_path / "b.txt")
    assert load_concept_bank(p) == ["clear lungs", "chest tube"]
    with pytest.raises(FileExistsError):
        save_concept_bank(["other"], p)
    save_concept_bank(["other"], p, overwrite=True)
    assert load_concept_bank(p) == ["other"]


# --------------------------------------------------------------------------- mining
def _write_reports(path, n_effusion=6, n_tube=3, n_rare=1):
    rows = []
    for i in range(n_effusion):
        rows.append(
            {
                "findings": f"Small left pleural effusion measuring {i + 2} cm. Heart size is normal.",
                "impression": "Small left pleural effusion.",
            }
        )
    for _ in range(n_tube):
        rows.append({"findings": "Right chest tube in place. No pneumothorax.", "impression": ""})
    for _ in range(n_rare):
        rows.append({"findings": "Calcified granuloma in the right apex.", "impression": "No acute process."})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["findings", "impression"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_mining_finds_frequent_phrases_and_respects_min_count(tmp_path):
    csv_path = _write_reports(tmp_path / "train.csv")
    bank, added = mine_concepts(csv_path, min_count=3, base="none")
    counts = dict(added)
    assert counts["small left pleural effusion"] == 6
    assert counts["right chest tube"] == 3
    assert all(c >= 3 for c in counts.values())
    assert not any("granuloma" in c for c in bank)  # seen once only
    assert not any(ch.isdigit() for c in bank for ch in c)  # numbers removed
    assert not any(c.endswith((" the", " in")) or c.startswith(("the ", "in ")) for c in bank)
    assert [c for _, c in added] == sorted((c for _, c in added), reverse=True)  # ranked by frequency
    assert counts["small left pleural effusion"] == max(counts.values())
    assert not any(c.endswith(" measuring") for c in bank)
    assert bank.index("small left pleural effusion") < bank.index("right chest tube")
    bank5, _ = mine_concepts(csv_path, min_count=5, base="none")
    assert "small left pleural effusion" in bank5 and "right chest tube" not in bank5
    _, capped = mine_concepts(csv_path, min_count=3, base="none", max_concepts=2)
    assert len(capped) == 2


def test_mining_merges_base_and_cli(tmp_path, capsys):
    csv_path = _write_reports(tmp_path / "train.csv")
    default = load_concept_bank()
    bank, added = mine_concepts(csv_path, min_count=3, base="default")
    assert bank[: len(default)] == default
    assert len(bank) == len(set(bank))
    assert "pleural effusion" in default and "pleural effusion" not in dict(added)
    out = tmp_path / "out.txt"
    argv = [f"in_csv={csv_path}", f"out_txt={out}", "min_count=3", "base=none"]
    assert mine_main(argv) == 0
    mined = load_concept_bank(out)
    assert "small left pleural effusion" in mined
    assert mine_main(argv) == 1  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert mine_main([*argv, "overwrite=true", "min_count=5"]) == 0
    assert "right chest tube" not in load_concept_bank(out)
    assert mine_main([f"in_csv={csv_path}", f"out_txt={tmp_path / 'x.txt'}", "text_columns=report"]) == 1
    err = capsys.readouterr().err
    assert "'report'" in err and "train.csv" in err
    with pytest.raises(SystemExit, match="unknown key"):
        mine_main(["in_csv=a", "out_txt=b", "bogus=1"])
    with pytest.raises(SystemExit, match="in_csv"):
        mine_main([f"out_txt={out}"])


def test_mining_error_names_file_and_column(tmp_path):
    csv_path = _write_reports(tmp_path / "train.csv")
    with pytest.raises(ValueError, match=r"train\.csv.*'report'"):
        mine_concepts(csv_path, text_columns=["report"])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        mine_concepts(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- embeddings
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel

    from cxr_vlp.data.tokenizer import train_wordpiece

    root = tmp_path_factory.mktemp("tiny_bert")
    texts = load_concept_bank() + ["no acute cardiopulmonary process", "the lungs are clear"]
    tok = train_wordpiece(texts, vocab_size=300, min_frequency=1)
    tok.save_pretrained(root)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(cfg).save_pretrained(root)
    return root


@pytest.fixture
def count_loads(monkeypatch):
    calls = []
    original = emb_mod.load_text_model

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(emb_mod, "load_text_model", counting)
    return calls


def test_embedder_shapes_norm_determinism(tiny_bert):
    embedder = emb_mod.ConceptEmbedder(str(tiny_bert))
    assert not embedder.model.training
    assert not any(p.requires_grad for p in embedder.model.parameters())
    concepts = ["clear lungs", "small left pleural effusion", "chest tube"]
    a = embedder.embed(concepts, batch_size=2)
    b = embedder.embed(concepts, batch_size=3)
    assert a.shape == (3, 32)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # padding does not change the pooled embedding


def test_embed_concepts_cache_reuse_and_invalidation(tiny_bert, tmp_path, count_loads):
    cache = tmp_path / "cache"
    concepts = load_concept_bank()[:10]
    e1 = emb_mod.embed_concepts(concepts, str(tiny_bert), cache, batch_size=4)
    assert e1.shape == (10, 32) and len(count_loads) == 1
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    e2 = emb_mod.embed_concepts(concepts, str(tiny_bert), cache)
    assert len(count_loads) == 1  # served from the cache, the model was not loaded
    torch.testing.assert_close(e1, e2)
    e3 = emb_mod.embed_concepts(concepts[:9] + ["skin fold"], str(tiny_bert), cache)
    assert len(count_loads) == 2 and len(list(cache.glob("*.safetensors"))) == 2
    torch.testing.assert_close(e3[:9], e1[:9], atol=1e-5, rtol=1e-5)


def test_embed_concepts_model_identity_changes_key(tiny_bert, tmp_path, count_loads):
    copy = tmp_path / "model_copy"
    shutil.copytree(tiny_bert, copy)
    cache = tmp_path / "cache"
    concepts = ["clear lungs", "chest tube"]
    emb_mod.embed_concepts(concepts, str(copy), cache)
    cfg = (copy / "config.json").read_text().replace('"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": 0.2')
    (copy / "config.json").write_text(cfg)
    emb_mod.embed_concepts(concepts, str(copy), cache)
    assert len(count_loads) == 2


def test_uncached_hub_name_offline_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError):
        emb_mod.embed_concepts(["clear lungs"], "no-such-org/no-such-model-cxr-vlp", tmp_path)


# --------------------------------------------------------------------------- projection
def _norm_rows(x):
    return [[v / sum(u * u for u in row) ** 0.5 for v in row] for row in x]


def test_concept_scores_and_projection_match_loops():
    g = torch.Generator().manual_seed(0)
    img, tower, llm = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, 6, generator=g)
    s = concept_scores(img, tower)
    fi, ct = _norm_rows(img.tolist()), _norm_rows(tower.tolist())
    for b in range(3):
        for k in range(4):
            assert abs(s[b, k].item() - sum(fi[b][d] * ct[k][d] for d in range(5))) < 1e-5
    z = project_to_llm(s, llm)
    for b in range(3):
        raw = [sum(s[b, k].item() * llm[k, e].item() for k in range(4)) for e in range(6)]
        n = sum(v * v for v in raw) ** 0.5
        for e in range(6):
            assert abs(z[b, e].item() - raw[e] / n) < 1e-5
    with pytest.raises(ValueError):
        concept_scores(img, torch.randn(4, 6))


def test_zero_shot_probability_formula_and_stability():
    import math

    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(2, 6, generator=g), dim=-1)
    pos, neg = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    scale = 2.5
    p = zero_shot_probability(z, pos, neg, scale)
    assert p.shape == (2, 3)
    for b in range(2):
        for k in range(3):
            sp = scale * sum(z[b, e].item() * pos[k, e].item() for e in range(6))
            sn = scale * sum(z[b, e].item() * neg[k, e].item() for e in range(6))
            expected = math.exp(sp) / (math.exp(sp) + math.exp(sn))
            assert abs(p[b, k].item() - expected) < 1e-5
    big = zero_shot_probability(z, pos, neg, scale=1e4)
    assert torch.isfinite(big).all() and ((big >= 0) & (big <= 1)).all()


def test_gradient_flows_through_scores():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(2, 5, generator=g, requires_grad=True)
    s = concept_scores(img, torch.randn(4, 5, generator=g))
    z = project_to_llm(s, torch.randn(4, 6, generator=g))
    p = zero_shot_probability(z, torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g), 10.0)
    p.sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0


def test_top_concepts():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    names = ["a", "b", "c"]
    top = top_concepts(scores, names, k=2)
    assert [n for n, _ in top[0]] == ["b", "c"] and [n for n, _ in top[1]] == ["a", "c"]
    assert top[0][0][1] == pytest.approx(0.9)
    assert len(top_concepts(scores[0], names, k=10)[0]) == 3
    with pytest.raises(ValueError):
        top_concepts(scores, ["a"], k=1)
