"""Report sectioning: headers in any case and spacing, synonyms, repeats, preamble, fallbacks."""

from __future__ import annotations

import pytest

from cxr_vlp.text.sections import (
    CANONICAL,
    PREAMBLE,
    collapse_whitespace,
    findings_and_impression,
    last_paragraph,
    parse_sections,
    text_blocks,
)

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough and fever, evaluate for pneumonia.

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The lungs are clear without focal consolidation.  No pleural effusion or
 pneumothorax is seen.  The cardiac silhouette is normal in size.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_style_report() -> None:
    sections = parse_sections(MIMIC_STYLE)
    assert sections == {
        "examination": "CHEST (PA AND LAT)",
        "indication": "___F with cough and fever, evaluate for pneumonia.",
        "technique": "Chest PA and lateral",
        "comparison": "___",
        "findings": "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax is seen. "
        "The cardiac silhouette is normal in size.",
        "impression": "No acute cardiopulmonary process.",
    }
    assert set(sections) <= set(CANONICAL)
    assert findings_and_impression(MIMIC_STYLE) == (sections["findings"], sections["impression"])


@pytest.mark.parametrize(
    "text",
    [
        "Findings : Lungs are clear.\nImpression : Normal chest.",
        "FINDINGS:Lungs are clear.\nIMPRESSION:Normal chest.",
        "findings:\n  Lungs are clear.\n\nimpression:\n  Normal chest.",
        "FINDINGS\nLungs are clear.\nIMPRESSION\nNormal chest.",
        "  Findings  :   Lungs   are\n clear.\n   IMPRESSION :\tNormal chest.",
        "FINDINGS: Lungs are clear. IMPRESSION: Normal chest.",
    ],
)
def test_header_case_spacing_and_position(text: str) -> None:
    assert parse_sections(text) == {"findings": "Lungs are clear.", "impression": "Normal chest."}


def test_text_on_the_same_line_or_the_next() -> None:
    same = parse_sections("IMPRESSION: No acute process.")
    nxt = parse_sections("IMPRESSION:\n\nNo acute process.")
    assert same == nxt == {"impression": "No acute process."}


def test_missing_sections_and_missing_input() -> None:
    assert parse_sections("FINDINGS: Small left effusion.") == {"findings": "Small left effusion."}
    assert findings_and_impression("FINDINGS: Small left effusion.") == ("Small left effusion.", None)
    assert findings_and_impression("IMPRESSION: Normal.") == (None, "Normal.")
    for missing in (None, float("nan"), "", "  \n "):
        assert parse_sections(missing) == {}
        assert findings_and_impression(missing) == (None, None)


def test_repeated_headers_are_concatenated_in_order() -> None:
    text = "FINDINGS: First part.\nIMPRESSION: Summary.\nFINDINGS: Second part.\nImpression: More."
    assert parse_sections(text) == {"findings": "First part. Second part.", "impression": "Summary. More."}


@pytest.mark.parametrize(
    "header, key",
    [
        ("CONCLUSION:", "impression"),
        ("Conclusions:", "impression"),
        ("SUMMARY:", "impression"),
        ("REASON FOR EXAMINATION:", "indication"),
        ("Reason for exam:", "indication"),
        ("CLINICAL HISTORY:", "history"),
        ("HISTORY:", "history"),
        ("EXAM:", "examination"),
        ("WET READ:", "wet_read"),
        ("NOTIFICATION:", "notification"),
        ("RECOMMENDATION(S):", "recommendation"),
        ("Recommendations:", "recommendation"),
        ("COMPARISONS:", "comparison"),
        ("PROCEDURE:", "technique"),
        ("ADDENDUM:", "addendum"),
    ],
)
def test_synonyms(header: str, key: str) -> None:
    assert parse_sections(f"{header} Some text here.") == {key: "Some text here."}


@pytest.mark.parametrize("header", ["FINDINGS AND IMPRESSION:", "Findings/Impression:", "IMPRESSION / FINDINGS:"])
def test_combined_findings_and_impression_goes_to_impression(header: str) -> None:
    text = f"INDICATION: Cough.\n{header}\nNo acute process."
    assert parse_sections(text) == {"indication": "Cough.", "impression": "No acute process."}
    assert findings_and_impression(text) == (None, "No acute process.")


def test_preamble_and_final_report_banner() -> None:
    text = "WET READ: ___ 3:15 PM no ptx\n\nFINAL REPORT\nPortable chest.\nFINDINGS: Clear."
    assert parse_sections(text) == {"wet_read": "___ 3:15 PM no ptx", PREAMBLE: "Portable chest.", "findings": "Clear."}
    assert parse_sections("Chest radiograph, two views.\nIMPRESSION: Normal.") == {
        PREAMBLE: "Chest radiograph, two views.",
        "impression": "Normal.",
    }
    assert parse_sections("Lungs are clear. No effusion.") == {PREAMBLE: "Lungs are clear. No effusion."}


def test_unknown_headers_and_prose_do_not_split() -> None:
    text = "FINDINGS:\nLINES/TUBES: ET tube 4 cm above the carina.\nLungs: clear.\nThe impression: unchanged."
    assert parse_sections(text) == {
        "findings": "LINES/TUBES: ET tube 4 cm above the carina. Lungs: clear. The impression: unchanged."
    }
    # lower-case header words inside a line are prose, not headers
    assert list(parse_sections("FINDINGS: my impression: nothing new.")) == ["findings"]


def test_empty_sections_are_dropped() -> None:
    assert parse_sections("FINDINGS:\nIMPRESSION: Normal.") == {"impression": "Normal."}


def test_collapse_false_keeps_newlines() -> None:
    raw = parse_sections("FINDINGS:\n  Lungs are\n  clear.\n\n  No effusion.", collapse=False)
    assert raw == {"findings": "Lungs are\n  clear.\n\n  No effusion."}


def test_fallback_last_paragraph_when_no_findings_or_impression() -> None:
    text = "EXAMINATION: Chest.\n\nINDICATION: Cough.\n\nLungs are clear.\nHeart normal.\n\nNo acute process."
    assert findings_and_impression(text) == (None, "No acute process.")
    # body after a blank line inside an administrative section counts as report body
    text = "INDICATION: Cough.\n\nThe lungs are clear.\nNOTIFICATION: Discussed with Dr. ___."
    assert last_paragraph(text) == "The lungs are clear."
    # only administrative content: nothing to fall back on
    assert findings_and_impression("INDICATION: Cough.\nCOMPARISON: None.") == (None, None)
    assert findings_and_impression("Lungs are clear.\n\nNo   effusion.") == (None, "No effusion.")


def test_text_blocks_and_collapse() -> None:
    assert collapse_whitespace("  a\n b\t\tc  ") == "a b c"
    text = "1. No pleural effusion or\n   pneumothorax\n2. Cardiomegaly\n\nStable.\n- tube in place"
    assert text_blocks(text) == [
        "1. No pleural effusion or pneumothorax",
        "2. Cardiomegaly",
        "Stable.",
        "- tube in place",
    ]
    assert text_blocks(None) == []
