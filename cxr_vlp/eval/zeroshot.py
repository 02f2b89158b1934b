"""CLIP-style zero-shot classification with positive / negative prompt pairs (docs/design.md §4).

For label c with positive prompts P_c and negative prompts N_c, an ensemble text embedding is

    t⁺_c = normalise( mean_{q ∈ P_c} normalise(encode(q)) ),   t⁻_c likewise over N_c,

and for an image embedding v (normalised), with the model's logit scale s (= 1 / temperature):

    p(c | v) = exp(s·cos(v, t⁺_c)) / (exp(s·cos(v, t⁺_c)) + exp(s·cos(v, t⁻_c)))
             = sigmoid( s · (cos(v, t⁺_c) − cos(v, t⁻_c)) ),

the two-way softmax, computed in the numerically stable sigmoid form. The scale changes the probabilities
but, being positive, never the ranking of images for a label (so not the AUROC).

The default prompts (:data:`DEFAULT_PROMPTS`) can be overridden per label through :meth:`PromptSet.from_config`,
e.g. from the Hydra config ``evaluation.zeroshot.prompts: {Cardiomegaly: {positive: [...], negative: [...]}}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_vlp.text.labels import CHEXPERT_LABELS

__all__ = [
    "DEFAULT_PROMPTS",
    "PromptSet",
    "class_text_embeddings",
    "zeroshot_classify",
    "zeroshot_probs",
]

EncodeText = Callable[[list[str]], Tensor]

# label -> {"positive": prompts stating the finding, "negative": prompts stating its absence}
DEFAULT_PROMPTS: dict[str, dict[str, list[str]]] = {
    "No Finding": {
        "positive": [
            "no acute cardiopulmonary process",
            "no acute cardiopulmonary abnormality",
            "normal chest radiograph",
            "the heart and lungs are normal",
            "the lungs are clear and the heart size is normal",
        ],
        "negative": [
            "acute cardiopulmonary process",
            "acute cardiopulmonary abnormality",
            "abnormal chest radiograph",
            "findings suggesting acute cardiopulmonary disease",
            "there is an abnormality of the heart or lungs",
        ],
    },
    "Enlarged Cardiomediastinum": {
        "positive": [
            "enlarged cardiomediastinum",
            "widened mediastinum",
            "findings suggesting an enlarged cardiomediastinal silhouette",
            "the cardiomediastinal silhouette is enlarged",
            "there is widening of the mediastinum",
        ],
        "negative": [
            "no enlarged cardiomediastinum",
            "normal cardiomediastinal silhouette",
            "the mediastinum is not widened",
            "no evidence of mediastinal widening",
            "the cardiomediastinal silhouette is within normal limits",
        ],
    },
    "Cardiomegaly": {
        "positive": [
            "cardiomegaly",
            "enlarged cardiac silhouette",
            "findings suggesting cardiomegaly",
            "there is cardiomegaly",
            "the heart is enlarged",
        ],
        "negative": [
            "no cardiomegaly",
            "normal heart size",
            "no evidence of cardiomegaly",
            "the heart is not enlarged",
            "heart size is within normal limits",
        ],
    },
    "Lung Opacity": {
        "positive": [
            "lung opacity",
            "airspace opacity",
            "findings suggesting a pulmonary opacity",
            "there is an opacity in the lung",
            "patchy airspace opacities",
        ],
        "negative": [
            "no lung opacity",
            "no focal opacity",
            "no evidence of airspace opacity",
            "the lungs are clear",
            "there is no pulmonary opacity",
        ],
    },
    "Lung Lesion": {
        "positive": [
            "lung lesion",
            "pulmonary nodule",
            "findings suggesting a pulmonary nodule or mass",
            "there is a lung mass",
            "there is a focal lung lesion",
        ],
        "negative": [
            "no lung lesion",
            "no pulmonary nodule or mass",
            "no evidence of a lung mass",
            "no suspicious pulmonary nodule",
            "there is no focal lung lesion",
        ],
    },
    "Edema": {
        "positive": [
            "pulmonary edema",
            "findings suggesting pulmonary edema",
            "there is pulmonary edema",
            "interstitial edema",
            "pulmonary vascular congestion with edema",
        ],
        "negative": [
            "no pulmonary edema",
            "no evidence of pulmonary edema",
            "there is no edema",
            "no interstitial edema",
            "no pulmonary vascular congestion",
        ],
    },
    "Consolidation": {
        "positive": [
            "consolidation",
            "focal consolidation",
            "findings suggesting consolidation",
            "there is consolidation",
            "airspace consolidation of the lung",
        ],
        "negative": [
            "no consolidation",
            "no focal consolidation",
            "no evidence of consolidation",
            "there is no consolidation",
            "the lungs are clear without consolidation",
        ],
    },
    "Pneumonia": {
        "positive": [
            "pneumonia",
            "findings suggesting pneumonia",
            "there is pneumonia",
            "opacity concerning for pneumonia",
            "findings consistent with pneumonia",
        ],
        "negative": [
            "no pneumonia",
            "no evidence of pneumonia",
            "there is no pneumonia",
            "no findings to suggest pneumonia",
            "no radiographic evidence of pneumonia",
        ],
    },
    "Atelectasis": {
        "positive": [
            "atelectasis",
            "findings suggesting atelectasis",
            "there is atelectasis",
            "bibasilar atelectasis",
            "subsegmental atelectasis",
        ],
        "negative": [
            "no atelectasis",
            "no evidence of atelectasis",
            "there is no atelectasis",
            "no subsegmental atelectasis",
            "no focal atelectasis",
        ],
    },
    "Pneumothorax": {
        "positive": [
            "pneumothorax",
            "findings suggesting pneumothorax",
            "there is a pneumothorax",
            "a pneumothorax is present",
            "apical pneumothorax",
        ],
        "negative": [
            "no pneumothorax",
            "no evidence of pneumothorax",
            "there is no pneumothorax",
            "pneumothorax is not seen",
            "no pneumothorax is present",
        ],
    },
    "Pleural Effusion": {
        "positive": [
            "pleural effusion",
            "findings suggesting pleural effusion",
            "there is a pleural effusion",
            "blunting of the costophrenic angle",
            "fluid in the pleural space",
        ],
        "negative": [
            "no pleural effusion",
            "no evidence of pleural effusion",
            "there is no pleural effusion",
            "sharp costophrenic angles",
            "no effusion",
        ],
    },
    "Pleural Other": {
        "positive": [
            "pleural thickening",
            "findings suggesting pleural thickening",
            "pleural scarring",
            "there is pleural thickening",
            "calcified pleural plaques",
        ],
        "negative": [
            "no pleural thickening",
            "no evidence of pleural thickening",
            "no pleural abnormality",
            "no pleural plaques",
            "the pleural surfaces are normal",
        ],
    },
    "Fracture": {
        "positive": [
            "fracture",
            "rib fracture",
            "findings suggesting a rib fracture",
            "there is a fracture",
            "acute displaced fracture",
        ],
        "negative": [
            "no fracture",
            "no acute fracture",
            "no evidence of fracture",
            "no displaced rib fracture",
            "the osseous structures are intact",
        ],
    },
    "Support Devices": {
        "positive": [
            "support devices",
            "endotracheal tube in place",
            "there is a central venous catheter",
            "lines and tubes are in place",
            "a pacemaker is present",
        ],
        "negative": [
            "no support devices",
            "no lines or tubes",
            "there are no support devices",
            "no endotracheal tube or catheter",
            "no medical devices are seen",
        ],
    },
}

_SIDES = ("positive", "negative")


def _prompt_list(value, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{where} must be a list of prompt strings, got {type(value).__name__}")
    prompts = list(value)
    if not prompts:
        raise ValueError(f"{where} must hold at least one prompt")
    for q in prompts:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{where} must hold non-empty strings, got {q!r}")
    return prompts


@dataclass
class PromptSet:
    """Positive and negative prompt lists per label (``label -> [prompt, ...]``)."""

    positive: dict[str, list[str]] = field(default_factory=dict)
    negative: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def default(cls) -> PromptSet:
        """A copy of :data:`DEFAULT_PROMPTS`."""
        return cls(
            {k: list(v["positive"]) for k, v in DEFAULT_PROMPTS.items()},
            {k: list(v["negative"]) for k, v in DEFAULT_PROMPTS.items()},
        )

    @classmethod
    def from_config(cls, overrides: Mapping | None = None) -> PromptSet:
        """Defaults with per-label overrides ``{label: {positive: [...], negative: [...]}}`` (either side optional).

        Accepts plain dicts and OmegaConf containers. An unknown label or side raises ``ValueError`` naming it;
        a value of the wrong type (e.g. a single string instead of a list) raises ``TypeError`` naming its place.
        """
        prompts = cls.default()
        if overrides is None:
            return prompts
        if not isinstance(overrides, Mapping):
            raise TypeError(
                f"zeroshot prompts must be a mapping label -> {{positive, negative}}, got {type(overrides).__name__}"
            )
        for label, sides in overrides.items():
            if label not in DEFAULT_PROMPTS:
                raise ValueError(f"zeroshot prompts: unknown label {label!r}; known labels: {list(CHEXPERT_LABELS)}")
            if sides is None:
                continue
            if not isinstance(sides, Mapping):
                raise TypeError(f"zeroshot prompts[{label!r}] must be a mapping with keys {list(_SIDES)}")
            for side, value in sides.items():
                if side not in _SIDES:
                    raise ValueError(f"zeroshot prompts[{label!r}]: unknown key {side!r}; expected {list(_SIDES)}")
                getattr(prompts, side)[label] = _prompt_list(value, f"zeroshot prompts[{label!r}][{side!r}]")
        return prompts

    @classmethod
    def with_overrides(cls, labels: Sequence[str], prompts: Mapping | None = None) -> PromptSet:
        """:meth:`from_config` for the labels with default prompts, plus new labels given as
        ``{label: {"positive": [...], "negative": [...]}}`` (both sides required); ``ValueError`` naming any of
        ``labels`` left without prompts."""
        prompts = dict(prompts or {})
        prompt_set = cls.from_config({k: v for k, v in prompts.items() if k in DEFAULT_PROMPTS})
        for label, sides in prompts.items():
            if label in DEFAULT_PROMPTS:
                continue
            if not isinstance(sides, Mapping) or not sides.get("positive") or not sides.get("negative"):
                raise ValueError(
                    f"prompts[{label!r}]: a label without default prompts needs "
                    "{'positive': [...], 'negative': [...]}"
                )
            prompt_set.positive[label] = _prompt_list(sides["positive"], f"prompts[{label!r}]['positive']")
            prompt_set.negative[label] = _prompt_list(sides["negative"], f"prompts[{label!r}]['negative']")
        missing = [name for name in labels if name not in prompt_set.positive]
        if missing:
            raise ValueError(
                f"no prompts for label(s) {missing}: pass prompts={{label: {{'positive': [...], "
                f"'negative': [...]}}}}; labels with default prompts: {list(DEFAULT_PROMPTS)}"
            )
        return prompt_set

    def check(self, label_names: Sequence[str]) -> None:
        """Raise ``ValueError`` naming the first label without positive or negative prompts."""
        for name in label_names:
            for side in _SIDES:
                if not getattr(self, side).get(name):
                    raise ValueError(f"no {side} prompts for label {name!r}")


def class_text_embeddings(encode_text: EncodeText, prompts: Sequence[str]) -> Tensor:
    """Prompt-ensemble embedding ``[D]`` = normalise(mean of the normalised prompt embeddings)."""
    prompts = _prompt_list(prompts, "prompts")
    emb = encode_text(prompts)
    if not isinstance(emb, Tensor) or emb.ndim != 2 or emb.shape[0] != len(prompts):
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise ValueError(
            f"encode_text must return a [{len(prompts)}, D] tensor for {len(prompts)} prompts, got {shape}"
        )
    return F.normalize(F.normalize(emb.float(), dim=-1).mean(dim=0), dim=-1)


def zeroshot_probs(image_emb: Tensor, pos_emb: Tensor, neg_emb: Tensor, logit_scale: float) -> Tensor:
    """``[N, C]`` probabilities sigmoid(s·(cos(v, t⁺) − cos(v, t⁻))), the two-way softmax of the module docstring."""
    if image_emb.ndim != 2:
        raise ValueError(f"image_emb must be [N, D], got shape {tuple(image_emb.shape)}")
    for name, t in (("pos_emb", pos_emb), ("neg_emb", neg_emb)):
        if t.ndim != 2 or t.shape[1] != image_emb.shape[1]:
            raise ValueError(f"{name} must be [C, {image_emb.shape[1]}], got shape {tuple(t.shape)}")
    if pos_emb.shape != neg_emb.shape:
        raise ValueError(f"pos_emb {tuple(pos_emb.shape)} and neg_emb {tuple(neg_emb.shape)} must match")
    scale = float(logit_scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"logit_scale must be a finite positive number, got {logit_scale}")
    v = F.normalize(image_emb.float(), dim=-1)
    dev = v.device
    pos = F.normalize(pos_emb.float().to(dev), dim=-1)
    neg = F.normalize(neg_emb.float().to(dev), dim=-1)
    return torch.sigmoid(scale * (v @ pos.T - v @ neg.T))


@torch.no_grad()
def zeroshot_classify(
    encode_text: EncodeText, image_emb: Tensor, label_names: Sequence[str], prompt_set: PromptSet, logit_scale: float
) -> Tensor:
    """``[N, C]`` zero-shot probabilities for ``label_names`` (each label's prompt lists encoded once)."""
    names = list(label_names)
    prompt_set.check(names)
    pos = torch.stack([class_text_embeddings(encode_text, prompt_set.positive[n]) for n in names])
    neg = torch.stack([class_text_embeddings(encode_text, prompt_set.negative[n]) for n in names])
    return zeroshot_probs(image_emb, pos, neg, logit_scale)
