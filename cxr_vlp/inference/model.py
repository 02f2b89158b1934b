"""``CXRModel``: a trained cxr_vlp model as one object, from a training ``.ckpt``, an exported folder or a hub id.

Images go through the run's own evaluation pipeline (:func:`cxr_vlp.data.transforms.build_transforms` with the
run's saved ``data.transforms``; inputs decoded as training decodes them, :mod:`cxr_vlp.inference.images`), texts
through the checkpoint's tokenizer at the run's ``data.max_length``. Every method runs under ``torch.no_grad``
(Grad-CAM aside), in batches, on ``device``; ``dtype=torch.bfloat16`` runs the towers under a bf16 autocast, as
``python -m cxr_vlp.eval`` does at ``precision=bf16-mixed``. Outputs are float32 CPU tensors / DataFrames.

What each checkpoint supports: contrastive heads (CLIP, MCSL, ProbCLIP, CLEAR) embed, score, classify zero-shot,
retrieve and explain; ProbCLIP adds :meth:`CXRModel.uncertainty`, CLEAR :meth:`CXRModel.concepts`; report
generation checkpoints :meth:`CXRModel.generate_report`. Other calls raise :class:`UnsupportedByModel` naming the head.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.data.transforms import TransformConfig, build_transforms
from cxr_vlp.inference.gallery import Gallery
from cxr_vlp.inference.images import ImageInput, as_image_list, image_name, to_uint8_gray
from cxr_vlp.inference.payload import Payload, build_module, payload_from_checkpoint
from cxr_vlp.models.outputs import Embeddings

__all__ = ["CXRModel", "Explanation", "GeneratedReport", "UnsupportedByModel"]


class UnsupportedByModel(NotImplementedError):
    """A method the checkpoint's loss head / kind does not provide (e.g. ``concepts`` on a CLIP head)."""


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


def _are_texts(items: object) -> bool:
    """Whether ``items`` are texts: a sequence of strings none of which names an existing file (those are images)."""
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        return False
    return all(isinstance(x, str) and not (len(x) < 4096 and Path(x).is_file()) for x in items)


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    names = {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "32": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16}
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        return dtype
    if dtype not in names:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    return names[dtype]


class CXRModel:
    """A trained model for inference (see the module docstring). Build it with :meth:`from_checkpoint` or
    :meth:`from_pretrained`."""

    def __init__(self, payload: Payload, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                 batch_size: int = 32) -> None:
        self.payload = payload
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.batch_size = int(batch_size)
        self.module = build_module(payload).to(self.device).eval()
        self.tokenizer = self.module.tokenizer
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

    def save_pretrained(self, out_dir: str | Path, repo_id: str | None = None) -> Path:
        """Write the exported folder (``config.json``, ``model.safetensors``, tokenizer, ``README.md`` card)."""
        from cxr_vlp.inference.card import model_card
        from cxr_vlp.inference.hub_io import save_folder

        return save_folder(self.payload, self.tokenizer, out_dir, str(model_card(self.payload, repo_id)))

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload cxr_vlp model") -> Any:
        """Export to a temporary folder and upload it to the hub repository ``repo_id`` (created if missing)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", repo_id=repo_id)
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                     commit_message=commit_message)

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
    def probabilistic(self) -> bool:
        """Whether the loss head scores Gaussian embeddings (μ, log σ²), e.g. ProbCLIP-VIB."""
        head = getattr(self.module, "loss_head", None)
        return head is not None and head.spec.embedding == "gaussian"

    @property
    def thresholds(self) -> pd.Series:
        """Validation-fitted zero-shot thresholds per label (empty when the run has none)."""
        return pd.Series(self.payload.thresholds, dtype="float64")

    def _require(self, method: str, ok: bool, needs: str) -> None:
        if not ok:
            raise UnsupportedByModel(f"CXRModel.{method} is not available for this {self.kind} checkpoint with loss "
                                     f"head {self.head_name}: it needs {needs}")

    def _require_contrastive(self, method: str) -> None:
        self._require(method, self.kind == "contrastive", "a contrastive checkpoint (dual encoder)")

    # ------------------------------------------------------------------ inputs
    def _autocast(self):
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """Model inputs ``[B, 1, S, S]`` (CPU): decoded as in training, the run's evaluation transforms applied."""
        items = as_image_list(images)
        return torch.stack([self.transform(image=to_uint8_gray(img, f"images[{i}]"))["image"]
                            for i, img in enumerate(items)])

    def _image_batches(self, images: list[ImageInput]) -> Iterator[torch.Tensor]:
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            yield torch.stack([self.transform(image=to_uint8_gray(img, f"images[{start + i}]"))["image"]
                               for i, img in enumerate(chunk)]).to(self.device)

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_token_type_ids=False)
        return tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)

    @staticmethod
    def _texts(texts: str | Sequence[str]) -> list[str]:
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ValueError("no texts given")
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts[{bad[0]}] is a {type(items[bad[0]]).__name__}, not a string")
        return items

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def _image_gaussians(self, images: list[ImageInput]) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = []
        for batch in self._image_batches(images):
            with self._autocast():
                parts.append(self.module.encoder.encode_image(batch).embeddings)
        return self._cpu(parts)

    @torch.no_grad()
    def _text_gaussians(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = []
        for start in range(0, len(texts), self.batch_size):
            ids, mask = self._tokens(texts[start:start + self.batch_size])
            with self._autocast():
                parts.append(self.module.encoder.encode_text(ids, mask).embeddings)
        return self._cpu(parts)

    @staticmethod
    def _cpu(parts: list[Embeddings]) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = Embeddings.cat(parts)
        return emb.mean.float().cpu(), None if emb.logvar is None else emb.logvar.float().cpu()

    def encode_images(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """L2-normalised image embeddings ``[N, D]`` (μ for probabilistic heads)."""
        self._require_contrastive("encode_images")
        return self._image_gaussians(as_image_list(images))[0]

    def encode_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` (μ for probabilistic heads)."""
        self._require_contrastive("encode_texts")
        return self._text_gaussians(self._texts(texts))[0]

    @torch.no_grad()
    def _scores(self, query: torch.Tensor, query_logvar: torch.Tensor | None, gallery: torch.Tensor,
                gallery_logvar: torch.Tensor | None) -> torch.Tensor:
        """The loss head's similarity ``[Nq, Ng]`` (e.g. scale · cosine, or the match logit of Gaussian heads)."""
        if self.probabilistic and (query_logvar is None or gallery_logvar is None):
            raise ValueError(f"{self.head_name} scores Gaussian embeddings: the gallery needs its logvar (embed it "
                             "with this model's CXRModel.gallery)")
        q, g = Embeddings(query, query_logvar).to(self.device), Embeddings(gallery, gallery_logvar).to(self.device)
        return self.module.loss_head.similarity(q, g).float().cpu()

    def similarity(self, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str]) -> torch.Tensor:
        """``[N_images, N_texts]`` scores by the loss head's similarity (the ranking retrieval uses)."""
        self._require_contrastive("similarity")
        img, img_lv = self._image_gaussians(as_image_list(images))
        txt, txt_lv = self._text_gaussians(self._texts(texts))
        return self._scores(img, img_lv, txt, txt_lv)

    # ------------------------------------------------------------------ zero-shot
    def _prompt_set(self, labels: Sequence[str], prompts: Mapping[str, Mapping[str, Sequence[str]]] | None):
        from cxr_vlp.eval.zeroshot import DEFAULT_PROMPTS, PromptSet

        prompts = dict(prompts or {})
        known = {k: v for k, v in prompts.items() if k in DEFAULT_PROMPTS}
        prompt_set = PromptSet.from_config(known)
        for label, sides in prompts.items():
            if label in DEFAULT_PROMPTS:
                continue
            if not isinstance(sides, Mapping) or not sides.get("positive") or not sides.get("negative"):
                raise ValueError(f"prompts[{label!r}]: a label without default prompts needs "
                                 "{'positive': [...], 'negative': [...]}")
            extra = PromptSet.from_config(None)
            extra.positive, extra.negative = {label: list(sides["positive"])}, {label: list(sides["negative"])}
            prompt_set.positive[label], prompt_set.negative[label] = extra.positive[label], extra.negative[label]
        missing = [name for name in labels if name not in prompt_set.positive]
        if missing:
            raise ValueError(f"no prompts for label(s) {missing}: pass prompts={{label: {{'positive': [...], "
                             f"'negative': [...]}}}}; labels with default prompts: {list(DEFAULT_PROMPTS)}")
        return prompt_set

    def zero_shot(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str] | None = None,
                  prompts: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> pd.DataFrame:
        """Per-label probabilities ``[N images, labels]`` from positive / negative prompt pairs (the evaluation
        suite's :func:`~cxr_vlp.eval.zeroshot.zeroshot_classify`; default prompts, per-label overrides or new
        labels via ``prompts={label: {"positive": [...], "negative": [...]}}``).

        ``df.attrs["thresholds"]`` holds the run's validation-fitted thresholds of these labels when present
        (``df >= pd.Series(df.attrs["thresholds"])`` gives the decisions)."""
        from cxr_vlp.eval.zeroshot import zeroshot_classify

        self._require_contrastive("zero_shot")
        names = list(CHEXPERT_LABELS if labels is None else ([labels] if isinstance(labels, str) else labels))
        prompt_set = self._prompt_set(names, prompts)
        items = as_image_list(images)
        emb = self._image_gaussians(items)[0]
        scale = float(self.module.loss_head.similarity_scale().detach())
        probs = zeroshot_classify(self.encode_texts, emb, names, prompt_set, scale)
        frame = pd.DataFrame(probs.numpy().astype(np.float64), columns=names,
                             index=[image_name(img, i) for i, img in enumerate(items)])
        frame.attrs["thresholds"] = {n: self.payload.thresholds[n] for n in names if n in self.payload.thresholds}
        return frame

    # ------------------------------------------------------------------ retrieval
    def gallery(self, items: Sequence[ImageInput] | Sequence[str], ids: Sequence[str] | None = None) -> Gallery:
        """Embed a gallery once (texts if every item is a string, else images); save it with ``Gallery.save``."""
        self._require_contrastive("gallery")
        if isinstance(items, str):
            items = [items]
        items = list(items)
        if not items:
            raise ValueError("an empty gallery")
        if _are_texts(items):
            emb, logvar = self._text_gaussians(items)
            modality, names = "text", list(items)
        else:
            emb, logvar = self._image_gaussians(items)
            modality = "image"
            names = [str(x) if isinstance(x, (str, Path)) else image_name(x, i) for i, x in enumerate(items)]
        if ids is not None:
            names = [str(i) for i in ids]
        return Gallery(modality=modality, ids=names, embeddings=emb, logvar=logvar)

    def retrieve(self, queries: str | Sequence[str] | ImageInput | Sequence[ImageInput],
                 gallery: Gallery | Sequence[ImageInput] | Sequence[str], k: int = 5) -> pd.DataFrame:
        """The top ``k`` gallery items per query: text queries against an image gallery, image queries against a
        text gallery. Rows ``query, rank (1 = best), item, score`` (the head's similarity)."""
        self._require_contrastive("retrieve")
        if not isinstance(gallery, Gallery):
            gallery = self.gallery(gallery)
        if gallery.modality == "image":
            texts = self._texts(queries)
            q, q_lv = self._text_gaussians(texts)
            names = texts
        else:
            items = as_image_list(queries)
            q, q_lv = self._image_gaussians(items)
            names = [image_name(x, i) for i, x in enumerate(items)]
        scores = self._scores(q, q_lv, gallery.embeddings, gallery.logvar)
        k = min(int(k), len(gallery))
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        top = torch.topk(scores, k, dim=1)
        rows = [{"query": names[i], "rank": r + 1, "item": gallery.ids[int(top.indices[i, r])],
                 "score": float(top.values[i, r])} for i in range(len(names)) for r in range(k)]
        return pd.DataFrame(rows, columns=["query", "rank", "item", "score"])

    # ------------------------------------------------------------------ explanations and head extras
    def explain(self, image: ImageInput, label_or_prompt: str) -> Explanation:
        """Grad-CAM (:func:`cxr_vlp.eval.gradcam.gradcam_maps`) of cos(image embedding, text embedding), the text
        being a label's positive prompt ensemble (a label with default prompts) or the given prompt itself."""
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from PIL import Image

        from cxr_vlp.eval.gradcam import gradcam_maps
        from cxr_vlp.eval.zeroshot import DEFAULT_PROMPTS, class_text_embeddings

        self._require_contrastive("explain")
        if label_or_prompt in DEFAULT_PROMPTS:
            text_emb = class_text_embeddings(self.encode_texts, DEFAULT_PROMPTS[label_or_prompt]["positive"])
        else:
            text_emb = self.encode_texts([label_or_prompt])[0]
        x = self.preprocess([image])
        heatmap = gradcam_maps(self.module.encoder, x.to(self.device), text_emb.to(self.device))[0]
        cfg = self.transform_config
        gray = np.clip(x[0, 0].numpy() * cfg.std + cfg.mean, 0.0, 1.0).astype(np.float32)
        overlay = show_cam_on_image(np.repeat(gray[:, :, None], 3, axis=2), heatmap, use_rgb=True)
        return Explanation(target=label_or_prompt, heatmap=heatmap, image=gray, overlay=Image.fromarray(overlay))

    def concepts(self, image: ImageInput, top: int = 10) -> pd.DataFrame:
        """The ``top`` concepts of one image by concept score f·cᵀ (concept heads such as CLEAR)."""
        self._require_contrastive("concepts")
        head = self.module.loss_head
        self._require("concepts", bool(head.spec.concepts), "a concept head (e.g. loss=clear)")
        x = self.preprocess([image]).to(self.device)
        with torch.no_grad(), self._autocast():
            inputs = head.loss_inputs(self.module.encode_text_embedding)
            scores = head.eval_scores(self.module.encoder.encode_image(x).embeddings, inputs)[0].float().cpu()
        names = list(head.concept_names)
        order = torch.argsort(scores, descending=True)[: max(1, int(top))]
        return pd.DataFrame({"concept": [names[int(i)] for i in order], "score": scores[order].double().numpy()})

    def uncertainty(self, inputs: ImageInput | Sequence[ImageInput] | str | Sequence[str]) -> torch.Tensor:
        """Per-sample uncertainty Σσ² ``[N]`` of images or texts (probabilistic heads such as ProbCLIP-VIB)."""
        from cxr_vlp.losses.probabilistic import uncertainty

        self._require_contrastive("uncertainty")
        self._require("uncertainty", self.probabilistic, "a probabilistic head (e.g. loss=probclip_vib)")
        if _are_texts([inputs] if isinstance(inputs, str) else inputs):
            logvar = self._text_gaussians(self._texts(inputs))[1]
        else:
            logvar = self._image_gaussians(as_image_list(inputs))[1]
        return uncertainty(logvar).float()

    @torch.no_grad()
    def generate_report(self, images: ImageInput | Sequence[ImageInput], num_beams: int | None = None,
                        max_new_tokens: int | None = None) -> list[GeneratedReport]:
        """Reports for one or more images (report-generation checkpoints), with the prompts that conditioned them."""
        self._require("generate_report", self.kind == "reportgen",
                      "a report-generation checkpoint (+experiment=reportgen_*)")
        if max_new_tokens is not None:
            self.module.gen_cfg["max_new_tokens"] = int(max_new_tokens)
        out: list[GeneratedReport] = []
        for batch in self._image_batches(as_image_list(images)):
            prompts, texts = self.module.generate(batch, num_beams=num_beams)
            out += [GeneratedReport(prompts[i] if prompts else None, texts[i]) for i in range(len(texts))]
        return out
