"""Text views: sentence splitting, real shuffles, negation-safe dropout, the view sampler."""

from __future__ import annotations

import string
from collections import Counter

import numpy as np
import pytest

from cxr_vlp.text.text_views import (
    NEGATION_WORDS,
    TextViewSampler,
    is_missing,
    shuffle_sentences,
    split_sentences,
    word_dropout,
)

REPORT = (
    "No focal consolidation. There is a small left pleural effusion without pneumothorax. "
    "The heart size is normal. Possible mild right basal atelectasis. No acute osseous abnormality."
)
FINDINGS = "Lungs are clear. Heart size is normal. No pleural effusion."
IMPRESSION = "No acute cardiopulmonary process. Stable appearance of the chest."


def _norm(word: str) -> str:
    return word.strip(string.punctuation).lower()


# ----------------------------------------------------------------- splitting
def test_split_sentences_basic_and_punctuation() -> None:
    text = "Lungs are clear.  Is there effusion? No!\nHeart normal\n\n  "
    assert split_sentences(text) == ["Lungs are clear.", "Is there effusion?", "No!", "Heart normal"]


def test_split_sentences_spares_decimals_and_abbreviations() -> None:
    text = (
        "A nodule measures 4.5 cm, approx. 2 cm larger. Lines, e.g. the PICC, and tubes, i.e. the ETT, "
        "are in place. Findings discussed with Dr. Smith at 10.30. End."
    )
    assert split_sentences(text) == [
        "A nodule measures 4.5 cm, approx. 2 cm larger.",
        "Lines, e.g. the PICC, and tubes, i.e. the ETT, are in place.",
        "Findings discussed with Dr. Smith at 10.30.",
        "End.",
    ]


def test_split_sentences_edge_cases() -> None:
    assert split_sentences("") == []
    assert split_sentences("   \n ") == []
    assert split_sentences(None) == []  # type: ignore[arg-type]
    assert split_sentences("1. No effusion. 2. No pneumothorax.") == ["1. No effusion.", "2. No pneumothorax."]
    assert split_sentences("Size 3.5. Done") == ["Size 3.5.", "Done"]
    assert split_sentences("Clear ... . ") == ["Clear ..."]


# ----------------------------------------------------------------- shuffling
def test_shuffle_really_differs_and_is_a_permutation() -> None:
    original = split_sentences(REPORT)
    for seed in range(200):
        out = shuffle_sentences(REPORT, np.random.default_rng(seed))
        sentences = split_sentences(out)
        assert sentences != original
        assert Counter(sentences) == Counter(original)


def test_shuffle_two_sentences_always_swaps() -> None:
    for seed in range(200):
        assert shuffle_sentences("A b. C d.", np.random.default_rng(seed)) == "C d. A b."


def test_shuffle_with_duplicates_still_differs() -> None:
    text = "No effusion. No effusion. No effusion. Clear lungs."
    original = split_sentences(text)
    for seed in range(200):
        out = split_sentences(shuffle_sentences(text, np.random.default_rng(seed)))
        assert out != original and Counter(out) == Counter(original)


def test_shuffle_adds_period_to_unterminated_lines() -> None:
    out = shuffle_sentences("Lungs clear\nNo effusion", np.random.default_rng(0))
    assert out == "No effusion. Lungs clear."


@pytest.mark.parametrize("text", ["", "One sentence only.", "Same. Same.", "  "])
def test_shuffle_without_alternative_returns_text(text: str) -> None:
    assert shuffle_sentences(text, np.random.default_rng(0)) == text


# ------------------------------------------------------------------ dropout
def test_dropout_never_removes_negation_words_nor_empties_sentences() -> None:
    words = sorted(NEGATION_WORDS)
    for seed in range(300):
        rng = np.random.default_rng(seed)
        # random sentences mixing protected and ordinary words, with punctuation and capitals
        sentences = []
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(1, 9))
            pool = [
                str(rng.choice(words)).capitalize() if rng.random() < 0.3 else f"word{rng.integers(99)}"
                for _ in range(n)
            ]
            pool.append(f"last{rng.integers(99)}" + ("," if rng.random() < 0.5 else ""))
            sentences.append(" ".join(pool) + str(rng.choice([".", "?", "!"])))
        text = " ".join(sentences)
        p = float(rng.choice([0.1, 0.5, 0.9, 1.0]))
        out = word_dropout(text, rng, p)
        before, after = split_sentences(text), split_sentences(out)
        assert len(after) == len(before)
        for src, dst in zip(before, after):
            assert dst.split(), "a sentence was emptied"
            assert dst[-1] == src[-1], "final punctuation lost"
            kept = Counter(_norm(w) for w in dst.split())
            for w in src.split():
                if _norm(w) in NEGATION_WORDS:
                    assert kept[_norm(w)] >= 1
            protected_src = Counter(_norm(w) for w in src.split() if _norm(w) in NEGATION_WORDS)
            assert all(kept[w] >= c for w, c in protected_src.items())


def test_dropout_drops_ordinary_words_and_respects_p() -> None:
    text = "Alpha beta gamma delta epsilon zeta eta theta iota kappa."
    assert word_dropout(text, np.random.default_rng(0), 0.0) == text
    kept = [len(word_dropout(text, np.random.default_rng(s), 0.3).split()) for s in range(300)]
    assert 6.0 < np.mean(kept) < 8.0  # ~70 % of 10 words
    one = word_dropout(text, np.random.default_rng(1), 1.0)
    assert len(one.split()) == 1 and one.endswith(".")
    assert word_dropout(REPORT, np.random.default_rng(0), 1.0).count(".") == 5
    with pytest.raises(ValueError):
        word_dropout(text, np.random.default_rng(0), 1.5)


def test_dropout_keeps_report_negations() -> None:
    for seed in range(100):
        out = word_dropout(REPORT, np.random.default_rng(seed), 0.9)
        for word in ("No", "without", "small", "left", "normal", "Possible", "mild", "right", "basal"):
            assert word in out.split() or word + "." in out.split()


# --------------------------------------------------------------- missingness
@pytest.mark.parametrize("value", [None, float("nan"), np.nan, np.float32("nan"), "", "   ", "\n\t"])
def test_is_missing_true(value) -> None:
    assert is_missing(value)


def test_is_missing_false_and_type_error() -> None:
    assert not is_missing("No effusion.")
    assert not is_missing(np.str_("x"))
    pd = pytest.importorskip("pandas")
    assert is_missing(pd.NA)
    with pytest.raises(TypeError):
        is_missing(3)


# ------------------------------------------------------------------- sampler
def test_sampler_eval_uses_primary_or_fallback() -> None:
    rng = np.random.default_rng(0)
    sampler = TextViewSampler(num_views=2, primary="impression")
    assert sampler.sample(FINDINGS, IMPRESSION, rng, train=False) == [IMPRESSION, IMPRESSION]
    assert sampler.sample(FINDINGS, None, rng, train=False) == [FINDINGS, FINDINGS]
    assert sampler.sample(f"  {FINDINGS} ", float("nan"), rng, train=False) == [FINDINGS, FINDINGS]
    assert TextViewSampler(num_views=1, primary="findings").sample(FINDINGS, IMPRESSION, rng, False) == [FINDINGS]
    assert TextViewSampler(primary="findings").sample("  ", IMPRESSION, rng, False) == [IMPRESSION, IMPRESSION]


def test_sampler_train_both_present_keeps_section_order() -> None:
    sampler = TextViewSampler(num_views=2, shuffle_p=0.5)
    shuffled = [0, 0]
    for seed in range(200):
        findings, impression = sampler.sample(FINDINGS, IMPRESSION, np.random.default_rng(seed), train=True)
        assert Counter(split_sentences(findings)) == Counter(split_sentences(FINDINGS))
        assert Counter(split_sentences(impression)) == Counter(split_sentences(IMPRESSION))
        shuffled[0] += findings != FINDINGS
        shuffled[1] += impression != IMPRESSION
    assert all(60 < s < 140 for s in shuffled)  # about half of the time each, independently
    never = TextViewSampler(shuffle_p=0.0)
    assert never.sample(FINDINGS, IMPRESSION, np.random.default_rng(0), True) == [FINDINGS, IMPRESSION]


@pytest.mark.parametrize("missing", [None, float("nan"), "  "])
def test_sampler_train_one_missing_gives_augmented_second_view(missing) -> None:
    sampler = TextViewSampler(num_views=2, dropout_p=0.2)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        first, second = sampler.sample(missing, REPORT, rng, train=True)
        assert first == REPORT
        assert second != first
        assert split_sentences(second) != split_sentences(first)
        assert len(split_sentences(second)) == len(split_sentences(REPORT))
        a, b = sampler.sample(FINDINGS, missing, rng, train=True)
        assert a == FINDINGS and b != a


def test_sampler_train_single_view() -> None:
    sampler = TextViewSampler(num_views=1, shuffle_p=0.0)
    picks = Counter(sampler.sample(FINDINGS, IMPRESSION, np.random.default_rng(s), True)[0] for s in range(200))
    assert set(picks) == {FINDINGS, IMPRESSION} and min(picks.values()) > 60
    assert sampler.sample(None, IMPRESSION, np.random.default_rng(0), True) == [IMPRESSION]


def test_sampler_more_views_and_validation() -> None:
    views = TextViewSampler(num_views=4).sample(FINDINGS, IMPRESSION, np.random.default_rng(0), True)
    assert len(views) == 4
    with pytest.raises(ValueError, match="filter"):
        TextViewSampler().sample(None, "  ", np.random.default_rng(0), True)
    with pytest.raises(ValueError, match="filter"):
        TextViewSampler().sample(float("nan"), None, np.random.default_rng(0), False)
    with pytest.raises(ValueError):
        TextViewSampler(primary="indication")
    with pytest.raises(ValueError):
        TextViewSampler(num_views=0)
    with pytest.raises(ValueError):
        TextViewSampler(shuffle_p=2.0)


def test_whole_report_mode_joins_sections_unaugmented() -> None:
    """Report generation's target: findings then impression, the same text in training and evaluation."""
    sampler = TextViewSampler(num_views=1, shuffle_p=1.0, dropout_p=0.5, whole_report=True)
    rng = np.random.default_rng(0)
    findings, impression = "Heart is enlarged. Lungs are clear.", "Cardiomegaly."
    for train in (True, False):
        assert sampler.sample(findings, impression, rng, train=train) == [f"{findings} {impression}"]
    assert sampler.sample(None, impression, rng, train=True) == [impression]
    assert TextViewSampler(num_views=2, whole_report=True).sample(findings, "", rng, train=True) == [findings] * 2
