"""Text views of a study: findings and impression, with light augmentation when one is missing.

In training the two text views of a study are its findings and its impression. When only one
section exists, the second view is an augmented copy of it: a sentence shuffle that really changes
the order plus word dropout that never drops negation, hedging, laterality or severity words (those
carry the meaning a radiology report is about).
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

SECTIONS: tuple[str, str] = ("findings", "impression")

# Abbreviations whose final period does not end a sentence (compared lower-case, without the final
# period). "etc." and "no." are deliberately absent: both end sentences far more often than not.
ABBREVIATIONS: frozenset[str] = frozenset(
    {"approx", "e.g", "i.e", "dr", "mr", "mrs", "ms", "vs", "cf", "fig", "st", "al", "incl", "resp", "prof", "pt"}
)

NEGATION_WORDS: frozenset[str] = frozenset(
    {
        # negation and absence
        "no",
        "not",
        "without",
        "negative",
        "free",
        "absent",
        "absence",
        "clear",
        "resolved",
        "resolving",
        "resolution",
        "cannot",
        "can't",
        "exclude",
        "excluded",
        "excluding",
        "neither",
        "nor",
        "none",
        "nothing",
        "never",
        "non",
        "unremarkable",
        "normal",
        "abnormal",
        "w/o",
        "denies",
        "rule",
        "ruled",
        "out",
        "longer",
        "isn't",
        "aren't",
        "wasn't",
        "doesn't",
        "don't",
        "removed",
        "interval",
        # hedging and change
        "possible",
        "possibly",
        "may",
        "might",
        "could",
        "likely",
        "unlikely",
        "probable",
        "probably",
        "questionable",
        "suspicious",
        "suspected",
        "suggest",
        "suggests",
        "suggestive",
        "concern",
        "concerning",
        "or",
        "versus",
        "vs",
        "either",
        "equivocal",
        "new",
        "stable",
        "unchanged",
        "increased",
        "increasing",
        "decreased",
        "decreasing",
        "improved",
        "improving",
        "worsened",
        "worsening",
        "persistent",
        "residual",
        "again",
        # laterality and location
        "left",
        "right",
        "bilateral",
        "bilaterally",
        "unilateral",
        "upper",
        "lower",
        "middle",
        "mid",
        "apical",
        "apex",
        "apices",
        "basal",
        "base",
        "bases",
        "basilar",
        "lateral",
        "medial",
        "anterior",
        "posterior",
        "central",
        "peripheral",
        "retrocardiac",
        "perihilar",
        # size and severity
        "small",
        "moderate",
        "large",
        "mild",
        "mildly",
        "severe",
        "severely",
        "minimal",
        "minimally",
        "minor",
        "trace",
        "tiny",
        "massive",
        "extensive",
        "marked",
        "markedly",
        "slight",
        "slightly",
        "borderline",
        "moderately",
        "substantial",
        "subtle",
    }
)

_SENTENCE_END = re.compile(r"[.?!]+(?=\s|$)")
_TERMINAL = re.compile(r"[.?!]+$")
_OPENERS = "([{\"'"


def is_missing(text: Any) -> bool:
    """True for ``None``, NaN (float or pandas NA) and empty / whitespace-only strings."""
    if text is None:
        return True
    if isinstance(text, str):
        return not text.strip()
    if isinstance(text, (float, np.floating)):
        return math.isnan(float(text))
    try:
        import pandas as pd

        if pd.isna(text) is True:
            return True
    except (TypeError, ValueError):
        pass
    raise TypeError(f"section text must be a string or missing (None / NaN); got {type(text).__name__}")


def _has_content(sentence: str) -> bool:
    return any(ch.isalnum() for ch in sentence)


def _split_line(line: str) -> list[str]:
    """Sentences of one line: cut after . ? ! followed by whitespace or end, sparing abbreviations."""
    out: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(line):
        if match.group() == ".":
            words = line[start : match.start()].split()
            if words:
                token = words[-1].lstrip(_OPENERS).lower()
                if token in ABBREVIATIONS:
                    continue
                if token.isdigit() and len(words) == 1:  # list enumerator "1." stays with its sentence
                    continue
        out.append(line[start : match.end()])
        start = match.end()
    out.append(line[start:])
    return out


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences.

    Cuts at newlines and after ``.``, ``?`` or ``!`` followed by whitespace or the end of the text;
    decimals ("4.5 cm") and common abbreviations ("approx.", "e.g.", "i.e.", "Dr.") do not end a
    sentence, nor does a leading list number ("1. ..."). Sentences are stripped; empty ones and ones
    without any letter or digit are dropped.
    """
    if is_missing(text):
        return []
    sentences = (s.strip() for line in text.splitlines() for s in _split_line(line))
    return [s for s in sentences if s and _has_content(s)]


def _join(sentences: list[str]) -> str:
    """Join sentences with single spaces, ending each unterminated one with a period."""
    return " ".join(s if _TERMINAL.search(s) else s + "." for s in sentences)


def shuffle_sentences(text: str, rng: np.random.Generator) -> str:
    """Sentences of ``text`` in a random order that differs from the original.

    With fewer than two distinct sentences no other order exists and ``text`` is returned unchanged.
    """
    sentences = split_sentences(text)
    if len(set(sentences)) < 2:
        return text
    for _ in range(16):
        order = rng.permutation(len(sentences))
        shuffled = [sentences[i] for i in order]
        if shuffled != sentences:
            return _join(shuffled)
    # Practically unreachable; a rotation by one differs whenever two sentences differ.
    return _join(sentences[1:] + sentences[:1])


def _is_protected(word: str) -> bool:
    return word.strip(string.punctuation).lower() in NEGATION_WORDS


def _ends_nothing(word: str, alone: bool) -> bool:
    """Whether ``word`` + "." would not be read as a sentence end by :func:`split_sentences`."""
    token = word.lstrip(_OPENERS).lower()
    return token in ABBREVIATIONS or (alone and token.isdigit())


def _dropout_sentence(sentence: str, rng: np.random.Generator, p: float) -> str:
    body = _TERMINAL.sub("", sentence)
    end = sentence[len(body) :]
    words = body.split()
    if not words:
        return sentence
    protected = np.array([_is_protected(w) for w in words], dtype=bool)
    keep = (rng.random(len(words)) >= p) | protected
    if not keep.any():
        keep[int(rng.integers(len(words)))] = True
    kept = np.flatnonzero(keep)
    if _ends_nothing(words[kept[-1]], alone=len(kept) == 1):
        keep[-1] = True  # e.g. "approx." or a lone "1." would no longer end the sentence
    return " ".join(w for w, k in zip(words, keep) if k) + end


def word_dropout(text: str, rng: np.random.Generator, p: float = 0.1) -> str:
    """Drop each word with probability ``p``, sentence by sentence.

    Words in :data:`NEGATION_WORDS` (case- and punctuation-insensitive) are never dropped, every
    sentence keeps at least one word and its final punctuation. ``p == 0`` returns ``text`` unchanged.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1]; got {p}")
    sentences = split_sentences(text)
    if p == 0.0 or not sentences:
        return text
    return _join([_dropout_sentence(s, rng, p) for s in sentences])


@dataclass
class TextViewSampler:
    """Choose the text views of a study.

    Evaluation: the ``primary`` section (the other one when it is missing), unaugmented, repeated
    ``num_views`` times. Training: both sections present gives ``[findings, impression]``, each
    sentence-shuffled with probability ``shuffle_p``; one present gives ``[text, augmented(text)]``
    (shuffle + word dropout, so the views differ whenever there are two distinct sentences). With
    ``num_views == 1`` one present section is picked at random; views beyond the present sections are
    augmented copies. Studies with neither section must be filtered out beforehand (``ValueError``).
    """

    num_views: int = 2
    shuffle_p: float = 0.5
    dropout_p: float = 0.1
    primary: str = "impression"
    # every present section, findings first, joined and unaugmented, in training and evaluation alike (the
    # target of report generation); num_views copies
    whole_report: bool = False

    def __post_init__(self) -> None:
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1; got {self.num_views}")
        if self.primary not in SECTIONS:
            raise ValueError(f"primary must be one of {SECTIONS}; got {self.primary!r}")
        for name in ("shuffle_p", "dropout_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {value}")

    def _maybe_shuffle(self, text: str, rng: np.random.Generator) -> str:
        return shuffle_sentences(text, rng) if rng.random() < self.shuffle_p else text

    def augment(self, text: str, rng: np.random.Generator) -> str:
        """A second view of ``text``: really shuffled, then word dropout (never equal when avoidable)."""
        shuffled = shuffle_sentences(text, rng)
        dropped = word_dropout(shuffled, rng, self.dropout_p)
        return dropped if dropped != text else shuffled

    def sample(self, findings: str | None, impression: str | None, rng: np.random.Generator, train: bool) -> list[str]:
        """``num_views`` text views of one study (see the class docstring)."""
        sections = {name: text.strip() for name, text in zip(SECTIONS, (findings, impression)) if not is_missing(text)}
        if not sections:
            raise ValueError(
                "study has neither findings nor impression; filter such studies out before sampling text views"
            )
        if self.whole_report:
            return [" ".join(sections[name] for name in SECTIONS if name in sections)] * self.num_views
        if not train:
            other = SECTIONS[1 - SECTIONS.index(self.primary)]
            text = sections.get(self.primary, sections.get(other))
            return [text] * self.num_views

        present = [sections[name] for name in SECTIONS if name in sections]
        if self.num_views == 1:
            choice = present[int(rng.integers(len(present)))]
            return [self._maybe_shuffle(choice, rng)]
        if len(present) == 1:
            views = [present[0]]
        else:
            views = [self._maybe_shuffle(text, rng) for text in present]
        while len(views) < self.num_views:
            views.append(self.augment(present[len(views) % len(present)], rng))
        return views[: self.num_views]
