"""Report decoder: cross-attention, causality, padding, loss, overfitting, greedy and beam search, hub errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from cxr_vlp.data.tokenizer import train_wordpiece
from cxr_vlp.reportgen.decoder import ReportDecoder
from cxr_vlp.reportgen.prompts import FINDING_NAMES, concept_prompt
from cxr_vlp.reportgen.tokens import (
    add_report_token,
    build_decoder_inputs,
    build_prefix,
    decode_reports,
    normalize_reports,
    suppressed_token_ids,
)
from cxr_vlp.utils.hub import ModelNotAvailableError

REPORTS = [
    "The heart is enlarged. Small left pleural effusion.",
    "No acute cardiopulmonary process.",
    "Endotracheal tube terminates 4 cm above the carina. Lungs are clear.",
    "Mild pulmonary edema. No pneumothorax.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "Heart size is normal. The lungs are clear.",
]
PROMPTS = [
    concept_prompt(["Cardiomegaly", "Pleural Effusion"]),
    concept_prompt([]),
    concept_prompt(["Support Devices"]),
    concept_prompt(["Edema"]),
    concept_prompt(["Consolidation", "Pneumonia", "Lung Opacity"]),
    concept_prompt(["No Finding"]),  # the same prompt as REPORTS[1]: only the memory tells them apart
]
EXTRA = [
    "There is no focal consolidation, pleural effusion or pneumothorax.",
    "Stable cardiomediastinal silhouette. Degenerative changes of the spine.",
    "Interval placement of a right internal jugular central venous catheter.",
    "Bibasilar atelectasis. Possible small right pleural effusion.",
    "Moderate cardiomegaly with pulmonary vascular congestion.",
]
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=96,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
MEM_DIM = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and avoids 10x slowdowns from spinning threads on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = REPORTS + PROMPTS + EXTRA + [concept_prompt([name]) for name in FINDING_NAMES]
    tok = train_wordpiece(corpus * 2, vocab_size=400, min_frequency=1)
    add_report_token(tok)
    return tok


def make_decoder(vocab_size: int, seed: int = 0, **overrides) -> ReportDecoder:
    torch.manual_seed(seed)
    return ReportDecoder(vocab_size, MEM_DIM, local_config={**TINY, **overrides}).eval()


def seq_logprob(
    decoder: ReportDecoder, memory: torch.Tensor, prefix: list[int], generated: list[int], eos: int
) -> float:
    """Sum of log p(generated token) for one sample alone, up to and including the first EOS."""
    gen = generated[: generated.index(eos) + 1] if eos in generated else generated
    ids = torch.tensor([prefix + gen])
    with torch.no_grad():
        logp = F.log_softmax(decoder(ids, torch.ones_like(ids), memory[None]).double(), -1)[0]
    return sum(float(logp[len(prefix) - 1 + j, tok]) for j, tok in enumerate(gen))


def real_tokens(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


# ---------------------------------------------------------------- architecture and forward
def test_cross_attention_after_self_attention_in_every_layer() -> None:
    dec = make_decoder(50, num_hidden_layers=3)
    calls: list[tuple[str, int, tuple[int, ...] | None]] = []
    for i, layer in enumerate(dec.model.bert.encoder.layer):
        assert layer.crossattention.self.key.in_features == dec.hidden_size == 32
        layer.attention.register_forward_hook(lambda m, a, o, i=i: calls.append(("self", i, None)))
        layer.crossattention.register_forward_hook(lambda m, a, o, i=i: calls.append(("cross", i, tuple(a[2].shape))))
    ids = torch.randint(5, 50, (2, 6))
    for m in (1, 4):
        calls.clear()
        logits = dec(ids, torch.ones_like(ids), torch.randn(2, m, MEM_DIM))
        assert logits.shape == (2, 6, 50)
        expected = [c for i in range(3) for c in (("self", i, None), ("cross", i, (2, m, 32)))]
        assert calls == expected
    with pytest.raises(ValueError, match="memory must be"):
        dec(ids, torch.ones_like(ids), torch.randn(2, 3, MEM_DIM + 1))


def test_memory_conditions_the_logits_and_masked_slots_are_ignored() -> None:
    dec = make_decoder(50)
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.ones_like(ids)
    memory = torch.randn(2, 5, MEM_DIM)
    memory_mask = torch.tensor([[1, 1, 0, 1, 1], [1, 0, 1, 1, 0]])
    base = dec(ids, mask, memory, memory_mask)
    changed_masked = memory.clone()
    changed_masked[0, 2] += 3.0
    changed_masked[1, [1, 4]] -= 3.0
    torch.testing.assert_close(dec(ids, mask, changed_masked, memory_mask), base, atol=1e-6, rtol=0)
    changed_kept = memory.clone()
    changed_kept[:, 0] += 1.0
    assert (dec(ids, mask, changed_kept, memory_mask) - base).abs().amax(dim=(1, 2)).min() > 1e-3
    assert (dec(ids, mask, torch.randn(2, 1, MEM_DIM)) - base).abs().max() > 1e-3
    # a 2-D memory is the global embedding, M = 1
    torch.testing.assert_close(dec(ids, mask, memory[:, 0]), dec(ids, mask, memory[:, :1]))


def test_self_attention_is_causal() -> None:
    dec = make_decoder(60)
    ids = torch.randint(5, 60, (3, 10))
    mask = torch.ones_like(ids)
    memory = torch.randn(3, 2, MEM_DIM)
    base = dec(ids, mask, memory)
    t = 4
    future = ids.clone()
    future[:, t + 1 :] = torch.randint(5, 60, (3, 10 - t - 1))
    assert not torch.equal(future, ids)
    torch.testing.assert_close(dec(future, mask, memory)[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
    past = ids.clone()
    past[:, 2] = (past[:, 2] - 5 + 1) % 55 + 5  # a different token at position 2
    assert (dec(past, mask, memory)[:, t + 2] - base[:, t + 2]).abs().amax(-1).min() > 1e-4


def test_logits_do_not_depend_on_padding() -> None:
    dec = make_decoder(60)
    long, short = torch.randint(5, 60, (7,)), torch.randint(5, 60, (4,))
    memory = torch.randn(2, 3, MEM_DIM)
    alone = dec(short[None], torch.ones(1, 4, dtype=torch.long), memory[1:])[0]
    right = torch.stack([long, torch.cat([short, torch.zeros(3, dtype=torch.long)])])
    right_mask = (torch.arange(7) < torch.tensor([[7], [4]])).long()
    torch.testing.assert_close(dec(right, right_mask, memory)[1, :4], alone, atol=1e-5, rtol=0)
    left = torch.stack([long, torch.cat([torch.zeros(3, dtype=torch.long), short])])
    torch.testing.assert_close(dec(left, right_mask.flip(1), memory)[1, 3:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_loss_matches_a_slow_transcription(eps: float) -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 9, requires_grad=True)
    labels = torch.randint(0, 9, (2, 6))
    labels[0, :3] = -100
    labels[1, 5] = -100
    labels[1, 0] = -100
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            logp = [float(v) for v in torch.log_softmax(logits[b, t].detach().double(), -1)]
            nll = -logp[target]
            total += (1 - eps) * nll + eps * sum(-v for v in logp) / len(logp)
            count += 1
    loss = ReportDecoder.loss(logits, labels, label_smoothing=eps)
    assert count == 7
    assert math.isclose(loss.item(), total / count, rel_tol=1e-5)
    # positions whose next token is ignored (or that have no next token) get no gradient; the others do
    loss.backward()
    grad = logits.grad.abs().sum(-1)
    assert grad[0, :2].eq(0).all() and grad[1, 4] == 0 and grad[:, 5].eq(0).all()
    assert grad[0, 2:5].gt(0).all() and grad[1, :4].gt(0).all()
    logits.grad = None
    nothing = ReportDecoder.loss(logits, torch.full_like(labels, -100))
    nothing.backward()
    assert nothing.item() == 0.0 and logits.grad is not None


# ---------------------------------------------------------------- training and generation
@pytest.fixture(scope="module")
def overfit(tokenizer):
    """A tiny decoder trained until it reproduces 6 reports from their prompts and own memory vectors."""
    torch.manual_seed(0)
    dec = ReportDecoder(len(tokenizer), MEM_DIM, local_config={**TINY, "hidden_size": 64, "intermediate_size": 128})
    batch = build_decoder_inputs(tokenizer, PROMPTS, REPORTS)
    memory = torch.randn(len(REPORTS), 1, MEM_DIM)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    dec.train()
    for _ in range(400):
        loss = dec.loss(dec(batch.input_ids, batch.attention_mask, memory), batch.labels)
        if loss.item() < 0.01:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    assert loss.item() < 0.01
    return dec, memory


def test_overfit_decoder_reproduces_every_report_greedily(tokenizer, overfit) -> None:
    dec, memory = overfit
    ids, mask = build_prefix(tokenizer, PROMPTS, len(PROMPTS))
    sep = tokenizer.sep_token_id
    out = dec.generate(memory, None, ids, mask, max_new_tokens=40, eos_token_id=sep)
    assert decode_reports(tokenizer, out) == normalize_reports(tokenizer, REPORTS)
    # EOS stops each row; everything after it is padding; the longest row sets the width
    lengths = []
    for row in out.tolist():
        end = row.index(sep)
        assert all(t == tokenizer.pad_token_id for t in row[end + 1 :])
        assert all(t != tokenizer.pad_token_id for t in row[:end])
        lengths.append(end + 1)
    assert out.shape[1] == max(lengths) and len(set(lengths)) > 1
    # without the KV cache: the same tokens
    assert torch.equal(dec.generate(memory, None, ids, mask, max_new_tokens=40, eos_token_id=sep, use_cache=False), out)
    # min_new_tokens: no EOS before it; rows that were long enough are unchanged
    at_least = 8
    forced = dec.generate(memory, None, ids, mask, max_new_tokens=40, min_new_tokens=at_least, eos_token_id=sep)
    assert sorted(lengths)[0] - 1 < at_least < max(lengths) - 1
    for b, row in enumerate(forced.tolist()):
        assert row.index(sep) >= at_least
        if lengths[b] - 1 >= at_least:
            assert row[: lengths[b]] == out[b, : lengths[b]].tolist()
    # the memory matters: samples 1 and 5 share their prompt; swapping their memories swaps their reports
    swapped = dec.generate(memory[[5, 1]], None, ids[[1, 5]], mask[[1, 5]], max_new_tokens=40, eos_token_id=sep)
    assert decode_reports(tokenizer, swapped) == normalize_reports(tokenizer, [REPORTS[5], REPORTS[1]])


def test_beam_search_on_the_overfit_decoder(tokenizer, overfit) -> None:
    dec, memory = overfit
    ids, mask = build_prefix(tokenizer, PROMPTS, len(PROMPTS))
    sep = tokenizer.sep_token_id
    greedy = dec.generate(memory, None, ids, mask, max_new_tokens=40, eos_token_id=sep)
    beam = dec.generate(memory, None, ids, mask, max_new_tokens=40, eos_token_id=sep, num_beams=4, length_penalty=0.0)
    assert decode_reports(tokenizer, beam) == normalize_reports(tokenizer, REPORTS)
    prefixes = real_tokens(ids, mask)
    for b in range(len(REPORTS)):
        s_beam = seq_logprob(dec, memory[b], prefixes[b], beam[b].tolist(), sep)
        s_greedy = seq_logprob(dec, memory[b], prefixes[b], greedy[b].tolist(), sep)
        assert s_beam >= s_greedy - 1e-6
    # max_new_tokens is respected (no EOS reached: rows are cut, not padded)
    short = dec.generate(memory, None, ids, mask, max_new_tokens=3, eos_token_id=sep, num_beams=3)
    assert short.shape == (len(REPORTS), 3)
    assert torch.equal(dec.generate(memory, None, ids, mask, max_new_tokens=3, eos_token_id=sep), greedy[:, :3])


def test_beam_search_is_exact_when_the_beam_covers_the_vocabulary() -> None:
    """With two new tokens and num_beams >= vocabulary, beam search must find the best sequence of all."""
    vocab, eos, pad = 7, 3, 0
    dec = make_decoder(vocab, seed=3)
    memory = torch.randn(3, 2, MEM_DIM)
    prefixes = [[2, 5], [2, 6, 4, 5, 1], [2]]
    width = max(map(len, prefixes))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prefixes])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes])
    tokens = [t for t in range(vocab) if t != pad]  # pad is never generated
    candidates = [[eos]] + [[a, b] for a, b in itertools.product(tokens, tokens) if a != eos]
    pairs = torch.tensor([c for c in candidates if len(c) == 2])
    raw = []  # per sample: the log-probability of every candidate, scored in one forward pass
    for b, prefix in enumerate(prefixes):
        seqs = torch.cat([torch.tensor(prefix).expand(len(pairs), -1), pairs], 1)
        with torch.no_grad():
            logits = dec(seqs, torch.ones_like(seqs), memory[b].expand(len(pairs), -1, -1))
        logp = F.log_softmax(logits.double(), -1)
        first = logp[:, len(prefix) - 1].gather(1, pairs[:, :1])[:, 0]
        second = logp[:, len(prefix)].gather(1, pairs[:, 1:])[:, 0]
        raw.append([float(logp[0, len(prefix) - 1, eos])] + (first + second).tolist())
    assert math.isclose(raw[1][5], seq_logprob(dec, memory[1], prefixes[1], candidates[5], eos), abs_tol=1e-5)
    for lp in (0.0, 1.0):
        out = dec.generate(
            memory, None, ids, mask, max_new_tokens=2, eos_token_id=eos, num_beams=vocab, length_penalty=lp
        )
        for b in range(len(prefixes)):
            scored = sorted(((s / len(c) ** lp, c) for s, c in zip(raw[b], candidates)), reverse=True)
            best = scored[0][1]
            assert scored[0][0] > scored[1][0] + 1e-6  # a unique optimum, so the comparison is exact
            assert out[b, : len(best)].tolist() == best, (lp, b)
            assert all(t == pad for t in out[b, len(best) :].tolist())


def test_batched_generation_equals_one_sample_at_a_time(tokenizer) -> None:
    dec = make_decoder(len(tokenizer), seed=5)
    prompts = [PROMPTS[4], PROMPTS[1], PROMPTS[0]]
    memory = torch.randn(3, 4, MEM_DIM)
    memory_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]])
    ids, mask = build_prefix(tokenizer, prompts, 3)
    assert mask[:, 0].tolist() != [1, 1, 1]  # the prefixes really differ in length
    sep = tokenizer.sep_token_id
    settings = [dict(num_beams=1), dict(num_beams=3, length_penalty=1.0), dict(num_beams=2, no_repeat_ngram_size=2)]
    for kw in settings:
        batched = dec.generate(memory, memory_mask, ids, mask, max_new_tokens=12, eos_token_id=sep, **kw)
        assert batched.shape[1] <= 12
        for b in range(3):
            one_ids, one_mask = build_prefix(tokenizer, prompts[b : b + 1], 1)
            alone = dec.generate(
                memory[b : b + 1], memory_mask[b : b + 1], one_ids, one_mask, max_new_tokens=12, eos_token_id=sep, **kw
            )
            row = batched[b, : alone.shape[1]]
            assert torch.equal(row, alone[0]), kw
            assert all(t == tokenizer.pad_token_id for t in batched[b, alone.shape[1] :].tolist())
        no_cache = dec.generate(
            memory, memory_mask, ids, mask, max_new_tokens=12, eos_token_id=sep, use_cache=False, **kw
        )
        assert torch.equal(no_cache, batched), kw
    # right-padded prefixes are accepted too (they are left-aligned inside generate)
    right_ids = torch.stack([torch.cat([r[m.bool()], r[~m.bool()]]) for r, m in zip(ids, mask)])
    right_mask = mask.sort(dim=1, descending=True).values
    assert torch.equal(
        dec.generate(memory, memory_mask, right_ids, right_mask, max_new_tokens=12, eos_token_id=sep),
        dec.generate(memory, memory_mask, ids, mask, max_new_tokens=12, eos_token_id=sep),
    )


def test_beam_with_one_beam_is_greedy(tokenizer) -> None:
    """The beam search itself (not the greedy shortcut) with k = 1 and no length penalty is greedy search."""
    from cxr_vlp.reportgen.decoder import _Search

    dec = make_decoder(len(tokenizer), seed=7)
    memory = torch.randn(6, 1, MEM_DIM)
    ids, mask = build_prefix(tokenizer, PROMPTS, 6)
    sep = tokenizer.sep_token_id
    ends = set()
    for eos_bias in (0.0, 0.15, 0.3):  # a random model rarely ends: raise EOS's bias to end at various steps
        with torch.no_grad():
            dec.model.cls.predictions.bias[sep] = eos_bias
        greedy = dec.generate(memory, None, ids, mask, max_new_tokens=15, eos_token_id=sep)
        search = _Search(dec, dec.project_memory(memory), None, [tokenizer.pad_token_id], sep, 0, 0, True)
        assert torch.equal(search.beam(ids, mask, 15, 1, 0.0), greedy), eos_bias
        ends |= {row.index(sep) if sep in row else None for row in greedy.tolist()}
    assert None in ends and ends - {None, 0}  # both unended rows and rows ending mid-way were checked


def test_kv_cache_steps_follow_the_beam_reordering() -> None:
    """One sample, four beams with different histories: after reordering, the cached step must give the log-probs
    of the reordered sequences recomputed from scratch (and not those of the old order)."""
    from cxr_vlp.reportgen.decoder import _Search

    dec = make_decoder(40, seed=13)
    memory = torch.randn(1, 3, MEM_DIM)
    ids = torch.tensor([[0, 2, 7, 9], [2, 11, 12, 13], [0, 0, 2, 20], [2, 30, 31, 32]])
    mask = (ids != 0).long()
    enc = dec.project_memory(memory).expand(4, -1, -1)

    def scratch(seqs: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(dec(seqs, seq_mask, memory.expand(4, -1, -1))[:, -1], -1)

    search = _Search(dec, enc, None, [], 3, 0, 0, use_cache=True)
    torch.testing.assert_close(search._start(ids, mask), scratch(ids, mask), atol=1e-5, rtol=0)
    for rows, tokens in (([2, 0, 3, 3], [5, 6, 7, 8]), ([1, 1, 0, 2], [9, 9, 10, 4])):
        rows_t, tokens_t = torch.tensor(rows), torch.tensor(tokens)
        ones = torch.ones(4, 1, dtype=torch.long)
        stale_ids, stale_mask = torch.cat([ids, tokens_t[:, None]], 1), torch.cat([mask, ones], 1)
        ids, mask = torch.cat([ids[rows_t], tokens_t[:, None]], 1), torch.cat([mask[rows_t], ones], 1)
        logp = search._step(tokens_t, rows_t)
        torch.testing.assert_close(logp, scratch(ids, mask), atol=1e-5, rtol=0)
        assert (logp - scratch(stale_ids, stale_mask)).abs().max() > 1e-3  # the control: the order matters


def test_length_limits_suppressed_tokens_and_ngrams(tokenizer) -> None:
    dec = make_decoder(len(tokenizer), seed=11)
    memory = torch.randn(2, 1, MEM_DIM)
    ids, mask = build_prefix(tokenizer, None, 2)
    sep, pad = tokenizer.sep_token_id, tokenizer.pad_token_id
    banned = suppressed_token_ids(tokenizer)
    assert sep not in banned and pad in banned and tokenizer.cls_token_id in banned
    for beams in (1, 3):
        out = dec.generate(
            memory,
            None,
            ids,
            mask,
            max_new_tokens=6,
            min_new_tokens=6,
            eos_token_id=sep,
            num_beams=beams,
            suppress_token_ids=banned,
        )
        assert out.shape == (2, 6)
        assert not set(out.flatten().tolist()) & {sep, *banned}
        for text in decode_reports(tokenizer, out):
            assert text and not any(s in text for s in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "<report>"))
        long = dec.generate(
            memory,
            None,
            ids,
            mask,
            max_new_tokens=30,
            min_new_tokens=30,
            eos_token_id=sep,
            num_beams=beams,
            no_repeat_ngram_size=2,
        )
        for row in long.tolist():
            bigrams = list(zip(row, row[1:]))
            assert len(bigrams) == 29 and len(set(bigrams)) == len(bigrams)
    assert dec.generate(memory, None, ids, mask, max_new_tokens=0, eos_token_id=sep).shape == (2, 0)
    dec.train()
    dec.generate(memory, None, ids, mask, max_new_tokens=2, eos_token_id=sep)
    assert dec.training  # generate runs in eval mode and restores the mode


# ---------------------------------------------------------------- hub checkpoints
def test_unknown_hub_name_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="not in the Hugging Face cache"):
        ReportDecoder(100, MEM_DIM, name_or_path="cxr-vlp-tests/no-such-decoder-4242")


def test_local_bert_checkpoint_becomes_a_decoder(tmp_path: Path) -> None:
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    encoder = BertModel(cfg, add_pooling_layer=False)
    encoder.save_pretrained(tmp_path / "tiny-bert")
    dec = ReportDecoder(45, MEM_DIM, name_or_path=str(tmp_path / "tiny-bert")).eval()
    assert dec.model.config.is_decoder and dec.model.config.add_cross_attention
    assert dec.model.get_input_embeddings().weight.shape == (45, 16) and dec.vocab_size == 45
    torch.testing.assert_close(
        dec.model.bert.encoder.layer[1].attention.self.query.weight,
        encoder.encoder.layer[1].attention.self.query.weight,
    )
    torch.testing.assert_close(dec.model.get_input_embeddings().weight[:40], encoder.embeddings.word_embeddings.weight)
    ids = torch.randint(5, 45, (2, 5))
    assert dec(ids, torch.ones_like(ids), torch.randn(2, 3, MEM_DIM)).shape == (2, 5, 45)
    scratch = ReportDecoder(40, MEM_DIM, name_or_path=str(tmp_path / "tiny-bert"), pretrained=False)
    assert not torch.equal(
        scratch.model.bert.encoder.layer[1].attention.self.query.weight,
        encoder.encoder.layer[1].attention.self.query.weight,
    )
