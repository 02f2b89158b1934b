"""What every image–text model looks like from outside: :class:`ImageTextModel`.

The evaluation suite, the benchmark harness and the explorer work on this interface only, so our own checkpoints
(:class:`~cxr_vlp.inference.model.CXRModel`) and other people's models (adapters under
:mod:`cxr_vlp.inference.adapters`) are scored by the same code. A subclass provides five primitives:

- :attr:`image_transform`: the model's own preprocessing, albumentations-style: ``transform(image=<uint8 [H, W]
  gray>)["image"]`` → a ``[C, S, S]`` float tensor (what the data loaders call per image);
- :meth:`encode_pixels`: one batch of preprocessed images → :class:`ImageEncoding` (embeddings, pooled backbone
  features for probes, concept scores for concept heads);
- :meth:`encode_text_embeddings`: one batch of texts → :class:`~cxr_vlp.models.outputs.Embeddings`;
- :meth:`ranking_scores` / :meth:`similarity_scores`: the order retrieval metrics use and the scores shown to a
  user (the loss head's similarity for our heads, the scaled cosine for CLIP-style models);
- :attr:`zero_shot_scale`: the multiplier of cosines in the two-way prompt softmax.

On top of them this class implements the user-facing calls: :meth:`encode_images`, :meth:`encode_texts`,
:meth:`similarity`, :meth:`zero_shot`, :meth:`gallery` and :meth:`retrieve`. Inputs are batched by
``batch_size``, run under ``torch.no_grad`` on ``device``; outputs are float32 CPU tensors / DataFrames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from cxr_vlp.inference.gallery import Gallery
from cxr_vlp.inference.images import ImageInput, as_image_list, image_name, to_uint8_gray
from cxr_vlp.models.outputs import Embeddings
from cxr_vlp.text.labels import CHEXPERT_LABELS

__all__ = ["ImageEncoding", "ImageTextModel", "UnsupportedByModel", "resolve_device", "resolve_dtype"]


class UnsupportedByModel(NotImplementedError):
    """A method the model does not provide (e.g. ``concepts`` on a CLIP head, Grad-CAM on an adapter)."""


@dataclass
class ImageEncoding:
    """One batch of images as the evaluation suite keeps it (float32, CPU).

    ``embeddings``: L2-normalised means ``[B, D]`` and, for probabilistic models, log σ²; ``features``: pooled
    backbone features ``[B, F]`` (frozen-encoder probes; the embeddings when a model exposes none);
    ``concept_scores``: ``[B, K]`` for concept heads, else None."""

    embeddings: Embeddings
    features: Tensor
    concept_scores: Tensor | None = None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; any other name as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """float32 (default) or bfloat16 (towers under a bf16 autocast), from a dtype or its usual names."""
    names = {
        None: torch.float32,
        "float32": torch.float32,
        "fp32": torch.float32,
        "32": torch.float32,
        "32-true": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "bf16-mixed": torch.bfloat16,
    }
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        return dtype
    if dtype not in names:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    return names[dtype]


def _names_a_file(text: str) -> bool:
    """Whether ``text`` is the path of an existing file (a report longer than a file name is not: no OSError)."""
    try:
        return len(text) < 4096 and Path(text).is_file()
    except (OSError, ValueError):
        return False


def are_texts(items: object) -> bool:
    """Whether ``items`` are texts: a sequence of strings none of which names an existing file (those are images)."""
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        return False
    return all(isinstance(x, str) and not _names_a_file(x) for x in items)


def as_texts(texts: str | Sequence[str]) -> list[str]:
    """A non-empty list of strings (one string is a list of one); ``TypeError`` naming the first non-string."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise ValueError("no texts given")
    bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is a {type(items[bad[0]]).__name__}, not a string")
    return items


class ImageTextModel(ABC):
    """A dual image–text encoder for inference and evaluation (see the module docstring)."""

    def __init__(
        self, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None, batch_size: int = 32
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ what a subclass provides
    @property
    @abstractmethod
    def name(self) -> str:
        """A short display name (tables, figure legends)."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identity of the weights and preprocessing, for embedding caches (changes when either changes)."""

    @property
    @abstractmethod
    def image_transform(self) -> Callable[..., dict[str, Tensor]]:
        """``transform(image=<uint8 [H, W]>)["image"]`` → the model input ``[C, S, S]`` (see the module docstring)."""

    @abstractmethod
    def encode_pixels(self, pixels: Tensor) -> ImageEncoding:
        """One batch of preprocessed images ``[B, C, S, S]`` (any device) → :class:`ImageEncoding`."""

    @abstractmethod
    def encode_text_embeddings(self, texts: Sequence[str]) -> Embeddings:
        """One batch of texts → L2-normalised embeddings (float32, CPU; log σ² when probabilistic)."""

    @abstractmethod
    def similarity_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """``[Nq, Ng]`` scores shown to a user (float32, CPU)."""

    def ranking_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """``[Nq, Ng]`` scores whose order the retrieval metrics use (ties = exact equality); default: the
        :meth:`similarity_scores`."""
        return self.similarity_scores(query, gallery)

    @property
    @abstractmethod
    def zero_shot_scale(self) -> float:
        """Multiplier of cosines in the two-way prompt softmax of zero-shot classification."""

    @property
    def probabilistic(self) -> bool:
        """Whether embeddings are Gaussians (μ, log σ²) scored as such (ProbCLIP-style heads)."""
        return False

    @property
    def concept_names(self) -> list[str]:
        """The concept bank of a concept head (empty otherwise)."""
        return []

    @property
    def thresholds(self) -> pd.Series:
        """Validation-fitted zero-shot thresholds per label (empty when the model has none)."""
        return pd.Series(dtype="float64")

    @property
    def explainable(self) -> bool:
        """Whether :meth:`gradcam_maps` is available."""
        return False

    def gradcam_maps(self, pixels: Tensor, text_embedding: Tensor) -> np.ndarray:
        """Grad-CAM heat maps ``[B, S, S]`` in [0, 1] of cos(image, ``text_embedding``) for preprocessed images."""
        raise UnsupportedByModel(f"{self.name}: Grad-CAM is not available for this model")

    # ------------------------------------------------------------------ batching
    def autocast(self):
        """The bf16 autocast of ``dtype=bfloat16`` (a no-op context at float32)."""
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """Model inputs ``[B, C, S, S]`` (CPU): decoded as training decodes images, then :attr:`image_transform`."""
        items = as_image_list(images)
        return torch.stack(
            [self.image_transform(image=to_uint8_gray(img, f"images[{i}]"))["image"] for i, img in enumerate(items)]
        )

    def image_batches(self, images: list[ImageInput]) -> Iterator[Tensor]:
        """Preprocessed batches of at most ``batch_size`` images, on ``device``."""
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            yield torch.stack(
                [
                    self.image_transform(image=to_uint8_gray(img, f"images[{start + i}]"))["image"]
                    for i, img in enumerate(chunk)
                ]
            ).to(self.device)

    def image_embeddings(self, images: list[ImageInput]) -> Embeddings:
        """Embeddings of decoded / file images, batched."""
        return Embeddings.cat([self.encode_pixels(batch).embeddings for batch in self.image_batches(images)])

    def text_embeddings(self, texts: list[str]) -> Embeddings:
        """Embeddings of texts, batched."""
        return Embeddings.cat(
            [self.encode_text_embeddings(texts[s : s + self.batch_size]) for s in range(0, len(texts), self.batch_size)]
        )

    # ------------------------------------------------------------------ user-facing calls
    def encode_images(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """L2-normalised image embeddings ``[N, D]`` (μ for probabilistic models)."""
        return self.image_embeddings(as_image_list(images)).mean

    def encode_texts(self, texts: str | Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``[N, D]`` (μ for probabilistic models)."""
        return self.text_embeddings(as_texts(texts)).mean

    def similarity(self, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str]) -> Tensor:
        """``[N_images, N_texts]`` :meth:`similarity_scores`."""
        return self.similarity_scores(
            self.image_embeddings(as_image_list(images)), self.text_embeddings(as_texts(texts))
        )

    def zero_shot(
        self,
        images: ImageInput | Sequence[ImageInput],
        labels: Sequence[str] | None = None,
        prompts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    ) -> pd.DataFrame:
        """Per-label probabilities ``[N images, labels]`` from positive / negative prompt pairs (the evaluation
        suite's :func:`~cxr_vlp.eval.zeroshot.zeroshot_classify`; default prompts, per-label overrides or new
        labels via ``prompts={label: {"positive": [...], "negative": [...]}}``).

        ``df.attrs["thresholds"]`` holds the model's validation-fitted thresholds of these labels when present
        (``df >= pd.Series(df.attrs["thresholds"])`` gives the decisions)."""
        from cxr_vlp.eval.zeroshot import PromptSet, zeroshot_classify

        names = list(CHEXPERT_LABELS if labels is None else ([labels] if isinstance(labels, str) else labels))
        prompt_set = PromptSet.with_overrides(names, prompts)
        items = as_image_list(images)
        emb = self.image_embeddings(items).mean
        probs = zeroshot_classify(self.encode_texts, emb, names, prompt_set, self.zero_shot_scale)
        frame = pd.DataFrame(
            probs.numpy().astype(np.float64), columns=names, index=[image_name(img, i) for i, img in enumerate(items)]
        )
        thresholds = self.thresholds
        frame.attrs["thresholds"] = {n: float(thresholds[n]) for n in names if n in thresholds.index}
        return frame

    def gallery(self, items: Sequence[ImageInput] | Sequence[str], ids: Sequence[str] | None = None) -> Gallery:
        """Embed a gallery once (texts if every item is a string, else images); save it with ``Gallery.save``."""
        if isinstance(items, str):
            items = [items]
        items = list(items)
        if not items:
            raise ValueError("an empty gallery")
        if are_texts(items):
            emb = self.text_embeddings(items)
            modality, names = "text", list(items)
        else:
            emb = self.image_embeddings(items)
            modality = "image"
            names = [str(x) if isinstance(x, (str, Path)) else image_name(x, i) for i, x in enumerate(items)]
        if ids is not None:
            names = [str(i) for i in ids]
        return Gallery(modality=modality, ids=names, embeddings=emb.mean, logvar=emb.logvar)

    def retrieve(
        self,
        queries: str | Sequence[str] | ImageInput | Sequence[ImageInput],
        gallery: Gallery | Sequence[ImageInput] | Sequence[str],
        k: int = 5,
    ) -> pd.DataFrame:
        """The top ``k`` gallery items per query: text queries against an image gallery, image queries against a
        text gallery. Rows ``query, rank (1 = best), item, score`` (:meth:`similarity_scores`)."""
        if not isinstance(gallery, Gallery):
            gallery = self.gallery(gallery)
        if gallery.modality == "image":
            texts = as_texts(queries)
            q, names = self.text_embeddings(texts), texts
        else:
            items = as_image_list(queries)
            q = self.image_embeddings(items)
            names = [image_name(x, i) for i, x in enumerate(items)]
        if self.probabilistic and gallery.logvar is None:
            raise ValueError(
                f"{self.name} scores Gaussian embeddings: the gallery needs its logvar (embed it with "
                "this model's gallery())"
            )
        scores = self.similarity_scores(q, Embeddings(gallery.embeddings, gallery.logvar))
        k = min(int(k), len(gallery))
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        top = torch.topk(scores, k, dim=1)
        rows = [
            {
                "query": names[i],
                "rank": r + 1,
                "item": gallery.ids[int(top.indices[i, r])],
                "score": float(top.values[i, r]),
            }
            for i in range(len(names))
            for r in range(k)
        ]
        return pd.DataFrame(rows, columns=["query", "rank", "item", "score"])

    def describe(self) -> dict[str, Any]:
        """Name, fingerprint and capabilities (for reports and logs)."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "probabilistic": self.probabilistic,
            "concepts": len(self.concept_names),
        }
