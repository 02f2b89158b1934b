"""A rule-based, CheXpert-style labeler for chest X-ray report text.

Output follows the one label policy (:mod:`cxr_vlp.text.labels`): for each of the 14 observations
``1`` positive, ``0`` negative, ``-1`` uncertain, ``NaN`` not mentioned.

How a report is read
--------------------
1. **Text.** When the text has FINDINGS / IMPRESSION headers (:func:`~cxr_vlp.text.sections.parse_sections`)
   only those two sections are read, so an INDICATION such as "r/o pneumonia" does not become a label;
   otherwise the whole text. Hard-wrapped lines are rejoined, paragraphs and list items kept apart
   (:func:`~cxr_vlp.text.sections.text_blocks`), then sentences come from
   :func:`~cxr_vlp.text.text_views.split_sentences`.
2. **Mentions.** The phrases live in :mod:`cxr_vlp.text.lexicon`. Each observation has a list of phrases
   (:data:`MENTIONS`, word-bounded, plural and variant forms) and phrases that exclude a match
   (:data:`EXCLUSIONS`: "pericardial effusion" is not a pleural effusion, "mass effect" or a rib lesion not a
   lung lesion, "Kerley B lines" not a device). Abnormalities outside the 14 labels (emphysema, hiatal hernia,
   granuloma, degenerative spine, calcified or tortuous aorta, vascular congestion: :data:`OTHER_FINDINGS`) are
   found and classified the same way; they only decide No Finding (step 5). Cardiomegaly and
   Enlarged Cardiomediastinum also have *attribute* mentions ("heart size", "cardiac silhouette",
   "mediastinal contours") that count only with a qualifier right before them or in their predicate, also
   across a list of structures ("the heart, pulmonary XXXX and mediastinum are within normal limits"):
   "enlarged" / "widened" / "prominent" make a mention that is then classified like any other, "normal" /
   "within normal limits" / "not enlarged" a negative one, "borderline" an uncertain one; "heart size is
   stable" mentions nothing. A normal cardiomediastinal silhouette is also a normal heart; an enlarged one
   mentions Enlarged Cardiomediastinum only.
3. **Status of a mention**, in this order of precedence:

   * negative when a negation cue (:data:`PRE_NEGATION`: "no", "without", "negative for", "free of",
     "clear of", "absence of", "resolution of", "removal of", "neither" / "nor") precedes it in scope, or
     a post-negation cue (:data:`POST_NEGATION`: "is not seen", "are not identified", "has resolved",
     "no longer seen", "has been removed", "is absent") follows it in scope;
   * uncertain when a hedge (:data:`PRE_UNCERTAINTY`: "possible", "may", "could", "likely",
     "cannot exclude", "suggestive of", "concerning for", "questionable", "versus", "rule out",
     "differential includes", ...) precedes it in scope, or "cannot be excluded", "is likely",
     "versus ...", "?" follows it (:data:`POST_UNCERTAINTY`);
   * positive otherwise; but two positive findings offered as alternatives ("consistent with atelectasis
     or consolidation", "atelectasis and/or pneumonia", "atelectasis/scarring") are both uncertain, except a
     parent label offered against its own child ("atelectasis/airspace disease" is an opacity either way).

   "Unlikely" counts as a hedge (uncertain), not as a negation.

   A *pre* cue scopes forward up to :data:`PRE_SCOPE_WORDS` words, so lists are covered ("no A, B, or C"
   negates all three), and stops at a clause break (:data:`SCOPE_BREAK`): ``;`` ``:``, "but", "however",
   "although", "which", "with", "except", or a comma followed by a new clause or a modifier ("no effusion,
   possible atelectasis", "no pneumothorax, small left effusion") unless the list goes on after it ("no
   consolidation, large effusion, or pneumothorax"). "not" reaches 3 words, "versus" 4. A *post* cue must
   follow within :data:`POST_SCOPE_WORDS` words with no comma or break in between; a post-negation may
   also reach back over a list ("consolidation, effusion, or pneumothorax is not seen"). Phrases that
   contain a negation word but mean something else are masked first: pseudo-negations such as "no change
   in", "without interval change", "not only", "partially resolved" ("no change in the large right
   effusion" is positive), and hedges such as "cannot be excluded" / "not ruled out" (uncertain, not
   negative). A negation that scopes over a hedge wins ("no findings to suggest pneumonia" is negative).
4. **Aggregation per report**, as CheXpert does: positive beats uncertain beats negative across all
   mentions of a label; no mention leaves it blank (NaN). Then CheXpert's hierarchy
   (:data:`~cxr_vlp.text.lexicon.HIERARCHY`): a positive or uncertain Edema, Consolidation, Pneumonia, Lung Lesion
   or Atelectasis makes Lung Opacity at least as positive, a Cardiomegaly likewise Enlarged Cardiomediastinum.
5. **No Finding** is ``1`` when no observation other than Support Devices, and no other finding (step 2), is
   positive or uncertain (an empty-of-findings report such as "The lungs are clear." gets ``1``); otherwise it
   is ``0`` by default — a finding being present is known information — or blank with
   ``no_finding_negative=False`` (CheXpert's convention: 1 or blank, never 0). Missing text gives all blanks.

Accuracy on 305 hand-labelled OpenI reports and the conventions behind it: docs/labeler.md.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cxr_vlp.text import lexicon as _lexicon
from cxr_vlp.text import sections as _sections
from cxr_vlp.text import text_views as _text_views
from cxr_vlp.text.labels import CHEXPERT_LABELS, NO_FINDING, NUM_LABELS
from cxr_vlp.text.lexicon import (
    ATTRIBUTE_EXCLUSIONS,
    ATTRIBUTE_MENTIONS,
    CARDIOMEDIASTINAL_PHRASES,
    CLAUSE_STARTERS,
    EXCLUSIONS,
    HIERARCHY,
    LIST_ITEMS,
    MENTIONS,
    NORMAL_ONLY_MENTIONS,
    NORMAL_QUALIFIER,
    OTHER_FINDINGS,
    OTHER_FINDINGS_EXCLUSIONS,
    POST_NEGATION,
    POST_UNCERTAINTY,
    PRE_NEGATION,
    PRE_UNCERTAINTY,
    PSEUDO_NEGATION,
    SOFT_STARTERS,
)
from cxr_vlp.text.sections import parse_sections, text_blocks
from cxr_vlp.text.text_views import is_missing, split_sentences

__all__ = [
    "ATTRIBUTE_MENTIONS",
    "EXCLUSIONS",
    "LABELER_VERSION",
    "MENTIONS",
    "Mention",
    "OTHER_FINDING",
    "explain",
    "label_report",
    "label_reports",
    "report_sentences",
]

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1


def _source_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the source of this module, its lexicon and the sectioning / sentence splitting
    it reads reports with: any edit to the rules gives a new value."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], _lexicon, _sections, _text_views):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


# identifies the rules that produced a label: keys the on-disk label cache (cxr_vlp.text.label_cache), so cached
# labels never outlive the labeler that made them
LABELER_VERSION: str = _source_fingerprint()
_PRIORITY = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}

_HEDGE_STARTERS = re.compile(
    r",\s*(?:possible|possibly|probable|probably|likely|may|could|might|questionable|suspected|suspicious"
    r"|concerning)\b",
    re.IGNORECASE,
)
SCOPE_BREAK = re.compile(
    r"[;:]|\s-\s|\b(?:but|however|although|though|except|whereas|while|which|yet|otherwise|aside\s+from|apart\s+from"
    r"|other\s+than|and\s+(?:the|there)|with|given|following|after|since)\b"
    rf"|,\s*(?:{CLAUSE_STARTERS})\b",
    re.IGNORECASE,
)
SOFT_SCOPE_BREAK = re.compile(rf",\s*(?:{SOFT_STARTERS})\b", re.IGNORECASE)
_LIST_GOES_ON = re.compile(r"^,[^,]*,.*\b(?:or|nor)\b", re.IGNORECASE)
_OR = re.compile(r"\b(?:or|nor)\b", re.IGNORECASE)
POST_SCOPE_BREAK = re.compile(r"[;:,]|\b(?:but|however|although|though|which|and\s+(?:the|there))\b", re.IGNORECASE)
PRE_SCOPE_WORDS = 12
POST_SCOPE_WORDS = 6
# Pre cues with a shorter reach: "not" ("not pneumonia", "not consistent with pneumonia") and "versus".
SHORT_SCOPE_WORDS: dict[str, int] = {"not": 3, "versus": 4, "vs": 4, "vs.": 4}
# A post-negation may reach back over a list ("consolidation, effusion, or pneumothorax is not seen").
_POST_LIST = re.compile(r"(?:[^;:]*,)*[^;:]*\b(?:or|and|nor)\b[^;:,]*", re.IGNORECASE)
_COPULA = re.compile(r"\b(?:is|are|was|were|has|have|had|seen|noted|present|there)\b", re.IGNORECASE)
# "represent" is only a hedge after may / could / might / likely ("may represent atelectasis").
# XXXX is the anonymisation token of IU X-Ray, which often stands where the hedge was ("XXXX represents").
_HEDGED_REPRESENT = re.compile(r"\b(?:may|might|could|likely|possibly|probably|xxxx)\s+(?:\w+\s+)?$", re.IGNORECASE)


def _rx(fragments: Iterable[str]) -> re.Pattern[str]:
    alternation = "|".join(f"(?:{f})" for f in sorted(fragments, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


def _cue_rx(fragments: Iterable[str]) -> re.Pattern[str]:
    alternation = "|".join(f"(?:{f})" for f in sorted(fragments, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


_MENTION_RX = {label: _rx(frags) for label, frags in MENTIONS.items()}
_EXCLUSION_RX = {label: _rx(frags) for label, frags in EXCLUSIONS.items()}
_ATTR_RX = {label: _rx(frags) for label, (frags, _) in ATTRIBUTE_MENTIONS.items()}
_NORMAL_ONLY_RX = {label: _rx(frags) for label, frags in NORMAL_ONLY_MENTIONS.items()}
_ATTR_EXCL_RX = _rx((ATTRIBUTE_EXCLUSIONS,))
_OTHER_RX = _rx(OTHER_FINDINGS)
_OTHER_EXCL_RX = _rx(OTHER_FINDINGS_EXCLUSIONS)
_ANY_ATTR = "|".join(f for frags, _ in ATTRIBUTE_MENTIONS.values() for f in frags)
_LIST_ITEM = "|".join((_ANY_ATTR, *CARDIOMEDIASTINAL_PHRASES, *LIST_ITEMS))
_BORDERLINE = r"borderline(?:[- ](?:enlarged|large|sized?|in\s+size))?"
_LINKING = (
    r"is|are|was|were|be|been|being|remains?|remained|appears?|appeared|seems?|looks?|again|has|have|now|still|at"
    r"|the|upper|limits?|of|in|size|top|to|also|overall|somewhat|likely|probably|possibly|may|might|could|stable"
    r"|unchanged|within|and|otherwise|similar|comparison|prior|exam|study|for|\w+ly"
)
_POST_QUALIFIER = {
    label: re.compile(
        rf"\s*:?\s*(?:(?:,\s*|\s+)(?:and\s+)?(?:the\s+)?(?:{_LIST_ITEM})\s*){{0,5}}(?:(?:{_LINKING})\s+)*"
        rf"(?:(?P<borderline>{_BORDERLINE})|(?P<normal>{NORMAL_QUALIFIER})|(?P<abnormal>{abnormal}))(?![\w-])",
        re.IGNORECASE,
    )
    for label, (_, abnormal) in ATTRIBUTE_MENTIONS.items()
}
_PRE_QUALIFIER = {
    label: re.compile(
        rf"(?<![\w-])(?:(?P<borderline>{_BORDERLINE})|(?P<normal>{NORMAL_QUALIFIER})|(?P<abnormal>{abnormal}))"
        rf"(?:\s+and\s+stable)?(?:\s*-\s*sized|\s+in\s+size|\s+size\s+and\s+configuration)?(?:\s+of)?(?:\s+the)?\s+"
        rf"(?:(?:{_LIST_ITEM})(?:\s*,\s*and\s+|\s*,\s*|\s+and\s+|\s+)(?:the\s+)?){{0,5}}$",
        re.IGNORECASE,
    )
    for label, (_, abnormal) in ATTRIBUTE_MENTIONS.items()
}
_PRE_NEG_RX = _cue_rx(PRE_NEGATION)
_POST_NEG_RX = _cue_rx(POST_NEGATION)
_PRE_UNC_RX = _cue_rx(PRE_UNCERTAINTY)
_POST_UNC_RX = re.compile(_cue_rx(POST_UNCERTAINTY).pattern + r"|\?", re.IGNORECASE)
_PSEUDO_RX = _cue_rx(PSEUDO_NEGATION)
_WORD = re.compile(r"[\w'/-]+")
# Two findings joined by "or", "and/or" or a slash (up to three words before the second one): alternatives.
_ALTERNATIVE = re.compile(r"(?:\s*,?\s*(?:or|and/or)\s+|\s*/\s*)(?:[\w-]+\s+){0,3}", re.IGNORECASE)
_PARENT = {child: parent for parent, children in HIERARCHY.items() for child in children}
OTHER_FINDING = "Other finding"  # label of the mentions of OTHER_FINDINGS (not one of the 14)


@dataclass(frozen=True)
class Mention:
    """One mention of an observation in a sentence, for debugging (:func:`explain`)."""

    label: str
    phrase: str
    sentence: str
    status: int  # 1 positive, 0 negative, -1 uncertain
    cue: str | None = None  # the cue that decided a negative / uncertain status
    start: int = 0  # character span of the phrase in the sentence
    end: int = 0

    @property
    def status_name(self) -> str:
        return {POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}[self.status]


# --------------------------------------------------------------------------- text
def report_sentences(text: Any, use_sections: bool = True) -> list[str]:
    """The sentences the labeler reads (see the module docstring, step 1)."""
    if is_missing(text):
        return []
    text = str(text)
    if use_sections:
        sections = parse_sections(text, collapse=False)
        chosen = [sections[k] for k in ("findings", "impression") if k in sections]
        if chosen:
            text = "\n\n".join(chosen)
    return [s for block in text_blocks(text) for s in split_sentences(block)]


# --------------------------------------------------------------------------- cue logic
@dataclass(frozen=True)
class _Cue:
    start: int
    end: int
    text: str
    kind: str  # "pre_neg", "post_neg", "pre_unc", "post_unc"


def _overlaps(a: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in spans)


def _find_cues(sentence: str) -> list[_Cue]:
    pseudo = [m.span() for m in _PSEUDO_RX.finditer(sentence)]
    unc = [_Cue(*m.span(), m.group(), "pre_unc") for m in _PRE_UNC_RX.finditer(sentence)]
    unc = [
        c
        for c in unc
        if not re.fullmatch(r"represent(?:s|ing)?", c.text, re.IGNORECASE)
        or _HEDGED_REPRESENT.search(sentence[: c.start])
    ]
    post_unc = [_Cue(*m.span(), m.group(), "post_unc") for m in _POST_UNC_RX.finditer(sentence)]
    hedge_spans = [(c.start, c.end) for c in unc + post_unc]
    masked = pseudo + hedge_spans
    neg = [
        _Cue(*m.span(), m.group(), "pre_neg") for m in _PRE_NEG_RX.finditer(sentence) if not _overlaps(m.span(), masked)
    ]
    # "not" alone is only a pre-negation when it directly negates a noun phrase ("not pneumonia");
    # elsewhere ("is not enlarged", "not seen") it is handled by the post cues and qualifiers.
    neg = [
        c
        for c in neg
        if c.text.lower() != "not" or not re.match(r"\s*(?:be|been|\w+ed|\w+ly)\b", sentence[c.end :], re.IGNORECASE)
    ]
    post_neg = [
        _Cue(*m.span(), m.group(), "post_neg")
        for m in _POST_NEG_RX.finditer(sentence)
        if not _overlaps(m.span(), pseudo)
    ]
    return neg + post_neg + unc + post_unc


def _n_words(text: str) -> int:
    return len(_WORD.findall(text))


def _pre_applies(sentence: str, cue: _Cue, start: int) -> bool:
    if cue.end > start:
        return False
    between = sentence[cue.end : start]
    reach = SHORT_SCOPE_WORDS.get(cue.text.lower(), PRE_SCOPE_WORDS)
    if _n_words(between) > reach or SCOPE_BREAK.search(between):
        return False
    soft = SOFT_SCOPE_BREAK.search(between)
    if soft is None:
        return True
    rest = SCOPE_BREAK.split(sentence[cue.end + soft.start() :])[0]
    if _HEDGE_STARTERS.match(rest):
        return _LIST_GOES_ON.search(rest) is not None
    return _OR.search(rest) is not None


def _post_applies(sentence: str, cue: _Cue, end: int) -> bool:
    if cue.start < end:
        return False
    between = sentence[end : cue.start]
    if not POST_SCOPE_BREAK.search(between):
        return _n_words(between) <= POST_SCOPE_WORDS
    core = re.sub(r"\b(?:is|are|was|were)\s*$", "", between, flags=re.IGNORECASE)
    return (
        cue.kind == "post_neg"
        and _n_words(core) <= PRE_SCOPE_WORDS
        and _POST_LIST.fullmatch(core) is not None
        and not _COPULA.search(core)
    )


def _classify(sentence: str, start: int, end: int, cues: list[_Cue]) -> tuple[int, str | None]:
    """Status of the mention at ``[start, end)`` and the deciding cue (see the module docstring)."""

    def nearest_pre(kind: str) -> _Cue | None:
        hits = [c for c in cues if c.kind == kind and _pre_applies(sentence, c, start)]
        return max(hits, key=lambda c: c.end) if hits else None

    def nearest_post(kind: str) -> _Cue | None:
        hits = [c for c in cues if c.kind == kind and _post_applies(sentence, c, end)]
        return min(hits, key=lambda c: c.start) if hits else None

    inside_unc = [c for c in cues if c.kind == "pre_unc" and start <= c.start and c.end <= end]
    pre_neg, post_neg = nearest_pre("pre_neg"), nearest_post("post_neg")
    pre_unc, post_unc = nearest_pre("pre_unc"), nearest_post("post_unc")
    if pre_neg is not None:
        return NEGATIVE, pre_neg.text
    if post_neg is not None and (post_unc is None or post_neg.start <= post_unc.start):
        return NEGATIVE, post_neg.text
    for cue in (pre_unc, post_unc, *inside_unc):
        if cue is not None:
            return UNCERTAIN, cue.text
    return POSITIVE, None


def _attribute_mentions(label: str, sentence: str, cues: list[_Cue], taken: list[tuple[int, int]]) -> list[Mention]:
    """Mentions from attribute phrases ("heart size", "mediastinal contours") with a qualifier."""
    out = []
    excluded = [m.span() for m in _ATTR_EXCL_RX.finditer(sentence)]
    found = [(m, False) for m in _ATTR_RX[label].finditer(sentence)]
    if label in _NORMAL_ONLY_RX:
        found += [
            (m, True)
            for m in _NORMAL_ONLY_RX[label].finditer(sentence)
            if not any(_overlaps(m.span(), [a.span()]) for a, _ in found)
        ]
    for m, normal_only in found:
        if _overlaps(m.span(), excluded) or _overlaps(m.span(), taken):
            continue
        post = _POST_QUALIFIER[label].match(sentence, m.end())
        pre = _PRE_QUALIFIER[label].search(sentence[: m.start()])
        qualifier = post if post is not None else pre
        if qualifier is None or (normal_only and not qualifier.group("normal")):
            continue
        span = (min(m.start(), qualifier.start()), max(m.end(), qualifier.end()))
        if qualifier.group("borderline"):
            status, cue = UNCERTAIN, qualifier.group("borderline")
        elif qualifier.group("normal"):
            status, cue = NEGATIVE, qualifier.group("normal")
        else:
            status, cue = _classify(sentence, span[0], span[1], cues)
        out.append(Mention(label, sentence[span[0] : span[1]].strip(), sentence, status, cue, *span))
    return out


def _sentence_mentions(sentence: str) -> list[Mention]:
    cues = _find_cues(sentence)
    mentions: list[Mention] = []
    for label in CHEXPERT_LABELS[1:]:
        excluded = [m.span() for m in _EXCLUSION_RX[label].finditer(sentence)] if label in _EXCLUSION_RX else []
        taken: list[tuple[int, int]] = []
        for m in _MENTION_RX[label].finditer(sentence):
            if _overlaps(m.span(), excluded):
                continue
            status, cue = _classify(sentence, m.start(), m.end(), cues)
            mentions.append(Mention(label, m.group(), sentence, status, cue, m.start(), m.end()))
            taken.append(m.span())
        if label in ATTRIBUTE_MENTIONS:
            mentions.extend(_attribute_mentions(label, sentence, cues, taken))
    excluded = [m.span() for m in _OTHER_EXCL_RX.finditer(sentence)]
    for m in _OTHER_RX.finditer(sentence):
        if not _overlaps(m.span(), excluded):
            status, cue = _classify(sentence, m.start(), m.end(), cues)
            mentions.append(Mention(OTHER_FINDING, m.group(), sentence, status, cue, m.start(), m.end()))
    return _alternatives(sentence, mentions)


def _alternatives(sentence: str, mentions: list[Mention]) -> list[Mention]:
    """Positive findings offered as alternatives ("atelectasis or consolidation") are uncertain.

    A parent label stays positive when its alternative is one of its children ("atelectasis/airspace disease": an
    opacity either way); other findings (emphysema, scarring, ...) make a label uncertain but are not made so.
    """
    out = list(mentions)
    for i, a in enumerate(mentions):
        if a.status != POSITIVE or a.label == OTHER_FINDING:
            continue
        for b in mentions:
            if b.label == a.label or _PARENT.get(b.label) == a.label or b.status == NEGATIVE:
                continue
            if a.end <= b.start:
                gap = sentence[a.end : b.start]
            elif b.end <= a.start:
                gap = sentence[b.end : a.start]
            else:
                continue
            if _ALTERNATIVE.fullmatch(gap):
                out[i] = replace(a, status=UNCERTAIN, cue="or")
                break
    return out


# --------------------------------------------------------------------------- public API
def explain(text: Any, use_sections: bool = True, other_findings: bool = False) -> list[Mention]:
    """Every mention found in ``text`` with its status and deciding cue, in reading order.

    Mentions of the 14 observations only, unless ``other_findings``: then also those of abnormalities outside
    them (:data:`~cxr_vlp.text.lexicon.OTHER_FINDINGS`, label :data:`OTHER_FINDING`).
    """
    out: list[Mention] = []
    for sentence in report_sentences(text, use_sections):
        out.extend(sorted(_sentence_mentions(sentence), key=lambda m: m.start))
    return out if other_findings else [m for m in out if m.label != OTHER_FINDING]


def _aggregate(mentions: list[Mention], no_finding_negative: bool) -> np.ndarray:
    labels = np.full(NUM_LABELS, np.nan, dtype=np.float32)
    best: dict[str, int] = {}
    for m in mentions:
        if m.label not in best or _PRIORITY[m.status] > _PRIORITY[best[m.label]]:
            best[m.label] = m.status
    for parent, children in HIERARCHY.items():
        for child in children:
            status = best.get(child)
            if status in (POSITIVE, UNCERTAIN) and (parent not in best or _PRIORITY[status] > _PRIORITY[best[parent]]):
                best[parent] = status
    for label, status in best.items():
        if label != OTHER_FINDING:
            labels[CHEXPERT_LABELS.index(label)] = status
    findings = [
        best.get(label) in (POSITIVE, UNCERTAIN)
        for label in (*CHEXPERT_LABELS[1:], OTHER_FINDING)
        if label != "Support Devices"
    ]
    if not any(findings):
        labels[NO_FINDING] = 1.0
    elif no_finding_negative:
        labels[NO_FINDING] = 0.0
    return labels


def label_report(text: Any, *, use_sections: bool = True, no_finding_negative: bool = True) -> np.ndarray:
    """The 14 CheXpert values of one report: float32 ``[14]`` of 1 / 0 / -1 / NaN (order of CHEXPERT_LABELS).

    ``no_finding_negative``: No Finding is 0 when a finding is present (default); ``False`` leaves it blank then
    (CheXpert's convention: No Finding is 1 or blank, never 0). Missing text (``None``, NaN, blank) gives all NaN.
    See the module docstring for the rules.
    """
    if is_missing(text):
        return np.full(NUM_LABELS, np.nan, dtype=np.float32)
    return _aggregate(explain(text, use_sections, other_findings=True), no_finding_negative)


def label_reports(texts: Iterable[Any], *, use_sections: bool = True, no_finding_negative: bool = True) -> np.ndarray:
    """:func:`label_report` for each text: float32 ``[n, 14]``."""
    rows = [label_report(t, use_sections=use_sections, no_finding_negative=no_finding_negative) for t in texts]
    return np.stack(rows) if rows else np.zeros((0, NUM_LABELS), dtype=np.float32)
