"""The checkpoint payload (cxr_vlp.checkpoint): one writer, one reader, old layouts migrated or refused clearly;
the head contract (spec, similarity, loss views) and the layering it allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cxr_vlp
from cxr_vlp.checkpoint import (
    FORMAT_VERSION,
    CheckpointFormatError,
    CXRPayload,
    load_module,
    read_payload,
    write_payload,
)
from cxr_vlp.data.tokenizer import build_tokenizer, tokenizer_to_json
from cxr_vlp.lit.module import ContrastiveModule
from cxr_vlp.losses.clear_head import ClearHead
from cxr_vlp.losses.heads import ClipHead, GaussianEmbedding, HeadSpec
from cxr_vlp.losses.mcsl import McslHead
from cxr_vlp.losses.prob_head import ProbClipHead
from cxr_vlp.models.outputs import Embeddings

PACKAGE = Path(cxr_vlp.__file__).parent
TEXTS = [
    "no acute cardiopulmonary process.",
    "small left pleural effusion.",
    "heart size is normal.",
    "mild cardiomegaly with pulmonary edema.",
    "no pneumothorax or effusion.",
] * 4


def _hparams(probabilistic: bool = False, loss: dict | None = None) -> dict:
    """The constructor arguments of a tiny ContrastiveModule (as checkpoints before payload format 1 stored them)."""
    model = {
        "image_encoder": {
            "_target_": "cxr_vlp.models.image_encoder.ImageEncoder",
            "name": "resnet10t",
            "pretrained": False,
            "in_chans": 1,
        },
        "text_encoder": {
            "_target_": "cxr_vlp.models.text_encoder.TextEncoder",
            "name_or_path": None,
            "local_config": {
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
            },
            "tokenizer": {"kind": "wordpiece", "vocab_size": 120, "min_frequency": 1},
        },
        "embed_dim": 16,
        "probabilistic": probabilistic,
    }
    return {
        "model": model,
        "loss": loss or {"_target_": "cxr_vlp.losses.heads.ClipHead"},
        "optim": {"lr": 1e-3},
        "scheduler": {"warmup": 0},
    }


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("wordpiece", train_texts=TEXTS, vocab_size=120, min_frequency=1)


@pytest.fixture(scope="module")
def trained(tokenizer):
    torch.manual_seed(0)
    module = ContrastiveModule(**_hparams(), data={"name": "csv", "root": "/data"})
    module.tokenizer = tokenizer
    return module


def _encode(module, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images = torch.randn(2, 1, 32, 32)
    tokens = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        return (
            module.encoder.encode_image(images).embedding,
            module.encoder.encode_text(tokens["input_ids"], tokens["attention_mask"]).embedding,
        )


# ---------------------------------------------------------------------------------------------- the payload
def test_payload_round_trip_keeps_one_copy_of_hparams_and_tokenizer(trained, tokenizer) -> None:
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    trained.on_save_checkpoint(checkpoint)
    record = checkpoint["cxr_vlp"]
    assert record["format_version"] == FORMAT_VERSION and record["kind"] == "contrastive"
    assert "hparams" not in record  # Lightning's hyper_parameters are the one copy
    assert record["tokenizer_json"] == tokenizer_to_json(tokenizer) and record["concepts"] is None
    payload = read_payload(checkpoint)
    assert payload.hparams == dict(trained.hparams) and payload.data == {"name": "csv", "root": "/data"}
    assert tokenizer_to_json(payload.tokenizer()) == record["tokenizer_json"]

    module, again = load_module(checkpoint)
    assert again == payload and not module.training
    for a, b in zip(_encode(module, module.tokenizer), _encode(trained.eval(), tokenizer)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_read_payload_loads_a_file(tmp_path: Path, trained) -> None:
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    trained.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "x.ckpt")
    assert read_payload(tmp_path / "x.ckpt") == read_payload(checkpoint)
    module, payload = load_module(str(tmp_path / "x.ckpt"))
    assert payload.kind == "contrastive" and isinstance(module, ContrastiveModule)


def test_write_payload_fills_hyper_parameters_only_when_missing() -> None:
    checkpoint: dict = {}
    write_payload(checkpoint, CXRPayload(kind="reportgen", hparams={"a": 1}, tokenizer_json="{}"))
    assert checkpoint["hyper_parameters"] == {"a": 1}
    assert checkpoint["cxr_vlp"]["package_version"] == cxr_vlp.__version__
    checkpoint = {"hyper_parameters": {"a": 2}}
    write_payload(checkpoint, CXRPayload(kind="reportgen", hparams={"a": 1}))
    assert checkpoint["hyper_parameters"] == {"a": 2}


def test_old_layout_checkpoint_is_migrated(trained, tokenizer) -> None:
    """A checkpoint written before format_version: payload {version, data}, the tokenizer in the data module's state,
    hyper-parameters without data / gradient_clip."""
    hparams = _hparams()
    old = {
        "state_dict": trained.state_dict(),
        "hyper_parameters": hparams,
        "cxr_vlp": {"version": "0.1.0", "tokenizer_json": None, "data": {"name": "csv"}},
        "CXRDataModule": {"tokenizer_json": tokenizer_to_json(tokenizer)},
    }
    payload = read_payload(old)
    assert payload.kind == "contrastive" and payload.format_version == FORMAT_VERSION
    assert payload.package_version == "0.1.0" and payload.data == {"name": "csv"}
    assert payload.tokenizer_json == tokenizer_to_json(tokenizer)
    module, _ = load_module(old)
    assert module.data_config == {"name": "csv"}
    for a, b in zip(_encode(module, module.tokenizer), _encode(trained.eval(), tokenizer)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_old_layout_report_generation_and_concepts_migrate() -> None:
    old = {
        "hyper_parameters": {"decoder": {}},
        "cxr_vlp": {"version": "0.1.0", "kind": "reportgen", "data": None, "tokenizer_json": "{}"},
    }
    assert read_payload(old).kind == "reportgen"
    old = {
        "hyper_parameters": _hparams(),
        "cxr_vlp": {"version": "0.1.0", "tokenizer_json": "{}", "data": None, "concepts": ["pleural effusion"]},
    }
    assert read_payload(old).concepts == ["pleural effusion"]


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ({"state_dict": {}}, r"not a cxr_vlp checkpoint.*python -m cxr_vlp\.train"),
        (
            {"hyper_parameters": _hparams(), "cxr_vlp": {"version": "0.1.0", "data": None}},
            r"WordPiece tokenizer was not stored.*Train it again",
        ),
        (
            {"hyper_parameters": {}, "cxr_vlp": {"version": "0.1.0", "kind": "reportgen"}},
            r"without its decoder tokenizer.*Train it again",
        ),
        (
            {"hyper_parameters": _hparams(), "cxr_vlp": {"format_version": FORMAT_VERSION + 1, "kind": "contrastive"}},
            r"newer than this cxr_vlp reads.*upgrade cxr_vlp",
        ),
        (
            {
                "hyper_parameters": _hparams(),
                "cxr_vlp": {"format_version": FORMAT_VERSION, "kind": "contrastive", "extra": 1},
            },
            r"unknown key\(s\) \['extra'\]",
        ),
        ({"cxr_vlp": {"format_version": FORMAT_VERSION, "kind": "contrastive"}}, r"no 'hyper_parameters'"),
    ],
)
def test_unreadable_checkpoints_say_what_to_do(checkpoint: dict, message: str) -> None:
    with pytest.raises(CheckpointFormatError, match=message):
        read_payload(checkpoint)


def test_one_writer_and_one_reader_of_the_payload() -> None:
    """Only cxr_vlp/checkpoint.py indexes checkpoint["cxr_vlp"]; data/ never imports models/."""
    pattern = re.compile(r"""\[\s*["']cxr_vlp["']\s*\]|\.get\(\s*["']cxr_vlp["']""")
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text()))
    assert users == ["checkpoint.py"], users
    writers = [p for p in PACKAGE.rglob("*.py") if "[PAYLOAD_KEY] =" in p.read_text()]
    assert [p.name for p in writers] == ["checkpoint.py"]
    data_imports = [p.name for p in (PACKAGE / "data").rglob("*.py") if re.search(r"cxr_vlp\.models", p.read_text())]
    assert data_imports == []


def test_lightning_module_has_no_head_specific_branch() -> None:
    source = (PACKAGE / "lit" / "module.py").read_text()
    head_checks = r"needs_concepts|needs_uncertainty|(self|encoder|module)\.probabilistic\b|isinstance\([^)]*Head"
    assert not re.search(head_checks, source)
    # if / elif statements and conditional expressions (a comprehension's filter selects data, it does not branch)
    branches = [ast.unparse(node.test) for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.If, ast.IfExp))]
    assert len(branches) > 10
    assert not [b for b in branches if re.search(r"probabilistic|gaussian|logvar|concept|spec\.", b)], branches


# ---------------------------------------------------------------------------------------------- the head contract
def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_head_specs() -> None:
    assert ClipHead.spec == McslHead.spec == HeadSpec("deterministic", False)
    assert ProbClipHead.spec == HeadSpec("gaussian", False)
    assert ClearHead.spec == HeadSpec("deterministic", True)
    with pytest.raises(ValueError, match="deterministic"):
        HeadSpec("sampled")  # type: ignore[arg-type]


def test_clip_similarity_is_the_scaled_cosine() -> None:
    head = ClipHead(temperature_init=0.05).double()
    q, g = _unit(3, 8, 0), _unit(5, 8, 1)
    got = head.similarity(Embeddings(q), Embeddings(g))
    want = torch.tensor(
        [[20.0 * sum(q[i, k] * g[j, k] for k in range(8)) for j in range(5)] for i in range(3)], dtype=torch.float64
    )
    torch.testing.assert_close(got, want)
    assert head.loss_view(Embeddings(q)) is q and head.loss_inputs(lambda i, m: i) == {}


def test_probclip_similarity_is_the_match_logit() -> None:
    head = ProbClipHead(a_init=2.0, b_init=1.0).double()
    q, g = _unit(3, 4, 2), _unit(4, 4, 3)
    lq, lg = torch.full((3, 4), -2.0, dtype=torch.float64), torch.linspace(-3, -1, 16, dtype=torch.float64).view(4, 4)
    got = head.similarity(Embeddings(q, lq), Embeddings(g, lg))
    # CSD (PCME++): ‖μa − μb‖² + Σ(σa² + σb²); logit = −a·d + b
    want = torch.tensor(
        [
            [
                -2.0 * (float(((q[i] - g[j]) ** 2).sum()) + float((lq[i].exp() + lg[j].exp()).sum())) + 1.0
                for j in range(4)
            ]
            for i in range(3)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want)
    assert isinstance(head.loss_view(Embeddings(q, lq)), GaussianEmbedding)
    metrics = head.eval_metrics(Embeddings(q, lq), Embeddings(g, lg))
    assert metrics["uncertainty_image_mean"] == pytest.approx(4 * float(torch.exp(torch.tensor(-2.0))))


def test_clear_scores_concepts_once_prepared(tokenizer) -> None:
    head = ClearHead(concepts=["pleural effusion", "cardiomegaly"], embedder={"kind": "hashing", "dim": 8})
    with pytest.raises(RuntimeError, match=r"prepare\(tokenizer\)"):
        head.loss_inputs(lambda ids, mask: ids)
    head.prepare(tokenizer)
    assert head.concept_input_ids.shape[0] == 2 and head.llm_ready
    c = _unit(2, 6, 4).float()
    inputs = head.loss_inputs(lambda ids, mask: c)
    image = Embeddings(_unit(3, 6, 5).float())
    torch.testing.assert_close(head.eval_scores(image, inputs), image.mean @ c.T)


def test_embeddings_views_rows_and_cat() -> None:
    mean, logvar = torch.arange(12.0).view(6, 2), torch.arange(6.0).view(6, 1)
    views = Embeddings(mean, logvar).views(3)  # [batch * V] rows, the V views of a study adjacent
    assert len(views) == 2 and torch.equal(views[1].mean, mean[1::2]) and torch.equal(views[1].logvar, logvar[1::2])
    both = Embeddings.cat([Embeddings(mean[:2], logvar[:2]), Embeddings(mean[2:], logvar[2:])])
    assert torch.equal(both.mean, mean) and torch.equal(both.rows(torch.tensor([4])).logvar, logvar[4:5])
    with pytest.raises(ValueError, match="some parts"):
        Embeddings.cat([Embeddings(mean), Embeddings(mean, logvar)])
    with pytest.raises(ValueError, match="rows"):
        Embeddings(mean, logvar[:2])


def test_gaussian_head_on_a_deterministic_encoder_is_refused() -> None:
    loss = {"_target_": "cxr_vlp.losses.prob_head.ProbClipHead"}
    with pytest.raises(ValueError, match=r"model\.probabilistic=false.*model\.probabilistic=true"):
        ContrastiveModule(**_hparams(loss=loss))
    module = ContrastiveModule(**_hparams(probabilistic=True, loss=loss))
    out = module.encoder.encode_image(torch.randn(2, 1, 32, 32))
    assert out.logvar is not None and out.logvar.shape == (2, 16)


def test_cosine_heads_rank_by_the_unscaled_cosine_and_prob_heads_by_the_match_logit():
    """A positive scale cannot change the order, but its rounding can merge distinct cosines into a tie: the
    retrieval metrics of cosine heads rank by q gᵀ itself, the probabilistic head by its similarity."""
    head = ClipHead(temperature_init=1 / 3, learn_temperature=False)
    q = Embeddings(torch.tensor([[1.0, 0.0]]))
    a = torch.tensor(0.30000001192092896)
    b = torch.nextafter(a, torch.tensor(1.0))
    g = Embeddings(torch.stack([torch.stack([a, (1 - a * a).sqrt()]), torch.stack([b, (1 - b * b).sqrt()])]))
    cosine = q.mean @ g.mean.T
    assert torch.equal(head.ranking_scores(q, g), cosine)
    assert cosine[0, 0] != cosine[0, 1]
    scaled = head.similarity(q, g)
    assert torch.allclose(scaled, head.similarity_scale() * cosine)
    prob = ProbClipHead()
    pq = Embeddings(torch.randn(3, 4), torch.randn(3, 4))
    pg = Embeddings(torch.randn(5, 4), torch.randn(5, 4))
    assert torch.equal(prob.ranking_scores(pq, pg), prob.similarity(pq, pg))
