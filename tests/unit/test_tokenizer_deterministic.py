"""The local WordPiece tokenizer is a function of its training texts and settings: same files in any process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cxr_vlp.data import tokenizer as tokenizer_module
from cxr_vlp.data.synthetic import _table
from cxr_vlp.data.synthetic.attributes import sample_cohort
from cxr_vlp.data.tokenizer import SPECIAL_TOKENS, cached_wordpiece, train_wordpiece
from cxr_vlp.data.wordpiece_vocab import initial_symbols, learn_wordpiece_vocab, merged_token

REPO = Path(__file__).resolve().parents[2]
SPECIALS = list(SPECIAL_TOKENS.values())

# Trains in a fresh interpreter and prints where the cache file went.
_TRAIN_SCRIPT = """
import json, sys
from cxr_vlp.data.tokenizer import cached_wordpiece
texts = json.loads(open(sys.argv[1]).read())
cached_wordpiece(texts, sys.argv[2], vocab_size=int(sys.argv[3]), min_frequency=2)
"""


def _synthetic_reports(num_patients: int) -> list[str]:
    df = _table(sample_cohort(num_patients, seed=3), seed=3)
    return [t for pair in zip(df.findings, df.impression) for t in pair if t]


def _naive_vocab(word_counts: dict[str, int], vocab_size: int, min_frequency: int, specials: list[str]) -> list[str]:
    """Direct transcription of the training rule: recount every pair after each merge, take the most frequent,
    ties to the smallest (left, right)."""
    vocab = list(dict.fromkeys(specials))
    vocab += [c for c in sorted({c for w in word_counts for c in w}) if c not in vocab]
    splits = {w: initial_symbols(w) for w in word_counts}
    vocab += [t for t in sorted({s for sp in splits.values() for s in sp[1:]}) if t not in vocab]
    while len(vocab) < vocab_size:
        counts: Counter[tuple[str, str]] = Counter()
        for w, sp in splits.items():
            for pair in zip(sp, sp[1:]):
                counts[pair] += word_counts[w]
        if not counts:
            break
        pair, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < max(min_frequency, 1):
            break
        new = merged_token(pair)
        if new not in vocab:
            vocab.append(new)
        for w, sp in splits.items():
            out, i = [], 0
            while i < len(sp):
                if i + 1 < len(sp) and (sp[i], sp[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(sp[i])
                    i += 1
            splits[w] = out
    return vocab


def test_hand_derived_vocabulary_breaks_ties_lexicographically() -> None:
    # "ba" x1 -> b ##a ; "cba" x1 -> c ##b ##a. Pairs (##b,##a), (b,##a), (c,##b) all count 1: '#' < 'b' < 'c', so
    # ##b+##a -> ##ba first; then (b,##a) and (c,##ba) tie at 1 and b < c: ba, then cba.
    counts = {"cba": 1, "ba": 1}
    assert learn_wordpiece_vocab(counts, 100, 1, ["[UNK]"]) == [
        "[UNK]",
        "a",
        "b",
        "c",
        "##a",
        "##b",
        "##ba",
        "ba",
        "cba",
    ]
    # "ab" x2, "abc" x1, "bc" x1: (a,##b) counts 3 -> ab; then (ab,##c) and (b,##c) tie at 1 and "ab" < "b".
    counts = {"bc": 1, "ab": 2, "abc": 1}
    base = ["[UNK]", "a", "b", "c", "##b", "##c", "ab"]
    assert learn_wordpiece_vocab(counts, 7, 1, ["[UNK]"]) == base
    assert learn_wordpiece_vocab(counts, 8, 1, ["[UNK]"]) == base + ["abc"]
    assert learn_wordpiece_vocab(counts, 100, 1, ["[UNK]"]) == base + ["abc", "bc"]
    assert learn_wordpiece_vocab(counts, 100, 2, ["[UNK]"]) == base  # the tied pairs occur once: below min_frequency
    # the whole tokenizer: specials first, then the same vocabulary; upper case is folded by the normalizer
    tok = train_wordpiece(["Ba CBA"], vocab_size=100, min_frequency=1)
    assert sorted(tok.get_vocab(), key=tok.get_vocab().get) == SPECIALS + [
        "a",
        "b",
        "c",
        "##a",
        "##b",
        "##ba",
        "ba",
        "cba",
    ]


@pytest.mark.parametrize("seed", range(6))
def test_incremental_training_matches_direct_transcription(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "aab" if seed % 2 else "abcde"  # a small alphabet gives repeated symbols and overlapping pairs
    counts = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))): rng.randint(1, 5) for _ in range(60)}
    for vocab_size, min_frequency in ((40, 1), (80, 2), (500, 1)):
        got = learn_wordpiece_vocab(counts, vocab_size, min_frequency, ["[UNK]"])
        assert got == _naive_vocab(counts, vocab_size, min_frequency, ["[UNK]"])
        assert len(set(got)) == len(got)


def test_bad_word_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="positive counts"):
        learn_wordpiece_vocab({"ab": 0}, 10, 1, ["[UNK]"])
    with pytest.raises(ValueError, match="vocab_size"):
        learn_wordpiece_vocab({"ab": 1}, 0, 1, ["[UNK]"])
    with pytest.raises(TypeError, match="training text 1 is a float"):
        train_wordpiece(["fine", float("nan")])


def test_vocabulary_holds_specials_fits_and_covers_the_reports() -> None:
    texts = _synthetic_reports(150)
    tok = train_wordpiece(texts, vocab_size=400, min_frequency=2)
    vocab = tok.get_vocab()
    assert [vocab[s] for s in SPECIALS] == list(range(len(SPECIALS)))
    assert len(vocab) == 400  # these reports support more than 400 merges
    ids = tok(texts)["input_ids"]
    assert sum(row.count(tok.unk_token_id) for row in ids) == 0
    assert all(row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id for row in ids)


def test_two_fresh_processes_write_byte_identical_tokenizer_files(tmp_path: Path) -> None:
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(_synthetic_reports(150)))
    procs = []
    for hash_seed in ("1", "2"):  # different str hashing, so set and dict-of-str orders differ between the two
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _TRAIN_SCRIPT, str(texts_file), str(tmp_path / f"cache{hash_seed}"), "300"],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    files = [sorted((tmp_path / f"cache{s}").glob("wordpiece_*.json")) for s in ("1", "2")]
    assert [len(f) for f in files] == [1, 1]
    assert files[0][0].name == files[1][0].name
    assert files[0][0].read_bytes() == files[1][0].read_bytes()
    # and what this process trains itself is the same tokenizer
    here = cached_wordpiece(json.loads(texts_file.read_text()), tmp_path / "here", vocab_size=300, min_frequency=2)
    assert (tmp_path / "here" / files[0][0].name).read_bytes() == files[0][0].read_bytes()
    assert len(here.get_vocab()) == 300


def test_cache_key_names_the_training_algorithm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["small left effusion.", "no pneumothorax."] * 2
    cached_wordpiece(texts, tmp_path, vocab_size=50, min_frequency=1)
    monkeypatch.setattr(tokenizer_module, "TOKENIZER_FORMAT", "another-algorithm")
    cached_wordpiece(texts, tmp_path, vocab_size=50, min_frequency=1)
    assert len(list(tmp_path.glob("wordpiece_*.json"))) == 2
