"""A WordPiece vocabulary learnt from word counts, deterministic by construction.

The algorithm is the one of the ``tokenizers`` WordPiece trainer (a BPE trainer with continuing-subword prefix,
``tokenizers/src/models/bpe/trainer.rs``): start from the special tokens and every character seen; split each word
into its first character and ``##``-prefixed continuing characters; then repeatedly merge the most frequent adjacent
pair of symbols (the merged symbol is the left one followed by the right one without its prefix) until the
vocabulary holds ``vocab_size`` tokens or the most frequent pair occurs fewer than ``min_frequency`` times.

What ``tokenizers`` leaves to hash-map order is fixed here (huggingface/tokenizers#1794, where continuing-subword
ids, and through them merge ties, follow hash-map iteration order):

* ids: special tokens in the given order, then word characters by code point, then ``##`` characters by code
  point, then merged tokens in the order they are first made;
* ties between pairs of equal count go to the lexicographically smallest ``(left, right)`` pair of token strings
  (Python string order, i.e. by code point).

The vocabulary is therefore a function of the word counts and the settings alone.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence

Pair = tuple[str, str]


def _merge_word(symbols: list[str], pair: Pair, new: str) -> list[str]:
    """``symbols`` with every occurrence of ``pair`` merged into ``new``, left to right, without overlaps."""
    a, b = pair
    out: list[str] = []
    i, n = 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == a and symbols[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _pairs(symbols: list[str]) -> Counter[Pair]:
    return Counter(zip(symbols, symbols[1:]))


def initial_symbols(word: str, prefix: str = "##") -> list[str]:
    """A word's starting split: its first character, then each further character with ``prefix``."""
    return [c if i == 0 else prefix + c for i, c in enumerate(word)]


def merged_token(pair: Pair, prefix: str = "##") -> str:
    """The token a merge of ``pair`` makes: the left symbol followed by the right one without ``prefix``."""
    a, b = pair
    return a + (b[len(prefix) :] if b.startswith(prefix) else b)


def learn_wordpiece_vocab(
    word_counts: Mapping[str, int],
    vocab_size: int,
    min_frequency: int,
    special_tokens: Sequence[str],
    prefix: str = "##",
) -> list[str]:
    """The vocabulary, in id order, learnt from ``word_counts`` (pre-tokenised word -> occurrences).

    The result holds every special token and every character seen even where these alone exceed ``vocab_size``
    (as the ``tokenizers`` trainer does); merges only add tokens up to ``vocab_size``.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if min_frequency < 0:
        raise ValueError(f"min_frequency must be >= 0, got {min_frequency}")
    bad = [(w, c) for w, c in word_counts.items() if not w or c < 1]
    if bad:
        raise ValueError(f"word counts must be non-empty words with positive counts, got {bad[:3]}")
    vocab: list[str] = []
    seen: set[str] = set()

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            vocab.append(token)

    for token in special_tokens:
        add(token)
    for c in sorted({c for w in word_counts for c in w}):
        add(c)
    words = sorted(word_counts)  # a fixed order, so that nothing below depends on the mapping's order
    freqs = [word_counts[w] for w in words]
    splits = [initial_symbols(w, prefix) for w in words]
    for token in sorted({s for split in splits for s in split[1:]}):
        add(token)

    pair_counts: Counter[Pair] = Counter()
    where: dict[Pair, set[int]] = {}
    for i, split in enumerate(splits):
        for pair, k in _pairs(split).items():
            pair_counts[pair] += k * freqs[i]
            where.setdefault(pair, set()).add(i)
    # max-heap on count, ties to the smallest (left, right); an entry is stale once its pair's count has changed
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while heap and len(vocab) < vocab_size:
        neg, pair = heapq.heappop(heap)
        count = -neg
        if pair_counts.get(pair, 0) != count:
            continue
        if count < max(min_frequency, 1):
            break
        new = merged_token(pair, prefix)
        add(new)
        changed: set[Pair] = set()
        for i in list(where[pair]):
            old = splits[i]
            merged = _merge_word(old, pair, new)
            if len(merged) == len(old):
                continue
            splits[i] = merged
            delta = _pairs(merged)
            delta.subtract(_pairs(old))
            for p, k in delta.items():
                if k:
                    pair_counts[p] += k * freqs[i]
                    changed.add(p)
                    if k > 0:
                        where.setdefault(p, set()).add(i)
        for p in sorted(changed):
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    return vocab
