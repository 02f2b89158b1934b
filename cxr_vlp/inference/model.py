"""``CXRModel``: a trained cxr_vlp model as one object, from a training ``.ckpt``, an exported folder or a hub id.

Images go through the run's own evaluation pipeline (:func:`cxr_vlp.data.transforms.build_transforms` with the
run's saved ``data.transforms``; inputs decoded as training decodes them, :mod:`cxr_vlp.inference.images`), texts
through the checkpoint's tokenizer at the run's ``data.max_length``. Every method runs under ``torch.no_grad``
(Grad-CAM aside), in batches, on ``device``; ``dtype=torch.bfloat16`` runs the towers under a bf16 autocast, as
``python -m cxr_vlp.eval`` does at ``precision=bf16-mixed``. Outputs are float32 CPU tensors / DataFrames.

The generic calls (embed, score, zero-shot, gallery, retrieve) come from
:class:`~cxr_vlp.inference.base.ImageTextModel`, the interface the evaluation suite scores; contrastive heads
(CLIP, MCSL, ProbCLIP, CLEAR) provide them and Grad-CAM (:meth:`CXRModel.explain`); ProbCLIP adds
:meth:`CXRModel.uncertainty`, CLEAR :meth:`CXRModel.concepts`; report generation checkpoints
:meth:`CXRModel.generate_report`. Other calls raise :class:`UnsupportedByModel` naming the head.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from cxr_vlp.data.transforms import TransformConfig, build_transforms
from cxr_vlp.inference.base import ImageEncoding, ImageTextModel, UnsupportedByModel, are_texts, as_texts
from cxr_vlp.inference.images import ImageInput, as_image_list
from cxr_vlp.inference.payload import Payload, build_module, payload_from_checkpoint, payload_from_module
from cxr_vlp.models.outputs import Embeddings

__all__ = ["CXRModel", "Explanation", "GeneratedReport", "UnsupportedByModel"]


@dataclass
class Explanation:
    """Grad-CAM of one image towards a label's prompt ensemble or a free-text prompt.

    ``heatmap``: ``[H, W]`` float32 in [0, 1] at the model's input size; ``image``: the model input (after the
    evaluation transforms) as float32 gray in [0, 1]; ``overlay``: the heat map over the image (PIL RGB)."""

    target: str
    heatmap: np.ndarray
    image: np.ndarray
    overlay: Any


@dataclass
class GeneratedReport:
    """A generated report and the concept prompt that conditioned it (None when prompts were disabled)."""

    prompt: str | None
    report: str


def _cpu(emb: Embeddings) -> Embeddings:
    return Embeddings(emb.mean.float().cpu(), None if emb.logvar is None else emb.logvar.float().cpu())


class CXRModel(ImageTextModel):
    """A trained model for inference (see the module docstring). Build it with :meth:`from_checkpoint`,
    :meth:`from_pretrained` or, for a module in memory (the weights a training run just tested),
    :meth:`from_module`. ``tokenizer``: the texts' tokenizer when it is not the module's own (a module in memory
    after a fit tokenises through its data module's)."""

    def __init__(
        self,
        payload: Payload,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
        module: torch.nn.Module | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        self.payload = payload
        self.module = (module if module is not None else build_module(payload)).to(self.device).eval()
        run_tokenizer = getattr(self.module, "run_tokenizer", None)
        if tokenizer is None:
            tokenizer = run_tokenizer() if callable(run_tokenizer) else self.module.tokenizer
        self.tokenizer = tokenizer
        self.transform_config = TransformConfig(**dict(payload.preprocessing.get("transforms") or {}))
        self.transform = build_transforms(self.transform_config, train=False)
        self.max_length = int(payload.preprocessing.get("max_length", 128))

    # ------------------------------------------------------------------ construction and sharing
    @classmethod
    def from_checkpoint(cls, ckpt_path: str | Path, **kwargs: Any) -> CXRModel:
        """From a training checkpoint (``<run>/checkpoints/*.ckpt``); the run's ``metrics.json`` and ``split.json``
        are picked up when they sit in the run folder."""
        return cls(payload_from_checkpoint(ckpt_path), **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> CXRModel:
        """From an exported folder or a Hugging Face hub id (the local cache first; ``HF_HUB_OFFLINE=1`` and an id
        that is not cached raise :class:`~cxr_vlp.utils.hub.ModelNotAvailableError`)."""
        from cxr_vlp.inference.hub_io import load_folder
        from cxr_vlp.utils.hub import resolve_hf_model

        path = Path(name_or_path).expanduser()
        folder = path if path.is_dir() else Path(resolve_hf_model(str(name_or_path)))
        return cls(load_folder(folder), **kwargs)

    @classmethod
    def from_module(cls, module: torch.nn.Module, data: dict[str, Any], **kwargs: Any) -> CXRModel:
        """Around a LightningModule in memory (no copy of its weights), with the run's data config ``data``."""
        return cls(payload_from_module(module, data), module=module, **kwargs)

    def save_pretrained(self, out_dir: str | Path, repo_id: str | None = None) -> Path:
        """Write the exported folder (``config.json``, ``model.safetensors``, tokenizer, ``README.md`` card)."""
        from cxr_vlp.inference.card import model_card
        from cxr_vlp.inference.hub_io import save_folder

        return save_folder(self.payload, self.tokenizer, out_dir, str(model_card(self.payload, repo_id)))

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload cxr_vlp model",
    ) -> Any:
        """Export to a temporary folder and upload it to the hub repository ``repo_id`` (created if missing)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", repo_id=repo_id)
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
            )

    # ------------------------------------------------------------------ what the checkpoint is
    @property
    def kind(self) -> str:
        return self.payload.kind

    @property
    def head_name(self) -> str:
        """The loss head's class name (``ClipHead``, ``ProbClipHead``, ...), ``ReportGenModule`` for report models."""
        head = getattr(self.module, "loss_head", None)
        return type(head).__name__ if head is not None else type(self.module).__name__

    @property
    def name(self) -> str:
        return f"{self.payload.training_data.get('name', 'model')}/{self.head_name}"

    @cached_property
    def fingerprint(self) -> str:
        """blake2b of the weights (bytes of every tensor, in key order) and the preprocessing: a ``.ckpt`` and its
        exported folder share it."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps(self.payload.preprocessing, sort_keys=True, default=str).encode())
        for key, value in sorted(self.module.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @property
    def probabilistic(self) -> bool:
        """Whether the loss head scores Gaussian embeddings (μ, log σ²), e.g. ProbCLIP-VIB."""
        head = getattr(self.module, "loss_head", None)
        return head is not None and head.spec.embedding == "gaussian"

    @property
    def concept_names(self) -> list[str]:
        head = getattr(self.module, "loss_head", None)
        return list(head.concept_names) if head is not None and head.spec.concepts else []

    @property
    def thresholds(self) -> pd.Series:
        """Validation-fitted zero-shot thresholds per label (empty when the run has none)."""
        return pd.Series(self.payload.thresholds, dtype="float64")

    def _require(self, method: str, ok: bool, needs: str) -> None:
        if not ok:
            raise UnsupportedByModel(
                f"CXRModel.{method} is not available for this {self.kind} checkpoint with loss "
                f"head {self.head_name}: it needs {needs}"
            )

    def _require_contrastive(self, method: str) -> None:
        self._require(method, self.kind == "contrastive", "a contrastive checkpoint (dual encoder)")

    # ------------------------------------------------------------------ the primitives
    @property
    def image_transform(self):
        return self.transform

    @cached_property
    def _head_inputs(self) -> dict[str, Tensor]:
        head = self.module.loss_head
        with torch.no_grad():
            return {k: v.float() for k, v in head.loss_inputs(self.module.encode_text_embedding).items()}

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor) -> ImageEncoding:
        self._require_contrastive("encode_pixels")
        head = self.module.loss_head
        inputs = self._head_inputs if head.spec.concepts else {}
        with self.autocast():
            out = self.module.encoder.encode_image(pixels.to(self.device))
            scores = head.eval_scores(out.embeddings, inputs)
        return ImageEncoding(
            embeddings=_cpu(out.embeddings),
            features=out.features.float().cpu(),
            concept_scores=None if scores is None else scores.float().cpu(),
        )

    def _tokens(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        tok = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)

    @torch.no_grad()
    def encode_text_embeddings(self, texts: Sequence[str]) -> Embeddings:
        self._require_contrastive("encode_text_embeddings")
        ids, mask = self._tokens(as_texts(texts))
        with self.autocast():
            return _cpu(self.module.encoder.encode_text(ids, mask).embeddings)

    def _pair(self, query: Embeddings, gallery: Embeddings) -> tuple[Embeddings, Embeddings]:
        self._require_contrastive("similarity")
        if self.probabilistic and (query.logvar is None or gallery.logvar is None):
            raise ValueError(
                f"{self.head_name} scores Gaussian embeddings: the gallery needs its logvar (embed it "
                "with this model's CXRModel.gallery)"
            )
        return query.to(self.device), gallery.to(self.device)

    @torch.no_grad()
    def similarity_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """The loss head's similarity ``[Nq, Ng]`` (e.g. scale · cosine, or the match logit of Gaussian heads)."""
        return self.module.loss_head.similarity(*self._pair(query, gallery)).float().cpu()

    @torch.no_grad()
    def ranking_scores(self, query: Embeddings, gallery: Embeddings) -> Tensor:
        """The loss head's ranking scores (e.g. the unscaled cosine of CLIP heads: no rounding-made ties)."""
        return self.module.loss_head.ranking_scores(*self._pair(query, gallery)).float().cpu()

    @property
    def zero_shot_scale(self) -> float:
        self._require_contrastive("zero_shot")
        return float(self.module.loss_head.similarity_scale().detach())

    @property
    def explainable(self) -> bool:
        return self.kind == "contrastive"

    def gradcam_maps(self, pixels: Tensor, text_embedding: Tensor) -> np.ndarray:
        from cxr_vlp.eval.gradcam import gradcam_maps

        self._require_contrastive("explain")
        return gradcam_maps(self.module.encoder, pixels.to(self.device), text_embedding.to(self.device))

    # ------------------------------------------------------------------ explanations and head extras
    def explain(self, image: ImageInput, label_or_prompt: str) -> Explanation:
        """Grad-CAM (:func:`cxr_vlp.eval.gradcam.gradcam_maps`) of cos(image embedding, text embedding), the text
        being a label's positive prompt ensemble (a label with default prompts) or the given prompt itself."""
        from PIL import Image
        from pytorch_grad_cam.utils.image import show_cam_on_image

        from cxr_vlp.eval.zeroshot import DEFAULT_PROMPTS, class_text_embeddings

        self._require_contrastive("explain")
        if label_or_prompt in DEFAULT_PROMPTS:
            text_emb = class_text_embeddings(self.encode_texts, DEFAULT_PROMPTS[label_or_prompt]["positive"])
        else:
            text_emb = self.encode_texts([label_or_prompt])[0]
        x = self.preprocess([image])
        heatmap = self.gradcam_maps(x, text_emb)[0]
        cfg = self.transform_config
        gray = np.clip(x[0, 0].numpy() * cfg.std + cfg.mean, 0.0, 1.0).astype(np.float32)
        overlay = show_cam_on_image(np.repeat(gray[:, :, None], 3, axis=2), heatmap, use_rgb=True)
        return Explanation(target=label_or_prompt, heatmap=heatmap, image=gray, overlay=Image.fromarray(overlay))

    def concepts(self, image: ImageInput, top: int = 10) -> pd.DataFrame:
        """The ``top`` concepts of one image by concept score f·cᵀ (concept heads such as CLEAR)."""
        self._require_contrastive("concepts")
        self._require("concepts", bool(self.concept_names), "a concept head (e.g. loss=clear)")
        scores = self.encode_pixels(self.preprocess([image])).concept_scores[0]
        names = self.concept_names
        order = torch.argsort(scores, descending=True)[: max(1, int(top))]
        return pd.DataFrame({"concept": [names[int(i)] for i in order], "score": scores[order].double().numpy()})

    def uncertainty(self, inputs: ImageInput | Sequence[ImageInput] | str | Sequence[str]) -> Tensor:
        """Per-sample uncertainty Σσ² ``[N]`` of images or texts (probabilistic heads such as ProbCLIP-VIB)."""
        from cxr_vlp.losses.probabilistic import uncertainty

        self._require_contrastive("uncertainty")
        self._require("uncertainty", self.probabilistic, "a probabilistic head (e.g. loss=probclip_vib)")
        if are_texts([inputs] if isinstance(inputs, str) else inputs):
            logvar = self.text_embeddings(as_texts(inputs)).logvar
        else:
            logvar = self.image_embeddings(as_image_list(inputs)).logvar
        return uncertainty(logvar).float()

    @torch.no_grad()
    def generate_report(
        self, images: ImageInput | Sequence[ImageInput], num_beams: int | None = None, max_new_tokens: int | None = None
    ) -> list[GeneratedReport]:
        """Reports for one or more images (report-generation checkpoints), with the prompts that conditioned them."""
        self._require(
            "generate_report", self.kind == "reportgen", "a report-generation checkpoint (+experiment=reportgen_*)"
        )
        if max_new_tokens is not None:
            self.module.gen_cfg["max_new_tokens"] = int(max_new_tokens)
        out: list[GeneratedReport] = []
        for batch in self.image_batches(as_image_list(images)):
            prompts, texts = self.module.generate(batch, num_beams=num_beams)
            out += [GeneratedReport(prompts[i] if prompts else None, texts[i]) for i in range(len(texts))]
        return out
