"""Report text (FINDINGS and IMPRESSION) for synthetic studies.

Each label value is realised in words: ``1`` as a positive sentence carrying the instance attributes,
``-1`` with uncertainty wording, ``0`` as a negation, blank not at all. Positive sentences never use a
negation or uncertainty cue, and every sentence about one observation uses a term of that
observation's vocabulary (:data:`LABEL_TERMS`), so a simple rule-based reader recovers the labels.
Findings are shuffled and mixed with noise sentences (technique, comparison, indication); the
impression is a shorter summary in its own wording.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from cxr_vlp.data.synthetic.attributes import (
    ATELEC,
    CARDIO,
    CONSOL,
    DEVICES,
    ECM,
    EDEMA,
    EFFUSION,
    FRACTURE,
    LESION,
    OPACITY,
    PLEURAL_OTHER,
    PNEUMONIA,
    PTX,
    Study,
)

# Regexes (word-bounded, case-insensitive) naming each observation; every sentence about it uses one.
LABEL_TERMS: dict[str, tuple[str, ...]] = {
    ECM: (r"mediastin\w*", r"cardiomediastinal"),
    CARDIO: (r"cardiomegaly", r"heart", r"cardiac"),
    OPACITY: (r"opacit\w*", r"opacification"),
    LESION: (r"nodules?", r"mass(es)?", r"lesions?"),
    EDEMA: (r"edema",),
    CONSOL: (r"consolidations?", r"consolidative"),
    PNEUMONIA: (r"pneumonia", r"infection"),
    ATELEC: (r"atelectasis", r"atelectatic"),
    PTX: (r"pneumothorax", r"pneumothoraces"),
    EFFUSION: (r"effusions?", r"pleural fluid", r"fluid in the pleural space"),
    PLEURAL_OTHER: (r"pleural thickening", r"plaques?"),
    FRACTURE: (r"fractures?",),
    DEVICES: (r"tubes?", r"catheters?", r"pacemaker", r"devices?"),
}
NEGATION_CUES: tuple[str, ...] = (r"no", r"not", r"without", r"normal", r"within normal limits", r"negative for")
UNCERTAINTY_CUES: tuple[str, ...] = (
    r"possible",
    r"possibly",
    r"cannot be excluded",
    r"cannot exclude",
    r"may",
    r"questionable",
    r"could",
)


def _rx(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)


TERM_RE: dict[str, re.Pattern[str]] = {k: _rx(v) for k, v in LABEL_TERMS.items()}
NEGATION_RE = _rx(NEGATION_CUES)
UNCERTAINTY_RE = _rx(UNCERTAINTY_CUES)

_ORD = {
    1: "first",
    2: "second",
    3: "third",
    4: "fourth",
    5: "fifth",
    6: "sixth",
    7: "seventh",
    8: "eighth",
    9: "ninth",
    10: "tenth",
}
_NUM = {1: "1st", 2: "2nd", 3: "3rd"}
_SIZE_WORDS = {
    "small": ("small", "small", "minimal"),
    "moderate": ("moderate", "moderate-sized"),
    "large": ("large", "large", "sizable"),
}
_SEV_WORDS = {
    "mild": ("mild", "patchy", "faint"),
    "moderate": ("moderate", "moderate", "confluent"),
    "severe": ("extensive", "dense", "widespread"),
}
_DEGREE = {"mild": ("mild", "mildly"), "moderate": ("moderate", "moderately"), "severe": ("severe", "markedly")}


def _pick(rng: np.random.Generator, options: Any) -> Any:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _loc(rng: np.random.Generator, side: str, zone: str) -> tuple[str, str]:
    """(adjective, noun phrase) for a lung location, e.g. ("right lower lobe", "the right lung base")."""
    if side == "bilateral":
        adj = {
            "lower": ("bibasilar", "bilateral lower lobe"),
            "middle": ("bilateral mid lung",),
            "upper": ("bilateral upper lobe", "bilateral apical"),
        }[zone]
        noun = {
            "lower": ("both lung bases", "the lung bases bilaterally"),
            "middle": ("both mid lungs",),
            "upper": ("both upper lobes", "the upper lungs bilaterally"),
        }[zone]
    else:
        mid_l = ("lingular", "left mid lung") if side == "left" else ("right middle lobe", "right mid lung")
        adj = {
            "lower": (f"{side} lower lobe", f"{side} basilar", f"{side} base"),
            "middle": mid_l,
            "upper": (f"{side} upper lobe", f"{side} apical", f"{side} upper lung"),
        }[zone]
        mid_n = (
            ("the lingula", "the left mid lung") if side == "left" else ("the right middle lobe", "the right mid lung")
        )
        noun = {
            "lower": (f"the {side} lower lobe", f"the {side} lung base", f"the {side} base"),
            "middle": mid_n,
            "upper": (f"the {side} upper lobe", f"the {side} lung apex", f"the {side} upper lung"),
        }[zone]
    return _pick(rng, adj), _pick(rng, noun)


def _size_cm(cm: float) -> str:
    return f"{int(round(cm * 10))} mm" if cm < 1.0 else f"{cm:.1f} cm"


# --- per-observation noun phrases (with attributes) and full positive sentences --------------------
def _phrases(label: str, a: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
    """A noun phrase for ``label`` with its attributes, and a few positive sentences built on it."""
    if label == CARDIO:
        adj, adv = _DEGREE[a["degree"]]
        np_ = _pick(
            rng,
            (
                f"{adj} cardiomegaly",
                f"{adj} enlargement of the cardiac silhouette",
                f"{adv} enlarged cardiac silhouette",
            ),
        )
        return np_, [
            f"There is {np_}.",
            f"The heart is {adv} enlarged.",
            f"{_cap(adj)} cardiomegaly.",
            f"The cardiac silhouette is {adv} enlarged.",
        ]
    if label == ECM:
        marked = a["degree"] == "marked"
        np_ = _pick(
            rng,
            ("marked widening of the mediastinum", "markedly widened mediastinum")
            if marked
            else ("mild widening of the mediastinum", "mildly widened mediastinal contour"),
        )
        adv = "markedly" if marked else "mildly"
        return np_, [
            f"There is {np_}.",
            f"The mediastinum is {adv} widened.",
            f"The mediastinal silhouette is {adv} widened.",
        ]
    if label == EFFUSION:
        size = _pick(rng, _SIZE_WORDS[a["size"]])
        side = a["side"]
        if side == "bilateral":
            np_ = _pick(rng, (f"{size} bilateral pleural effusions", f"{size} bilateral effusions"))
            return np_, [
                f"There are {np_}.",
                f"{_cap(size)} pleural effusions are present bilaterally.",
                f"{_cap(np_)} with blunting of both costophrenic angles.",
            ]
        np_ = _pick(
            rng, (f"{size} {side} pleural effusion", f"{size} {side}-sided pleural effusion", f"{size} {side} effusion")
        )
        return np_, [
            f"There is a {np_}.",
            f"{_cap(np_)} blunts the {side} costophrenic angle.",
            f"A {size} amount of fluid in the pleural space on the {side}.",
            f"{_cap(np_)}.",
        ]
    if label == PTX:
        size = _pick(rng, _SIZE_WORDS[a["size"]] + (("tiny",) if a["size"] == "small" else ()))
        where = {"small": "apical", "moderate": "apicolateral", "large": ""}[a["size"]]
        np_ = " ".join(w for w in (size, a["side"], where, "pneumothorax") if w)
        return np_, [
            f"There is a {np_}.",
            f"{_cap(np_)} with a visible pleural line.",
            f"A {size} pneumothorax is present on the {a['side']}.",
            f"{_cap(np_)}.",
        ]
    if label == EDEMA:
        adj = {
            "mild": ("mild", "mild interstitial"),
            "moderate": ("moderate",),
            "severe": ("severe", "severe alveolar"),
        }[a["severity"]]
        np_ = f"{_pick(rng, adj)} pulmonary edema"
        extra = _pick(rng, ("with perihilar haziness", "with Kerley B lines", "with perihilar predominance", ""))
        return np_, [
            f"There is {np_} {extra}.".replace(" .", "."),
            f"{_cap(np_)}.",
            f"Findings are compatible with {np_}.",
        ]
    if label in (OPACITY, CONSOL, PNEUMONIA):
        adj, noun = _loc(rng, a["side"], a["zone"])
        sev = _pick(rng, _SEV_WORDS[a["severity"]])
        if label == OPACITY:
            many = "opacities" if a["side"] == "bilateral" else "opacity"
            np_ = _pick(rng, (f"{sev} {adj} {many}", f"{sev} airspace {many} in {noun}"))
            verb = "are" if many == "opacities" else "is"
            return np_, [f"There is {np_}.", f"{_cap(sev)} {many} {verb} seen in {noun}.", f"{_cap(np_)}."]
        if label == CONSOL:
            np_ = _pick(rng, (f"{sev} {adj} consolidation", f"{sev} consolidation in {noun}"))
            return np_, [
                f"There is {np_}.",
                f"{_cap(np_)} with air bronchograms.",
                f"{_cap(sev)} consolidation is present in {noun}.",
            ]
        sev = {"mild": "early", "moderate": "", "severe": "extensive"}[a["severity"]]
        np_ = " ".join(w for w in (sev, adj, "pneumonia") if w)
        return np_, [
            f"Findings are consistent with {np_}.",
            f"{_cap(np_)}.",
            f"There is {np_}.",
            f"Airspace changes in {noun} reflect {sev + ' ' if sev else ''}pneumonia.",
        ]
    if label == ATELEC:
        adj, noun = _loc(rng, a["side"], a["zone"])
        np_ = _pick(
            rng,
            (f"{a['kind']} {adj} atelectasis", f"{adj} {a['kind']} atelectasis", f"{a['kind']} atelectasis in {noun}"),
        )
        return np_, [f"There is {np_}.", f"{_cap(np_)}.", f"{_cap(np_)} with mild volume loss."]
    if label == LESION:
        kind = "mass" if a["size_cm"] >= 3.0 else "nodule"
        adj, noun = _loc(rng, a["side"], a["zone"])
        np_ = _pick(rng, (f"{_size_cm(a['size_cm'])} {adj} {kind}", f"{_size_cm(a['size_cm'])} {kind} in {noun}"))
        return np_, [
            f"There is a {np_}.",
            f"A {kind} in {noun} measures {_size_cm(a['size_cm'])}.",
            f"{_cap(np_)} is again seen." if kind == "nodule" else f"{_cap(np_)}.",
        ]
    if label == FRACTURE:
        rib = _pick(rng, (_ORD[a["rib"]], _NUM.get(a["rib"], f"{a['rib']}th")))
        if a.get("age") == "old":
            np_ = _pick(
                rng, (f"old healed {a['side']} {rib} rib fracture", f"healed fracture of the {a['side']} {rib} rib")
            )
        else:
            np_ = _pick(
                rng, (f"acute {a['side']} {rib} rib fracture", f"displaced fracture of the {a['side']} {rib} rib")
            )
        return np_, [f"There is an {np_}." if np_[0] in "aeiou" else f"There is a {np_}.", f"{_cap(np_)}."]
    if label == PLEURAL_OTHER:
        side = a["side"]
        if a["kind"] == "thickening":
            np_ = f"{side} pleural thickening" if side != "bilateral" else "bilateral pleural thickening"
            return np_, [f"{_cap(np_)} along the lateral chest wall.", f"There is {np_}."]
        where = "bilaterally" if side == "bilateral" else f"along the {side} chest wall"
        np_ = f"calcified pleural plaques {where}"
        return np_, [f"{_cap(np_)}.", f"There are {np_}."]
    raise KeyError(label)


_DEV_NAMES = {"ett": ("endotracheal tube", "ET tube"), "ng": ("nasogastric tube", "enteric tube", "NG tube")}
_CVC_TIPS = {
    "svc": ("the mid SVC", "the superior vena cava"),
    "cavoatrial": ("the cavoatrial junction",),
    "atrium": ("the right atrium",),
}


def _short_device(d: dict[str, Any]) -> str:
    """A short device name for the impression, e.g. "right IJ catheter"."""
    k = d["kind"]
    if k == "cvc":
        return f"{d['side']} {'IJ' if d['approach'] == 'jugular' else 'subclavian'} catheter"
    if k == "chest_tube":
        return f"{d['side']} chest tube"
    if k == "pacemaker":
        return f"{d['side']}-sided pacemaker"
    return {"ett": "ET tube", "ng": "NG tube"}[k]


def _device_sentence(d: dict[str, Any], rng: np.random.Generator) -> str:
    k = d["kind"]
    if k == "ett":
        name = _pick(rng, _DEV_NAMES["ett"])
        return _pick(
            rng,
            (
                f"The {name} terminates {d['tip_cm']} cm above the carina.",
                f"{_cap(name)} tip is {d['tip_cm']} cm from the carina.",
                f"An {name} is in place with its tip {d['tip_cm']} cm above the carina.",
            ),
        )
    if k == "ng":
        name = _pick(rng, _DEV_NAMES["ng"])
        if d["tip"] == "stomach":
            return _pick(
                rng,
                (
                    f"The {name} courses below the diaphragm with its tip in the stomach.",
                    f"{_cap(name)} tip is in the stomach.",
                ),
            )
        return f"The {name} tip is in the distal esophagus; advancement is recommended."
    if k == "cvc":
        site = "internal jugular" if d["approach"] == "jugular" else "subclavian"
        tip = _pick(rng, _CVC_TIPS[d["tip"]])
        return _pick(
            rng,
            (
                f"A {d['side']} {site} central venous catheter terminates in {tip}.",
                f"{_cap(d['side'])} {site} catheter with tip at {tip}.",
            ),
        )
    if k == "pacemaker":
        leads = "leads in the right atrium and right ventricle" if d["leads"] == 2 else "a lead in the right ventricle"
        return _pick(
            rng,
            (
                f"A {d['side']}-sided pacemaker is present with {leads}.",
                f"{_cap(d['side'])} chest wall pacemaker device with {leads}.",
            ),
        )
    if k == "chest_tube":
        return _pick(
            rng,
            (
                f"A {d['side']} chest tube is in place with its tip near the apex.",
                f"{_cap(d['side'])}-sided chest tube is present.",
            ),
        )
    raise KeyError(k)


_NEGATIONS: dict[str, tuple[str, ...]] = {
    ECM: (
        "The mediastinal contours are normal.",
        "The mediastinum is not widened.",
        "The cardiomediastinal silhouette is within normal limits.",
        "Normal mediastinal contours.",
    ),
    CARDIO: (
        "Heart size is normal.",
        "The heart is not enlarged.",
        "No cardiomegaly.",
        "The cardiac silhouette is normal in size.",
    ),
    OPACITY: ("No focal opacity.", "There are no focal airspace opacities.", "No new opacity is seen."),
    LESION: ("No pulmonary nodules or masses.", "No lung nodule is seen."),
    EDEMA: ("No pulmonary edema.", "There is no edema.", "No evidence of pulmonary edema."),
    CONSOL: ("No focal consolidation.", "No consolidation is seen.", "There is no consolidation."),
    PNEUMONIA: (
        "No evidence of pneumonia.",
        "No findings to suggest pneumonia.",
        "No radiographic evidence of pneumonia.",
    ),
    ATELEC: ("No atelectasis.", "No significant atelectasis."),
    PTX: ("No pneumothorax.", "No evidence of pneumothorax.", "Pneumothorax is not seen.", "There is no pneumothorax."),
    EFFUSION: (
        "No pleural effusion.",
        "No pleural effusions.",
        "There is no fluid in the pleural space.",
        "No effusion is seen.",
    ),
    PLEURAL_OTHER: ("No pleural thickening.",),
    FRACTURE: ("No acute fracture.", "No displaced rib fractures.", "No fracture is identified."),
    DEVICES: ("No support devices are present.", "No tubes or catheters.", "No indwelling devices."),
}
_COMBINED: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (
        (CONSOL, EFFUSION, PTX),
        (
            "No focal consolidation, pleural effusion, or pneumothorax.",
            "There is no consolidation, effusion, or pneumothorax.",
        ),
    ),
    (
        (EFFUSION, PTX),
        (
            "No pleural effusion or pneumothorax.",
            "There is no pneumothorax or pleural effusion.",
            "No effusion or pneumothorax.",
        ),
    ),
    ((EDEMA, EFFUSION), ("No pulmonary edema or pleural effusion.",)),
)
_UNCERTAIN: tuple[Callable[[str], str], ...] = (
    lambda p: f"Possible {p}.",
    lambda p: f"{_cap(p)} cannot be excluded.",
    lambda p: f"Cannot exclude {p}.",
    lambda p: f"Findings may represent {p}.",
    lambda p: f"Questionable {p}.",
)
_IMPRESSION_ORDER = (
    PTX,
    PNEUMONIA,
    CONSOL,
    EDEMA,
    EFFUSION,
    CARDIO,
    ECM,
    OPACITY,
    LESION,
    ATELEC,
    FRACTURE,
    PLEURAL_OTHER,
)
_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute intrathoracic abnormality.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary abnormality.",
)


def _negations(labels: dict[str, int | None], rng: np.random.Generator) -> list[str]:
    todo = [k for k, v in labels.items() if v == 0 and k in _NEGATIONS]
    out: list[str] = []
    for group, texts in _COMBINED:
        if all(g in todo for g in group) and rng.random() < 0.5:
            out.append(_pick(rng, texts))
            todo = [k for k in todo if k not in group]
    return out + [_pick(rng, _NEGATIONS[k]) for k in todo]


def _technique(views: list[str], rng: np.random.Generator) -> str:
    frontal, lateral = views[0], "LATERAL" in views
    if lateral:
        return _pick(
            rng,
            (
                f"{frontal} and lateral views of the chest.",
                "Frontal and lateral chest radiographs.",
                f"{frontal} and lateral chest radiographs were obtained.",
            ),
        )
    if frontal == "AP":
        return _pick(rng, ("Portable AP view of the chest.", "Single portable frontal view of the chest."))
    return _pick(rng, ("Single PA view of the chest.", "PA chest radiograph."))


_INDICATIONS = (
    "shortness of breath",
    "chest pain",
    "cough",
    "fever",
    "dyspnea",
    "preoperative evaluation",
    "follow-up",
    "hypoxia",
    "weakness",
)


def _global_sentences(st: Study, rng: np.random.Generator) -> list[str]:
    """Lung volumes, incidental (non-label) findings and patient rotation."""
    out = []
    if st.lung_volumes == "low":
        out.append(
            _pick(
                rng,
                (
                    "Lung volumes are low.",
                    "Low lung volumes.",
                    "The lung volumes are low, crowding the bronchovascular markings.",
                ),
            )
        )
    elif st.lung_volumes == "hyperinflated":
        out.append(
            _pick(
                rng,
                (
                    "The lungs are hyperinflated.",
                    "Hyperinflated lungs.",
                    "Lungs are hyperexpanded, suggesting emphysema.",
                ),
            )
        )
    elif rng.random() < 0.3:
        out.append(_pick(rng, ("Lung volumes are normal.", "Normal lung volumes.")))
    inc = st.incidental
    if inc.get("aortic_calcification"):
        out.append(
            _pick(
                rng,
                (
                    "Atherosclerotic calcification of the aortic knob.",
                    "Aortic knob calcification.",
                    "Calcification of the aortic arch.",
                ),
            )
        )
    if inc.get("scoliosis"):
        out.append(
            _pick(
                rng,
                (f"Mild {inc['scoliosis']}scoliosis of the thoracic spine.", f"Thoracic {inc['scoliosis']}scoliosis."),
            )
        )
    if inc.get("clips"):
        out.append(
            _pick(
                rng,
                (
                    "Cholecystectomy clips in the right upper quadrant.",
                    "Surgical clips project over the right upper quadrant.",
                ),
            )
        )
    if st.rotation != "none":
        r = st.rotation
        out.append(
            _pick(
                rng,
                (
                    f"The patient is rotated to the {r}.",
                    f"Mild {r}ward rotation of the patient.",
                    f"Patient positioning is rotated to the {r}.",
                ),
            )
        )
    return out


def write_report(st: Study, rng: np.random.Generator) -> tuple[str, str]:
    """Return ``(findings, impression)`` for ``st``; deterministic given ``rng``."""
    body: list[str] = []
    labels = st.labels
    for label, value in labels.items():
        if label in (DEVICES,) or value not in (1, -1) or label not in st.findings:
            continue
        np_, sentences = _phrases(label, st.findings[label], rng)
        body.append(_pick(rng, sentences) if value == 1 else _pick(rng, _UNCERTAIN)(np_))
    body += [_device_sentence(d, rng) for d in st.devices]
    body += _negations(labels, rng) + _global_sentences(st, rng)
    lungs_ok = not any(labels[k] in (1, -1) for k in (OPACITY, CONSOL, PNEUMONIA, EDEMA, ATELEC, LESION, EFFUSION, PTX))
    if lungs_ok and rng.random() < 0.5:
        body.append(_pick(rng, ("The lungs are clear.", "Lungs are well expanded and clear.")))
    if labels[FRACTURE] != 1 and rng.random() < 0.3:
        body.append(
            _pick(rng, ("Osseous structures are unremarkable.", "The visualized osseous structures are intact."))
        )
    order = rng.permutation(len(body))
    findings = [body[i] for i in order]
    if rng.random() < 0.55:
        findings.insert(0, _technique(st.views, rng))
    if rng.random() < 0.4:
        findings.insert(0, f"Indication: {_pick(rng, _INDICATIONS)}.")
    if rng.random() < 0.5:
        findings.append(
            f"Comparison is made to the prior radiograph from {st.prior_date}."
            if st.prior_date
            else _pick(rng, ("No prior studies are available for comparison.", "No previous studies."))
        )
    return " ".join(findings), _impression(st, rng)


def _impression(st: Study, rng: np.random.Generator) -> str:
    items: list[str] = []
    for label in _IMPRESSION_ORDER:
        v = st.labels[label]
        if v not in (1, -1) or label not in st.findings:
            continue
        np_, _ = _phrases(label, st.findings[label], rng)
        items.append(_cap(np_) + "." if v == 1 else _pick(rng, ("Possible ", "Questionable ")) + np_ + ".")
    if st.devices and (rng.random() < 0.7 or not items):
        odd = [d for d in st.devices if d["kind"] == "ng" and d["tip"] == "esophagus"]
        names = [_short_device(d) for d in st.devices if d not in odd]
        if odd:
            items.append("Nasogastric tube tip in the distal esophagus.")
        if names and rng.random() < 0.75:
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            items.append(f"{_cap(listed)} in {_pick(rng, ('standard', 'appropriate', 'unchanged'))} position.")
        elif names:
            items.append(_pick(rng, ("Support devices in standard position.", "Lines and tubes as described above.")))
    items = items[:4]
    if not items:
        if st.lung_volumes != "normal" and rng.random() < 0.6:
            vol = "Low lung volumes" if st.lung_volumes == "low" else "Hyperinflated lungs"
            return f"{vol}; {_pick(rng, ('no acute cardiopulmonary process.', 'otherwise unremarkable.'))}"
        return _pick(rng, _NORMAL_IMPRESSIONS)
    if len(items) > 1 and rng.random() < 0.4:
        return " ".join(f"{i + 1}. {t}" for i, t in enumerate(items))
    return " ".join(items)
