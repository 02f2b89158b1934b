"""Embed a split once: image / text embeddings, backbone features, labels, uncertainty and concept scores.

Evaluation tasks all start from :class:`SplitEmbeddings`; :func:`cached_embeddings` keeps them in the output
directory (``embeddings/<split>.pt``, keyed by a fingerprint of the checkpoint and the data) so a second
``python -m cxr_vlp.eval`` on the same checkpoint does not embed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.losses.probabilistic import uncertainty
from cxr_vlp.models.outputs import Embeddings

log = logging.getLogger(__name__)

__all__ = ["SplitEmbeddings", "embed_split", "cached_embeddings", "fingerprint"]


@dataclass
class SplitEmbeddings:
    """Everything the evaluation tasks need about one split, one row per study (the split table's order).

    ``image`` / ``text``: L2-normalised ``[N, D]`` (μ for probabilistic models); ``features``: the image
    backbone's pooled features ``[N, F]`` (frozen-encoder probes); ``labels``: ``[N, 14]``, NaN = unknown;
    ``image_uncertainty`` / ``text_uncertainty``: Σσ² per study (probabilistic models);
    ``concept_scores``: image concept scores ``[N, K]`` (concept heads).
    """

    split: str
    image: Tensor
    text: Tensor
    features: Tensor
    labels: Tensor
    study_ids: list[str]
    texts: list[str]
    image_logvar: Tensor | None = None
    text_logvar: Tensor | None = None
    concept_scores: Tensor | None = None

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def image_embeddings(self) -> Embeddings:
        """The image side as the loss head scores it (μ and log σ² when probabilistic)."""
        return Embeddings(self.image, self.image_logvar)

    @property
    def text_embeddings(self) -> Embeddings:
        return Embeddings(self.text, self.text_logvar)

    @property
    def image_uncertainty(self) -> Tensor | None:
        return None if self.image_logvar is None else uncertainty(self.image_logvar)

    @property
    def text_uncertainty(self) -> Tensor | None:
        return None if self.text_logvar is None else uncertainty(self.text_logvar)

    def save(self, path: str | Path, key: str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"fingerprint": key, **asdict(self)}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, key: str | None = None) -> SplitEmbeddings | None:
        """The saved embeddings, or None when the file is missing or was made for another fingerprint."""
        path = Path(path)
        if not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        if key is not None and data.get("fingerprint") != key:
            log.info("%s was embedded from another checkpoint / data config: embedding again", path)
            return None
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def fingerprint(model_key: str, data_cfg: dict[str, Any], split: str, limit: int | None) -> str:
    """A key for the embedding cache: the model's :attr:`~cxr_vlp.inference.base.ImageTextModel.fingerprint`, the
    data config and the split."""
    blob = json.dumps(
        {"model": model_key, "data": data_cfg, "split": split, "limit": limit}, sort_keys=True, default=str
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def embed_split(model: ImageTextModel, datamodule, split: str, limit: int | None = None) -> SplitEmbeddings:
    """Embed ``split`` with ``model`` (any :class:`~cxr_vlp.inference.base.ImageTextModel`): its own image
    preprocessing on one frontal image per study, its own tokenizer on the evaluation text view.

    ``limit`` keeps the first ``limit`` studies (e.g. a cap on the training split for probes). ``concept_scores``
    are the model's per-study concept scores (concept heads)."""
    loader = datamodule.eval_loader(datamodule.eval_dataset(split, model.image_transform))
    out: dict[str, list] = {
        k: []
        for k in (
            "image",
            "text",
            "features",
            "labels",
            "image_logvar",
            "text_logvar",
            "concept_scores",
            "study_ids",
            "texts",
        )
    }
    seen = 0
    for batch in loader:
        if limit is not None and seen >= limit:
            break
        image = model.encode_pixels(batch.images[:, 0])
        texts = [t[0] for t in batch.texts]
        text = model.encode_text_embeddings(texts)
        for key, value in (
            ("image", image.embeddings.mean),
            ("text", text.mean),
            ("features", image.features),
            ("labels", batch.labels),
            ("image_logvar", image.embeddings.logvar),
            ("text_logvar", text.logvar),
            ("concept_scores", image.concept_scores),
        ):
            if value is not None:
                out[key].append(value.float().cpu())
        out["study_ids"].extend(batch.study_ids)
        out["texts"].extend(texts)
        seen += len(batch)
    n = min(seen, limit) if limit is not None else seen

    def cat(key: str) -> Tensor | None:
        return torch.cat(out[key])[:n] if out[key] else None

    return SplitEmbeddings(
        split=split,
        image=cat("image"),
        text=cat("text"),
        features=cat("features"),
        labels=cat("labels"),
        study_ids=out["study_ids"][:n],
        texts=out["texts"][:n],
        image_logvar=cat("image_logvar"),
        text_logvar=cat("text_logvar"),
        concept_scores=cat("concept_scores"),
    )


def cached_embeddings(
    model: ImageTextModel,
    datamodule,
    split: str,
    cache_dir: str | Path,
    data_cfg: dict[str, Any] | None = None,
    limit: int | None = None,
) -> SplitEmbeddings:
    """:func:`embed_split` through a file cache ``cache_dir/<split>.pt`` keyed by :func:`fingerprint` of the model,
    ``data_cfg`` (the data config the split came from), the split and ``limit``."""
    key = fingerprint(model.fingerprint, data_cfg or {}, split, limit)
    path = Path(cache_dir) / f"{split}.pt"
    cached = SplitEmbeddings.load(path, key)
    if cached is not None:
        log.info("embeddings of %s read from %s", split, path)
        return cached
    emb = embed_split(model, datamodule, split, limit=limit)
    emb.save(path, key)
    log.info("embedded %d %s studies -> %s", len(emb), split, path)
    return emb
