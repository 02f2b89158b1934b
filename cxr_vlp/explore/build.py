"""An :class:`~cxr_vlp.explore.session.ExploreSession` from a model spec and a data config: :func:`load_session`.

The model is what :func:`cxr_vlp.inference.adapters.load_model` reads (a training ``.ckpt`` or an exported folder).
The data module is built from the checkpoint's saved data config (or the one given), as ``python -m cxr_vlp.eval``
builds it, and the split is embedded once through the evaluation suite's cache
(:func:`cxr_vlp.eval.embed.cached_embeddings`), so a second start on the same model and data reads the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_vlp.eval.embed import SplitEmbeddings, cached_embeddings
from cxr_vlp.explore.session import ExploreSession, QueryError
from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.text.labels import CHEXPERT_LABELS

log = logging.getLogger(__name__)

__all__ = ["SplitImages", "build_datamodule", "load_session", "model_data_config"]


class _Raw:
    """An albumentations-style transform that keeps the decoded ``uint8 [H, W]`` image (as a tensor)."""

    def __call__(self, image: np.ndarray, **_: Any) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(np.ascontiguousarray(image))}


class SplitImages:
    """Study ``i``'s evaluation image (the first frontal view, decoded as training decodes it) for the rows of
    ``embeddings``, read through the data module's evaluation dataset (image files or shards)."""

    def __init__(self, datamodule, split: str, study_ids: list[str]) -> None:
        self.dataset = datamodule.eval_dataset(split, _Raw())
        table = datamodule.tables[split]
        rows = {sid: r for r, sid in enumerate(table.study_ids)}
        missing = [sid for sid in study_ids if sid not in rows]
        if missing:
            raise ValueError(f"the {split} split's table has no study {missing[0]!r} of the embeddings")
        self.rows = [rows[sid] for sid in study_ids]
        self.study_ids = study_ids

    def __call__(self, index: int) -> np.ndarray:
        sample = self.dataset[self.rows[index]]
        if sample.study_id != self.study_ids[index]:
            raise QueryError(f"study {self.study_ids[index]}: no readable image")
        return sample.images[0].numpy()


def model_data_config(model: ImageTextModel, data: Mapping[str, Any] | None, spec: str) -> dict[str, Any]:
    """The data config to explore: ``data`` when given, else the one the checkpoint saved (exported folders carry
    no data paths, so they need ``data=...``)."""
    if data is not None:
        return dict(data)
    payload = getattr(model, "payload", None)
    saved = None if payload is None else (payload.record.data or payload.hparams.get("data"))
    if not saved or _scrubbed(saved):
        raise ValueError(
            f"{spec} carries no data paths (an exported folder keeps none): give the data to explore, "
            "e.g. data=csv data.root=/data/mine or data=mimic_cxr data.root=/data/mimic-cxr-jpg/2.1.0"
        )
    return dict(saved)


def _scrubbed(node: Any) -> bool:
    """Whether a config tree holds the ``<path>`` placeholder an export writes instead of a path."""
    if isinstance(node, Mapping):
        return any(_scrubbed(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_scrubbed(v) for v in node)
    return node == "<path>"


def build_datamodule(model: ImageTextModel, data_cfg: Mapping[str, Any]):
    """The data module of ``data_cfg`` with the model's tokenizer, prepared and set up."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    datamodule = instantiate(OmegaConf.create(dict(data_cfg)), tokenizer=None)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        datamodule.use_tokenizer(tokenizer)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


def _ordered(values: list, table_ids: list[str], study_ids: list[str]) -> list:
    rows = {sid: r for r, sid in enumerate(table_ids)}
    return [values[rows[sid]] for sid in study_ids]


def load_session(
    spec: str | Path,
    data: Mapping[str, Any] | None = None,
    split: str = "test",
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    k: int = 10,
    bottleneck_split: str | None = "val",
    bottleneck_l2: float = 1e-2,
    top_concepts: int = 8,
    limit: int | None = None,
    log_dir: str | Path = "logs",
) -> ExploreSession:
    """Load the model ``spec``, embed ``split`` of its data (cached) and return the session.

    ``cache_dir``: where the split embeddings are kept (default ``<log_dir>/explore/cache/<model fingerprint>``);
    ``bottleneck_split``: the split whose concept scores and labels fit the concept bottleneck of concept heads
    (``None``: no contributions); ``limit``: the first ``limit`` studies only."""
    from cxr_vlp.eval.concept_audit import fit_concept_bottleneck
    from cxr_vlp.inference.adapters import load_model

    model = load_model(spec, device=device)
    data_cfg = model_data_config(model, data, str(spec))
    datamodule = build_datamodule(model, data_cfg)
    if split not in datamodule.tables or len(datamodule.tables[split]) == 0:
        raise ValueError(
            f"split={split}: the {split!r} split of {data_cfg.get('name', 'the data')} is empty; "
            "choose split=train, val or test"
        )
    cache = Path(cache_dir) if cache_dir is not None else Path(log_dir) / "explore" / "cache" / model.fingerprint[:16]
    emb: SplitEmbeddings = cached_embeddings(model, datamodule, split, cache, data_cfg, limit=limit)
    bottleneck = None
    if model.concept_names and bottleneck_split:
        ref = (
            emb
            if bottleneck_split == split
            else cached_embeddings(model, datamodule, bottleneck_split, cache, data_cfg, limit=limit)
        )
        bottleneck = fit_concept_bottleneck(
            ref.concept_scores.double().numpy(),
            ref.labels.double().numpy(),
            None,
            None,
            CHEXPERT_LABELS,
            model.concept_names,
            l2=float(bottleneck_l2),
        )
    table = datamodule.tables[split]
    images = SplitImages(datamodule, split, emb.study_ids)
    credentialed = bool(data_cfg.get("credentialed", False))
    return ExploreSession(
        model,
        emb,
        images,
        k=k,
        findings=_ordered(table.findings, table.study_ids, emb.study_ids),
        impressions=_ordered(table.impression, table.study_ids, emb.study_ids),
        bottleneck=bottleneck,
        top_concepts=top_concepts,
        credentialed=credentialed,
        data_name=str(data_cfg.get("name", "dataset")),
    )
