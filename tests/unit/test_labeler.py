"""Rule-based CheXpert-style labeler: rules, fixture accuracy, agreement with synthetic labels, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_vlp.text.label_reports import label_csv, main, parse_args
from cxr_vlp.text.labeler import OTHER_FINDING, Mention, explain, label_report, label_reports, report_sentences
from cxr_vlp.text.labels import CHEXPERT_LABELS, NUM_LABELS

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "labeler_sentences.tsv"
# Measured strict accuracy (see test_fixture_accuracy): 0.981 over the whole fixture. Block 2 scored 0.80 when
# first run (unseen), block 3 0.957 when first run (held out after the block-2 fixes); both were written
# before the labeler ever saw them. The bound leaves room for rule changes, not for regressions.
FIXTURE_MIN_STRICT_ACCURACY = 0.95
SYNTHETIC_MIN_AGREEMENT = 0.97
IDX = {name: i for i, name in enumerate(CHEXPERT_LABELS)}


def value(text: str, label: str) -> float:
    return float(label_report(text)[IDX[label]])


def blank(x: float) -> bool:
    return math.isnan(x)


# ----------------------------------------------------------------------------- negation rules
@pytest.mark.parametrize(
    "text, label, expected",
    [
        ("No pneumothorax.", "Pneumothorax", 0),
        ("There is no pleural effusion.", "Pleural Effusion", 0),
        ("Without evidence of focal consolidation.", "Consolidation", 0),
        ("Negative for pneumothorax.", "Pneumothorax", 0),
        ("The lungs are free of consolidation.", "Consolidation", 0),
        ("The lungs are clear of infiltrate.", "Lung Opacity", 0),
        ("No evidence of pneumonia.", "Pneumonia", 0),
        ("No signs of pulmonary edema.", "Edema", 0),
        ("Absence of pleural effusion.", "Pleural Effusion", 0),
        ("This is not pneumonia.", "Pneumonia", 0),
    ],
)
def test_pre_negation_cues(text: str, label: str, expected: int) -> None:
    assert value(text, label) == expected


@pytest.mark.parametrize(
    "text, label",
    [
        ("Pneumothorax is not seen.", "Pneumothorax"),
        ("Pleural effusions are not identified.", "Pleural Effusion"),
        ("Focal consolidation is not clearly visualized.", "Consolidation"),
        ("The previously seen effusion has resolved.", "Pleural Effusion"),
        ("Pulmonary edema has cleared.", "Edema"),
        ("The left pneumothorax is no longer seen.", "Pneumothorax"),
        ("The endotracheal tube has been removed.", "Support Devices"),
    ],
)
def test_post_negation_cues(text: str, label: str) -> None:
    assert value(text, label) == 0


def test_negated_lists_cover_every_item() -> None:
    labels = label_report("No focal consolidation, pleural effusion, pulmonary edema, or pneumothorax.")
    for name in ("Consolidation", "Pleural Effusion", "Edema", "Pneumothorax"):
        assert labels[IDX[name]] == 0, name
    labels = label_report("Neither pneumothorax nor effusion.")
    assert labels[IDX["Pneumothorax"]] == 0 and labels[IDX["Pleural Effusion"]] == 0
    labels = label_report("Consolidation, effusion, or pneumothorax is not seen.")
    for name in ("Consolidation", "Pleural Effusion", "Pneumothorax"):
        assert labels[IDX[name]] == 0, name


@pytest.mark.parametrize(
    "text, label, expected",
    [
        ("No new opacity; stable small left effusion.", "Pleural Effusion", 1),
        ("No new opacity; stable small left effusion.", "Lung Opacity", 0),
        ("No pneumothorax, but there is a small left effusion.", "Pleural Effusion", 1),
        ("No pneumothorax, small left effusion.", "Pleural Effusion", 1),
        ("No pneumothorax and the right effusion is larger.", "Pleural Effusion", 1),
        ("No pneumothorax with the right chest tube in place.", "Support Devices", 1),
        ("No effusion, possible right basilar atelectasis.", "Atelectasis", -1),
        ("Small left effusion. No pneumothorax.", "Pleural Effusion", 1),
    ],
)
def test_negation_scope_stops_at_clause_breaks(text: str, label: str, expected: int) -> None:
    assert value(text, label) == expected


@pytest.mark.parametrize(
    "text, label",
    [
        ("No change in the large right effusion.", "Pleural Effusion"),
        ("No significant change in the left lower lobe consolidation.", "Consolidation"),
        ("Without interval change, moderate cardiomegaly.", "Cardiomegaly"),
        ("Pulmonary edema, not significantly changed.", "Edema"),
    ],
)
def test_pseudo_negations_do_not_negate(text: str, label: str) -> None:
    assert value(text, label) == 1


# ----------------------------------------------------------------------------- uncertainty rules
@pytest.mark.parametrize(
    "text, label",
    [
        ("Possible small right effusion.", "Pleural Effusion"),
        ("Possibly early pneumonia.", "Pneumonia"),
        ("Findings may represent atelectasis.", "Atelectasis"),
        ("Cannot exclude early pneumonia.", "Pneumonia"),
        ("A small pneumothorax cannot be excluded.", "Pneumothorax"),
        ("Pneumonia is not excluded.", "Pneumonia"),
        ("Infection cannot be ruled out.", "Pneumonia"),
        ("This could be atelectasis.", "Atelectasis"),
        ("Likely atelectasis.", "Atelectasis"),
        ("Atelectasis is likely.", "Atelectasis"),
        ("Opacity suggestive of pneumonia.", "Pneumonia"),
        ("Concerning for pneumonia.", "Pneumonia"),
        ("Questionable tiny apical pneumothorax.", "Pneumothorax"),
        ("Atelectasis versus pneumonia.", "Atelectasis"),
        ("Atelectasis versus pneumonia.", "Pneumonia"),
        ("Atelectasis vs. consolidation.", "Consolidation"),
        ("Differential includes pneumonia.", "Pneumonia"),
        ("Rule out pneumothorax.", "Pneumothorax"),
        ("Pneumothorax?", "Pneumothorax"),
        ("Heart size may be mildly enlarged.", "Cardiomegaly"),
    ],
)
def test_uncertainty_cues(text: str, label: str) -> None:
    assert value(text, label) == -1


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "No focal consolidation, large pleural effusion, or pneumothorax.",
            {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0},
        ),
        (
            "No focal consolidation, suspicious opacity, pneumothorax or definite effusion.",
            {"Consolidation": 0, "Lung Opacity": 0, "Pneumothorax": 0, "Pleural Effusion": 0},
        ),
        (
            "No effusion, possible atelectasis or pneumonia.",
            {"Pleural Effusion": 0, "Atelectasis": -1, "Pneumonia": -1},
        ),
        ("The lungs do not demonstrate focal infiltrate or effusion.", {"Lung Opacity": 0, "Pleural Effusion": 0}),
        ("Does not appear to be a pneumothorax.", {"Pneumothorax": 0}),
        ("There has been clearing of the left basilar opacity.", {"Lung Opacity": 0}),
        ("Left lower lobe collapse has partially resolved.", {"Atelectasis": 1}),
        ("A right PICC has been withdrawn to the axillary vein.", {"Support Devices": 1}),
        ("No residual pneumothorax after chest tube removal.", {"Pneumothorax": 0, "Support Devices": 0}),
    ],
)
def test_list_scope_and_other_negation_forms(text: str, expected: dict[str, int]) -> None:
    labels = label_report(text)
    assert {k: float(labels[IDX[k]]) for k in expected} == {k: float(v) for k, v in expected.items()}


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Retrocardiac opacity consistent with atelectasis or consolidation.",
            {"Lung Opacity": 1, "Atelectasis": -1, "Consolidation": -1},
        ),
        ("Bibasilar atelectasis and/or pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
        ("Borderline heart size.", {"Cardiomegaly": -1}),
        ("The heart is borderline enlarged.", {"Cardiomegaly": -1}),
        ("Pneumonia is unlikely.", {"Pneumonia": -1}),
        ("Small bilateral effusions suspected.", {"Pleural Effusion": -1}),
        ("Cardiomegaly, question small left effusion.", {"Cardiomegaly": 1, "Pleural Effusion": -1}),
        ("Findings may be due to aspiration.", {"Pneumonia": -1}),
        ("Clinical correlation for infection is recommended.", {"Pneumonia": -1}),
    ],
)
def test_alternatives_borderline_and_other_hedges(text: str, expected: dict[str, int]) -> None:
    labels = label_report(text)
    assert {k: float(labels[IDX[k]]) for k in expected} == {k: float(v) for k, v in expected.items()}


def test_qualifier_reaches_over_a_list_of_structures() -> None:
    labels = label_report("Cardiac size, mediastinal contour, and pulmonary vascularity are within normal limits.")
    assert labels[IDX["Cardiomegaly"]] == 0 and labels[IDX["Enlarged Cardiomediastinum"]] == 0
    labels = label_report("Normal heart size, mediastinal contours, and pulmonary vascularity.")
    assert labels[IDX["Cardiomegaly"]] == 0 and labels[IDX["Enlarged Cardiomediastinum"]] == 0


def test_negation_over_a_hedge_is_negative() -> None:
    assert value("No findings to suggest pneumonia.", "Pneumonia") == 0
    assert value("No focal consolidation to suggest pneumonia.", "Pneumonia") == 0


def test_hedge_only_reaches_what_follows_it() -> None:
    labels = label_report("Opacity in the left lower lobe may represent atelectasis.")
    assert labels[IDX["Lung Opacity"]] == 1 and labels[IDX["Atelectasis"]] == -1
    labels = label_report("Atelectasis versus pneumonia at the left base with a small effusion.")
    assert labels[IDX["Pleural Effusion"]] == 1


# ----------------------------------------------------------------------------- mentions
@pytest.mark.parametrize(
    "text, label, expected",
    [
        ("Heart size is normal.", "Cardiomegaly", 0),
        ("The heart is not enlarged.", "Cardiomegaly", 0),
        ("The heart is mildly enlarged.", "Cardiomegaly", 1),
        ("Enlarged cardiac silhouette.", "Cardiomegaly", 1),
        ("Enlargement of the cardiac silhouette.", "Cardiomegaly", 1),
        ("Normal heart size and mediastinal contours.", "Enlarged Cardiomediastinum", 0),
        ("Heart size and mediastinal contours are normal.", "Cardiomegaly", 0),
        ("The mediastinum is widened.", "Enlarged Cardiomediastinum", 1),
        ("Enlarged cardiomediastinal silhouette.", "Enlarged Cardiomediastinum", 1),
        ("Mediastinal widening.", "Enlarged Cardiomediastinum", 1),
        ("Blunting of the left costophrenic angle.", "Pleural Effusion", 1),
        ("Fluid in the pleural space.", "Pleural Effusion", 1),
        ("Infectious process in the right lower lobe.", "Pneumonia", 1),
        ("Hazy opacification of the left hemithorax.", "Lung Opacity", 1),
        ("Calcified pleural plaques.", "Pleural Other", 1),
        ("Healed left rib fractures.", "Fracture", 1),
        ("Pacemaker leads terminate in the right ventricle.", "Support Devices", 1),
        ("Right IJ catheter terminates in the SVC.", "Support Devices", 1),
        ("Median sternotomy wires.", "Support Devices", 1),
    ],
)
def test_mentions_and_qualifiers(text: str, label: str, expected: int) -> None:
    assert value(text, label) == expected


@pytest.mark.parametrize(
    "text, label",
    [
        ("Small pericardial effusion.", "Pleural Effusion"),
        ("No mass effect.", "Lung Lesion"),
        ("Kerley B lines.", "Support Devices"),
        ("A visible pleural line.", "Support Devices"),
        ("Soft tissue edema of the chest wall.", "Edema"),
        ("Pulmonary vascular congestion.", "Edema"),  # congestion is not edema
        ("Heart size remains stable.", "Cardiomegaly"),
        ("Large effusion obscures the left heart border.", "Cardiomegaly"),
        ("Lytic lesion in the humerus.", "Lung Lesion"),
        ("The patient is supported.", "Support Devices"),
    ],
)
def test_non_mentions_stay_blank(text: str, label: str) -> None:
    assert blank(value(text, label))


# ----------------------------------------------------------------------------- aggregation
def test_positive_beats_uncertain_beats_negative() -> None:
    assert value("No pneumonia. Possible pneumonia. Right lower lobe pneumonia.", "Pneumonia") == 1
    assert value("No definite pneumonia. Early infection cannot be excluded.", "Pneumonia") == -1
    assert value("No pneumonia. No infection.", "Pneumonia") == 0


def test_no_finding_rule() -> None:
    assert value("The lungs are clear. No pneumothorax.", "No Finding") == 1
    assert value("Endotracheal tube in standard position. No pneumothorax.", "No Finding") == 1
    assert value("Small left effusion.", "No Finding") == 0
    assert value("Possible small left effusion.", "No Finding") == 0
    assert math.isnan(label_report("Small left effusion.", no_finding_negative=False)[0])
    assert label_report("Lungs are clear.", no_finding_negative=False)[0] == 1


@pytest.mark.parametrize(
    "text",
    [
        "Emphysema. No acute cardiopulmonary process.",
        "Small hiatal hernia. Lungs are clear.",
        "Calcified granuloma in the right upper lobe. Lungs otherwise clear.",
        "Degenerative changes of the thoracic spine. No effusion.",
        "The thoracic aorta is tortuous and calcified.",
        "Pulmonary vascular congestion.",
    ],
)
def test_findings_outside_the_13_labels_block_no_finding(text: str) -> None:
    labels = label_report(text)
    assert labels[IDX["No Finding"]] == 0
    assert math.isnan(label_report(text, no_finding_negative=False)[IDX["No Finding"]])
    assert np.isnan(labels[[IDX["Lung Lesion"], IDX["Edema"]]]).all()


def test_negated_other_findings_leave_no_finding() -> None:
    assert value("No hiatal hernia. No degenerative disease. Lungs are clear.", "No Finding") == 1
    mentions = explain("No degenerative disease.", other_findings=True)
    assert [(m.label, m.status) for m in mentions] == [(OTHER_FINDING, 0)]
    assert explain("No degenerative disease.") == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Bibasilar atelectasis.", {"Atelectasis": 1, "Lung Opacity": 1}),
        ("Possible right lower lobe pneumonia.", {"Pneumonia": -1, "Lung Opacity": -1}),
        ("No focal opacity. Possible pneumonia.", {"Pneumonia": -1, "Lung Opacity": -1}),
        ("Right upper lobe opacity, possibly pneumonia.", {"Pneumonia": -1, "Lung Opacity": 1}),
        ("No pneumonia.", {"Pneumonia": 0, "Lung Opacity": float("nan")}),
        ("Mild cardiomegaly. Normal mediastinal contours.", {"Cardiomegaly": 1, "Enlarged Cardiomediastinum": 1}),
        ("Borderline cardiomegaly.", {"Cardiomegaly": -1, "Enlarged Cardiomediastinum": -1}),
        ("Left lower lobe atelectasis/airspace disease.", {"Atelectasis": -1, "Lung Opacity": 1}),
        ("Basilar opacity, atelectasis or scarring.", {"Atelectasis": -1, "Lung Opacity": 1}),
    ],
)
def test_parent_labels_follow_their_children(text: str, expected: dict[str, float]) -> None:
    labels = label_report(text)
    got = {k: float(labels[IDX[k]]) for k in expected}
    assert all(got[k] == v or (math.isnan(got[k]) and math.isnan(v)) for k, v in expected.items()), got


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "XXXX are normal. The heart, pulmonary XXXX and mediastinum are within normal limits.",
            {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0},
        ),
        (
            "The cardiomediastinal silhouette is normal in size and contour.",
            {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0},
        ),
        ("Cardio mediastinal silhouette is unremarkable.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
        ("Enlarged cardiomediastinal silhouette.", {"Cardiomegaly": float("nan"), "Enlarged Cardiomediastinum": 1}),
        ("Cardiac and mediastinal silhouettes are normal.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
        ("Heart appears prominent.", {"Cardiomegaly": 1}),
        ("There is prominence of the mediastinal contour.", {"Enlarged Cardiomediastinum": 1}),
        ("Heart size and pulmonary vascular engorgement appear within limits of normal.", {"Cardiomegaly": 0}),
        ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": 0}),
        ("Mild blunting of right costophrenic XXXX.", {"Pleural Effusion": 1}),
        ("Scattered chronic interstitial markings.", {"Lung Opacity": 1}),
        ("Apparent scarring within the lingula.", {"Lung Opacity": 1}),
        ("Apical pleural-parenchymal scarring.", {"Lung Opacity": float("nan"), "Pleural Other": 1}),
        ("Airspace disease most XXXX representing atelectasis.", {"Atelectasis": -1}),
        ("No pneumothorax large pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0}),
        ("Expansile lesion of the right posterior 9th rib.", {"Lung Lesion": float("nan")}),
    ],
)
def test_real_report_wording(text: str, expected: dict[str, float]) -> None:
    labels = label_report(text)
    got = {k: float(labels[IDX[k]]) for k in expected}
    assert all(got[k] == v or (math.isnan(got[k]) and math.isnan(v)) for k, v in expected.items()), got


def test_no_finding_negative_option() -> None:
    texts = ["Small left effusion.", "Lungs are clear.", "Emphysema.", None]
    default, chexpert = label_reports(texts), label_reports(texts, no_finding_negative=False)
    assert default[:, 0].tolist()[:3] == [0.0, 1.0, 0.0] and np.isnan(default[3]).all()
    assert np.isnan(chexpert[0, 0]) and chexpert[1, 0] == 1 and np.isnan(chexpert[2, 0]) and np.isnan(chexpert[3]).all()
    assert np.array_equal(default[:, 1:], chexpert[:, 1:], equal_nan=True)  # only No Finding differs


def test_missing_text_is_all_blank_and_shapes() -> None:
    for missing in (None, float("nan"), "", "   "):
        out = label_report(missing)
        assert out.shape == (NUM_LABELS,) and out.dtype == np.float32 and np.isnan(out).all()
    many = label_reports(["No pneumothorax.", None, "Moderate cardiomegaly."])
    assert many.shape == (3, NUM_LABELS) and np.isnan(many[1]).all()
    assert label_reports([]).shape == (0, NUM_LABELS)
    assert set(np.unique(many[~np.isnan(many)]).tolist()) <= {1.0, 0.0, -1.0}


def test_explain_reports_each_mention() -> None:
    mentions = explain("No pleural effusion. Possible small pneumothorax.")
    assert all(isinstance(m, Mention) for m in mentions)
    got = [(m.label, m.phrase, m.status, m.status_name) for m in mentions]
    assert got == [
        ("Pleural Effusion", "pleural effusion", 0, "negative"),
        ("Pneumothorax", "pneumothorax", -1, "uncertain"),
    ]
    assert mentions[0].sentence == "No pleural effusion." and mentions[0].cue == "No"
    assert mentions[1].sentence[mentions[1].start : mentions[1].end] == "pneumothorax"


def test_sectioned_report_reads_only_findings_and_impression() -> None:
    report = (
        "FINAL REPORT\nINDICATION: Fever, rule out pneumonia.\n\nFINDINGS: Heart size is normal. No pleural\n"
        "effusion.\n\nIMPRESSION:\n1. No acute process\n2. Small left pneumothorax"
    )
    labels = label_report(report)
    assert blank(labels[IDX["Pneumonia"]])  # only in the indication
    assert labels[IDX["Pleural Effusion"]] == 0  # hard-wrapped sentence rejoined
    assert labels[IDX["Pneumothorax"]] == 1  # list item not merged with the previous one
    assert labels[IDX["Cardiomegaly"]] == 0
    assert label_report(report, use_sections=False)[IDX["Pneumonia"]] == -1
    assert report_sentences(report)[-1] == "2. Small left pneumothorax"


# ----------------------------------------------------------------------------- fixture accuracy
def _read_fixture() -> tuple[list[str], np.ndarray, list[int]]:
    """Sentences, expected values ``[n, 14]`` (NaN = blank) and the block number of each sentence."""
    sentences, rows, blocks = [], [], []
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\texpected"
    block = 1
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith("# Block "):
            block = int(line.split()[2].rstrip(":"))
        if not line.strip() or line.startswith("#"):
            continue
        sentence, _, expected = line.partition("\t")
        row = np.full(NUM_LABELS, np.nan, dtype=np.float32)
        for pair in filter(None, (p.strip() for p in expected.split(";"))):
            name, _, val = pair.partition("=")
            assert name.strip() in IDX and name.strip() != "No Finding", f"line {number}: bad label {name!r}"
            assert val.strip() in ("1", "0", "-1"), f"line {number}: bad value {val!r}"
            row[IDX[name.strip()]] = float(val)
        sentences.append(sentence.strip())
        rows.append(row)
        blocks.append(block)
    return sentences, np.stack(rows), blocks


def test_fixture_covers_every_observation() -> None:
    sentences, expected, _ = _read_fixture()
    assert len(sentences) >= 80
    for j, name in enumerate(CHEXPERT_LABELS[1:], start=1):
        values = set(expected[:, j][~np.isnan(expected[:, j])].tolist())
        assert {1.0, 0.0} <= values, f"{name}: fixture needs positive and negative examples, has {values}"


def test_fixture_accuracy(record_property: pytest.RecordProperty, capsys: pytest.CaptureFixture[str]) -> None:
    """Per label-cell accuracy on the hand-written fixture (No Finding excluded: it follows from the rest).

    ``all cells``: over every (sentence, observation) cell, blanks included. ``strict``: only the cells
    where the fixture or the labeler has a value (blank == blank agreements not counted); the threshold is
    on the strict figure.
    """
    sentences, expected, blocks = _read_fixture()
    predicted = label_reports(sentences, use_sections=False)
    exp, pred = expected[:, 1:], predicted[:, 1:]
    equal = (exp == pred) | (np.isnan(exp) & np.isnan(pred))
    informative = ~(np.isnan(exp) & np.isnan(pred))
    all_cells = float(equal.mean())
    strict = float(equal[informative].mean())
    wrong = [
        f"  {sentences[i]!r}: {CHEXPERT_LABELS[j + 1]} expected {exp[i, j]:g} got {pred[i, j]:g}"
        for i, j in zip(*np.nonzero(~equal))
    ]
    per_block = []
    for b in sorted(set(blocks)):
        rows = np.array(blocks) == b
        ok, n = int(equal[rows][informative[rows]].sum()), int(informative[rows].sum())
        per_block.append(f"block {b}: {ok}/{n} = {ok / n:.4f}")
    record_property("fixture_cell_accuracy", round(all_cells, 4))
    record_property("fixture_strict_accuracy", round(strict, 4))
    with capsys.disabled():
        print(
            f"\nlabeler fixture: {len(sentences)} sentences, cell accuracy {all_cells:.4f}, "
            f"strict accuracy {strict:.4f} ({int(equal[informative].sum())}/{int(informative.sum())}; "
            f"{'; '.join(per_block)}); {len(wrong)} wrong cells:\n" + "\n".join(wrong)
        )
    assert strict >= FIXTURE_MIN_STRICT_ACCURACY


# ----------------------------------------------------------------------------- synthetic reports
def test_agreement_with_synthetic_labels(
    tmp_path: Path, record_property: pytest.RecordProperty, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels from findings + impression vs the generator's labels, on its positive and negative cells.

    No Finding is compared separately, on studies without support devices (the generator sets it to 0 when
    only devices are present, the labeler follows CheXpert: devices do not count) and without a finding outside
    the 13 labels in the text (the generator's incidental findings, such as aortic calcification, leave its No
    Finding at 1; the labeler counts them as findings).
    """
    from cxr_vlp.data.synthetic import generate_dataset

    csv_path = generate_dataset(tmp_path / "synthetic", num_patients=60, image_size=32, max_views_per_study=1)
    df = pd.read_csv(csv_path)
    texts = [f"{f}\n\n{i}" for f, i in zip(df["findings"].fillna(""), df["impression"].fillna(""))]
    predicted = label_reports(texts)
    truth = df[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32)
    lines, agree_total, n_total = [], 0, 0
    for j, name in enumerate(CHEXPERT_LABELS[1:], start=1):
        known = np.isin(truth[:, j], (0.0, 1.0))
        agree = int((predicted[known, j] == truth[known, j]).sum())
        agree_total, n_total = agree_total + agree, n_total + int(known.sum())
        lines.append(f"  {name:27s} {agree}/{int(known.sum())}")
    unc = truth[:, 1:] == -1
    unc_agree = int((predicted[:, 1:][unc] == -1).sum())
    no_devices = np.isnan(truth[:, IDX["Support Devices"]]) | (truth[:, IDX["Support Devices"]] == 0)
    no_other = np.array(
        [not any(m.label == OTHER_FINDING and m.status != 0 for m in explain(t, other_findings=True)) for t in texts]
    )
    compared = no_devices & no_other
    assert compared.sum() >= 0.5 * no_devices.sum()
    nf_agree = float((predicted[compared, 0] == truth[compared, 0]).mean())
    agreement = agree_total / n_total
    record_property("synthetic_agreement", round(agreement, 4))
    with capsys.disabled():
        print(
            f"\nsynthetic reports: {len(df)} studies, agreement on positive/negative cells {agreement:.4f} "
            f"({agree_total}/{n_total}); uncertain cells recovered {unc_agree}/{int(unc.sum())}; "
            f"No Finding agreement ({int(compared.sum())} studies without devices or other findings) "
            f"{nf_agree:.4f}\n" + "\n".join(lines)
        )
    assert agreement >= SYNTHETIC_MIN_AGREEMENT
    assert nf_agree >= 0.95


# ----------------------------------------------------------------------------- CLI
def _write_input(path: Path) -> Path:
    pd.DataFrame(
        {
            "study_id": ["007", "008", "009"],
            "findings": ["No pleural effusion or pneumothorax.", "", "Right chest tube in place."],
            "impression": ["Moderate cardiomegaly.", "Possible pneumonia.", None],
            "note": ["keep", "me", "please"],
        }
    ).to_csv(path, index=False)
    return path


def test_cli_writes_labelled_copy(tmp_path: Path) -> None:
    src = _write_input(tmp_path / "in.csv")
    before = src.read_bytes()
    out = tmp_path / "out" / "labelled.csv"
    assert main([f"in_csv={src}", f"out_csv={out}"]) == 0
    assert src.read_bytes() == before
    df = pd.read_csv(out, dtype={"study_id": str})
    assert df["study_id"].tolist() == ["007", "008", "009"] and df["note"].tolist() == ["keep", "me", "please"]
    assert list(df.columns[-NUM_LABELS:]) == list(CHEXPERT_LABELS)
    assert df.loc[0, "Cardiomegaly"] == 1 and df.loc[0, "Pleural Effusion"] == 0 and df.loc[0, "Pneumothorax"] == 0
    assert df.loc[1, "Pneumonia"] == -1 and df.loc[2, "Support Devices"] == 1
    assert pd.isna(df.loc[0, "Fracture"])
    raw = out.read_text().splitlines()[1]
    assert ",," in raw and ".0" not in raw  # blanks are empty cells, values are integers
    # a single text column
    out2 = tmp_path / "impression_only.csv"
    label_csv(src, out2, text_columns=["impression"])
    assert pd.isna(pd.read_csv(out2).loc[0, "Pleural Effusion"])


def test_cli_refuses_to_lose_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_input(tmp_path / "in.csv")
    before = src.read_bytes()
    out = tmp_path / "out.csv"
    out.write_text("user data\n")
    assert main([f"in_csv={src}", f"out_csv={out}"]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "user data\n"
    assert main([f"in_csv={src}", f"out_csv={out}", "overwrite=true"]) == 0
    assert "Cardiomegaly" in out.read_text()
    for same in (src, tmp_path / "." / "in.csv"):
        assert main([f"in_csv={src}", f"out_csv={same}", "overwrite=true"]) == 1
        assert "input" in capsys.readouterr().err
    assert src.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        label_csv(tmp_path / "absent.csv", tmp_path / "x.csv")


def test_cli_errors_name_file_and_column(tmp_path: Path) -> None:
    src = _write_input(tmp_path / "in.csv")
    with pytest.raises(ValueError, match=r"in\.csv.*'report_text'"):
        label_csv(src, tmp_path / "o.csv", text_columns=["findings", "report_text"])
    assert not (tmp_path / "o.csv").exists()
    assert parse_args(["in_csv=a", "out_csv=b", "text_columns=report", "overwrite=yes"]) == {
        "in_csv": "a",
        "out_csv": "b",
        "text_columns": ["report"],
        "overwrite": True,
        "no_finding_negative": True,
    }
    for bad, msg in (
        (["in_csv=a"], "out_csv"),
        (["in_csv=a", "out_csv=b", "colour=red"], "unknown key"),
        (["in_csv=a", "out_csv=b", "overwrite=maybe"], "overwrite"),
        (["in_csv=a", "out_csv"], "key=value"),
    ):
        with pytest.raises(SystemExit, match=msg):
            parse_args(bad)
