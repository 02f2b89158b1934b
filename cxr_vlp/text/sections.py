"""Sectioning of free-text radiology reports (MIMIC-CXR ``.txt`` style).

A MIMIC-CXR report is plain text with upper-case section headers::

    FINAL REPORT
    EXAMINATION:  CHEST (PA AND LAT)
    INDICATION:  ___ with cough
    COMPARISON:  ___
    FINDINGS:
    The lungs are clear.  No pleural effusion or
    pneumothorax.
    IMPRESSION:  No acute cardiopulmonary process.

:func:`parse_sections` maps such text to ``{section: text}`` with normalised lower-case keys
(:data:`CANONICAL`); :func:`findings_and_impression` returns the two sections used for training and
labelling, with the fallback rules documented there.

Header recognition
------------------
* A known header name (:data:`HEADER_SYNONYMS`, any case, flexible spacing, optional ``(S)``) at the
  start of a line, followed by ``:`` (``"Findings :"``, ``"impression:"``) or alone on its line
  (``"IMPRESSION"``, ``"FINAL REPORT"``). The section text starts after the colon on the same line or
  on the next lines.
* Inside a line, only an upper-case known header followed by ``:`` (``"... clear. IMPRESSION: Normal."``),
  so ordinary prose such as "the impression: ..." is not cut.
* Unknown upper-case words followed by a colon (``"LINES/TUBES:"``, ``"NOTE:"``) are *not* headers: their
  text stays in the current section, so nothing clinical leaves the findings.

Keys and choices
----------------
* Synonyms map to one key: CONCLUSION(S) / SUMMARY / OPINION / INTERPRETATION → ``impression``;
  REASON FOR EXAM(INATION) / CLINICAL INDICATION → ``indication``; CLINICAL HISTORY / HX → ``history``;
  EXAM / TYPE OF EXAMINATION / STUDY → ``examination``; PROCEDURE → ``technique``; WET READ →
  ``wet_read``; RECOMMENDATION(S) → ``recommendation``.
* Combined headers ("FINDINGS AND IMPRESSION:", "FINDINGS/IMPRESSION:", "IMPRESSION AND FINDINGS:") go to
  ``impression`` only, not to both: duplicating the text into ``findings`` would make the two text views
  of a study identical, and for labelling it adds nothing. ``findings`` stays absent unless the report
  also has its own FINDINGS section.
* Text before the first header, and text after the ``FINAL REPORT`` banner up to the next header, is kept
  under ``preamble``.
* Repeated headers are concatenated in order of appearance (one space between the parts).
* Sections whose text is empty (a header followed directly by another header) are left out.
"""

from __future__ import annotations

import re
from typing import Any

from cxr_vlp.text.text_views import is_missing

__all__ = [
    "CANONICAL",
    "HEADER_SYNONYMS",
    "PREAMBLE",
    "collapse_whitespace",
    "findings_and_impression",
    "last_paragraph",
    "parse_sections",
    "text_blocks",
]

PREAMBLE = "preamble"

# Header text (lower case, single spaces, without "(s)") -> canonical key.
HEADER_SYNONYMS: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings / impression": "impression",
    "impression and findings": "impression",
    "impression/findings": "impression",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "opinion": "impression",
    "interpretation": "impression",
    "indication": "indication",
    "indications": "indication",
    "clinical indication": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "reason for study": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "hx": "history",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison study": "comparison",
    "comparison studies": "comparison",
    "technique": "technique",
    "procedure": "technique",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "study": "examination",
    "wet read": "wet_read",
    "notification": "notification",
    "notifications": "notification",
    "recommendation": "recommendation",
    "recommendations": "recommendation",
    "addendum": "addendum",
    "final report": PREAMBLE,
}
CANONICAL: tuple[str, ...] = tuple(dict.fromkeys([PREAMBLE, *HEADER_SYNONYMS.values()]))

# Sections that describe the request or the process, not the image (skipped by the impression fallback).
_ADMINISTRATIVE = frozenset(
    {"indication", "history", "comparison", "technique", "examination", "notification", "recommendation"}
)


def _name_pattern(name: str, plural: str = "s") -> str:
    words = re.split(r"\s+|(?=/)|(?<=/)", name)
    return r"[ \t]*".join(re.escape(w) for w in words if w) + rf"(?:\({plural}\))?"


_NAMES = sorted(HEADER_SYNONYMS, key=len, reverse=True)
_ALT = "|".join(_name_pattern(n) for n in _NAMES)
# At a line start, any case: "<name> :" (text may follow) or "<name>" alone on its line.
_LINE_HEADER = re.compile(rf"^[ \t]*(?P<name>{_ALT})(?:[ \t]*:|[ \t]*$)", re.IGNORECASE | re.MULTILINE)
# Inside a line: upper case only and a colon (case-sensitive pattern built from upper-cased names).
_INLINE_ALT = "|".join(_name_pattern(n.upper(), plural="S") for n in _NAMES)
_INLINE_HEADER = re.compile(rf"(?<![A-Za-z])(?P<name>{_INLINE_ALT})[ \t]*:")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# A new line that starts a list item ("1.", "2)", "-", "*", "•") begins a new block.
_LIST_ITEM = re.compile(r"\n(?=[ \t]*(?:\d{1,2}[.)](?:\s|$)|[-*\u2022][ \t]))")


def _canonical(raw_name: str) -> str:
    name = re.sub(r"\(s\)$", "", raw_name.strip(), flags=re.IGNORECASE)
    name = re.sub(r"\s*/\s*", "/", " ".join(name.lower().split()))
    return HEADER_SYNONYMS.get(name) or HEADER_SYNONYMS[name.replace("/", " / ")]


def collapse_whitespace(text: str) -> str:
    """All runs of whitespace (newlines included) become one space; the ends are stripped."""
    return " ".join(text.split())


def text_blocks(text: str) -> list[str]:
    """Cut ``text`` at blank lines and at line starts of list items, collapsing the hard wraps inside.

    Hard-wrapped lines ("No pleural effusion or\\npneumothorax.") are rejoined, while paragraphs and
    enumerated items stay apart, so :func:`~cxr_vlp.text.text_views.split_sentences` run on
    ``"\\n".join(text_blocks(text))`` neither cuts a wrapped sentence nor merges two list items.
    """
    if is_missing(text):
        return []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = []
    for paragraph in _BLANK_LINE.split(text):
        for item in _LIST_ITEM.split(paragraph):
            block = collapse_whitespace(item)
            if block:
                blocks.append(block)
    return blocks


def _segments(text: str) -> list[tuple[str, str]]:
    """``(key, raw text)`` in order of appearance; the raw text keeps its newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    found: list[tuple[int, int, str]] = []
    for rx in (_LINE_HEADER, _INLINE_HEADER):
        for m in rx.finditer(text):
            found.append((m.start("name"), m.end(), _canonical(m.group("name"))))
    found.sort()
    headers: list[tuple[int, int, str]] = []
    for start, end, key in found:
        if headers and start < headers[-1][1]:
            continue  # same header matched by both patterns, or overlapping
        headers.append((start, end, key))
    segments = []
    if not headers or headers[0][0] > 0:
        segments.append((PREAMBLE, text[: headers[0][0] if headers else len(text)]))
    for i, (_, end, key) in enumerate(headers):
        stop = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        segments.append((key, text[end:stop]))
    return [(k, t) for k, t in segments if t.strip()]


def parse_sections(text: Any, collapse: bool = True) -> dict[str, str]:
    """Split a report into ``{key: text}`` (keys from :data:`CANONICAL`, in order of first appearance).

    With ``collapse`` (default) whitespace inside each section is collapsed to single spaces; with
    ``collapse=False`` the raw text (stripped, newlines kept) is returned, e.g. for :func:`text_blocks`.
    Missing input (``None``, NaN, blank) gives ``{}``. See the module docstring for the header rules.
    """
    if is_missing(text):
        return {}
    out: dict[str, list[str]] = {}
    for key, raw in _segments(str(text)):
        out.setdefault(key, []).append(collapse_whitespace(raw) if collapse else raw.strip())
    sep = " " if collapse else "\n\n"
    return {k: sep.join(parts) for k, parts in out.items()}


def last_paragraph(text: Any) -> str | None:
    """The last paragraph of the report body that is not an administrative section.

    Candidates are the paragraphs (blank-line separated) of the preamble, of ``wet_read`` / ``addendum``
    sections, and the paragraphs after the first one inside administrative sections (indication,
    history, comparison, technique, examination): in reports without FINDINGS / IMPRESSION headers the
    body often follows the last such section after a blank line. Whitespace is collapsed; ``None`` when
    there is no candidate.
    """
    if is_missing(text):
        return None
    candidates: list[str] = []
    for key, raw in _segments(str(text)):
        if key in ("findings", "impression"):
            candidates.append(raw)
            continue
        paragraphs = [p for p in _BLANK_LINE.split(raw.strip()) if p.strip()]
        if key in _ADMINISTRATIVE:
            paragraphs = paragraphs[1:] if key not in ("notification", "recommendation") else []
        candidates.extend(paragraphs)
    for raw in reversed(candidates):
        paragraphs = [p for p in _BLANK_LINE.split(raw.strip()) if p.strip()]
        if paragraphs:
            return collapse_whitespace(paragraphs[-1])
    return None


def findings_and_impression(text: Any) -> tuple[str | None, str | None]:
    """``(findings, impression)`` of a report, each whitespace-collapsed or ``None``.

    Fallback rules:

    * both sections present: both returned (a combined "FINDINGS AND IMPRESSION" section counts as the
      impression, see the module docstring);
    * only findings: ``(findings, None)``; the findings are *not* copied into the impression (the text
      view sampler augments a lone section; a copy would only duplicate it);
    * only impression: ``(None, impression)``;
    * neither: the last non-administrative paragraph (:func:`last_paragraph`) becomes the impression,
      as is common for MIMIC-CXR reports without headers; with no such paragraph ``(None, None)``.
    """
    sections = parse_sections(text)
    findings, impression = sections.get("findings"), sections.get("impression")
    if findings is None and impression is None:
        impression = last_paragraph(text)
    return findings, impression
