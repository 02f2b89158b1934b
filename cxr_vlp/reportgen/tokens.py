"""Token layout of the report decoder: ``[CLS] prompt <report> report [SEP]``.

The prompt (concept findings, optional) is context only; the decoder learns to predict the report and its
end, the final ``[SEP]``. Texts are tokenised without the tokenizer's own specials and the specials are
placed here, so the layout does not depend on the tokenizer's post-processor.

Padding: training inputs are right-padded (to the longest sequence of the batch); generation prefixes are
left-padded so that every row's next token goes in the same column. The decoder derives position ids from
the attention mask, so both layouts give each token the position it has alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

REPORT_TOKEN = "<report>"
IGNORE_INDEX = -100


def add_report_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``<report>`` as an extra special token (idempotent) and return its id.

    Call it again after restoring a tokenizer from JSON: the token is in the vocabulary already (same id)
    and is registered as special once more.
    """
    tokenizer.add_special_tokens({"extra_special_tokens": [REPORT_TOKEN]}, replace_extra_special_tokens=False)
    token_id = tokenizer.convert_tokens_to_ids(REPORT_TOKEN)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != REPORT_TOKEN:
        raise RuntimeError(f"could not add {REPORT_TOKEN!r} to the tokenizer")
    return int(token_id)


def report_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of ``<report>``; ValueError if :func:`add_report_token` was not called."""
    token_id = tokenizer.convert_tokens_to_ids(REPORT_TOKEN)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != REPORT_TOKEN:
        raise ValueError(f"the tokenizer has no {REPORT_TOKEN!r} token; call add_report_token(tokenizer) first")
    return int(token_id)


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int, int, int]:
    ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    if any(i is None for i in ids):
        raise ValueError("the report decoder needs a BERT-style tokenizer with [CLS], [SEP] and [PAD] tokens")
    return (*ids, report_token_id(tokenizer))  # type: ignore[return-value]


def suppressed_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Special ids that generation should never produce: every special token except ``[SEP]`` (end of report)."""
    sep = tokenizer.sep_token_id
    ids = set(tokenizer.all_special_ids) | {report_token_id(tokenizer)}
    return sorted(i for i in ids if i != sep)


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str] | None, batch_size: int) -> list[list[int]]:
    if prompts is None:
        return [[] for _ in range(batch_size)]
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch_size}")
    return _tokenize(tokenizer, prompts)


@dataclass
class DecoderInputs:
    """A right-padded decoder batch. ``labels`` are -100 except on report tokens and the final ``[SEP]``;
    ``prefix_lengths`` counts ``[CLS] prompt <report>`` per row."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    labels: torch.Tensor  # [B, L] long
    prefix_lengths: torch.Tensor  # [B] long

    def to(self, device: torch.device | str) -> DecoderInputs:
        return DecoderInputs(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.prefix_lengths))
        )


def build_decoder_inputs(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str] | None, reports: list[str], max_length: int = 128
) -> DecoderInputs:
    """``[CLS] prompt <report> report [SEP]`` per row, right-padded to the longest row (at most ``max_length``).

    Truncation shortens the report only; the prompt, ``<report>`` and the final ``[SEP]`` are always kept
    (ValueError if they alone exceed ``max_length``). ``prompts=None`` gives ``[CLS] <report> report [SEP]``.
    """
    cls_id, sep_id, pad_id, rep_id = _special_ids(tokenizer)
    prompt_ids = _prompt_ids(tokenizer, prompts, len(reports))
    report_ids = _tokenize(tokenizer, reports)
    rows, prefix_lengths, label_rows = [], [], []
    for prompt, report in zip(prompt_ids, report_ids):
        prefix = [cls_id, *prompt, rep_id]
        budget = max_length - len(prefix) - 1
        if budget < 0:
            raise ValueError(
                f"the prompt takes {len(prefix) + 1} tokens with the specials, more than max_length={max_length}"
            )
        target = [*report[:budget], sep_id]
        rows.append(prefix + target)
        label_rows.append([IGNORE_INDEX] * len(prefix) + target)
        prefix_lengths.append(len(prefix))
    length = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (row, lab) in enumerate(zip(rows, label_rows)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        labels[i, : len(row)] = torch.tensor(lab)
    return DecoderInputs(input_ids, attention_mask, labels, torch.tensor(prefix_lengths, dtype=torch.long))


def build_prefix(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str] | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation prefixes ``[CLS] prompt <report>``, LEFT-padded: ``(ids [B, P], mask [B, P])``."""
    cls_id, _, pad_id, rep_id = _special_ids(tokenizer)
    rows = [[cls_id, *p, rep_id] for p in _prompt_ids(tokenizer, prompts, batch_size)]
    length = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row)
        mask[i, length - len(row) :] = 1
    return ids, mask


def decode_reports(tokenizer: PreTrainedTokenizerBase, generated_ids: torch.Tensor) -> list[str]:
    """Text of each generated row: cut at the first ``[SEP]`` or pad, specials skipped, WordPiece joined."""
    stops = {tokenizer.sep_token_id, tokenizer.pad_token_id} - {None}
    texts = []
    for row in generated_ids.detach().cpu().tolist():
        end = next((j for j, tok in enumerate(row) if tok in stops), len(row))
        text = tokenizer.decode(row[:end], skip_special_tokens=True, clean_up_tokenization_spaces=True)
        texts.append(" ".join(text.split()))
    return texts


def normalize_reports(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[str]:
    """What a perfect decoder would output for ``texts``: tokenise then :func:`decode_reports` (lowercasing,
    WordPiece spacing such as ``x - ray``); compare generated reports with these references."""
    ids = _tokenize(tokenizer, texts)
    length = max((len(r) for r in ids), default=0)
    pad = tokenizer.pad_token_id
    batch = torch.tensor([r + [pad] * (length - len(r)) for r in ids], dtype=torch.long).reshape(len(ids), length)
    return decode_reports(tokenizer, batch)
