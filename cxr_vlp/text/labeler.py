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
2. **Mentions.** Each observation has a list of phrases (:data:`MENTIONS`, word-bounded, plural and
   variant forms) and phrases that exclude a match (:data:`EXCLUSIONS`: "pericardial effusion" is not a
   pleural effusion, "mass effect" not a lesion, "Kerley B lines" not a device). Cardiomegaly and
   Enlarged Cardiomediastinum also have *attribute* mentions ("heart size", "cardiac silhouette",
   "mediastinal contours") that count only with a qualifier right before them or in their predicate:
   "enlarged" / "widened" make a mention that is then classified like any other, "normal" / "within
   normal limits" / "not enlarged" a negative one, "borderline" an uncertain one; "heart size is stable"
   mentions nothing.
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
     or consolidation", "atelectasis and/or pneumonia") are both uncertain.

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
   mentions of a label; no mention leaves it blank (NaN).
5. **No Finding** is ``1`` when no observation other than Support Devices is positive or uncertain
   (CheXpert's rule; an empty-of-findings report such as "The lungs are clear." gets ``1``); otherwise it is
   ``0`` by default — a finding being present is known information — or blank with
   ``no_finding_blank=True`` (CheXpert's own output). Missing text gives all blanks.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cxr_vlp.text import sections as _sections
from cxr_vlp.text import text_views as _text_views
from cxr_vlp.text.labels import CHEXPERT_LABELS, NO_FINDING, NUM_LABELS
from cxr_vlp.text.sections import parse_sections, text_blocks
from cxr_vlp.text.text_views import is_missing, split_sentences

__all__ = [
    "ATTRIBUTE_MENTIONS",
    "EXCLUSIONS",
    "LABELER_VERSION",
    "MENTIONS",
    "Mention",
    "explain",
    "label_report",
    "label_reports",
    "report_sentences",
]

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1


def _source_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the source of this module and of the sectioning / sentence splitting it reads
    reports with: any edit to the rules gives a new value."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], _sections, _text_views):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


# identifies the rules that produced a label: keys the on-disk label cache (cxr_vlp.text.label_cache), so cached
# labels never outlive the labeler that made them
LABELER_VERSION: str = _source_fingerprint()
_PRIORITY = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}

_SIDE = r"(?:(?:left|right|bilateral|both|posterior|lateral|l|r)\s+)*"

# --------------------------------------------------------------------------- mention phrases
# Regex fragments (matched case-insensitively, wrapped in word boundaries). Longer phrases first is not
# needed: all fragments of a label are combined and the longest match at a position wins.
MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastinal\s+(?:widening|enlargement)",
        r"enlarged\s+cardiomediastinum",
        r"widened\s+(?:superior\s+)?mediastinum",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac\s+enlargement",
        r"enlarged\s+heart",
        r"enlargement\s+of\s+the\s+heart",
    ),
    "Lung Opacity": (
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"haziness",
        r"hazy",
        r"infiltrat(?:e|es|ion|ive)",
        r"air[- ]?space\s+(?:disease|process)",
        r"ground[- ]glass",
    ),
    "Lung Lesion": (
        r"nodules?",
        r"nodular(?:ity)?",
        r"mass(?:es)?",
        r"lesions?",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
        r"metastas(?:is|es)",
        r"metastatic\s+disease",
        r"granulomas?",
    ),
    "Edema": (
        r"(?:pulmonary\s+|interstitial\s+|alveolar\s+)?edema",
        r"(?:pulmonary\s+)?(?:vascular|venous)\s+congestion",
        r"congestion",
        r"(?:vascular|venous)\s+engorgement",
        r"kerley\s+b\s+lines",
        r"cephalization",
        r"(?:vascular|venous)\s+redistribution",
        r"engorged\s+(?:pulmonary\s+)?(?:vessels|vasculature)",
        r"(?:fluid|volume)\s+overload",
        r"(?:congestive\s+)?heart\s+failure",
        r"chf",
    ),
    "Consolidation": (
        r"consolidations?",
        r"consolidative",
        r"consolidated",
    ),
    "Pneumonia": (
        r"pneumonias?",
        r"bronchopneumonia",
        r"pneumonic",
        r"infections?",
        r"infectious(?:\s+process)?",
        r"aspiration(?:\s+pneumonia)?",
    ),
    "Atelectasis": (
        r"atelectas[ie]s",
        r"atelectatic",
        r"(?:lobar|lobe|segmental|lung)\s+collapse",
        r"collapse\s+of\s+the",
        r"collapsed\s+(?:\w+\s+)?lobe",
    ),
    "Pneumothorax": (
        r"pneumothora(?:x|ces|xes)",
        r"hydropneumothorax",
        r"ptx",
    ),
    "Pleural Effusion": (
        r"(?:pleural\s+)?effusions?",
        r"pleural\s+fluid",
        r"fluid\s+in\s+the\s+(?:\w+\s+)?pleural\s+spaces?",
        r"(?:layering|fissural)\s+fluid",
        r"hydrothorax",
        r"hemothorax",
        r"hydropneumothorax",
        rf"blunt(?:ing|ed|s)?\s+(?:of\s+)?(?:the\s+)?{_SIDE}costophrenic\s+(?:angles?|sulc(?:us|i)|recess(?:es)?)",
        r"costophrenic\s+(?:angle\s+)?blunting",
    ),
    "Pleural Other": (
        r"pleural\s+thickening",
        r"pleural\s+plaques?",
        r"(?:calcified\s+)?plaques?",
        r"pleural\s+calcifications?",
        r"pleural\s+scar(?:ring)?",
        r"pleural[- ]parenchymal\s+scarring",
        r"(?:apical\s+)?pleural\s+caps?",
        r"pleural\s+fibrosis",
        r"fibrothorax",
    ),
    "Fracture": (
        r"fractures?",
        r"fractured",
        r"fx",
    ),
    "Support Devices": (
        r"tubes?",
        r"catheters?",
        r"picc",
        r"pacemakers?",
        r"pacers?",
        r"a?icds?",
        r"defibrillators?",
        r"wires?",
        r"clips?",
        r"stents?",
        r"ports?",
        r"port-a-cath",
        r"portacath",
        r"drains?",
        r"devices?",
        r"hardware",
        r"cannulae?",
        r"swan[- ]ganz",
        r"lvad",
        r"ecmo",
        r"iabp",
        r"impella",
        r"intra-?aortic\s+balloon(?:\s+pump)?",
        r"tracheostomy",
        r"coils?",
        r"electrodes?",
        r"tubing",
        r"shunts?",
        r"(?:neuro|(?:vagal\s+)?nerve\s+|spinal\s+cord\s+)?stimulators?",
        r"(?:ekg|ecg|(?:cardiac\s+)?monitor(?:ing)?)\s+leads?",
        r"(?:prosthetic|mechanical|bioprosthetic|artificial|porcine)\s+(?:\w+\s+)?valves?",
        r"valve\s+(?:replacement|prosthesis)",
        r"(?:pacer|pacing|pacemaker|a?icd|defibrillator|transvenous|epicardial)\s+leads?",
        r"(?:central(?:\s+venous)?|picc|arterial|venous|ij|internal\s+jugular|jugular|subclavian|femoral"
        r"|dialysis|hickman|midline|pa|pulmonary\s+artery)\s+lines?",
        r"lines?\s+and\s+tubes?",
        r"lines?(?=\s+(?:tip|terminates?|ends?|courses?|projects?)\b)",
    ),
}

# Matches that are not a mention of that observation (a mention overlapping one of these is dropped).
EXCLUSIONS: dict[str, tuple[str, ...]] = {
    "Pleural Effusion": (r"(?:pericardial|joint)\s+effusions?",),
    "Lung Lesion": (
        r"mass\s+effect",
        r"(?:osseous|bony|bone|lytic|sclerotic|blastic|skin|cutaneous|breast|soft[- ]tissue)"
        r"\s+(?:lesions?|mass(?:es)?)",
        r"body\s+mass",
    ),
    "Edema": (r"(?:soft[- ]tissue|subcutaneous|chest\s+wall|scalp|facial|extremity)\s+edema",),
    "Pleural Other": (r"(?:atherosclerotic|aortic|vascular)\s+(?:\w+\s+)?plaques?",),
    "Support Devices": (r"kerley\s+b\s+lines", r"pleural\s+lines?", r"(?:bronchial|eustachian)\s+tubes?"),
    "Pneumonia": (r"aspiration\s+(?:precautions|risk)",),
}

_HEART = (
    r"heart(?:\s+size)?",
    r"size\s+of\s+the\s+heart",
    r"cardiac\s+(?:silhouette|size|contours?|shadow)",
)
_MEDIASTINUM = (
    r"(?:cardio)?mediastinal\s+(?:and\s+hilar\s+)?(?:contours?|silhouettes?|width|shadow|structures)",
    r"(?:hilar\s+and\s+)?mediastinal\s+contours?",
    r"(?:superior\s+)?mediastinum",
    r"cardiomediastinum",
)
_ABNORMAL = {
    "Cardiomegaly": r"enlarged|enlargement|large|increased|dilated",
    "Enlarged Cardiomediastinum": r"widened|widening|wide|enlarged|enlargement|increased",
}
_NORMAL = (
    r"not\s+(?:\w+ly\s+)?(?:enlarged|widened|increased|large|wide)|no\s+longer\s+(?:enlarged|widened)"
    r"|within\s+normal\s+limits|wnl|normal(?:[- ]sized?)?|unremarkable|small"
)
# Attribute mentions: label -> (phrase fragments, abnormal qualifier); see the module docstring.
ATTRIBUTE_MENTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "Cardiomegaly": (_HEART, _ABNORMAL["Cardiomegaly"]),
    "Enlarged Cardiomediastinum": (_MEDIASTINUM, _ABNORMAL["Enlarged Cardiomediastinum"]),
}
_ATTRIBUTE_EXCLUSIONS = r"heart\s+(?:borders?|failure|disease|valves?|rate)|(?:open|congestive)\s+heart"

# --------------------------------------------------------------------------- cues
PRE_NEGATION: tuple[str, ...] = (
    r"no",
    r"not",
    r"without",
    r"negative\s+for",
    r"free\s+of",
    r"clear\s+of",
    r"absence\s+of",
    r"(?:resolution|clearing)\s+of",
    r"resolved",
    r"removal\s+of",
    r"neither",
    r"nor",
    r"(?:does|do|did)\s+not\s+(?:(?:appear|seem)\s+to\s+(?:be|represent|have)|demonstrate|show|reveal)",
    r"rather\s+than",
    r"instead\s+of",
)
POST_NEGATION: tuple[str, ...] = (
    r"(?:not|no\s+longer)\s+(?:\w+ly\s+|well[- ]?)?(?:be\s+)?"
    r"(?:seen|identified|present|visuali[sz]ed|appreciated|evident"
    r"|demonstrated|noted|detected|apparent|observed|appreciable|visible|shown|re-?demonstrated)",
    r"(?:has|have|had)?\s*(?:completely\s+|nearly\s+)?(?:resolved|cleared)",
    r"(?:is|are|was|were|has\s+been|have\s+been)\s+(?:\w+ly\s+)?(?:removed|absent|excluded|ruled\s+out)",
    r"(?:removal|removed)",
    r"(?:is|are|was|were)\s+(?:now\s+)?gone",
)
PRE_UNCERTAINTY: tuple[str, ...] = (
    r"possible",
    r"possibly",
    r"probable",
    r"probably",
    r"(?:un|most\s+|more\s+|less\s+)?likely",
    r"may",
    r"might",
    r"could",
    r"can\s+be",
    r"questionabl[ey]",
    r"question(?:\s+of)?",
    r"suspicious(?:\s+for)?",
    r"suspected",
    r"suspect",
    r"suspicion\s+(?:of|for)",
    r"suggest(?:s|ed|ing|ive|ion)?(?:\s+of)?",
    r"concern(?:ing)?\s+for",
    r"worrisome\s+for",
    r"(?:cannot|can\s*not|can't)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:exclude[ds]?|ruled?\s+out)",
    r"(?:not|difficult\s+to)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded?|ruled\s+out)",
    r"(?:to\s+)?rule\s+out",
    r"r/o",
    r"(?:evaluate|evaluation|assess|assessment)\s+for",
    r"versus",
    r"vs\.?",
    r"differential(?:\s+diagnosis)?(?:\s+(?:includes?|of|would\s+include))?",
    r"equivocal",
    r"indeterminate",
    r"borderline",
    r"presum(?:ed|ably|ptive)",
    r"potential(?:ly)?",
    r"perhaps",
    r"consider(?:ed|ation)?",
    r"cannot\s+be\s+distinguished",
    r"raising\s+the\s+possibility\s+of",
    r"(?:clinical(?:ly)?\s+)?correlat(?:e|ion)\s+(?:clinically\s+)?(?:for|with)",
    r"represent(?:s|ing)?",  # only counted when it follows a hedge: see _HEDGED_REPRESENT
)
POST_UNCERTAINTY: tuple[str, ...] = (
    r"(?:cannot|can\s*not|can't)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)",
    r"(?:is|are)?\s*not\s+(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)",
    r"(?:(?:is|are|was|were)\s+)?(?:also\s+)?(?:(?:more|less|most)\s+)?"
    r"(?:likely|unlikely|possible|suspected|questioned|"
    r"questionable|uncertain|equivocal|a\s+consideration|considered|not\s+certain)(?=\s*(?:[.,;:?]|$|and\b|but\b))",
    r"(?:may|might|could)\s+(?:also\s+)?(?:be\s+present|exist|be\s+seen)",
    r"versus",
    r"vs\.?",
)  # plus a question mark right after the mention ("pneumonia?")
# Phrases with a negation word that do not negate what follows them.
PSEUDO_NEGATION: tuple[str, ...] = (
    r"(?:no|without)\s+(?:(?:significant|substantial|appreciable|interval|definite|major|other|much|further"
    r"|obvious|marked)\s+)*(?:change|increase|decrease|worsening|improvement|progression|difference|enlargement"
    r"\s+of\s+the\s+(?:known|previously))",
    r"not\s+(?:significantly\s+)?(?:changed|increased|decreased|worsened|improved)",
    r"not\s+only",
    r"(?:has|have|had)?\s*(?:partially|partly|incompletely|not\s+(?:completely|fully|entirely))\s+(?:resolved|cleared)",
    r"no\s+longer\s+(?:intubated)",
    r"gram[- ]negative",
)

# Comma + one of these words starts a new clause (ends the scope of a pre cue).
_CLAUSE_STARTERS = (
    r"there|the|a|an|with|which|but|however|although|though|otherwise|status|s/p|consistent|compatible|findings"
    r"|and\s+(?:the|there)"
)
# Comma + a modifier usually starts a new clause too ("no effusion, possible atelectasis", "no pneumothorax,
# small left effusion") unless a list goes on after it: after a size or state word, any later "or" / "nor"
# ("no consolidation, large effusion or pneumothorax"); after a hedge, another comma before the "or"
# ("no consolidation, suspicious opacity, effusion or pneumothorax", but "no effusion, possible atelectasis or
# pneumonia" hedges both).
_SOFT_STARTERS = (
    r"stable|unchanged|persistent|persisting|again|redemonstrated|re-demonstrated|interval|increased|increasing"
    r"|decreased|decreasing|improved|improving|worsened|worsening|new|residual|small|moderate|large|mild|mildly"
    r"|minimal|severe|trace|tiny|possible|possibly|probable|probably|likely|may|could|might|questionable"
    r"|suspected|suspicious|concerning"
)
_HEDGE_STARTERS = re.compile(
    r",\s*(?:possible|possibly|probable|probably|likely|may|could|might|questionable|suspected|suspicious"
    r"|concerning)\b",
    re.IGNORECASE,
)
SCOPE_BREAK = re.compile(
    r"[;:]|\s-\s|\b(?:but|however|although|though|except|whereas|while|which|yet|otherwise|aside\s+from|apart\s+from"
    r"|other\s+than|and\s+(?:the|there)|with|given|following|after|since)\b"
    rf"|,\s*(?:{_CLAUSE_STARTERS})\b",
    re.IGNORECASE,
)
SOFT_SCOPE_BREAK = re.compile(rf",\s*(?:{_SOFT_STARTERS})\b", re.IGNORECASE)
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
_HEDGED_REPRESENT = re.compile(r"\b(?:may|might|could|likely|possibly|probably)\s+(?:\w+\s+)?$", re.IGNORECASE)


def _rx(fragments: Iterable[str]) -> re.Pattern[str]:
    alternation = "|".join(f"(?:{f})" for f in sorted(fragments, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


def _cue_rx(fragments: Iterable[str]) -> re.Pattern[str]:
    alternation = "|".join(f"(?:{f})" for f in sorted(fragments, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


_MENTION_RX = {label: _rx(frags) for label, frags in MENTIONS.items()}
_EXCLUSION_RX = {label: _rx(frags) for label, frags in EXCLUSIONS.items()}
_ATTR_RX = {label: _rx(frags) for label, (frags, _) in ATTRIBUTE_MENTIONS.items()}
_ATTR_EXCL_RX = _rx((_ATTRIBUTE_EXCLUSIONS,))
_ANY_ATTR = "|".join(f for frags, _ in ATTRIBUTE_MENTIONS.values() for f in frags)
_LIST_ITEM = rf"{_ANY_ATTR}|pulmonary\s+vascularity|hil(?:a|um|ar\s+contours?|ar\s+structures)|lungs?"
_BORDERLINE = r"borderline(?:[- ](?:enlarged|large|sized?|in\s+size))?"
_LINKING = (
    r"is|are|was|were|be|been|being|remains?|remained|appears?|appeared|seems?|looks?|again|has|have|now|still|at"
    r"|the|upper|limits?|of|in|size|top|to|also|overall|somewhat|likely|probably|possibly|may|might|could|stable"
    r"|unchanged|within|and|\w+ly"
)
_POST_QUALIFIER = {
    label: re.compile(
        rf"\s*:?\s*(?:(?:,\s*|\s+)(?:and\s+)?(?:the\s+)?(?:{_LIST_ITEM})\s*){{0,3}}(?:(?:{_LINKING})\s+)*"
        rf"(?:(?P<borderline>{_BORDERLINE})|(?P<normal>{_NORMAL})|(?P<abnormal>{abnormal}))(?![\w-])",
        re.IGNORECASE,
    )
    for label, (_, abnormal) in ATTRIBUTE_MENTIONS.items()
}
_PRE_QUALIFIER = {
    label: re.compile(
        rf"(?<![\w-])(?:(?P<borderline>{_BORDERLINE})|(?P<normal>{_NORMAL})|(?P<abnormal>{abnormal}))"
        rf"(?:\s*-\s*sized|\s+in\s+size)?(?:\s+of)?(?:\s+the)?\s+"
        rf"(?:(?:{_LIST_ITEM})(?:\s*,\s*and\s+|\s*,\s*|\s+and\s+)(?:the\s+)?){{0,3}}$",
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
# Two findings joined by "or" (up to three words before the second one): offered as alternatives.
_ALTERNATIVE = re.compile(r"\s*,?\s*(?:or|and/or)\s+(?:[\w-]+\s+){0,3}", re.IGNORECASE)


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
        c for c in unc
        if not re.fullmatch(r"represent(?:s|ing)?", c.text, re.IGNORECASE)
        or _HEDGED_REPRESENT.search(sentence[: c.start])
    ]
    post_unc = [_Cue(*m.span(), m.group(), "post_unc") for m in _POST_UNC_RX.finditer(sentence)]
    hedge_spans = [(c.start, c.end) for c in unc + post_unc]
    masked = pseudo + hedge_spans
    neg = [
        _Cue(*m.span(), m.group(), "pre_neg") for m in _PRE_NEG_RX.finditer(sentence)
        if not _overlaps(m.span(), masked)
    ]
    # "not" alone is only a pre-negation when it directly negates a noun phrase ("not pneumonia");
    # elsewhere ("is not enlarged", "not seen") it is handled by the post cues and qualifiers.
    neg = [c for c in neg if c.text.lower() != "not" or not re.match(r"\s*(?:be|been|\w+ed|\w+ly)\b",
                                                                      sentence[c.end:], re.IGNORECASE)]
    post_neg = [
        _Cue(*m.span(), m.group(), "post_neg") for m in _POST_NEG_RX.finditer(sentence)
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
    for m in _ATTR_RX[label].finditer(sentence):
        if _overlaps(m.span(), excluded) or _overlaps(m.span(), taken):
            continue
        post = _POST_QUALIFIER[label].match(sentence, m.end())
        pre = _PRE_QUALIFIER[label].search(sentence[: m.start()])
        qualifier = post if post is not None else pre
        if qualifier is None:
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
    return _alternatives(sentence, mentions)


def _alternatives(sentence: str, mentions: list[Mention]) -> list[Mention]:
    """Positive findings offered as alternatives ("atelectasis or consolidation") are uncertain."""
    out = list(mentions)
    for i, a in enumerate(mentions):
        if a.status != POSITIVE:
            continue
        for b in mentions:
            if b.label == a.label:
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
def explain(text: Any, use_sections: bool = True) -> list[Mention]:
    """Every mention found in ``text`` with its status and deciding cue, in reading order."""
    out: list[Mention] = []
    for sentence in report_sentences(text, use_sections):
        out.extend(sorted(_sentence_mentions(sentence), key=lambda m: m.start))
    return out


def _aggregate(mentions: list[Mention], no_finding_blank: bool) -> np.ndarray:
    labels = np.full(NUM_LABELS, np.nan, dtype=np.float32)
    best: dict[str, int] = {}
    for m in mentions:
        if m.label not in best or _PRIORITY[m.status] > _PRIORITY[best[m.label]]:
            best[m.label] = m.status
    for label, status in best.items():
        labels[CHEXPERT_LABELS.index(label)] = status
    findings = [
        best.get(label) in (POSITIVE, UNCERTAIN) for label in CHEXPERT_LABELS[1:] if label != "Support Devices"
    ]
    if not any(findings):
        labels[NO_FINDING] = 1.0
    elif not no_finding_blank:
        labels[NO_FINDING] = 0.0
    return labels


def label_report(text: Any, *, use_sections: bool = True, no_finding_blank: bool = False) -> np.ndarray:
    """The 14 CheXpert values of one report: float32 ``[14]`` of 1 / 0 / -1 / NaN (order of CHEXPERT_LABELS).

    Missing text (``None``, NaN, blank) gives all NaN. See the module docstring for the rules.
    """
    if is_missing(text):
        return np.full(NUM_LABELS, np.nan, dtype=np.float32)
    return _aggregate(explain(text, use_sections), no_finding_blank)


def label_reports(texts: Iterable[Any], *, use_sections: bool = True, no_finding_blank: bool = False) -> np.ndarray:
    """:func:`label_report` for each text: float32 ``[n, 14]``."""
    rows = [label_report(t, use_sections=use_sections, no_finding_blank=no_finding_blank) for t in texts]
    return np.stack(rows) if rows else np.zeros((0, NUM_LABELS), dtype=np.float32)
