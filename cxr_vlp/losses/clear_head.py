"""CLEAR concept-projection loss head (docs/design.md §3, "CLEAR concept projection"), DDP-exact.

Notation: B studies (local rows), D the tower embedding size, K concepts, E_dim the frozen "LLM" space size.

* Concept bank: K short radiological observations (default: the packaged bank, ``bank=null``; or a file,
  e.g. one mined with ``python -m cxr_vlp.concepts.mine``).
* C ``[K, D]``: L2-normalised embeddings of the K concept strings *by the model's own text tower*,
  recomputed every training step (gradients flow into the text tower). The :class:`ContrastiveModule`
  tokenises the concepts once and passes C as ``head(..., concepts=C)``.
* E ``[K, E_dim]``: embeddings of the same strings in a frozen text-embedding space, computed once
  (``embedder.kind=hf``: any Hugging Face embedding model via the on-disk cache of
  :func:`~cxr_vlp.concepts.embeddings.embed_concepts`; ``kind=hashing``: offline character n-gram hashing)
  and kept as a persistent buffer, so checkpoints are self-contained (evaluation never needs the embedder).

Per view, with f the image and t the report embedding (``[B, D]``, L2-normalised)::

    s_img = f Cᵀ,  s_txt = t Cᵀ                   [B, K]  concept scores (cosines, auditable)
    z_img = normalise(s_img E), z_txt = normalise(s_txt E)   [B, E_dim]  projection into the LLM space
    clip    = multi-view CLIP(f, t) with scale s_clip      (ClipHead's machinery; + w_i2i·i2i + w_t2t·t2t)
    concept = multi-view symmetric InfoNCE(z_img, z_txt) with its own scale s_concept
    loss    = w_clip · clip + w_concept · concept

"multi-view" = the mean over all (image view, text view) pairings, exactly as
:func:`~cxr_vlp.losses.functional.multi_view_clip_loss`. The intra-modal terms (if weighted) belong to the
CLIP term only. Both scales are learnable, s = min(exp(param), max_scale), initialised to 1/0.07.

DDP: every rank computes C from the same weights (the full concept list), so C is the same everywhere.
Both terms use the *global* batch: f, t, z_img and z_txt are gathered with gradients, local rows are
scored against global columns (targets offset by rank·B) and each term is a mean over the local rows, as in
every other head; DDP's gradient averaging then gives exactly the gradients of the single-process loss on
the concatenated batch, including those reaching the text tower through C (each rank's C receives the
gradient of its own rows and, through the gather's backward, of its rows used as columns elsewhere).

Retrieval validation ranks by the tower embeddings f vs t (the CLIP term's space, ``similarity_scale`` is
the CLIP scale); the concept space is for auditing, zero-shot and concept-bottleneck evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxr_vlp.concepts.bank import load_concept_bank, normalize_concept
from cxr_vlp.concepts.projection import concept_scores, project_to_llm
from cxr_vlp.losses.functional import multi_view_clip_loss
from cxr_vlp.losses.heads import ClipHead, EncodeText, HeadSpec, LossOutput, _as_views
from cxr_vlp.models.outputs import Embeddings

# concept strings are a few words; longer ones are truncated when tokenised for the text tower
CONCEPT_MAX_LENGTH = 64

__all__ = ["EMBEDDER_KINDS", "ClearHead", "clear_loss", "compute_llm_embeddings", "validate_embedder"]

EMBEDDER_KINDS = ("hf", "hashing")
_EMBEDDER_KEYS = {"kind", "dim", "name_or_path", "cache_dir", "batch_size", "max_length", "device"}


def _mean_over_views(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


def clear_loss(
    image_emb: Tensor | Sequence[Tensor],
    text_emb: Tensor | Sequence[Tensor],
    concept_tower_emb: Tensor,
    concept_llm_emb: Tensor,
    clip_scale: Tensor | float,
    concept_scale: Tensor | float,
    w_clip: float = 1.0,
    w_concept: float = 1.0,
    w_i2i: float = 0.0,
    w_t2t: float = 0.0,
    gather: bool = True,
) -> dict[str, Tensor]:
    """The CLEAR objective on lists of views (a single tensor counts as one view); see the module docstring.

    Args:
        image_emb, text_emb: ``[B, D]`` views (L2-normalised here; a no-op for the towers' normalised outputs).
        concept_tower_emb: C ``[K, D]``, the text tower's concept embeddings (normalised here).
        concept_llm_emb: E ``[K, E_dim]``, frozen (cast to the scores' dtype).
        clip_scale, concept_scale: the two logit scales (already exp'd and clamped).
        w_clip, w_concept: weights of the CLIP and the concept InfoNCE terms.
        w_i2i, w_t2t: intra-modal weights of the CLIP term (views 0 and 1).
        gather: under DDP gather f, t, z (with gradients) and score local rows against global columns.

    Returns ``{"loss", "clip", "contrastive", ["i2i"], ["t2t"], "concept", "concept_score_max",
    "concept_score_mean", "concept_score_std"}``: ``clip`` is the CLIP term including its intra-modal parts,
    ``contrastive`` its cross-modal part; the ``concept_score_*`` statistics are detached means over local
    rows and image views of the per-row max / mean / std over the K image concept scores.
    """
    # normalising L2-normalised embeddings again is the identity (also for the gradient: n∘n = n)
    image_views = [F.normalize(v, dim=-1) for v in _as_views(image_emb)]
    text_views = [F.normalize(v, dim=-1) for v in _as_views(text_emb)]
    if not image_views or not text_views:
        raise ValueError("need at least one image view and one text view")
    if (
        concept_tower_emb.ndim != 2
        or concept_llm_emb.ndim != 2
        or concept_tower_emb.shape[0] != concept_llm_emb.shape[0]
    ):
        raise ValueError(
            f"expected C [K, D] and E [K, E_dim] with the same K, got {tuple(concept_tower_emb.shape)} and "
            f"{tuple(concept_llm_emb.shape)}"
        )
    clip_terms = multi_view_clip_loss(image_views, text_views, clip_scale, w_i2i=w_i2i, w_t2t=w_t2t, gather=gather)

    s_img = [concept_scores(f, concept_tower_emb) for f in image_views]
    s_txt = [concept_scores(t, concept_tower_emb) for t in text_views]
    z_img = [project_to_llm(s, concept_llm_emb) for s in s_img]
    z_txt = [project_to_llm(s, concept_llm_emb) for s in s_txt]
    concept = multi_view_clip_loss(z_img, z_txt, concept_scale, gather=gather)["loss"]

    clip = clip_terms.pop("loss")
    loss = w_clip * clip + w_concept * concept
    with torch.no_grad():
        stats = {
            "concept_score_max": _mean_over_views([s.max(dim=1).values.mean() for s in s_img]),
            "concept_score_mean": _mean_over_views([s.mean() for s in s_img]),
            "concept_score_std": _mean_over_views(
                [s.std(dim=1).mean() if s.shape[1] > 1 else s.new_zeros(()) for s in s_img]
            ),
        }
    return {"loss": loss, "clip": clip, **clip_terms, "concept": concept, **stats}


def validate_embedder(embedder: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check an ``embedder`` config node and return it as a plain dict with defaults filled in.

    ``kind=hashing``: ``dim`` (default 512). ``kind=hf``: ``name_or_path`` (hub name or local directory) and
    ``cache_dir`` are required; ``batch_size`` (64), ``max_length`` (64), ``device`` ("cpu") optional. Keys of
    the other kind are ignored (so an experiment can switch kinds without deleting keys); unknown keys are an
    error.
    """
    if embedder is None:
        embedder = {"kind": "hashing"}
    if not isinstance(embedder, Mapping):
        raise TypeError(f"embedder must be a mapping with a 'kind' in {EMBEDDER_KINDS}, got {embedder!r}")
    cfg = {str(k): v for k, v in dict(embedder).items()}
    unknown = sorted(set(cfg) - _EMBEDDER_KEYS)
    if unknown:
        raise ValueError(f"unknown embedder key(s) {unknown}; allowed: {sorted(_EMBEDDER_KEYS)}")
    kind = cfg.get("kind")
    if kind not in EMBEDDER_KINDS:
        raise ValueError(f"embedder.kind must be one of {EMBEDDER_KINDS}, got {kind!r}")
    if kind == "hashing":
        dim = cfg.get("dim")
        dim = 512 if dim is None else dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"embedder.dim must be a positive integer for kind=hashing, got {dim!r}")
        return {"kind": "hashing", "dim": dim}
    name = cfg.get("name_or_path")
    if not name:
        raise ValueError(
            "embedder.kind=hf needs embedder.name_or_path (a Hugging Face embedding model or a "
            "local model directory), e.g. NeuML/pubmedbert-base-embeddings"
        )
    if not cfg.get("cache_dir"):
        raise ValueError("embedder.kind=hf needs embedder.cache_dir (where the [K, E] concept embeddings are cached)")
    return {
        "kind": "hf",
        "name_or_path": str(name),
        "cache_dir": str(cfg["cache_dir"]),
        "batch_size": int(cfg.get("batch_size") or 64),
        "max_length": int(cfg.get("max_length") or 64),
        "device": str(cfg.get("device") or "cpu"),
    }


def compute_llm_embeddings(concepts: Sequence[str], embedder: Mapping[str, Any]) -> Tensor:
    """E ``[K, E_dim]`` (float32, rows L2-normalised) of ``concepts`` with a validated ``embedder`` config.

    ``hf``: :func:`~cxr_vlp.concepts.embeddings.embed_concepts` (cached on disk; a hub name that is neither
    local nor cached raises :class:`~cxr_vlp.utils.hub.ModelNotAvailableError` at once when offline).
    ``hashing``: :func:`~cxr_vlp.concepts.embeddings.hashing_embeddings` (no model, no cache).
    """
    from cxr_vlp.concepts import embeddings as emb

    cfg = validate_embedder(embedder)
    if cfg["kind"] == "hashing":
        out = emb.hashing_embeddings(concepts, dim=cfg["dim"])
    else:
        out = emb.embed_concepts(
            concepts,
            cfg["name_or_path"],
            os.path.expanduser(cfg["cache_dir"]),
            batch_size=cfg["batch_size"],
            device=cfg["device"],
            max_length=cfg["max_length"],
        )
    return torch.nn.functional.normalize(out.detach().float().cpu(), dim=-1)


class ClearHead(ClipHead):
    """CLEAR head: multi-view CLIP on the towers + InfoNCE between concept projections in a frozen LLM space.

    See the module docstring for the formulas and the DDP scheme. ``forward(image_views, text_views,
    labels=None, concepts=C)``: ``concepts`` is C ``[K, D]`` from the text tower, in :attr:`concept_names`
    order; ``labels`` is ignored. ``spec.concepts`` is true: :meth:`prepare` ``(tokenizer)`` tokenises the
    concepts once per tokenizer into non-persistent buffers (``concept_input_ids`` / ``concept_attention_mask``),
    :meth:`loss_inputs` embeds them with the text tower (``{"concepts": C}``) and :meth:`eval_scores` gives the
    image concept scores f Cᵀ ``[N, K]``.

    E lives in the persistent buffer ``concept_llm_emb`` (saved in checkpoints). It is computed lazily by
    :meth:`prepare` (called by the module when fitting, or by the first ``forward``), never in ``__init__``: a
    head rebuilt from a checkpoint gets E from the state dict and never calls the embedder. The buffer is
    ``[0]`` until then and takes the checkpoint's shape on load.

    Args:
        bank: concept bank file; ``None`` = the packaged default (:func:`~cxr_vlp.concepts.load_concept_bank`).
        concepts: an explicit concept list, overriding ``bank`` (``load_module`` passes the checkpoint's).
        embedder: ``{kind: hf, name_or_path, cache_dir[, batch_size, max_length, device]}`` or
            ``{kind: hashing, dim}`` (see :func:`validate_embedder`); ``None`` = hashing, 512 dims.
        w_clip, w_concept: weights of the CLIP and concept terms (default 1, 1).
        temperature_init, max_scale, learn_temperature: CLIP scale, as in :class:`ClipHead`.
        concept_temperature_init, concept_max_scale, learn_concept_temperature: the concept term's own scale.
        w_i2i, w_t2t: intra-modal weights of the CLIP term; gather: as in ClipHead.

    Logs: ``loss``, ``clip``, ``contrastive``, ``i2i`` / ``t2t`` (when computed), ``concept``, ``logit_scale``,
    ``temperature``, ``concept_logit_scale``, ``concept_temperature``, ``concept_score_max`` / ``_mean`` /
    ``_std`` (image concept scores).
    """

    spec = HeadSpec(concepts=True)

    def __init__(
        self,
        bank: str | os.PathLike | None = None,
        concepts: Sequence[str] | None = None,
        embedder: Mapping[str, Any] | None = None,
        w_clip: float = 1.0,
        w_concept: float = 1.0,
        temperature_init: float = 0.07,
        max_scale: float = 100.0,
        learn_temperature: bool = True,
        concept_temperature_init: float = 0.07,
        concept_max_scale: float = 100.0,
        learn_concept_temperature: bool = True,
        w_i2i: float = 0.0,
        w_t2t: float = 0.0,
        gather: bool = True,
    ) -> None:
        super().__init__(
            temperature_init=temperature_init,
            max_scale=max_scale,
            learn_temperature=learn_temperature,
            w_i2i=w_i2i,
            w_t2t=w_t2t,
            gather=gather,
        )
        if concept_temperature_init <= 0:
            raise ValueError(f"concept_temperature_init must be > 0, got {concept_temperature_init}")
        if concept_max_scale <= 0:
            raise ValueError(f"concept_max_scale must be > 0, got {concept_max_scale}")
        if w_clip < 0 or w_concept < 0 or w_clip + w_concept == 0:
            raise ValueError(f"w_clip and w_concept must be >= 0 and not both 0, got {w_clip}, {w_concept}")
        if concepts is not None:
            names = [normalize_concept(c) for c in concepts]
            if not names or not all(names) or len(set(names)) != len(names):
                raise ValueError("concepts must be a non-empty list of distinct, non-empty strings")
        else:
            names = load_concept_bank(None if bank in (None, "", "default") else bank)
        self.concept_names: list[str] = names
        self.embedder_cfg = validate_embedder(embedder)
        self.w_clip = float(w_clip)
        self.w_concept = float(w_concept)
        self.concept_max_scale = float(concept_max_scale)
        self.concept_logit_scale_log = nn.Parameter(
            torch.tensor(math.log(1.0 / concept_temperature_init)), requires_grad=learn_concept_temperature
        )
        self.register_buffer("concept_llm_emb", torch.zeros(0), persistent=True)
        self.register_buffer("concept_input_ids", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("concept_attention_mask", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self._concept_tokenizer: Any = None

    @property
    def num_concepts(self) -> int:
        return len(self.concept_names)

    @property
    def llm_ready(self) -> bool:
        """Whether E is present (computed, or loaded from a checkpoint)."""
        return self.concept_llm_emb.ndim == 2 and self.concept_llm_emb.shape[0] == self.num_concepts

    def prepare(self, tokenizer: Any = None) -> Tensor:
        """Compute E with the embedder if it is not there yet and, given a ``tokenizer``, tokenise the concepts
        for the text tower (once per tokenizer); returns E."""
        if not self.llm_ready:
            emb = compute_llm_embeddings(self.concept_names, self.embedder_cfg)
            if emb.ndim != 2 or emb.shape[0] != self.num_concepts:
                raise RuntimeError(f"embedder returned {tuple(emb.shape)} for {self.num_concepts} concepts")
            self.concept_llm_emb = emb.to(self.concept_llm_emb.device)
        if tokenizer is not None and (tokenizer is not self._concept_tokenizer or self.concept_input_ids.numel() == 0):
            tokens = tokenizer(
                list(self.concept_names),
                padding="longest",
                truncation=True,
                max_length=CONCEPT_MAX_LENGTH,
                return_tensors="pt",
                return_token_type_ids=False,
            )
            device = self.concept_input_ids.device
            self.concept_input_ids = tokens["input_ids"].to(device)
            self.concept_attention_mask = tokens["attention_mask"].to(device)
            self._concept_tokenizer = tokenizer
        return self.concept_llm_emb

    def concept_embeddings(self, encode_text: EncodeText) -> Tensor:
        """C ``[K, D]``: the text tower's L2-normalised embeddings of the concepts (gradients as the context)."""
        if self.concept_input_ids.numel() == 0:
            raise RuntimeError(
                "ClearHead concepts are not tokenised: call head.prepare(tokenizer) with the data "
                "module's tokenizer first (the LightningModule does at fit / validation / test start)"
            )
        return encode_text(self.concept_input_ids, self.concept_attention_mask)

    def loss_inputs(self, encode_text: EncodeText) -> dict[str, Tensor]:
        return {"concepts": self.concept_embeddings(encode_text)}

    def eval_scores(self, image: Embeddings, inputs: dict[str, Tensor]) -> Tensor:
        """Image concept scores s = f Cᵀ ``[N, K]`` (cosines, columns in :attr:`concept_names` order)."""
        return concept_scores(image.mean, inputs["concepts"])

    def concept_similarity_scale(self) -> Tensor:
        """s_concept = exp(concept_logit_scale_log).clamp(max=concept_max_scale) (differentiable, 0-dim)."""
        return self.concept_logit_scale_log.exp().clamp(max=self.concept_max_scale)

    def forward(
        self,
        image_views: Sequence[Tensor],
        text_views: Sequence[Tensor],
        labels: Tensor | None = None,
        concepts: Tensor | None = None,
    ) -> LossOutput:
        """:func:`clear_loss` with the head's scales, weights and E; ``concepts`` (C ``[K, D]``) is required."""
        if concepts is None:
            raise ValueError(
                "ClearHead needs concepts=C [K, D] (the text tower's embeddings of head.concept_names); "
                "ContrastiveModule passes loss_head.loss_inputs(...)"
            )
        if concepts.ndim != 2 or concepts.shape[0] != self.num_concepts:
            raise ValueError(f"concepts must be [K={self.num_concepts}, D], got {tuple(concepts.shape)}")
        clip_scale, concept_scale = self.similarity_scale(), self.concept_similarity_scale()
        terms = clear_loss(
            image_views,
            text_views,
            concepts,
            self.prepare(),
            clip_scale,
            concept_scale,
            w_clip=self.w_clip,
            w_concept=self.w_concept,
            w_i2i=self.w_i2i,
            w_t2t=self.w_t2t,
            gather=self.gather,
        )
        logs = {k: v.detach() for k, v in terms.items()}
        logs["logit_scale"] = clip_scale.detach()
        logs["temperature"] = 1.0 / clip_scale.detach()
        logs["concept_logit_scale"] = concept_scale.detach()
        logs["concept_temperature"] = 1.0 / concept_scale.detach()
        return LossOutput(loss=terms["loss"], logs=logs)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Give the E buffer the checkpoint's shape before loading (it is ``[0]`` until prepared)."""
        key = prefix + "concept_llm_emb"
        saved = state_dict.get(key)
        if isinstance(saved, Tensor) and saved.shape != self.concept_llm_emb.shape:
            if saved.ndim == 2 and saved.shape[0] == self.num_concepts:
                self.concept_llm_emb = torch.empty(saved.shape, dtype=saved.dtype, device=self.concept_llm_emb.device)
            else:
                error_msgs.append(
                    f"{key}: checkpoint has concept embeddings of shape {tuple(saved.shape)} but the "
                    f"head has {self.num_concepts} concepts (different concept bank?)"
                )
                state_dict = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"num_concepts={self.num_concepts}, embedder={self.embedder_cfg['kind']}, w_clip={self.w_clip}, "
            f"w_concept={self.w_concept}, {super().extra_repr()}"
        )
