"""The contrastive pretraining LightningModule: dual encoder + a swappable loss head.

Constructor arguments are plain dicts (the resolved Hydra nodes), so the module rebuilds itself from a
checkpoint's hyper-parameters, and checkpoints load with ``weights_only=True``. The tokenizer travels
inside the checkpoint (``checkpoint["cxr_vlp"]``), which makes a checkpoint self-contained.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

import cxr_vlp
from cxr_vlp.concepts.projection import concept_scores
from cxr_vlp.data.batch import Batch
from cxr_vlp.metrics.retrieval import RankCounts, bidirectional_retrieval, metrics_from_ranks, ranks_in_block
from cxr_vlp.lit.divergence import check_gradients_before_clipping
from cxr_vlp.lit.grad_cache import cached_contrastive_step
from cxr_vlp.lit.schedule import adamw_with_cosine
from cxr_vlp.lit.transfer import BatchTransferMixin
from cxr_vlp.losses.heads import GaussianEmbedding, LossHead, LossOutput
from cxr_vlp.losses.probabilistic import uncertainty
from cxr_vlp.models.dual_encoder import DualEncoder
from cxr_vlp.utils.hub import ModelNotAvailableError
from cxr_vlp.data.tokenizer import build_tokenizer, tokenizer_from_json, tokenizer_to_json
from cxr_vlp.utils.checkpoint import load_checkpoint

log = logging.getLogger(__name__)
# concept strings are a few words; longer ones are truncated when tokenised for the text tower
CONCEPT_MAX_LENGTH = 64


def instantiate_node(node: dict) -> Any:
    """``hydra.utils.instantiate`` that re-raises our own errors (e.g. a model not available offline)
    instead of Hydra's wrapper, so the user reads the actionable message first."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ModelNotAvailableError, ValueError)):
            raise err.__cause__ from None
        raise


def build_dual_encoder(model: dict) -> DualEncoder:
    """Instantiate image tower, text tower and projections from the ``model`` config node."""
    text_cfg = {k: v for k, v in model["text_encoder"].items() if k != "tokenizer"}
    if text_cfg.get("name_or_path") is None:
        text_cfg["vocab_size"] = model["text_encoder"]["tokenizer"]["vocab_size"]
    return DualEncoder(
        image_encoder=instantiate_node(model["image_encoder"]),
        text_encoder=instantiate_node(text_cfg),
        embed_dim=model.get("embed_dim", 256),
        projection=model.get("projection", "linear"),
        projection_dropout=model.get("projection_dropout", 0.0),
        probabilistic=model.get("probabilistic", False),
        logvar_dim=model.get("logvar_dim", "embed"),
        logvar_init=model.get("logvar_init", -4.0),
    )


class ContrastiveModule(BatchTransferMixin, L.LightningModule):
    """Image–report contrastive pretraining with retrieval validation.

    Args:
        model: the ``model`` node (``image_encoder``, ``text_encoder`` with its ``tokenizer``, ``embed_dim``,
            ``projection``).
        loss: the ``loss`` node, instantiated to a :class:`LossHead`.
        optim: ``lr``, ``weight_decay``, ``betas``, ``eps``, ``fused``.
        scheduler: ``warmup`` (steps, or a fraction of all steps if < 1) and ``min_lr_ratio``.
    Probabilistic heads (``loss_head.needs_uncertainty``, e.g. ProbCLIP-VIB) need ``model.probabilistic=true``:
    training then passes every view as a :class:`GaussianEmbedding` ``(μ, log σ²)``, and validation / test
    rank retrieval by the head's ``similarity`` (the match logit) on the gathered means and log-variances
    and log the mean per-sample uncertainty Σσ² (``{stage}/uncertainty_mean``, per modality too).
    The local BERT's embedding table has ``tokenizer.vocab_size`` rows (the tokenizer's upper bound; a
    trained vocabulary may be smaller), so the model does not depend on the trained tokenizer.

    Concept heads (``loss_head.needs_concepts``, e.g. CLEAR): the head's ``concept_names`` are tokenised once
    per run with the data module's tokenizer (``self.tokenizer`` after :func:`load_module`) and kept as
    non-persistent buffers; the text tower embeds them (C ``[K, D]``, :meth:`concept_embeddings`) every training
    step with gradients and once per eval epoch without, and C is passed as ``loss_head(..., concepts=C)``.
    Validation / test keep the image concept scores f Cᵀ of the gathered split in
    ``eval_concept_scores[stage] = {"index": [N], "scores": [N, K]}`` (by study index); retrieval still ranks
    the tower embeddings f vs t. The concept list is saved in ``checkpoint["cxr_vlp"]["concepts"]``.
    """

    def __init__(self, model: dict, loss: dict, optim: dict, scheduler: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_dual_encoder(model)
        self.loss_head: LossHead = instantiate_node(loss)
        self.probabilistic = bool(getattr(self.loss_head, "needs_uncertainty", False))
        if self.probabilistic and not self.encoder.probabilistic:
            raise ValueError(
                f"loss head {type(self.loss_head).__name__} (loss._target_={loss.get('_target_')}) needs Gaussian "
                "embeddings (mu, logvar) but model.probabilistic=false: set model.probabilistic=true"
            )
        if self.encoder.probabilistic and not self.probabilistic:
            log.warning("model.probabilistic=true but loss head %s ignores the log-variance heads (unused "
                        "parameters: DDP will fail unless find_unused_parameters)", type(self.loss_head).__name__)
        # per-sample uncertainty (Σσ²) of the last gathered eval split, by stage (probabilistic heads only)
        self.eval_uncertainty: dict[str, dict[str, torch.Tensor]] = {}
        self.needs_concepts = bool(getattr(self.loss_head, "needs_concepts", False))
        if self.needs_concepts and self.probabilistic:
            raise ValueError(f"loss head {type(self.loss_head).__name__} needs both concepts and uncertainty: "
                             "not supported")
        # image concept scores f Cᵀ of the last gathered eval split, by stage (concept heads only)
        self.eval_concept_scores: dict[str, dict[str, torch.Tensor]] = {}
        if self.needs_concepts:
            self.register_buffer("concept_input_ids", torch.zeros(0, 0, dtype=torch.long), persistent=False)
            self.register_buffer("concept_attention_mask", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self._concept_tokenizer = None
        self._eval_concepts: torch.Tensor | None = None
        self.optim_cfg = dict(optim)
        # feature-cache accumulation (cxr_vlp.lit.grad_cache): the towers see chunks of this many studies, the loss
        # the whole batch; needs manual optimisation (clipping then comes from manual_gradient_clip)
        self.micro_batch_size: int | None = optim.get("micro_batch_size") or None
        if self.micro_batch_size is not None and int(self.micro_batch_size) < 1:
            raise ValueError(f"optim.micro_batch_size must be a positive integer or null, got {self.micro_batch_size}")
        self.automatic_optimization = self.micro_batch_size is None
        self.manual_gradient_clip: tuple[float | None, str] = (None, "norm")
        self.scheduler_cfg = dict(scheduler)
        self.tokenizer = None
        # set by the train entry point (plain dict): stored in checkpoints for evaluation
        self.data_config: dict[str, Any] | None = None
        self._eval_outputs: dict[str, list[tuple[torch.Tensor, ...]]] = defaultdict(list)

    # ------------------------------------------------------------------ tokenizer in the checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None) or self.tokenizer
        local = self.hparams["model"]["text_encoder"].get("tokenizer", {}).get("kind") == "wordpiece"
        checkpoint["cxr_vlp"] = {
            "version": cxr_vlp.__version__,
            "tokenizer_json": tokenizer_to_json(tokenizer) if local and tokenizer is not None else None,
            # the resolved data config of the training run: `python -m cxr_vlp.eval` rebuilds the same split
            "data": self.data_config,
        }
        if self.needs_concepts:
            checkpoint["cxr_vlp"]["concepts"] = list(self.loss_head.concept_names)

    # ------------------------------------------------------------------ concepts (concept heads only)
    def prepare_concepts(self, tokenizer=None) -> None:
        """Tokenise the head's concepts (once per tokenizer) into the non-persistent id buffers and make sure the
        head has its frozen concept embeddings E (computed only if not loaded from a checkpoint)."""
        if not self.needs_concepts:
            return
        if tokenizer is None:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            tokenizer = getattr(datamodule, "tokenizer", None) or self.tokenizer
        if tokenizer is None:
            raise RuntimeError("concept heads need a tokenizer: the data module's (during fit/test) or "
                               "module.tokenizer (set by load_module)")
        if tokenizer is not self._concept_tokenizer or self.concept_input_ids.numel() == 0:
            tokens = tokenizer(list(self.loss_head.concept_names), padding="longest", truncation=True,
                               max_length=CONCEPT_MAX_LENGTH, return_tensors="pt", return_token_type_ids=False)
            device = self.concept_input_ids.device
            self.concept_input_ids = tokens["input_ids"].to(device)
            self.concept_attention_mask = tokens["attention_mask"].to(device)
            self._concept_tokenizer = tokenizer
        self.loss_head.prepare()

    def concept_embeddings(self) -> torch.Tensor:
        """C ``[K, D]``: the text tower's L2-normalised embeddings of the head's concepts (grad as the context)."""
        if self.concept_input_ids.numel() == 0:
            self.prepare_concepts()
        return self.encoder.encode_text(self.concept_input_ids, self.concept_attention_mask)

    @torch.no_grad()
    def concept_scores_for(self, images: torch.Tensor) -> torch.Tensor:
        """Image concept scores s = f Cᵀ ``[B, K]`` (cosines, columns in ``loss_head.concept_names`` order) for
        new ``[B, C, H, W]`` images, without gradients; put the module in eval mode first."""
        if not self.needs_concepts:
            raise RuntimeError(f"loss head {type(self.loss_head).__name__} has no concepts")
        return concept_scores(self.encoder.encode_image(images), self.concept_embeddings())

    def setup(self, stage: str) -> None:
        # E before the model is moved / wrapped; a checkpoint restored afterwards overwrites it
        if self.needs_concepts and stage == "fit":
            self.loss_head.prepare()

    def on_fit_start(self) -> None:
        self.prepare_concepts()

    def on_validation_start(self) -> None:
        self.prepare_concepts()

    def on_test_start(self) -> None:
        self.prepare_concepts()

    def on_validation_epoch_start(self) -> None:
        self._start_eval_concepts()

    def on_test_epoch_start(self) -> None:
        self._start_eval_concepts()

    @torch.no_grad()
    def _start_eval_concepts(self) -> None:
        self._eval_concepts = self.concept_embeddings().detach() if self.needs_concepts else None

    # ------------------------------------------------------------------ forward
    def _views(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        b, vi = batch.images.shape[:2]
        vt = batch.input_ids.shape[1]
        img = self.encoder.encode_image(batch.images.flatten(0, 1)).view(b, vi, -1)
        txt = self.encoder.encode_text(batch.input_ids.flatten(0, 1), batch.attention_mask.flatten(0, 1)).view(b, vt, -1)
        return list(img.unbind(1)), list(txt.unbind(1))

    def _gaussian_views(self, batch: Batch) -> tuple[list[GaussianEmbedding], list[GaussianEmbedding]]:
        """Like :meth:`_views`, each view a :class:`GaussianEmbedding` ``(μ [B, D], log σ² [B, D or 1])``."""
        b, vi = batch.images.shape[:2]
        vt = batch.input_ids.shape[1]
        mu_i, lv_i = self.encoder.encode_image_gaussian(batch.images.flatten(0, 1))
        mu_t, lv_t = self.encoder.encode_text_gaussian(batch.input_ids.flatten(0, 1),
                                                       batch.attention_mask.flatten(0, 1))
        img = [GaussianEmbedding(m, v) for m, v in zip(mu_i.view(b, vi, -1).unbind(1), lv_i.view(b, vi, -1).unbind(1))]
        txt = [GaussianEmbedding(m, v) for m, v in zip(mu_t.view(b, vt, -1).unbind(1), lv_t.view(b, vt, -1).unbind(1))]
        return img, txt

    def _loss_views(self, batch: Batch) -> tuple[list, list]:
        return self._gaussian_views(batch) if self.probabilistic else self._views(batch)

    def _head_loss(self, image_views: list, text_views: list, labels: torch.Tensor) -> LossOutput:
        extra = {"concepts": self.concept_embeddings()} if self.needs_concepts else {}
        return self.loss_head(image_views, text_views, labels=labels, **extra)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.micro_batch_size is not None:
            out = self._cached_training_step(batch)
        else:
            out = self._head_loss(*self._loss_views(batch), labels=batch.labels)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v for k, v in out.logs.items() if k != "loss"}, batch_size=len(batch))
        return out.loss

    def _cached_training_step(self, batch: Batch) -> LossOutput:
        """One optimiser step on the full batch, the towers run on chunks of ``micro_batch_size`` studies
        (:func:`~cxr_vlp.lit.grad_cache.cached_contrastive_step`): same gradients, memory of one chunk."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        out = cached_contrastive_step(
            batch.split(int(self.micro_batch_size)), self._loss_views,
            lambda image_views, text_views: self._head_loss(image_views, text_views, batch.labels),
            backward=self.manual_backward, no_sync=getattr(self.trainer.strategy, "block_backward_sync", nullcontext),
            norm_module=self.encoder, device=batch.images.device)
        # the divergence guard sees the unclipped gradients (as with automatic optimisation)
        check_gradients_before_clipping(self.trainer, self, optimizer)
        clip_value, clip_algorithm = self.manual_gradient_clip
        if clip_value:
            self.clip_gradients(optimizer, gradient_clip_val=clip_value, gradient_clip_algorithm=clip_algorithm)
        optimizer.step()
        scheduler.step()
        return out

    def on_train_start(self) -> None:
        if self.automatic_optimization and self.trainer.accumulate_grad_batches > 1:
            log.warning("trainer.accumulate_grad_batches=%d averages the losses of small batches: each sees only its "
                        "own negatives. For the contrastive loss of the full batch with less memory, raise "
                        "data.batch_size and set optim.micro_batch_size instead (feature cache)",
                        self.trainer.accumulate_grad_batches)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch, stage: str) -> None:
        image_views, text_views = self._loss_views(batch)
        extra = {}
        if self.needs_concepts:
            if self._eval_concepts is None:
                self._start_eval_concepts()
            extra = {"concepts": self._eval_concepts}
        out = self.loss_head(image_views[:1], text_views[:1], labels=batch.labels, **extra)
        self.log(f"{stage}/loss", out.loss, sync_dist=True, batch_size=len(batch))
        if self.needs_concepts:  # (index, img, txt, image concept scores f Cᵀ)
            img = image_views[0].detach()
            self._eval_outputs[stage].append((batch.index, img, text_views[0].detach(),
                                              concept_scores(img, self._eval_concepts)))
        elif self.probabilistic:  # (index, μ_img, μ_txt, log σ²_img, log σ²_txt)
            img, txt = image_views[0], text_views[0]
            self._eval_outputs[stage].append((batch.index, img.mu.detach(), txt.mu.detach(),
                                              img.logvar.detach(), txt.logvar.detach()))
        else:
            self._eval_outputs[stage].append((batch.index, image_views[0].detach(), text_views[0].detach()))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def gathered_eval_outputs(self, stage: str) -> tuple[torch.Tensor, ...]:
        """Eval outputs of the whole split across ranks, each study once, ordered by study index:
        ``(index, img, txt)``, plus ``(img_logvar, txt_logvar)`` for probabilistic heads (img / txt are μ) or
        the image concept scores ``[N, K]`` for concept heads."""
        outputs = self._eval_outputs.pop(stage, [])
        tensors = [torch.cat([o[k] for o in outputs]) for k in range(len(outputs[0]))]
        if self.trainer.world_size > 1:
            tensors = [self.all_gather(t).flatten(0, 1) for t in tensors]
        first = _first_occurrence(tensors[0])
        return tuple(t[first] for t in tensors)

    def gathered_eval_embeddings(self, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings of the whole split across ranks, each study once, ordered by study index."""
        return self.gathered_eval_outputs(stage)[:3]

    def _log_retrieval(self, stage: str) -> None:
        if not self._eval_outputs.get(stage):
            return
        if self.probabilistic:
            metrics = self._probabilistic_retrieval(stage)
        else:
            index, img, txt, *rest = self.gathered_eval_outputs(stage)
            if self.needs_concepts:
                self.eval_concept_scores[stage] = {"index": index.cpu(), "scores": rest[0].float().cpu()}
            metrics = bidirectional_retrieval(img.float(), txt.float(), prefix=f"{stage}/")
            metrics[f"{stage}/num_studies"] = float(img.shape[0])
        metrics[f"{stage}/rsum"] = sum(v for k, v in metrics.items() if "/R@" in k)
        self.log_dict(metrics, sync_dist=False)

    @torch.no_grad()
    def _probabilistic_retrieval(self, stage: str, chunk_size: int = 1024) -> dict[str, float]:
        """Retrieval ranked by the head's match logit; stores per-sample uncertainty in ``eval_uncertainty``."""
        index, img, txt, lv_img, lv_txt = self.gathered_eval_outputs(stage)
        unc_img, unc_txt = uncertainty(lv_img), uncertainty(lv_txt)
        self.eval_uncertainty[stage] = {"index": index.cpu(), "image": unc_img.cpu(), "text": unc_txt.cpu()}
        metrics: dict[str, float] = {}
        for name, (q, lq, g, lg) in {"i2t": (img, lv_img, txt, lv_txt), "t2i": (txt, lv_txt, img, lv_img)}.items():
            ranks = []
            for s in range(0, q.shape[0], chunk_size):
                block = self.loss_head.similarity(q[s:s + chunk_size], lq[s:s + chunk_size], g, lg)
                ranks.append(ranks_in_block(block, s).cpu())
            for key, value in metrics_from_ranks(RankCounts.cat(ranks)).items():
                metrics[f"{stage}/{name}/{key}"] = value
        metrics[f"{stage}/num_studies"] = float(img.shape[0])
        metrics[f"{stage}/uncertainty_image_mean"] = float(unc_img.mean())
        metrics[f"{stage}/uncertainty_text_mean"] = float(unc_txt.mean())
        metrics[f"{stage}/uncertainty_mean"] = 0.5 * (float(unc_img.mean()) + float(unc_txt.mean()))
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")
        self._eval_concepts = None

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")
        self._eval_concepts = None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_with_cosine(self.named_parameters(), self.optim_cfg, self.scheduler_cfg,
                                 int(self.trainer.estimated_stepping_batches), no_decay_prefixes=("loss_head.",))


def _first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of ``index``, in increasing value order.

    DistributedSampler pads the last shard with repeated samples; they must count once in retrieval.
    """
    values, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((values.numel(),), index.numel(), dtype=torch.long, device=index.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


def load_module(ckpt_path: str, map_location: str | torch.device = "cpu") -> ContrastiveModule:
    """Rebuild a module from a checkpoint (weights-only load; pretrained flags off: weights come from the file)."""
    checkpoint = load_checkpoint(ckpt_path, map_location=map_location)
    hparams = dict(checkpoint["hyper_parameters"])
    model_cfg = {**hparams["model"]}
    model_cfg["image_encoder"] = {**model_cfg["image_encoder"], "pretrained": False, "checkpoint_path": None}
    if model_cfg["text_encoder"].get("name_or_path") is not None:
        model_cfg["text_encoder"] = {**model_cfg["text_encoder"], "pretrained": False}
    hparams["model"] = model_cfg
    saved_concepts = (checkpoint.get("cxr_vlp") or {}).get("concepts")
    if saved_concepts:  # concept heads: the checkpoint's list, so the bank file need not exist here
        hparams["loss"] = {**hparams["loss"], "concepts": list(saved_concepts)}
    module = ContrastiveModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    saved = (checkpoint.get("cxr_vlp") or {}).get("tokenizer_json")
    if saved:
        module.tokenizer = tokenizer_from_json(saved)
    else:
        tok = dict(model_cfg["text_encoder"]["tokenizer"])
        module.tokenizer = build_tokenizer(tok.pop("kind"), **tok)
    module.prepare_concepts(module.tokenizer)  # concept heads: tokenise; E came with the state dict
    return module
