"""Report-generation metrics: BLEU and ROUGE-L against hand arithmetic and a direct transcription of the
formulas, clinical metrics against hand-counted TP / FP / FN, input checks and the Markdown report."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cxr_vlp.reportgen.metrics import (
    bleu_scores,
    clinical_metrics,
    normalize_report,
    report_generation_metrics,
    rouge_l,
    write_generation_report,
)
from cxr_vlp.text.labeler import label_reports
from cxr_vlp.text.labels import CHEXPERT_LABELS


def test_normalize_report() -> None:
    assert normalize_report("  Heart size is\n ENLARGED.\t No effusion. ") == "heart size is enlarged. no effusion."


# ----------------------------------------------------------------------------- BLEU
def test_bleu_by_hand() -> None:
    # hyp (6 tokens): the cat sat on a mat;  ref (8 tokens): the cat sat on the red mat today
    # clipped matches: 1-grams the,cat,sat,on,mat = 5/6 ("a" misses); 2-grams the cat, cat sat, sat on = 3/5;
    # 3-grams the cat sat, cat sat on = 2/4; 4-grams the cat sat on = 1/3. c = 6 < r = 8: BP = exp(1 - 8/6).
    bp = math.exp(1 - 8 / 6)
    p1, p2, p3, p4 = 5 / 6, 3 / 5, 2 / 4, 1 / 3
    got = bleu_scores(["the cat sat on a mat"], ["the cat sat on the red mat today"])
    assert got["bleu1"] == pytest.approx(bp * p1, rel=1e-9)
    assert got["bleu2"] == pytest.approx(bp * math.sqrt(p1 * p2), rel=1e-9)
    assert got["bleu3"] == pytest.approx(bp * (p1 * p2 * p3) ** (1 / 3), rel=1e-9)
    assert got["bleu4"] == pytest.approx(bp * (p1 * p2 * p3 * p4) ** (1 / 4), rel=1e-9)


def test_bleu_no_smoothing_and_punctuation_tokens() -> None:
    # "the cat sat on the mat" vs "the cat was on a mat": p1 = 4/6, p2 = 1/5 (the cat), no 3-gram match, BP = 1.
    # Without smoothing BLEU-3 and BLEU-4 are exactly 0 (sacrebleu's default "exp" smoothing would not be).
    got = bleu_scores(["The cat sat on the mat"], ["the cat was on a mat"])
    assert got["bleu1"] == pytest.approx(4 / 6)
    assert got["bleu2"] == pytest.approx(math.sqrt(4 / 6 * 1 / 5))
    assert got["bleu3"] == 0.0 and got["bleu4"] == 0.0
    # 13a splits the period off as a token: "no effusion ." vs "no edema ." -> p1 = 2/3, p2 = 0/2
    got = bleu_scores(["No effusion."], ["no edema."])
    assert got["bleu1"] == pytest.approx(2 / 3)
    assert got["bleu2"] == 0.0


def test_bleu_identical_and_disjoint() -> None:
    refs = ["No acute cardiopulmonary process.", "Small left pleural effusion. Mild cardiomegaly."]
    assert bleu_scores(refs, refs) == pytest.approx({f"bleu{n}": 1.0 for n in range(1, 5)})
    assert bleu_scores(["alpha beta gamma delta"], ["one two three four"]) == {f"bleu{n}": 0.0 for n in range(1, 5)}


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _reference_bleu(hypotheses: list[str], references: list[str], max_n: int) -> float:
    """Papineni et al.: clipped n-gram counts summed over the corpus, BP = exp(1 - r/c) if c < r."""
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for hyp, ref in zip(hypotheses, references):
        h, g = hyp.split(), ref.split()
        c, r = c + len(h), r + len(g)
        for n in range(1, max_n + 1):
            hyp_counts, ref_counts = _ngrams(h, n), _ngrams(g, n)
            matches[n - 1] += sum(min(k, ref_counts[gram]) for gram, k in hyp_counts.items())
            totals[n - 1] += sum(hyp_counts.values())
    if any(m == 0 for m in matches):
        return 0.0
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    return bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n)


@pytest.mark.parametrize("seed", range(6))
def test_bleu_matches_direct_formula(seed: int) -> None:
    rng = random.Random(seed)
    vocab = ["no", "small", "left", "right", "effusion", "pleural", "heart", "normal"]
    n_pairs = rng.randint(1, 6)
    # lengths 2..12, so some hypotheses are shorter than 4 tokens and BP can be on either side of 1
    hyps = [" ".join(rng.choices(vocab, k=rng.randint(2, 12))) for _ in range(n_pairs)]
    refs = [" ".join(rng.choices(vocab, k=rng.randint(2, 12))) for _ in range(n_pairs)]
    got = bleu_scores(hyps, refs)
    for n in range(1, 5):
        assert got[f"bleu{n}"] == pytest.approx(_reference_bleu(hyps, refs, n), rel=1e-9, abs=1e-12), (n, hyps, refs)


# ----------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_by_hand() -> None:
    # hyp: a small left pleural effusion is seen (7)   ref: small pleural effusion on the left (6)
    # LCS = "small pleural effusion" = 3: P = 3/7, R = 3/6, F = 2PR / (P + R) = 6/13.
    p, r = 3 / 7, 3 / 6
    f = 2 * p * r / (p + r)
    assert f == pytest.approx(6 / 13)
    hyp, ref = "A small left pleural effusion is seen.", "Small pleural effusion on the LEFT."
    assert rouge_l([hyp], [ref]) == pytest.approx(f)
    # the mean over samples, not a corpus-level F: (6/13 + 1) / 2
    assert rouge_l([hyp, "no pneumothorax"], [ref, "No pneumothorax."]) == pytest.approx((f + 1) / 2)
    assert rouge_l(["nothing in common"], ["heart size normal"]) == 0.0


# ----------------------------------------------------------------------------- clinical metrics
# (hypothesis, reference, labeler findings of the hypothesis, of the reference) -- checked against the labeler below;
# parents are set from their children (CheXpert's hierarchy: Cardiomegaly -> Enlarged Cardiomediastinum; Edema,
# Consolidation, Pneumonia, Lung Lesion, Atelectasis -> Lung Opacity)
EC, LO = "Enlarged Cardiomediastinum", "Lung Opacity"
CLINICAL_CASES = [
    (
        "Heart size is enlarged. Small left pleural effusion.",
        "Mild cardiomegaly. No pleural effusion.",
        {"Cardiomegaly": 1, EC: 1, "Pleural Effusion": 1},
        {"Cardiomegaly": 1, EC: 1},
    ),
    (
        "The lungs are clear. No pleural effusion or pneumothorax.",
        "No acute cardiopulmonary process.",
        {"No Finding": 1},
        {"No Finding": 1},
    ),
    (
        "Right lower lobe opacity, possibly pneumonia. No pneumothorax.",
        "Right lower lobe consolidation. No pneumothorax.",
        {LO: 1, "Pneumonia": -1},
        {"Consolidation": 1, LO: 1},
    ),
    (
        "Large right pneumothorax. Pulmonary edema.",
        "Large right pneumothorax. Left basilar atelectasis.",
        {"Pneumothorax": 1, "Edema": 1, LO: 1},
        {"Pneumothorax": 1, "Atelectasis": 1, LO: 1},
    ),
    (
        "Mild cardiomegaly. Small right pleural effusion.",
        "Pulmonary edema. Bilateral pleural effusions.",
        {"Cardiomegaly": 1, EC: 1, "Pleural Effusion": 1},
        {"Edema": 1, "Pleural Effusion": 1, LO: 1},
    ),
]
HYPS = [c[0] for c in CLINICAL_CASES]
REFS = [c[1] for c in CLINICAL_CASES]


def _found(row: np.ndarray) -> dict[str, int]:
    """Positive / uncertain findings of one labeler row."""
    return {name: int(v) for name, v in zip(CHEXPERT_LABELS, row) if v in (1.0, -1.0)}


def test_labeler_reads_the_clinical_cases_as_expected() -> None:
    for row, (_, _, expected, _) in zip(label_reports(HYPS), CLINICAL_CASES):
        assert _found(row) == expected
    for row, (_, _, _, expected) in zip(label_reports(REFS), CLINICAL_CASES):
        assert _found(row) == expected


def test_clinical_metrics_by_hand() -> None:
    # TP: Cardiomegaly, EC (1), No Finding (2), Lung Opacity (3), Pneumothorax, Lung Opacity (4),
    #     Pleural Effusion (5)                                                                      = 7
    # FP: Pleural Effusion (1), Edema (4), Cardiomegaly, EC (5)                                     = 4
    # FN: Consolidation (3), Atelectasis (4), Edema, Lung Opacity (5)                               = 4
    got = clinical_metrics(HYPS, REFS)
    assert got["clinical/micro_precision"] == pytest.approx(7 / 11)
    assert got["clinical/micro_recall"] == pytest.approx(7 / 11)
    assert got["clinical/micro_f1"] == pytest.approx(2 * 7 / (2 * 7 + 4 + 4))
    # Cardiomegaly: TP 1, FP 1, FN 0 -> P 1/2, R 1, F1 2/3, support 1
    assert got["clinical/Cardiomegaly/precision"] == pytest.approx(0.5)
    assert got["clinical/Cardiomegaly/recall"] == pytest.approx(1.0)
    assert got["clinical/Cardiomegaly/f1"] == pytest.approx(2 / 3)
    assert got["clinical/Cardiomegaly/support"] == 1
    # Lung Opacity: TP 2, FP 0, FN 1 -> P 1, R 2/3, F1 4/5, support 3
    assert got["clinical/Lung Opacity/precision"] == pytest.approx(1.0)
    assert got["clinical/Lung Opacity/recall"] == pytest.approx(2 / 3)
    assert got["clinical/Lung Opacity/support"] == 3
    # Pneumonia: only the uncertain mention of a hypothesis, no reference has it -> 0, left out of the macro F1
    assert got["clinical/Pneumonia/precision"] == 0 and got["clinical/Pneumonia/support"] == 0
    # macro over the 9 labels in the references: No Finding 1, EC 2/3, Cardiomegaly 2/3, Lung Opacity 4/5,
    # Pleural Effusion 2/3, Pneumothorax 1, Consolidation 0, Edema 0, Atelectasis 0
    assert got["clinical/macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 4 / 5 + 2 / 3 + 1) / 9)
    assert {f"clinical/{name}/f1" for name in CHEXPERT_LABELS} <= got.keys()


def test_clinical_metrics_uncertain_and_label_subset() -> None:
    # the uncertain pneumonia of case 3 becomes one more FP: P = 7/12, R = 7/11
    got = clinical_metrics(HYPS, REFS, uncertain_as_positive=True)
    assert got["clinical/micro_precision"] == pytest.approx(7 / 12)
    assert got["clinical/micro_recall"] == pytest.approx(7 / 11)
    assert got["clinical/Pneumonia/precision"] == 0 and got["clinical/Pneumonia/support"] == 0
    # only two labels: Cardiomegaly TP 1 FP 1, Pleural Effusion TP 1 FP 1 -> P 2/4, R 2/2
    got = clinical_metrics(HYPS, REFS, labels=("Cardiomegaly", "Pleural Effusion"))
    assert got["clinical/micro_precision"] == pytest.approx(0.5)
    assert got["clinical/micro_recall"] == pytest.approx(1.0)
    assert "clinical/Edema/f1" not in got
    # no reference finding at all among the labels: macro F1 is undefined (NaN), micro values are 0
    got = clinical_metrics(["Large right pneumothorax."], ["No pneumothorax."], labels=("Pneumothorax",))
    assert math.isnan(got["clinical/macro_f1"]) and got["clinical/micro_f1"] == 0.0
    with pytest.raises(ValueError, match="Cardiomegally"):
        clinical_metrics(HYPS, REFS, labels=("Cardiomegally",))


# ----------------------------------------------------------------------------- all together, validation, report
def test_report_generation_metrics_keys_and_values() -> None:
    got = report_generation_metrics(HYPS, REFS)
    assert list(got)[:5] == ["bleu1", "bleu2", "bleu3", "bleu4", "rougeL"]
    assert got["bleu1"] == bleu_scores(HYPS, REFS)["bleu1"]
    assert got["rougeL"] == rouge_l(HYPS, REFS)
    assert got["clinical/micro_f1"] == pytest.approx(7 / 11)


@pytest.mark.parametrize("fn", [bleu_scores, rouge_l, clinical_metrics, report_generation_metrics])
def test_input_validation(fn) -> None:
    with pytest.raises(ValueError, match=r"3 hypotheses but 2 references"):
        fn(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one pair"):
        fn([], [])
    with pytest.raises(ValueError, match=r"references\[1\] is NoneType"):
        fn(["a", "b"], ["a", None])
    with pytest.raises(ValueError, match="not a single string"):
        fn("no effusion", "no effusion")


def test_write_generation_report(tmp_path: Path) -> None:
    metrics = report_generation_metrics(HYPS, REFS)
    examples = [
        {
            "study_id": "s50414267",
            "prompt": "Findings: cardiomegaly, pleural effusion.",
            "generated": HYPS[0],
            "reference": REFS[0],
        },
        {"study_id": "s53189527", "prompt": "Findings: none.", "generated": HYPS[1], "reference": REFS[1]},
    ]
    out = write_generation_report(tmp_path / "run" / "generation.md", metrics, examples, title="Val generations")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Val generations\n")
    assert f"| BLEU-1 | {metrics['bleu1']:.4f} |" in text
    assert f"| ROUGE-L | {metrics['rougeL']:.4f} |" in text
    assert f"| Clinical micro F1 | {7 / 11:.4f} |" in text
    assert "| Cardiomegaly | 0.5000 | 1.0000 | 0.6667 | 1 |" in text
    # main metrics come first, in order, before the per-label table
    order = [
        text.index(f"| {name} |")
        for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "Clinical micro precision", "Clinical macro F1", "Cardiomegaly")
    ]
    assert order == sorted(order)
    for example in examples:
        for value in example.values():
            assert value in text
    # rewriting replaces the file and leaves no temporary file behind
    write_generation_report(out, {"bleu1": 0.25}, [])
    assert "| BLEU-1 | 0.2500 |" in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in out.parent.iterdir()) == ["generation.md"]
