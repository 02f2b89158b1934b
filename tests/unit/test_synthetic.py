"""Tests of the synthetic dataset generator: determinism, schema, labels, report text, images, caching, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_vlp.data.synthetic import CSV_COLUMNS, SyntheticConfig, generate_dataset
from cxr_vlp.data.synthetic import __main__ as cli
from cxr_vlp.data.synthetic.attributes import EFFUSION, Study, sample_cohort
from cxr_vlp.data.synthetic.render import image_rng, render_view
from cxr_vlp.data.synthetic.report import NEGATION_RE, TERM_RE, UNCERTAINTY_RE, write_report
from cxr_vlp.text.labels import CHEXPERT_LABELS

SMALL = dict(num_patients=24, seed=5, image_size=96)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """studies.csv of a small dataset rendered in-process."""
    return generate_dataset(tmp_path_factory.mktemp("syn") / "a", **SMALL)


@pytest.fixture(scope="module")
def cohort() -> list[Study]:
    """A few hundred patients sampled (not rendered) with reports, for label/report statistics."""
    return sample_cohort(400, seed=11)


def _read(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, dtype={"study_id": str, "subject_id": str})


def _images(csv: Path) -> dict[str, np.ndarray]:
    df = _read(csv)
    return {
        p: cv2.imread(str(csv.parent / p), cv2.IMREAD_UNCHANGED) for paths in df.image_paths for p in paths.split(";")
    }


# ---------------------------------------------------------------------------------------- determinism
def test_same_seed_is_byte_identical_and_workers_do_not_matter(small: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "b", **SMALL)
    pooled = generate_dataset(tmp_path / "c", **SMALL, workers=2)
    ref_bytes, ref_imgs = small.read_bytes(), _images(small)
    for other in (again, pooled):
        assert other.read_bytes() == ref_bytes
        imgs = _images(other)
        assert imgs.keys() == ref_imgs.keys()
        assert all(np.array_equal(imgs[k], ref_imgs[k]) for k in ref_imgs)


def test_different_seed_differs(small: Path, tmp_path: Path) -> None:
    other = generate_dataset(tmp_path / "d", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert other.read_bytes() != small.read_bytes()
    a = cv2.imread(str(small.parent / _read(small).image_paths[0].split(";")[0]), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(other.parent / _read(other).image_paths[0].split(";")[0]), cv2.IMREAD_UNCHANGED)
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------------------------------- schema
def test_csv_schema_paths_and_views(small: Path) -> None:
    df = _read(small)
    assert tuple(df.columns) == CSV_COLUMNS
    assert list(df.columns[6:20]) == list(CHEXPERT_LABELS)
    assert df.study_id.is_unique and df.study_id.str.fullmatch(r"s\d{8}").all()
    assert df.subject_id.str.fullmatch(r"p\d{8}").all()
    for _, row in df.iterrows():
        paths, views = row.image_paths.split(";"), row.view_names.split(";")
        assert len(paths) == len(views) >= 1
        assert set(views) <= {"PA", "AP", "LATERAL"} and views[0] in ("PA", "AP")
        for p in paths:
            assert not Path(p).is_absolute() and (small.parent / p).is_file()
            img = cv2.imread(str(small.parent / p), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8 and img.shape == (SMALL["image_size"],) * 2
        json.loads(row.attributes)
    per_subject = df.groupby("subject_id").size()
    assert per_subject.between(1, SyntheticConfig().max_studies_per_patient).all()
    for _, g in df.groupby("subject_id"):  # dates increase within a patient
        assert list(g.study_date) == sorted(g.study_date) and g.study_date.is_unique
    manifest = json.loads((small.parent / "manifest.json").read_text())
    assert manifest["counts"] == {
        "patients": SMALL["num_patients"],
        "studies": len(df),
        "images": int(df.view_names.str.count(";").sum() + len(df)),
    }
    assert manifest["config"]["num_patients"] == SMALL["num_patients"] and "format_version" in manifest


def test_label_cells_are_chexpert_values(small: Path) -> None:
    text = small.read_text().splitlines()[1:]
    df = _read(small)
    cells = df[list(CHEXPERT_LABELS)].to_numpy(dtype=float)
    values = set(np.unique(cells[~np.isnan(cells)]))
    assert values <= {1.0, 0.0, -1.0}
    assert not any(".0," in line.split('"')[0] for line in text)  # integers, not floats
    assert df[list(CHEXPERT_LABELS)].isna().to_numpy().any()  # blanks exist and stay blank


# ---------------------------------------------------------------------------------------- labels
def test_no_finding_consistency(cohort: list[Study]) -> None:
    for st in cohort:
        others = [v for k, v in st.labels.items() if k != "No Finding"]
        assert st.labels["No Finding"] == (0 if any(v == 1 for v in others) else 1)
        if st.labels["No Finding"] == 1:
            assert all(v in (0, None) for v in others)


def test_prevalence_is_realistic(cohort: list[Study]) -> None:
    n = len(cohort)
    prev = {k: sum(st.labels[k] == 1 for st in cohort) / n for k in CHEXPERT_LABELS}
    bands = {
        "No Finding": (0.18, 0.40),
        "Support Devices": (0.15, 0.35),
        "Pleural Effusion": (0.12, 0.30),
        "Cardiomegaly": (0.10, 0.28),
        "Pneumothorax": (0.01, 0.09),
        "Fracture": (0.0, 0.06),
    }
    for k, (lo, hi) in bands.items():
        assert lo <= prev[k] <= hi, (k, prev[k])
    uncertain = sum(v == -1 for st in cohort for v in st.labels.values())
    positive = sum(v == 1 for st in cohort for k, v in st.labels.items() if k != "No Finding")
    assert 0.01 < uncertain / (uncertain + positive) < 0.12
    assert 2.0 <= n / 400 <= 2.4  # studies per patient, skewed to 1-2


# ---------------------------------------------------------------------------------------- report/label agreement
def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.;])\s+", text) if s]


def _check_report(labels: dict[str, int | None], findings: str, impression: str) -> None:
    sents = _sentences(findings) + _sentences(impression)
    for label, term in TERM_RE.items():
        value, about = labels[label], [s for s in sents if term.search(s)]
        plain = [s for s in about if not NEGATION_RE.search(s) and not UNCERTAINTY_RE.search(s)]
        if value == 1:
            assert plain, (label, findings, impression)
        elif value == -1:
            assert any(UNCERTAINTY_RE.search(s) for s in about), (label, findings, impression)
        elif value == 0:
            assert any(NEGATION_RE.search(s) for s in about) and not plain, (label, findings, impression)
        else:
            assert not about, (label, about)


def test_reports_agree_with_labels(cohort: list[Study], small: Path) -> None:
    for st in cohort:
        _check_report(st.labels, *write_report(st, np.random.default_rng(st.index)))
    df = _read(small)
    for _, row in df.iterrows():
        labels = {k: None if pd.isna(row[k]) else int(row[k]) for k in CHEXPERT_LABELS}
        _check_report(labels, row.findings, row.impression)


def test_reports_state_attributes_and_are_diverse(cohort: list[Study]) -> None:
    texts = []
    for st in cohort:
        findings, impression = write_report(st, np.random.default_rng(st.index))
        text = (findings + " " + impression).lower()
        texts.append(findings)
        assert findings and impression and findings != impression
        eff = st.findings.get(EFFUSION)
        if st.labels[EFFUSION] == 1 and eff["side"] != "bilateral":
            assert eff["side"] in text
        if st.rotation != "none":
            assert st.rotation in text and "rotat" in text
        if st.lung_volumes != "normal":
            assert ("low" if st.lung_volumes == "low" else "hyper") in text
        for d in st.devices:
            if d["kind"] == "ett":
                assert f"{d['tip_cm']} cm" in text
    assert len(set(texts)) > 0.95 * len(texts)


# ---------------------------------------------------------------------------------------- images
def _plain_study(**kw: object) -> Study:
    base = Study(
        index=0,
        patient_index=0,
        subject_id="p10000000",
        study_id="s50000000",
        study_date="2150-01-01",
        views=["PA"],
        labels={},
        findings={},
        devices=[],
        lung_volumes="normal",
        rotation="none",
        sex="M",
        thorax_scale=1.0,
        heart_ratio=0.44,
        icu=False,
    )
    return replace(base, **kw)


def test_right_effusion_brightens_the_image_left_base_only() -> None:
    """Convention: frontal views show the patient's right on the image LEFT."""
    size = 128
    plain = render_view(_plain_study(), "PA", image_rng(0, 0, 0), size).astype(float)
    eff = _plain_study(findings={EFFUSION: {"side": "right", "size": "large"}})
    sick = render_view(eff, "PA", image_rng(0, 0, 0), size).astype(float)
    rows = slice(int(0.55 * size), int(0.75 * size))
    image_left, image_right = slice(int(0.2 * size), int(0.42 * size)), slice(int(0.58 * size), int(0.8 * size))
    d_right_patient = (sick[rows, image_left] - plain[rows, image_left]).mean()
    d_left_patient = (sick[rows, image_right] - plain[rows, image_right]).mean()
    assert d_right_patient > 15 and d_right_patient > 5 * abs(d_left_patient)


def test_attributes_change_images_and_lateral_differs() -> None:
    size = 128
    ref = render_view(_plain_study(), "PA", image_rng(0, 0, 0), size).astype(float)
    variants = [
        dict(heart_ratio=0.68, findings={"Cardiomegaly": {"degree": "severe"}}),
        dict(devices=[{"kind": "ett", "tip_cm": 4}]),
        dict(lung_volumes="low"),
        dict(rotation="left"),
        dict(findings={"Pneumothorax": {"side": "left", "size": "large"}}),
    ]
    for kw in variants:
        img = render_view(_plain_study(**kw), "PA", image_rng(0, 0, 0), size).astype(float)
        assert (np.abs(img - ref) > 25).sum() >= 30, kw  # a visible signature, not just noise
    lat = render_view(_plain_study(views=["LATERAL"]), "LATERAL", image_rng(0, 0, 0), size).astype(float)
    assert np.abs(lat - ref).mean() > 15
    # frontal is roughly left-right symmetric; the lateral (heart anterior, spine posterior) is not
    asym = lambda im: np.abs(im - im[:, ::-1]).mean()  # noqa: E731
    assert asym(lat) > 1.5 * asym(ref)


def test_render_is_deterministic_per_rng() -> None:
    st = _plain_study(findings={"Edema": {"side": "bilateral", "severity": "moderate"}})
    a = render_view(st, "AP", image_rng(1, 2, 0), 64)
    assert np.array_equal(a, render_view(st, "AP", image_rng(1, 2, 0), 64))
    assert not np.array_equal(a, render_view(st, "AP", image_rng(1, 2, 1), 64))


# ---------------------------------------------------------------------------------------- caching and safety
def test_reuse_and_refusals(small: Path, tmp_path: Path) -> None:
    mtime = small.stat().st_mtime_ns
    assert generate_dataset(small.parent, **SMALL, workers=3) == small  # workers do not change identity
    assert small.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="num_patients"):
        generate_dataset(small.parent, **{**SMALL, "num_patients": 25})
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="mine"):
        generate_dataset(foreign, num_patients=2)
    assert (foreign / "notes.txt").read_text() == "precious"
    with pytest.raises(TypeError, match="valid fields"):
        generate_dataset(tmp_path / "x", num_patient=2)


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxr_vlp.data.synthetic as syn

    def boom(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "_table", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "out", num_patients=2, image_size=48)
    # only the (empty) lock file that makes concurrent generation once-only stays
    assert [p.name for p in tmp_path.iterdir()] == [".out.lock"]
    assert (tmp_path / ".out.lock").stat().st_size == 0


# ---------------------------------------------------------------------------------------- CLI
def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [sys.executable, "-m", "cxr_vlp.data.synthetic", f"out_dir={out}", "num_patients=3", "seed=2", "image_size=64"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert (out / "studies.csv").is_file() and "studies" in res.stdout
    with pytest.raises(SystemExit, match="valid keys"):
        cli.parse_args([f"out_dir={out}", "patients=3"])
    with pytest.raises(SystemExit, match="not a valid int"):
        cli.parse_args([f"out_dir={out}", "num_patients=many"])
    assert cli.parse_args([f"out_dir={out}", "workers=2"]) == (str(out), {"workers": 2})
