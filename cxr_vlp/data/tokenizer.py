"""Tokenizers: a WordPiece tokenizer trained on the training reports (offline default) or a hub one.

The local tokenizer's vocabulary is learnt by :mod:`cxr_vlp.data.wordpiece_vocab` (deterministic); it is
built as a ``tokenizers`` WordPiece tokenizer and wrapped in ``PreTrainedTokenizerFast`` so it behaves like any
Hugging Face tokenizer. It is serialised into the checkpoint (:func:`tokenizer_to_json` /
:func:`tokenizer_from_json`) so a checkpoint is self-contained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from cxr_vlp.data.wordpiece_vocab import learn_wordpiece_vocab
from cxr_vlp.utils.files import chmod_like_new_file
from cxr_vlp.utils.hub import resolve_hf_model

log = logging.getLogger(__name__)
# part of the tokenizer cache key: change it whenever train_wordpiece changes what it builds, so that tokenizers
# cached by another algorithm are not reused
TOKENIZER_FORMAT = "wordpiece-deterministic-v1"
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def _word_counts(
    normalizer: normalizers.Normalizer, pre_tokenizer: pre_tokenizers.PreTokenizer, texts: Iterable[str]
) -> Counter[str]:
    """Occurrences of each word of ``texts`` as ``normalizer`` and ``pre_tokenizer`` split them."""
    counts: Counter[str] = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenizer training text {i} is a {type(text).__name__}, not a str: {text!r:.80}")
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer (``[CLS] text [SEP]``) on ``texts``.

    The vocabulary is learnt by :func:`~cxr_vlp.data.wordpiece_vocab.learn_wordpiece_vocab` (the ``tokenizers``
    WordPiece training algorithm with canonical ids and tie-breaking), so the tokenizer, and its JSON, are a function
    of the texts and settings alone: the same on every machine and in every process.
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True, strip_accents=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = list(SPECIAL_TOKENS.values())
    vocab = learn_wordpiece_vocab(
        _word_counts(normalizer, pre_tokenizer, texts),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
    )
    tok = Tokenizer(
        models.WordPiece(
            vocab={token: i for i, token in enumerate(vocab)},
            unk_token=SPECIAL_TOKENS["unk_token"],
            continuing_subword_prefix="##",
            max_input_chars_per_word=100,
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.add_special_tokens(specials)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return _wrap(tok)


def cached_wordpiece(
    texts: Iterable[str], cache_dir: str | Path, vocab_size: int = 4000, min_frequency: int = 2, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """:func:`train_wordpiece`, trained once per (texts, settings) and kept in ``cache_dir/<sha1>.json``.

    Training is deterministic, so the cache saves time rather than deciding the vocabulary: every run on the same
    training split and settings loads the file the first run wrote, identical to what it would train itself. The
    key includes :data:`TOKENIZER_FORMAT`, so files written by another training algorithm are not reused.
    Concurrent jobs race safely: the first file linked into place wins and everyone loads it.
    """
    texts = list(texts)
    digest = hashlib.sha1(json.dumps([TOKENIZER_FORMAT, vocab_size, min_frequency, lowercase]).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / f"wordpiece_{digest.hexdigest()[:16]}.json"
    if path.is_file():
        log.info("tokenizer: reusing %s (trained on the same %d training reports)", path, len(texts))
        return tokenizer_from_json(path.read_text())
    tokenizer = train_wordpiece(texts, vocab_size=vocab_size, min_frequency=min_frequency, lowercase=lowercase)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(tokenizer_to_json(tokenizer))
    chmod_like_new_file(tmp.name)  # NamedTemporaryFile makes 0600: colleagues sharing the cache could not read it
    try:
        os.link(tmp.name, path)  # fails if another job got there first: then its tokenizer is the one
        log.info("tokenizer: trained on %d training reports, saved to %s", len(texts), path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp.name)
    return tokenizer_from_json(path.read_text())


def tokenizer_to_json(tokenizer: PreTrainedTokenizerFast) -> str:
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(data: str) -> PreTrainedTokenizerFast:
    return _wrap(Tokenizer.from_str(data))


def build_tokenizer(
    kind: str,
    train_texts: Iterable[str] | None = None,
    name_or_path: str | None = None,
    vocab_size: int = 4000,
    min_frequency: int = 2,
    lowercase: bool = True,
    allow_download: bool = True,
    cache_dir: str | Path | None = None,
) -> PreTrainedTokenizerBase:
    """``kind="wordpiece"``: train on ``train_texts`` (once per texts and settings if ``cache_dir`` is given, see
    :func:`cached_wordpiece`); ``kind="pretrained"``: load ``name_or_path``."""
    if kind == "wordpiece":
        if train_texts is None:
            raise ValueError("a local WordPiece tokenizer needs the training report texts")
        if cache_dir is not None:
            return cached_wordpiece(
                train_texts, cache_dir, vocab_size=vocab_size, min_frequency=min_frequency, lowercase=lowercase
            )
        return train_wordpiece(train_texts, vocab_size=vocab_size, min_frequency=min_frequency, lowercase=lowercase)
    if kind == "pretrained":
        if not name_or_path:
            raise ValueError("tokenizer kind 'pretrained' needs name_or_path")
        return AutoTokenizer.from_pretrained(resolve_hf_model(name_or_path, allow_download=allow_download))
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'wordpiece' or 'pretrained'")
