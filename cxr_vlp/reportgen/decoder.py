"""The report decoder: a causal BERT with cross-attention to the (frozen) image tower's features.

CLIP-XRad §III-D: every Transformer block gets a cross-attention layer after its self-attention, and a
language-modelling head predicts the next token. The image memory ``[B, M, memory_dim]`` (M = 1 for the
global embedding, or 1 + patch tokens) is projected to the decoder width by ``memory_proj``.

Generation is our own batched greedy and beam search over HF's KV cache (``use_cache=False`` recomputes
the whole sequence each step; the tests check both agree). Prefixes are left-padded so that every row
writes its next token in the same column; BERT's absolute positions are derived from the attention mask
(``cumsum - 1``) everywhere, in training too, so a token has the same position whatever the padding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, BertLMHeadModel

from cxr_vlp.models.text_encoder import LOCAL_BERT_DEFAULTS
from cxr_vlp.utils.hub import resolve_hf_model

log = logging.getLogger(__name__)

# Architectures whose absolute position ids start at 0 and whose causal LM accepts cross-attention.
SUPPORTED_MODEL_TYPES = ("bert",)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens: ``[0, 0, 0, 1, 2]`` for the mask ``[0, 0, 1, 1, 1]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class ReportDecoder(nn.Module):
    """``(input_ids [B, L], attention_mask [B, L], memory [B, M, memory_dim], memory_mask [B, M]) -> logits [B, L, V]``.

    ``name_or_path=None`` builds a small local BERT (``LOCAL_BERT_DEFAULTS`` updated by ``local_config``);
    a hub name or directory loads a BERT checkpoint (e.g. ClinicalBERT) as a decoder: its self-attention,
    feed-forward and embeddings are pretrained, its cross-attention layers are newly initialised.
    ``local_config`` is ignored for hub models.
    """

    def __init__(
        self,
        vocab_size: int,
        memory_dim: int,
        name_or_path: str | None = None,
        pretrained: bool = True,
        local_config: dict | None = None,
        allow_download: bool = True,
        pad_token_id: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.pad_token_id = pad_token_id
        if name_or_path is None:
            config = BertConfig(
                vocab_size=vocab_size,
                pad_token_id=pad_token_id,
                is_decoder=True,
                add_cross_attention=True,
                **{**LOCAL_BERT_DEFAULTS, **(local_config or {})},
            )
            self.model = BertLMHeadModel(config)
        else:
            path = resolve_hf_model(name_or_path, allow_download=allow_download)
            config = AutoConfig.from_pretrained(path, is_decoder=True, add_cross_attention=True)
            if config.model_type not in SUPPORTED_MODEL_TYPES:
                raise ValueError(
                    f"{name_or_path!r} is a {config.model_type!r} model; the report decoder supports "
                    f"BERT-architecture checkpoints ({', '.join(SUPPORTED_MODEL_TYPES)})"
                )
            if pretrained:
                self.model, info = AutoModelForCausalLM.from_pretrained(path, config=config, output_loading_info=True)
                new = info.get("missing_keys", [])
                log.info(
                    "report decoder from %s: %d weight tensors are new (randomly initialised): the cross-"
                    "attention of every layer%s",
                    name_or_path,
                    len(new),
                    " and the LM head" if any(k.startswith("cls.") for k in new) else "",
                )
            else:
                self.model = AutoModelForCausalLM.from_config(config)
            if vocab_size > self.model.config.vocab_size:
                self.model.resize_token_embeddings(vocab_size)
        layers = self.model.bert.encoder.layer
        if not all(hasattr(layer, "crossattention") for layer in layers):
            raise RuntimeError("the decoder was built without cross-attention layers")
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.hidden_size: int = self.model.config.hidden_size
        self.vocab_size: int = self.model.config.vocab_size
        self.memory_dim = memory_dim
        self.memory_proj = nn.Sequential(nn.Linear(memory_dim, self.hidden_size), nn.LayerNorm(self.hidden_size))

    # ------------------------------------------------------------------ forward and loss
    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """``[B, M, memory_dim]`` (or ``[B, memory_dim]``, taken as M = 1) -> ``[B, M, hidden]``."""
        if memory.ndim == 2:
            memory = memory.unsqueeze(1)
        if memory.ndim != 3 or memory.shape[-1] != self.memory_dim:
            raise ValueError(f"memory must be [B, M, {self.memory_dim}], got {tuple(memory.shape)}")
        return self.memory_proj(memory)

    def _run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_states: torch.Tensor,
        memory_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        cache: object | None = None,
        use_cache: bool = False,
    ):
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=memory_mask,
            past_key_values=cache,
            use_cache=use_cache,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits at every position; padding may be on either side."""
        return self._run(input_ids, attention_mask, self.project_memory(memory), memory_mask).logits

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean next-token cross-entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]``; -100 is ignored.

        With label smoothing ε each target costs ``(1 - ε) * NLL + ε * mean_v(-log p_v)``. Zero (with grad)
        when there is no target.
        """
        pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
        target = labels[:, 1:].reshape(-1)
        per_token = F.cross_entropy(pred, target, ignore_index=-100, reduction="none", label_smoothing=label_smoothing)
        return per_token.sum() / (target != -100).sum().clamp_min(1)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        prefix_ids: torch.Tensor,
        prefix_mask: torch.Tensor,
        *,
        max_new_tokens: int = 100,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        eos_token_id: int,
        no_repeat_ngram_size: int = 0,
        suppress_token_ids: Sequence[int] = (),
        use_cache: bool = True,
    ) -> torch.Tensor:
        """The continuation after each prefix, ``[B, T]`` with ``T <= max_new_tokens``, pad after EOS.

        Greedy when ``num_beams == 1``, else beam search; a hypothesis scores ``sum log p / length **
        length_penalty`` (length = generated tokens, EOS included). EOS is forbidden before
        ``min_new_tokens``; the pad token and ``suppress_token_ids`` are never generated; no n-gram of
        ``no_repeat_ngram_size`` repeats within the generated report (the prompt is not counted). Prefixes
        may be padded on either side (they are left-aligned here). Runs in eval mode.
        """
        if num_beams < 1 or max_new_tokens < 0:
            raise ValueError("need num_beams >= 1 and max_new_tokens >= 0")
        was_training = self.training
        self.eval()
        try:
            enc = self.project_memory(memory)
            order = torch.argsort(prefix_mask.long(), dim=1, stable=True)  # pads first, tokens keep their order
            ids, mask = prefix_ids.gather(1, order), prefix_mask.long().gather(1, order)
            if max_new_tokens == 0:
                return ids.new_zeros((ids.shape[0], 0))
            banned = sorted({self.pad_token_id, *suppress_token_ids} - {eos_token_id})
            search = _Search(
                self, enc, memory_mask, banned, eos_token_id, min_new_tokens, no_repeat_ngram_size, use_cache
            )
            if num_beams == 1:
                return search.greedy(ids, mask, max_new_tokens)
            return search.beam(ids, mask, max_new_tokens, num_beams, length_penalty)
        finally:
            self.train(was_training)


class _Search:
    """Greedy and beam search over a ReportDecoder, with or without the KV cache."""

    def __init__(
        self,
        decoder: ReportDecoder,
        enc: torch.Tensor,
        memory_mask: torch.Tensor | None,
        banned: list[int],
        eos: int,
        min_new_tokens: int,
        ngram: int,
        use_cache: bool,
    ) -> None:
        self.decoder, self.enc, self.memory_mask = decoder, enc, memory_mask
        self.banned, self.eos, self.pad = banned, eos, decoder.pad_token_id
        self.min_new_tokens, self.ngram, self.use_cache = min_new_tokens, ngram, use_cache

    def _expand(self, repeats: int) -> None:
        if repeats > 1:
            self.enc = self.enc.repeat_interleave(repeats, 0)
            if self.memory_mask is not None:
                self.memory_mask = self.memory_mask.repeat_interleave(repeats, 0)

    def _start(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the prefix; keep what the next steps need; return the log-probs of the first new token."""
        self.ids, self.mask = ids, mask
        out = self.decoder._run(ids, mask, self.enc, self.memory_mask, use_cache=self.use_cache)
        self.cache = out.past_key_values if self.use_cache else None
        return F.log_softmax(out.logits[:, -1].float(), dim=-1)

    def _step(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``tokens [N]`` (after reordering the rows by ``rows`` for beam search); next log-probs."""
        if rows is not None:
            self.ids, self.mask = self.ids[rows], self.mask[rows]
            if self.cache is not None:
                self.cache.reorder_cache(rows)
        self.ids = torch.cat([self.ids, tokens[:, None]], 1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        if self.cache is None:
            logits = self.decoder._run(self.ids, self.mask, self.enc, self.memory_mask).logits[:, -1]
        else:
            position = positions_from_mask(self.mask)[:, -1:]
            logits = self.decoder._run(
                self.ids[:, -1:], self.mask, self.enc, self.memory_mask, position, self.cache, use_cache=True
            ).logits[:, -1]
        return F.log_softmax(logits.float(), dim=-1)

    def _constrain(self, logp: torch.Tensor, step: int, history: list[list[int]]) -> torch.Tensor:
        """Ban (in place) suppressed tokens, EOS before ``min_new_tokens`` and tokens that would repeat an n-gram."""
        logp[:, self.banned] = -math.inf
        if step < self.min_new_tokens:
            logp[:, self.eos] = -math.inf
        n = self.ngram
        if n > 0 and step >= n - 1:
            for row, hist in enumerate(history):
                key = tuple(hist[len(hist) - n + 1 :]) if n > 1 else ()
                seen = [hist[i + n - 1] for i in range(len(hist) - n + 1) if tuple(hist[i : i + n - 1]) == key]
                if seen:
                    logp[row, seen] = -math.inf
        return logp

    def greedy(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """The most likely next token at every step; rows that have emitted EOS continue with pad."""
        logp = self._start(ids, mask)
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        out: list[torch.Tensor] = []
        history: list[list[int]] = [[] for _ in range(ids.shape[0])]
        for step in range(max_new_tokens):
            token = self._constrain(logp, step, history).argmax(-1)
            token = torch.where(finished, torch.full_like(token, self.pad), token)
            out.append(token)
            finished |= token == self.eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            if self.ngram > 0:
                for hist, tok in zip(history, token.tolist()):
                    hist.append(tok)
            logp = self._step(token)
        return torch.stack(out, 1)

    def beam(
        self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, k: int, length_penalty: float
    ) -> torch.Tensor:
        """Beam search with a store of finished hypotheses per sample (EOS kept when ranked within the top k).

        A sample stops when no live beam can still beat its best finished hypothesis: scores only fall as
        tokens are added, so ``s / n ** length_penalty`` is bounded by its value at the shortest or the
        longest possible length. Unfinished beams at ``max_new_tokens`` are candidates too.
        """
        batch, device = ids.shape[0], ids.device
        self._expand(k)
        logp = self._start(ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0))
        scores = torch.full((batch, k), -math.inf, device=device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        history: list[list[int]] = [[] for _ in range(batch * k)]
        best: list[tuple[float, list[int]] | None] = [None] * batch
        done = [False] * batch

        def norm(score: float, length: int) -> float:
            return score / length**length_penalty

        def offer(b: int, score: float, tokens: list[int]) -> None:
            value = norm(score, len(tokens))
            if best[b] is None or value > best[b][0]:
                best[b] = (value, tokens)

        for step in range(max_new_tokens):
            logp = self._constrain(logp, step, history)
            vocab = logp.shape[-1]
            cand = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab)
            top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)
            top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
            new_scores = [[-math.inf] * k for _ in range(batch)]
            new_rows = [[b * k] * k for b in range(batch)]
            new_tokens = [[self.pad] * k for _ in range(batch)]
            last = step == max_new_tokens - 1
            for b in range(batch):
                if done[b]:
                    continue
                slot = 0
                for rank, (score, idx) in enumerate(zip(top_scores[b], top_idx[b])):
                    if score == -math.inf or slot == k:
                        break
                    beam, token = divmod(idx, vocab)
                    tokens = history[b * k + beam] + [token]
                    if token == self.eos:
                        if rank < k:
                            offer(b, score, tokens)
                        continue
                    if last:
                        offer(b, score, tokens)
                    new_scores[b][slot], new_rows[b][slot], new_tokens[b][slot] = score, b * k + beam, token
                    slot += 1
                live = new_scores[b][0]  # the best live beam; its score can only fall from here
                bound = max(norm(live, step + 2), norm(live, max_new_tokens)) if slot else -math.inf
                done[b] = last or slot == 0 or (best[b] is not None and bound <= best[b][0])
            if all(done):
                break
            rows = [r for row in new_rows for r in row]
            flat_tokens = [t for row in new_tokens for t in row]
            history = [history[r] + [t] for r, t in zip(rows, flat_tokens)]
            scores = torch.tensor(new_scores, device=device)
            logp = self._step(torch.tensor(flat_tokens, device=device), torch.tensor(rows, device=device))
        seqs = [entry[1] if entry is not None else [] for entry in best]
        width = max((len(s) for s in seqs), default=0)
        out = torch.full((batch, width), self.pad, dtype=torch.long)
        for b, seq in enumerate(seqs):
            out[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out.to(device)
