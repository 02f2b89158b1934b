"""What the explorer answers, independent of HTTP: :class:`ExploreSession` over one model and one embedded split.

A session holds a :class:`~cxr_vlp.inference.base.ImageTextModel` (a :class:`~cxr_vlp.inference.CXRModel` for
Grad-CAM, concepts and uncertainty), the split's :class:`~cxr_vlp.eval.embed.SplitEmbeddings` (the evaluation
suite's cached embeddings) and a source of the split's images. Every answer is a JSON-ready ``dict``:

- :meth:`image_query`: per-label zero-shot probabilities (the evaluation suite's prompt ensembles, the two-way
  softmax of :mod:`cxr_vlp.eval.zeroshot`) with the model's validation-fitted thresholds, the top-``k`` reports of
  the split by the model's similarity score (the study's own report marked), for concept heads the top concepts by
  score and their contributions to a label's logit in a concept bottleneck, for probabilistic heads the image
  uncertainty Σσ² and its decile among the split's images, and for a split study its ground truth;
- :meth:`text_query`: the top-``k`` images of the split for a free text, and the text's negated variant;
- :meth:`explain`: the Grad-CAM overlay of an image towards a label's positive prompts or a free-text prompt
  (:meth:`CXRModel.explain <cxr_vlp.inference.model.CXRModel.explain>`).

Model calls are serialised by one lock (the server answers requests on several threads; Grad-CAM hooks the image
tower). Design: docs/design.md §4 (zero-shot, thresholds fitted on validation only).
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from cxr_vlp.data.cache import incomplete_reason
from cxr_vlp.eval.embed import SplitEmbeddings
from cxr_vlp.eval.zeroshot import PromptSet, class_text_embeddings, zeroshot_probs
from cxr_vlp.explore.negation import negated
from cxr_vlp.inference.base import ImageTextModel, UnsupportedByModel
from cxr_vlp.models.outputs import Embeddings
from cxr_vlp.text.labels import CHEXPERT_LABELS

__all__ = ["ExploreSession", "QueryError", "decode_upload", "decile", "png_bytes", "data_uri"]

ImageSource = Callable[[int], np.ndarray]
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
KEPT_UPLOADS = 32
MAX_TEXT_CHARS = 2000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class QueryError(ValueError):
    """A query the explorer cannot answer because of its input (HTTP 400), with a message naming the field."""


def decile(value: float, reference: Tensor | np.ndarray) -> int:
    """The decile (1 = lowest tenth … 10 = highest) of ``value`` among ``reference``: ⌈10 · F(value)⌉ clamped to
    [1, 10], F being the empirical distribution function (the fraction of reference values ≤ ``value``)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if ref.size == 0:
        raise ValueError("decile: empty reference distribution")
    fraction = float(np.count_nonzero(ref <= float(value))) / ref.size
    return int(min(10, max(1, math.ceil(10.0 * fraction))))


def png_bytes(image: np.ndarray, max_side: int | None = None) -> bytes:
    """PNG bytes of a gray ``[H, W]`` or RGB ``[H, W, 3]`` uint8 image, shrunk (area interpolation) so that its
    longer side is at most ``max_side``."""
    img = np.ascontiguousarray(image)
    if max_side is not None and max(img.shape[:2]) > max_side:
        scale = max_side / max(img.shape[:2])
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def decode_upload(data: bytes, name: str = "upload") -> np.ndarray:
    """An uploaded PNG or JPEG (8 or 16 bit, gray or colour, any size) as ``uint8 [H, W]``, decoded as training
    decodes files (:func:`cxr_vlp.data.transforms.load_grayscale`: OpenCV grayscale, 16 bit → high byte)."""
    if not data:
        raise QueryError(f"{name}: empty upload")
    if len(data) > MAX_UPLOAD_BYTES:
        raise QueryError(f"{name}: {len(data)} bytes, more than the {MAX_UPLOAD_BYTES} accepted")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise QueryError(f"{name}: not a PNG or JPEG image (the file starts with {data[:8]!r})")
    problem = incomplete_reason(data[:8], data[-1024:], len(data))
    if problem is not None:
        raise QueryError(f"{name}: {problem}")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise QueryError(f"{name}: the image could not be decoded")
    return image


@dataclass
class _Query:
    """One image query resolved: the study index (split queries) or upload id, its image and embeddings."""

    index: int | None
    upload: str | None
    image: np.ndarray
    embeddings: Embeddings
    concept_scores: Tensor | None


def _truth_label(value: float) -> str:
    if math.isnan(value):
        return "unknown"
    if value >= 1.0:
        return "positive"
    if value <= 0.0:
        return "negative"
    return "uncertain"


class ExploreSession:
    """The explorer's answers for ``model`` over one embedded split (see the module docstring).

    ``images(i)`` returns study ``i``'s image (the evaluation view, ``uint8 [H, W]``) in the order of
    ``embeddings``; ``findings`` / ``impressions`` the report sections shown as ground truth (default: the embedded
    text); ``bottleneck`` a fitted :class:`~cxr_vlp.eval.concept_audit.ConceptBottleneck` for concept
    contributions; ``k`` the default number of results."""

    def __init__(
        self,
        model: ImageTextModel,
        embeddings: SplitEmbeddings,
        images: ImageSource | None = None,
        k: int = 10,
        labels: Sequence[str] = CHEXPERT_LABELS,
        prompts: dict | None = None,
        findings: Sequence[str | None] | None = None,
        impressions: Sequence[str | None] | None = None,
        bottleneck: Any = None,
        top_concepts: int = 8,
        credentialed: bool = False,
        data_name: str = "dataset",
    ) -> None:
        if len(embeddings) == 0:
            raise ValueError(f"the {embeddings.split} split holds no studies")
        if int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        self.model = model
        self.emb = embeddings
        self.images = images
        self.k = int(k)
        self.labels = list(labels)
        self.top_concepts = int(top_concepts)
        self.credentialed = bool(credentialed)
        self.data_name = str(data_name)
        self.findings = list(findings) if findings is not None else None
        self.impressions = list(impressions) if impressions is not None else None
        self.bottleneck = bottleneck
        self.lock = threading.RLock()
        self.uploads: OrderedDict[str, np.ndarray] = OrderedDict()
        self.index_of = {sid: i for i, sid in enumerate(embeddings.study_ids)}
        prompt_set = PromptSet.with_overrides(self.labels, prompts)
        with self.lock, torch.no_grad():
            self.positive = torch.stack(
                [class_text_embeddings(model.encode_texts, prompt_set.positive[n]) for n in self.labels]
            )
            self.negative = torch.stack(
                [class_text_embeddings(model.encode_texts, prompt_set.negative[n]) for n in self.labels]
            )
            self.scale = float(model.zero_shot_scale)
        thresholds = model.thresholds
        self.thresholds = {n: float(thresholds[n]) for n in self.labels if n in thresholds.index}
        self.image_uncertainty = embeddings.image_uncertainty

    # ------------------------------------------------------------------ what the page shows first
    def info(self) -> dict[str, Any]:
        """The model, the split and what the head offers (the page's header and controls)."""
        name = getattr(self.model, "head_name", type(self.model).__name__)
        return {
            "model": self.model.name,
            "head": name,
            "split": self.emb.split,
            "studies": len(self.emb),
            "dataset": self.data_name,
            "credentialed": self.credentialed,
            "labels": self.labels,
            "thresholds": self.thresholds,
            "k": self.k,
            "probabilistic": bool(self.model.probabilistic),
            "concepts": bool(self.model.concept_names),
            "images": self.images is not None,
            "gradcam": callable(getattr(self.model, "explain", None)),
        }

    def studies(self, offset: int = 0, limit: int = 50, search: str = "") -> dict[str, Any]:
        """Split studies for the picker: ``limit`` rows from ``offset`` among those whose id or report contains
        ``search`` (case-insensitive)."""
        needle = search.strip().lower()
        rows = [
            i
            for i in range(len(self.emb))
            if not needle or needle in self.emb.study_ids[i].lower() or needle in self.emb.texts[i].lower()
        ]
        offset, limit = max(0, int(offset)), max(1, min(500, int(limit)))
        page = rows[offset : offset + limit]
        return {
            "total": len(rows),
            "offset": offset,
            "studies": [
                {"index": i, "study_id": self.emb.study_ids[i], "report": self.emb.texts[i][:160]} for i in page
            ],
        }

    # ------------------------------------------------------------------ images
    def split_image(self, index: int) -> np.ndarray:
        self._check_index(index)
        if self.images is None:
            raise QueryError("the split's images are not available to this session")
        return self.images(index)

    def upload(self, data: bytes, name: str = "upload") -> str:
        """Keep an uploaded image (decoded) and return its id (the last :data:`KEPT_UPLOADS` are kept)."""
        image = decode_upload(data, name)
        key = secrets.token_hex(8)
        with self.lock:
            self.uploads[key] = image
            while len(self.uploads) > KEPT_UPLOADS:
                self.uploads.popitem(last=False)
        return key

    def upload_image(self, key: str) -> np.ndarray:
        with self.lock:
            image = self.uploads.get(str(key))
        if image is None:
            raise QueryError(f"upload={key!r}: no such upload (uploads are kept for the last {KEPT_UPLOADS})")
        return image

    def image_url(self, index: int | None = None, upload: str | None = None, size: int = 256) -> str:
        return f"/api/image/{index}.png?size={size}" if upload is None else f"/api/upload/{upload}.png?size={size}"

    def _check_index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.emb):
            raise QueryError(f"index={index!r}: expected a study index in [0, {len(self.emb) - 1}]")
        return index

    def _resolve(self, index: int | None, upload: str | None) -> _Query:
        if (index is None) == (upload is None):
            raise QueryError("give exactly one of index (a study of the split) or upload (an uploaded image id)")
        if index is not None:
            i = self._check_index(index)
            image = self.split_image(i) if self.images is not None else None
            scores = None if self.emb.concept_scores is None else self.emb.concept_scores[i : i + 1]
            return _Query(i, None, image, self.emb.image_embeddings.rows(slice(i, i + 1)), scores)
        image = self.upload_image(upload)
        with self.lock:
            enc = self.model.encode_pixels(self.model.preprocess([image]))
        return _Query(None, str(upload), image, enc.embeddings, enc.concept_scores)

    # ------------------------------------------------------------------ queries
    def zero_shot(self, embeddings: Embeddings) -> np.ndarray:
        """``[labels]`` probabilities of one image embedding (the suite's two-way prompt softmax)."""
        return zeroshot_probs(embeddings.mean, self.positive, self.negative, self.scale)[0].double().numpy()

    def _k(self, k: Any) -> int:
        value = self.k if k is None else k
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise QueryError(f"k={k!r}: expected a positive integer")
        return min(value, len(self.emb))

    def image_query(
        self, index: int | None = None, upload: str | None = None, k: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """Zero-shot probabilities, retrieved reports, concepts / uncertainty and ground truth of one image."""
        query = self._resolve(index, upload)
        k = self._k(k)
        probs = self.zero_shot(query.embeddings)
        with self.lock:
            scores = self.model.similarity_scores(query.embeddings, self.emb.text_embeddings)[0]
        top = torch.topk(scores, k)
        retrieved = [
            {
                "rank": r + 1,
                "index": int(j),
                "study_id": self.emb.study_ids[int(j)],
                "text": self.emb.texts[int(j)],
                "score": float(s),
                "true": int(j) == query.index,
            }
            for r, (s, j) in enumerate(zip(top.values.tolist(), top.indices.tolist()))
        ]
        zero_shot = []
        for c, name in enumerate(self.labels):
            row: dict[str, Any] = {"label": name, "prob": float(probs[c]), "threshold": self.thresholds.get(name)}
            row["positive"] = None if row["threshold"] is None else bool(row["prob"] >= row["threshold"])
            zero_shot.append(row)
        out: dict[str, Any] = {
            "query": {
                "index": query.index,
                "upload": query.upload,
                "study_id": None if query.index is None else self.emb.study_ids[query.index],
                "image_url": self.image_url(query.index, query.upload) if query.image is not None else None,
            },
            "zero_shot": zero_shot,
            "retrieved": retrieved,
            "true_rank": self._true_rank(scores, query.index),
        }
        chosen = label if label is not None else self.labels[int(np.argmax(probs))]
        if self.model.concept_names and query.concept_scores is not None:
            out["concepts"] = self._concepts(query.concept_scores[0], chosen)
        if self.model.probabilistic and query.embeddings.logvar is not None:
            from cxr_vlp.losses.probabilistic import uncertainty

            value = float(uncertainty(query.embeddings.logvar)[0])
            out["uncertainty"] = {
                "value": value,
                "decile": decile(value, self.image_uncertainty),
                "split_median": float(self.image_uncertainty.median()),
            }
        if query.index is not None:
            out["truth"] = self._truth(query.index)
        return out

    def _true_rank(self, scores: Tensor, index: int | None) -> float | None:
        """The expected rank (1 = best, ties split evenly) of the study's own report; None for uploads."""
        if index is None:
            return None
        own = scores[index]
        return float((scores > own).sum()) + (float((scores == own).sum()) + 1.0) / 2.0

    def _concepts(self, scores: Tensor, label: str) -> dict[str, Any]:
        names = self.model.concept_names
        order = torch.argsort(scores, descending=True)[: self.top_concepts]
        out: dict[str, Any] = {
            "top": [{"concept": names[int(i)], "score": float(scores[int(i)])} for i in order],
            "label": None,
            "contributions": [],
        }
        if self.bottleneck is not None and label in self.bottleneck.label_names:
            from cxr_vlp.eval.concept_audit import top_concepts

            out["label"] = label
            out["contributions"] = [
                {"concept": c, "contribution": v}
                for c, v in top_concepts(self.bottleneck, scores.double().numpy(), label, self.top_concepts)
            ]
        return out

    def _truth(self, index: int) -> dict[str, Any]:
        values = self.emb.labels[index].double().numpy()
        labels = [
            {"label": name, "value": None if math.isnan(v) else float(v), "state": _truth_label(float(v))}
            for name, v in zip(CHEXPERT_LABELS, values)
        ]
        out = {"study_id": self.emb.study_ids[index], "report": self.emb.texts[index], "labels": labels}
        if self.findings is not None:
            out["findings"] = self.findings[index] or ""
        if self.impressions is not None:
            out["impression"] = self.impressions[index] or ""
        return out

    def text_query(self, text: Any, k: int | None = None) -> dict[str, Any]:
        """The top-``k`` images of the split for ``text`` (the model's similarity score) and the negated text."""
        if not isinstance(text, str) or not text.strip():
            raise QueryError("text: expected a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise QueryError(f"text: {len(text)} characters, more than the {MAX_TEXT_CHARS} accepted")
        k = self._k(k)
        with self.lock:
            query = self.model.text_embeddings([text.strip()])
            scores = self.model.similarity_scores(query, self.emb.image_embeddings)[0]
        top = torch.topk(scores, k)
        results = [
            {
                "rank": r + 1,
                "index": int(j),
                "study_id": self.emb.study_ids[int(j)],
                "score": float(s),
                "report": self.emb.texts[int(j)],
                "image_url": self.image_url(int(j), size=160) if self.images is not None else None,
            }
            for r, (s, j) in enumerate(zip(top.values.tolist(), top.indices.tolist()))
        ]
        return {"text": text.strip(), "negated": negated(text), "results": results}

    def explain(self, index: int | None = None, upload: str | None = None, target: Any = None) -> dict[str, Any]:
        """Grad-CAM overlay (PNG data URI) of an image towards a label's positive prompts or a free-text prompt."""
        if not isinstance(target, str) or not target.strip():
            raise QueryError("target: expected a label or a non-empty prompt")
        if len(target) > MAX_TEXT_CHARS:
            raise QueryError(f"target: {len(target)} characters, more than the {MAX_TEXT_CHARS} accepted")
        if (index is None) == (upload is None):
            raise QueryError("give exactly one of index (a study of the split) or upload (an uploaded image id)")
        image = self.split_image(self._check_index(index)) if index is not None else self.upload_image(upload)
        explain = getattr(self.model, "explain", None)
        if explain is None:
            raise UnsupportedByModel(f"{self.model.name}: Grad-CAM is not available for this model")
        with self.lock:
            cam = explain(image, target.strip())
        heat = cam.heatmap
        return {
            "target": cam.target,
            "overlay": data_uri(png_bytes(np.asarray(cam.overlay))),
            "heat_max": float(heat.max()),
            "heat_mean": float(heat.mean()),
            "size": list(heat.shape),
        }
