"""Sampling of patients, studies, CheXpert labels and instance attributes for the synthetic dataset.

Everything here is cheap, pure Python + numpy and seeded: patient ``p`` draws from
``SeedSequence(seed, spawn_key=(0, p))`` so the cohort does not depend on worker counts.

Conventions
-----------
* Sides are the *patient's* sides (``"right"`` / ``"left"`` / ``"bilateral"``); the renderer puts the
  patient's right on the image left in frontal views (standard radiographic display).
* ``rotation`` ``"left"`` means the mediastinum projects shifted towards the patient's left relative
  to the spine (to the image right in a frontal view); ``"right"`` the opposite.
* Label values: ``1`` positive, ``-1`` uncertain, ``0`` explicitly negated in the report, ``None``
  not mentioned (blank cell). ``No Finding`` is ``1`` iff no other label is positive; otherwise ``0``.
  Uncertain labels only occur in studies that also have a definite positive, so "no other label is 1"
  and "no other label is 1 or -1" coincide.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr_vlp.text.labels import CHEXPERT_LABELS

ECM, CARDIO, OPACITY, LESION, EDEMA, CONSOL, PNEUMONIA, ATELEC, PTX, EFFUSION, PLEURAL_OTHER, FRACTURE, DEVICES = (
    CHEXPERT_LABELS[1:]
)
NO_FINDING = CHEXPERT_LABELS[0]
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")
DEVICE_KINDS: tuple[str, ...] = ("ett", "cvc", "ng", "pacemaker", "chest_tube")

# Probability that an absent observation is explicitly negated in the report (else left blank).
NEGATION_PROB: dict[str, float] = {
    ECM: 0.30,
    CARDIO: 0.55,
    OPACITY: 0.20,
    LESION: 0.08,
    EDEMA: 0.35,
    CONSOL: 0.50,
    PNEUMONIA: 0.25,
    ATELEC: 0.10,
    PTX: 0.70,
    EFFUSION: 0.70,
    PLEURAL_OTHER: 0.03,
    FRACTURE: 0.12,
    DEVICES: 0.05,
}
UNCERTAIN_PROB = 0.055  # share of present (non-device) findings worded as uncertain
_CAN_BE_UNCERTAIN = (ECM, CARDIO, OPACITY, LESION, EDEMA, CONSOL, PNEUMONIA, ATELEC, PTX, EFFUSION)


@dataclass
class PatientTraits:
    """Patient-level traits that persist across that patient's studies."""

    sex: str
    thorax_scale: float  # body habitus: thorax width relative to average
    heart_ratio: float  # baseline cardiothoracic ratio when the heart is not enlarged
    cardio_degree: str | None  # chronic cardiomegaly degree, or None
    ecm_degree: str | None  # chronic widened mediastinum
    copd: bool  # hyperinflation-prone
    icu_prone: bool
    pacemaker: dict[str, Any] | None
    old_fracture: dict[str, Any] | None
    plaque: dict[str, Any] | None
    nodule: dict[str, Any] | None
    incidental: dict[str, Any] = field(default_factory=dict)  # non-label findings: aortic calcification,
    # scoliosis, surgical clips (rendered and always stated in the report)


@dataclass
class Study:
    """One study: identifiers, views, labels and every attribute the image and report share."""

    index: int
    patient_index: int
    subject_id: str
    study_id: str
    study_date: str
    views: list[str]
    labels: dict[str, int | None]
    findings: dict[str, dict[str, Any]]  # label -> attributes, for labels valued 1 or -1
    devices: list[dict[str, Any]]
    lung_volumes: str  # low / normal / hyperinflated
    rotation: str  # none / left / right
    sex: str
    thorax_scale: float
    heart_ratio: float  # cardiothoracic ratio to render
    icu: bool
    prior_date: str | None = None
    incidental: dict[str, Any] = field(default_factory=dict)

    def attributes(self) -> dict[str, Any]:
        """Instance attributes as a plain, JSON-serialisable dict."""
        return {
            "views": self.views,
            "sex": self.sex,
            "thorax_scale": round(self.thorax_scale, 3),
            "heart_ratio": round(self.heart_ratio, 3),
            "lung_volumes": self.lung_volumes,
            "rotation": self.rotation,
            "icu": self.icu,
            "findings": self.findings,
            "devices": self.devices,
            "incidental": self.incidental,
        }

    def attributes_json(self) -> str:
        """Compact JSON of :meth:`attributes` (the CSV ``attributes`` column)."""
        return json.dumps(self.attributes(), separators=(",", ":"), sort_keys=True)


def _choice(rng: np.random.Generator, options: tuple[Any, ...] | list[Any], p: list[float] | None = None) -> Any:
    """Pick one element (keeps Python types, unlike ``rng.choice`` on mixed lists)."""
    return options[int(rng.choice(len(options), p=p))]


def _side(rng: np.random.Generator, p_bilateral: float) -> str:
    if rng.random() < p_bilateral:
        return "bilateral"
    return "right" if rng.random() < 0.55 else "left"


def sample_patient(rng: np.random.Generator) -> PatientTraits:
    """Draw the persistent traits of one patient."""
    sex = "M" if rng.random() < 0.52 else "F"
    habitus = _choice(rng, (0.9, 1.0, 1.08), [0.25, 0.5, 0.25])
    cardio = _choice(rng, ("mild", "moderate", "severe"), [0.5, 0.33, 0.17]) if rng.random() < 0.15 else None
    pacemaker = None
    if rng.random() < 0.05:
        pacemaker = {
            "kind": "pacemaker",
            "side": "left" if rng.random() < 0.85 else "right",
            "leads": _choice(rng, (1, 2), [0.35, 0.65]),
        }
    old_fracture = None
    if rng.random() < 0.016:
        old_fracture = {"side": _side(rng, 0.0), "rib": int(rng.integers(4, 10)), "age": "old"}
    plaque = None
    if rng.random() < 0.01:
        plaque = {"side": _side(rng, 0.4), "kind": _choice(rng, ("thickening", "calcified plaque"))}
    nodule = None
    if rng.random() < 0.025:
        size_cm = float(_choice(rng, (0.9, 1.4, 2.2, 3.5, 4.5), [0.3, 0.3, 0.2, 0.12, 0.08]))
        nodule = {
            "side": _side(rng, 0.0),
            "zone": _choice(rng, ("upper", "middle", "lower"), [0.5, 0.25, 0.25]),
            "size_cm": size_cm,
        }
    incidental: dict[str, Any] = {}
    if rng.random() < 0.15:
        incidental["aortic_calcification"] = True
    if rng.random() < 0.08:
        incidental["scoliosis"] = "dextro" if rng.random() < 0.6 else "levo"
    if rng.random() < 0.06:
        incidental["clips"] = "cholecystectomy"
    return PatientTraits(
        incidental=incidental,
        sex=sex,
        thorax_scale=float(habitus * rng.uniform(0.97, 1.03) * (1.03 if sex == "M" else 0.97)),
        heart_ratio=float(rng.uniform(0.40, 0.47)),
        cardio_degree=cardio,
        ecm_degree=_choice(rng, ("mild", "marked"), [0.7, 0.3]) if rng.random() < 0.03 else None,
        copd=bool(rng.random() < 0.08),
        icu_prone=bool(rng.random() < 0.28),
        pacemaker=pacemaker,
        old_fracture=old_fracture,
        plaque=plaque,
        nodule=nodule,
    )


_CARDIO_RATIO = {"mild": 0.55, "moderate": 0.61, "severe": 0.68}
_SEVERITY = ("small", "moderate", "large")


def _lung_finding(rng: np.random.Generator, p_bilateral: float, zones: list[float]) -> dict[str, Any]:
    return {
        "side": _side(rng, p_bilateral),
        "zone": _choice(rng, ("upper", "middle", "lower"), zones),
        "severity": _choice(rng, ("mild", "moderate", "severe"), [0.45, 0.35, 0.2]),
    }


def _sample_devices(
    rng: np.random.Generator, icu: bool, findings: dict[str, dict[str, Any]], traits: PatientTraits
) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    if icu:
        ett = rng.random() < 0.5
        if ett:
            devices.append({"kind": "ett", "tip_cm": int(rng.integers(2, 8))})
        if rng.random() < 0.6:
            devices.append(
                {
                    "kind": "cvc",
                    "side": "right" if rng.random() < 0.7 else "left",
                    "approach": _choice(rng, ("jugular", "subclavian"), [0.7, 0.3]),
                    "tip": _choice(rng, ("svc", "cavoatrial", "atrium"), [0.5, 0.3, 0.2]),
                }
            )
        if rng.random() < (0.75 if ett else 0.2):
            devices.append({"kind": "ng", "tip": "stomach" if rng.random() < 0.9 else "esophagus"})
    ptx, eff = findings.get(PTX), findings.get(EFFUSION)
    if ptx is not None and rng.random() < 0.45:
        devices.append({"kind": "chest_tube", "side": ptx["side"]})
    elif icu and eff is not None and rng.random() < 0.12:
        side = eff["side"] if eff["side"] != "bilateral" else ("right" if rng.random() < 0.5 else "left")
        devices.append({"kind": "chest_tube", "side": side})
    if traits.pacemaker is not None:
        devices.append(dict(traits.pacemaker))
    return devices


def sample_study_content(
    rng: np.random.Generator, traits: PatientTraits, carried: dict[str, dict[str, Any]], was_icu: bool
) -> dict[str, Any]:
    """Draw the clinical content of one study (findings, devices, views, volumes, rotation).

    ``carried`` holds the previous study's acute findings (some persist) and ``was_icu`` whether the
    previous study was an ICU study. Returns a dict of keyword arguments for :class:`Study`.
    """
    icu = bool(rng.random() < (0.75 if was_icu else (0.55 if traits.icu_prone else 0.07)))
    lung_volumes = "normal"
    r = rng.random()
    if traits.copd and r < 0.7:
        lung_volumes = "hyperinflated"
    elif r < (0.35 if icu else 0.1):
        lung_volumes = "low"
    elif r > 0.98:
        lung_volumes = "hyperinflated"
    rotation = _choice(rng, ("none", "left", "right"), [0.74, 0.13, 0.13])

    f: dict[str, dict[str, Any]] = {}
    for label, attrs in carried.items():  # acute findings may persist from the prior study
        if rng.random() < 0.35:
            f[label] = dict(attrs)
    if traits.cardio_degree is not None:
        f[CARDIO] = {"degree": traits.cardio_degree}
    elif rng.random() < 0.04:
        f[CARDIO] = {"degree": "mild"}
    if traits.ecm_degree is not None:
        f[ECM] = {"degree": traits.ecm_degree}
    elif rng.random() < 0.015:
        f[ECM] = {"degree": "mild"}
    cardio = CARDIO in f
    if EDEMA not in f and rng.random() < 0.04 + 0.3 * cardio + 0.1 * icu:
        f[EDEMA] = {"side": "bilateral", "severity": _choice(rng, ("mild", "moderate", "severe"), [0.5, 0.35, 0.15])}
    edema = EDEMA in f
    if EFFUSION not in f and rng.random() < 0.08 + 0.22 * cardio + 0.28 * edema + 0.12 * icu:
        f[EFFUSION] = {
            "side": _side(rng, 0.4 if (cardio or edema) else 0.2),
            "size": _choice(rng, _SEVERITY, [0.5, 0.33, 0.17]),
        }
    if PNEUMONIA not in f and rng.random() < 0.05 + 0.06 * icu:
        f[PNEUMONIA] = _lung_finding(rng, 0.15, [0.2, 0.25, 0.55])
    pneu = f.get(PNEUMONIA)
    if CONSOL not in f and rng.random() < 0.015 + 0.3 * (pneu is not None) + 0.02 * icu:
        same_place = pneu is not None and rng.random() < 0.8
        f[CONSOL] = dict(pneu) if same_place else _lung_finding(rng, 0.1, [0.2, 0.25, 0.55])
    if ATELEC not in f and rng.random() < 0.115 + 0.12 * (EFFUSION in f) + 0.08 * icu + 0.1 * (lung_volumes == "low"):
        side = f[EFFUSION]["side"] if EFFUSION in f and rng.random() < 0.6 else _side(rng, 0.35)
        f[ATELEC] = {
            "side": side,
            "zone": _choice(rng, ("lower", "middle", "upper"), [0.75, 0.2, 0.05]),
            "kind": _choice(rng, ("linear", "plate-like", "subsegmental"), [0.4, 0.3, 0.3]),
        }
    p_op = 0.125 + 0.4 * (pneu is not None) + 0.25 * (CONSOL in f) + 0.15 * edema + 0.05 * (ATELEC in f)
    if OPACITY not in f and rng.random() < p_op:
        src = pneu or f.get(CONSOL)
        same_place = src is not None and rng.random() < 0.6
        f[OPACITY] = dict(src) if same_place else _lung_finding(rng, 0.25, [0.25, 0.3, 0.45])
    if PTX not in f and rng.random() < 0.024 + 0.06 * icu:
        f[PTX] = {"side": "right" if rng.random() < 0.5 else "left", "size": _choice(rng, _SEVERITY, [0.6, 0.28, 0.12])}
    if traits.nodule is not None:
        f[LESION] = dict(traits.nodule)
    elif rng.random() < 0.01:
        f[LESION] = {"side": _side(rng, 0.0), "zone": _choice(rng, ("upper", "middle", "lower")), "size_cm": 1.2}
    if traits.old_fracture is not None:
        f[FRACTURE] = dict(traits.old_fracture)
    elif rng.random() < 0.006:
        f[FRACTURE] = {"side": _side(rng, 0.0), "rib": int(rng.integers(4, 10)), "age": "acute"}
    if traits.plaque is not None:
        f[PLEURAL_OTHER] = dict(traits.plaque)
    elif rng.random() < 0.002:
        f[PLEURAL_OTHER] = {"side": _side(rng, 0.0), "kind": "thickening"}

    devices = _sample_devices(rng, icu, f, traits)
    if devices:
        f[DEVICES] = {"kinds": [d["kind"] for d in devices]}
    heart_ratio = _CARDIO_RATIO[f[CARDIO]["degree"]] if CARDIO in f else traits.heart_ratio
    heart_ratio = float(heart_ratio + rng.uniform(-0.01, 0.01))
    return {
        "findings": f,
        "devices": devices,
        "lung_volumes": lung_volumes,
        "rotation": rotation,
        "icu": icu,
        "heart_ratio": heart_ratio,
        "views": _sample_views(rng, icu or bool(devices)),
    }


def _sample_views(rng: np.random.Generator, portable: bool) -> list[str]:
    """Views of one study, frontal first: AP for ICU/device patients, else mostly PA."""
    frontal = "AP" if rng.random() < (0.9 if portable else 0.12) else "PA"
    n = _choice(rng, (1, 2, 3), [0.7, 0.25, 0.05] if portable else [0.08, 0.7, 0.22])
    views = [frontal]
    if n >= 2:
        views.append("LATERAL")
    if n >= 3:
        views.append("LATERAL" if rng.random() < 0.5 else frontal)
    return views


def assign_labels(rng: np.random.Generator, findings: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    """Turn present findings into CheXpert values: 1 / -1 for present, 0 / blank for absent ones.

    A few present findings become uncertain (-1, flagged ``"uncertain": True`` in their attributes),
    but only when another definite positive remains, so No Finding stays unambiguous.
    """
    labels: dict[str, int | None] = {}
    for name in CHEXPERT_LABELS[1:]:
        if name in findings:
            labels[name] = 1
        else:
            labels[name] = 0 if rng.random() < NEGATION_PROB[name] * (1.0 if not findings else 0.8) else None
    present = [n for n in CHEXPERT_LABELS[1:] if n in findings]
    for name in present:
        if name in _CAN_BE_UNCERTAIN and rng.random() < UNCERTAIN_PROB:
            if sum(1 for n in present if labels[n] == 1) > 1:
                labels[name] = -1
                findings[name]["uncertain"] = True
    labels[NO_FINDING] = 0 if present else 1
    return {name: labels[name] for name in CHEXPERT_LABELS}


def _num_studies(rng: np.random.Generator, max_studies: int) -> int:
    weights = np.array([0.75**k for k in range(max_studies)])
    return int(rng.choice(max_studies, p=weights / weights.sum())) + 1


def sample_cohort(
    num_patients: int, seed: int, max_studies_per_patient: int = 4, max_views_per_study: int = 3
) -> list[Study]:
    """Sample every study of ``num_patients`` patients, in patient then date order."""
    id_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    subject_offsets = np.cumsum(id_rng.integers(1, 40, size=num_patients))
    next_study = 50_000_000
    base = _dt.date(2150, 1, 1)
    studies: list[Study] = []
    for p in range(num_patients):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, p)))
        traits = sample_patient(rng)
        date = base + _dt.timedelta(days=int(rng.integers(0, 3650)))
        carried: dict[str, dict[str, Any]] = {}
        was_icu = False
        prior: str | None = None
        for _ in range(_num_studies(rng, max_studies_per_patient)):
            content = sample_study_content(rng, traits, carried, was_icu)
            findings = content.pop("findings")
            labels = assign_labels(rng, findings)
            content["views"] = content["views"][:max_views_per_study]
            next_study += int(id_rng.integers(1, 60))
            studies.append(
                Study(
                    index=len(studies),
                    patient_index=p,
                    subject_id=f"p{10_000_000 + int(subject_offsets[p])}",
                    study_id=f"s{next_study}",
                    study_date=date.isoformat(),
                    labels=labels,
                    findings=findings,
                    sex=traits.sex,
                    thorax_scale=traits.thorax_scale,
                    prior_date=prior,
                    incidental=dict(traits.incidental),
                    **content,
                )
            )
            carried = {
                k: {a: v for a, v in findings[k].items() if a != "uncertain"}
                for k in (EDEMA, EFFUSION, PNEUMONIA, CONSOL, ATELEC, OPACITY, PTX)
                if k in findings
            }
            was_icu = content["icu"]
            prior = date.isoformat()
            date = date + _dt.timedelta(days=int(rng.integers(1, 6) if was_icu else rng.integers(7, 700)))
    return studies
