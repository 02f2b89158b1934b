"""Report generation text side: concept prompts, the concept classifier and its loss, the decoder token layout."""

from __future__ import annotations

import math

import pytest
import torch

from cxr_vlp.data.tokenizer import tokenizer_from_json, tokenizer_to_json, train_wordpiece
from cxr_vlp.reportgen.prompts import (
    FINDING_NAMES,
    ConceptClassifier,
    concept_prompt,
    masked_bce,
    prompts_from_labels,
    prompts_from_probabilities,
)
from cxr_vlp.reportgen.tokens import (
    REPORT_TOKEN,
    add_report_token,
    build_decoder_inputs,
    build_prefix,
    decode_reports,
    normalize_reports,
)
from cxr_vlp.text.labels import CHEXPERT_LABELS

NAN = float("nan")
CORPUS = [
    "Small left pleural effusion. No pneumothorax.",
    "The heart is enlarged. Mild pulmonary edema.",
    "No acute cardiopulmonary process. Lungs are clear.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Findings: cardiomegaly, pleural effusion.",
    "Findings: none.",
    "Findings: edema, support devices.",
] * 3


def col(name: str) -> int:
    return CHEXPERT_LABELS.index(name)


# ---------------------------------------------------------------- prompts
def test_finding_names_cover_every_label_but_no_finding() -> None:
    assert list(FINDING_NAMES) == [n for n in CHEXPERT_LABELS if n != "No Finding"]
    assert FINDING_NAMES["Pleural Effusion"] == "pleural effusion"
    assert FINDING_NAMES["Enlarged Cardiomediastinum"] == "enlarged cardiomediastinum"
    assert FINDING_NAMES["Support Devices"] == "support devices"
    assert all(phrase == phrase.lower() for phrase in FINDING_NAMES.values())


def test_concept_prompt_format_order_and_errors() -> None:
    assert concept_prompt(["Cardiomegaly", "Pleural Effusion"]) == "Findings: cardiomegaly, pleural effusion."
    # CHEXPERT_LABELS order whatever the input order; duplicates listed once
    assert (
        concept_prompt(["Support Devices", "Edema", "Cardiomegaly", "Edema"])
        == "Findings: cardiomegaly, edema, support devices."
    )
    assert concept_prompt(["Fracture"]) == "Findings: fracture."
    assert concept_prompt([]) == "Findings: none."
    assert concept_prompt(["No Finding"]) == "Findings: none."
    assert concept_prompt(["No Finding", "Edema"]) == "Findings: edema."
    with pytest.raises(ValueError, match="Pleural Efusion"):
        concept_prompt(["Cardiomegaly", "Pleural Efusion"])


def test_prompts_from_probabilities_and_thresholds() -> None:
    probs = torch.full((3, 14), 0.1)
    probs[0, col("Cardiomegaly")] = 0.5  # exactly at the threshold: positive
    probs[0, col("Pleural Effusion")] = 0.9
    probs[0, col("No Finding")] = 0.99  # never listed
    probs[1, col("Edema")] = 0.49
    probs[2, col("Pneumothorax")] = 0.3
    assert prompts_from_probabilities(probs) == [
        "Findings: cardiomegaly, pleural effusion.",
        "Findings: none.",
        "Findings: none.",
    ]
    thresholds = torch.full((14,), 0.5)
    thresholds[col("Pneumothorax")] = 0.25
    thresholds[col("Cardiomegaly")] = 0.6
    assert prompts_from_probabilities(probs, thresholds) == [
        "Findings: pleural effusion.",
        "Findings: none.",
        "Findings: pneumothorax.",
    ]
    assert prompts_from_probabilities(probs, 0.05)[2] == "Findings: " + ", ".join(FINDING_NAMES.values()) + "."
    with pytest.raises(ValueError, match="threshold"):
        prompts_from_probabilities(probs, torch.full((13,), 0.5))
    with pytest.raises(ValueError, match=r"\[B, 14\]"):
        prompts_from_probabilities(probs[:, :13])


def test_prompts_from_labels_lists_only_positives() -> None:
    labels = torch.full((2, 14), NAN)
    labels[0, col("Edema")] = 1
    labels[0, col("Atelectasis")] = -1  # uncertain: not listed
    labels[0, col("Fracture")] = 0
    labels[0, col("Lung Opacity")] = 1
    labels[1, col("No Finding")] = 1
    assert prompts_from_labels(labels) == ["Findings: lung opacity, edema.", "Findings: none."]


# ---------------------------------------------------------------- classifier and loss
def test_concept_classifier_linear_and_mlp() -> None:
    torch.manual_seed(0)
    linear = ConceptClassifier(16)
    mlp = ConceptClassifier(16, hidden=8, dropout=0.1)
    assert sum(p.numel() for p in linear.parameters()) == 16 * 14 + 14
    assert sum(p.numel() for p in mlp.parameters()) == 16 * 8 + 8 + 8 * 14 + 14
    x = torch.randn(5, 16)
    assert linear(x).shape == mlp.eval()(x).shape == (5, 14)
    torch.testing.assert_close(linear(x), x @ linear.net[1].weight.T + linear.net[1].bias)


def test_masked_bce_equals_a_hand_computation() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, -0.5, -2.0, 3.0]], requires_grad=True)
    labels = torch.tensor([[1.0, NAN, 0.0, -1.0], [0.0, 1.0, NAN, 1.0]])

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    known = [(0.5, 1.0), (2.0, 0.0), (1.5, 0.0), (-0.5, 1.0), (3.0, 1.0)]
    expected = sum(bce(x, y) for x, y in known) / len(known)
    loss = masked_bce(logits, labels)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 3] == 0 and logits.grad[1, 2] == 0  # ignored entries
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 0] != 0
    unknown = masked_bce(logits, torch.full_like(labels, NAN))
    assert unknown.item() == 0.0 and unknown.requires_grad


# ---------------------------------------------------------------- token layout
@pytest.fixture(scope="module")
def tokenizer():
    tok = train_wordpiece(CORPUS, vocab_size=300, min_frequency=1)
    add_report_token(tok)
    return tok


def tokens_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_report_token_is_special_idempotent_and_survives_serialisation() -> None:
    tok = train_wordpiece(CORPUS, vocab_size=300, min_frequency=1)
    size = len(tok)
    rid = add_report_token(tok)
    assert rid == size and len(tok) == size + 1
    assert add_report_token(tok) == rid and len(tok) == size + 1
    assert rid in tok.all_special_ids and tok.convert_ids_to_tokens(rid) == REPORT_TOKEN
    restored = tokenizer_from_json(tokenizer_to_json(tok))
    assert add_report_token(restored) == rid and len(restored) == size + 1
    assert rid in restored.all_special_ids


def test_build_decoder_inputs_layout_and_labels(tokenizer) -> None:
    prompts = ["Findings: cardiomegaly, pleural effusion.", "Findings: none."]
    reports = ["The heart is enlarged. Mild pulmonary edema.", "Lungs are clear."]
    batch = build_decoder_inputs(tokenizer, prompts, reports)
    cls, sep, pad, rep = (
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids(REPORT_TOKEN),
    )
    rows = [[cls, *tokens_of(tokenizer, p), rep, *tokens_of(tokenizer, r), sep] for p, r in zip(prompts, reports)]
    width = max(map(len, rows))
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (2, width)
    for b, row in enumerate(rows):
        prefix = len(tokens_of(tokenizer, prompts[b])) + 2
        assert batch.prefix_lengths[b] == prefix
        assert batch.input_ids[b].tolist() == row + [pad] * (width - len(row))
        assert batch.attention_mask[b].tolist() == [1] * len(row) + [0] * (width - len(row))
        assert batch.labels[b].tolist() == [-100] * prefix + row[prefix:] + [-100] * (width - len(row))
        assert batch.input_ids[b, prefix - 1] == rep and batch.labels[b, len(row) - 1] == sep
    no_prompt = build_decoder_inputs(tokenizer, None, reports)
    assert no_prompt.prefix_lengths.tolist() == [2, 2]
    assert no_prompt.input_ids[1, :2].tolist() == [cls, rep]
    assert no_prompt.labels[1].tolist()[:2] == [-100, -100]
    with pytest.raises(ValueError, match="2 prompts"):
        build_decoder_inputs(tokenizer, prompts, reports[:1] * 3)


def test_truncation_cuts_only_the_report(tokenizer) -> None:
    prompt, report = "Findings: cardiomegaly, pleural effusion.", "The heart is enlarged. Mild pulmonary edema."
    prefix = len(tokens_of(tokenizer, prompt)) + 2
    batch = build_decoder_inputs(tokenizer, [prompt], [report], max_length=prefix + 3)
    ids = batch.input_ids[0].tolist()
    assert len(ids) == prefix + 3
    assert ids[1 : prefix - 1] == tokens_of(tokenizer, prompt)
    assert ids[prefix : prefix + 2] == tokens_of(tokenizer, report)[:2] and ids[-1] == tokenizer.sep_token_id
    assert batch.labels[0].tolist() == [-100] * prefix + ids[prefix:]
    only_end = build_decoder_inputs(tokenizer, [prompt], [report], max_length=prefix + 1)
    assert only_end.labels[0].tolist() == [-100] * prefix + [tokenizer.sep_token_id]
    with pytest.raises(ValueError, match="max_length"):
        build_decoder_inputs(tokenizer, [prompt], [report], max_length=prefix)


def test_build_prefix_is_left_padded(tokenizer) -> None:
    prompts = ["Findings: none.", "Findings: cardiomegaly, pleural effusion."]
    ids, mask = build_prefix(tokenizer, prompts, 2)
    rep = tokenizer.convert_tokens_to_ids(REPORT_TOKEN)
    short = [tokenizer.cls_token_id, *tokens_of(tokenizer, prompts[0]), rep]
    long = [tokenizer.cls_token_id, *tokens_of(tokenizer, prompts[1]), rep]
    assert ids[1].tolist() == long and mask[1].tolist() == [1] * len(long)
    gap = len(long) - len(short)
    assert gap > 0 and ids[0].tolist() == [tokenizer.pad_token_id] * gap + short
    assert mask[0].tolist() == [0] * gap + [1] * len(short)
    bare_ids, bare_mask = build_prefix(tokenizer, None, 3)
    assert bare_ids.tolist() == [[tokenizer.cls_token_id, rep]] * 3 and bare_mask.all()
    with pytest.raises(ValueError, match="2 prompts"):
        build_prefix(tokenizer, prompts, 3)


def test_decode_reports_round_trip_and_stops(tokenizer) -> None:
    reports = ["Small left pleural effusion. No pneumothorax.", "Endotracheal tube terminates 4 cm above the carina."]
    batch = build_decoder_inputs(tokenizer, ["Findings: none.", "Findings: support devices."], reports)
    generated = [row[p:] for row, p in zip(batch.input_ids, batch.prefix_lengths.tolist())]
    width = max(len(g) for g in generated)
    pad = tokenizer.pad_token_id
    gen = torch.stack([torch.cat([g, torch.full((width - len(g),), pad)]) for g in generated])
    expected = ["small left pleural effusion. no pneumothorax.", "endotracheal tube terminates 4 cm above the carina."]
    assert decode_reports(tokenizer, gen) == expected == normalize_reports(tokenizer, reports)
    # text after the first [SEP] or pad is dropped; specials inside are skipped
    sep, cls = tokenizer.sep_token_id, tokenizer.cls_token_id
    words = tokens_of(tokenizer, "no pneumothorax")
    rows = torch.tensor([[*words, sep, *words], [*words, pad, *words], [cls, *words, cls, cls]])
    assert decode_reports(tokenizer, rows) == ["no pneumothorax"] * 3
    assert decode_reports(tokenizer, torch.tensor([[sep, *words]])) == [""]


def test_hub_style_bert_tokenizer_works_too(tmp_path) -> None:
    """A hub decoder (e.g. ClinicalBERT) comes with a ``BertTokenizer``: same layout, same round trip."""
    from transformers import AutoTokenizer, BertTokenizer

    hub = BertTokenizer(vocab=train_wordpiece(CORPUS, vocab_size=300, min_frequency=1).get_vocab())
    rid = add_report_token(hub)
    assert add_report_token(hub) == rid == len(hub) - 1
    hub.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert add_report_token(reloaded) == rid and len(reloaded) == len(hub)
    report = "Small left pleural effusion. No pneumothorax."
    batch = build_decoder_inputs(reloaded, ["Findings: pleural effusion."], [report])
    assert batch.input_ids[0, 0] == reloaded.cls_token_id and batch.input_ids[0, -1] == reloaded.sep_token_id
    assert batch.input_ids[0, batch.prefix_lengths[0] - 1] == rid
    generated = batch.input_ids[:, batch.prefix_lengths[0] :]
    assert decode_reports(reloaded, generated) == ["small left pleural effusion. no pneumothorax."]
