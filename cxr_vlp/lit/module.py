"""The contrastive pretraining LightningModule: dual encoder + a swappable loss head.

Constructor arguments are plain dicts (the resolved Hydra nodes of ``conf/module/contrastive.yaml``), so the module
rebuilds itself from a checkpoint's hyper-parameters, and checkpoints load with ``weights_only=True``. The
checkpoint payload (:mod:`cxr_vlp.checkpoint`: tokenizer, data config, concepts) makes a checkpoint
self-contained. What varies between loss heads (deterministic or Gaussian views, concept inputs, the retrieval
score, extra evaluation scalars) is asked of the head (:class:`~cxr_vlp.losses.heads.LossHead`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from cxr_vlp.checkpoint import CXRPayload, read_payload, write_payload
from cxr_vlp.data.batch import Batch
from cxr_vlp.data.tokenizer import build_tokenizer
from cxr_vlp.lit.divergence import check_gradients_before_clipping
from cxr_vlp.lit.grad_cache import cached_contrastive_step
from cxr_vlp.lit.schedule import adamw_with_cosine
from cxr_vlp.lit.transfer import BatchTransferMixin
from cxr_vlp.losses.heads import LossHead, LossOutput
from cxr_vlp.metrics.retrieval import RankCounts, metrics_from_ranks, ranks_in_block
from cxr_vlp.models.dual_encoder import DualEncoder
from cxr_vlp.models.outputs import Embeddings
from cxr_vlp.utils.hub import ModelNotAvailableError

log = logging.getLogger(__name__)


def instantiate_node(node: dict) -> Any:
    """``hydra.utils.instantiate`` that re-raises our own errors (e.g. a model not available offline)
    instead of Hydra's wrapper, so the user reads the actionable message first."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ModelNotAvailableError, ValueError, FileNotFoundError, KeyError)):
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


@dataclass
class EvalSplit:
    """One evaluated split, each study once, ordered by study index: image / text embeddings and the head's
    per-study scores (image concept scores for concept heads, else None)."""

    index: torch.Tensor
    image: Embeddings
    text: Embeddings
    scores: torch.Tensor | None = None

    def cpu(self) -> EvalSplit:
        return EvalSplit(
            self.index.cpu(), self.image.cpu(), self.text.cpu(), None if self.scores is None else self.scores.cpu()
        )


@torch.no_grad()
def head_retrieval(
    head: LossHead, image: Embeddings, text: Embeddings, prefix: str = "", chunk_size: int = 1024
) -> dict[str, float]:
    """Exact-pair retrieval both ways ranked by ``head.similarity`` (row chunks of ``chunk_size`` queries), with
    ``num_studies``, ``rsum`` (sum of the R@K) and the head's :meth:`~LossHead.eval_metrics`, keys ``{prefix}...``."""
    metrics: dict[str, float] = {}
    for name, (q, g) in {"i2t": (image, text), "t2i": (text, image)}.items():
        ranks = [
            ranks_in_block(head.ranking_scores(q.rows(slice(s, s + chunk_size)), g), s).cpu()
            for s in range(0, len(q), chunk_size)
        ]
        for key, value in metrics_from_ranks(RankCounts.cat(ranks)).items():
            metrics[f"{prefix}{name}/{key}"] = value
    metrics[f"{prefix}num_studies"] = float(len(image))
    metrics.update({f"{prefix}{k}": v for k, v in head.eval_metrics(image, text).items()})
    metrics[f"{prefix}rsum"] = sum(v for k, v in metrics.items() if "/R@" in k)
    return metrics


class ContrastiveModule(BatchTransferMixin, L.LightningModule):
    """Image–report contrastive pretraining with retrieval validation.

    Args:
        model: the ``model`` node (``image_encoder``, ``text_encoder`` with its ``tokenizer``, ``embed_dim``,
            ``projection``, ``probabilistic``).
        loss: the ``loss`` node, instantiated to a :class:`LossHead`.
        optim: ``lr``, ``weight_decay``, ``betas``, ``eps``, ``fused``, ``micro_batch_size``.
        scheduler: ``warmup`` (steps, or a fraction of all steps if < 1) and ``min_lr_ratio``.
        data: the resolved data config of the run, stored in the checkpoint payload (``python -m cxr_vlp.eval``
            rebuilds the same split from it).
        gradient_clip: ``{value, algorithm}``, the trainer's clipping, applied by the module itself under
            feature-cache accumulation (``optim.micro_batch_size``: manual optimisation).

    The head's :class:`~cxr_vlp.losses.heads.HeadSpec` says what it takes: Gaussian heads (ProbCLIP-VIB) need
    ``model.probabilistic=true`` and train on ``(μ, log σ²)`` views; concept heads (CLEAR) get their concepts'
    text-tower embeddings C (``head.loss_inputs``) every training step with gradients and once per eval epoch
    without. Validation / test rank retrieval by ``head.similarity`` on the gathered split and log the head's
    ``eval_metrics`` (e.g. ``{stage}/uncertainty_mean``); the gathered split is kept in ``eval_splits[stage]``
    (:class:`EvalSplit`, on the CPU). The local BERT's embedding table has ``tokenizer.vocab_size`` rows (the
    tokenizer's upper bound; a trained vocabulary may be smaller), so the model does not depend on the trained
    tokenizer.
    """

    def __init__(
        self,
        model: dict,
        loss: dict,
        optim: dict,
        scheduler: dict,
        data: dict | None = None,
        gradient_clip: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_dual_encoder(model)
        self.loss_head: LossHead = instantiate_node(loss)
        self.loss_head.spec.check_encoder(
            self.encoder.embedding_kind, type(self.loss_head).__name__, loss.get("_target_")
        )
        # the last gathered eval split, by stage
        self.eval_splits: dict[str, EvalSplit] = {}
        self._eval_inputs: dict[str, torch.Tensor] | None = None
        self.optim_cfg = dict(optim)
        # feature-cache accumulation (cxr_vlp.lit.grad_cache): the towers see chunks of this many studies, the loss
        # the whole batch; needs manual optimisation (clipping then comes from gradient_clip)
        self.micro_batch_size: int | None = optim.get("micro_batch_size") or None
        if self.micro_batch_size is not None and int(self.micro_batch_size) < 1:
            raise ValueError(f"optim.micro_batch_size must be a positive integer or null, got {self.micro_batch_size}")
        self.automatic_optimization = self.micro_batch_size is None
        clip = dict(gradient_clip or {})
        self.manual_gradient_clip: tuple[float | None, str] = (clip.get("value"), clip.get("algorithm") or "norm")
        self.scheduler_cfg = dict(scheduler)
        self.data_config: dict[str, Any] | None = None if data is None else dict(data)
        # the tokenizer of a module rebuilt from a checkpoint (from_payload); during fit / test the data module's
        self.tokenizer = None
        self._eval_outputs: dict[str, list[tuple[torch.Tensor | None, ...]]] = defaultdict(list)

    # ------------------------------------------------------------------ checkpoint payload
    @classmethod
    def from_payload(cls, payload: CXRPayload, state_dict: dict[str, torch.Tensor]) -> ContrastiveModule:
        """Rebuild a trained module (pretrained flags off: the weights come from ``state_dict``); the tokenizer is
        the payload's (or rebuilt from the config for a Hugging Face tokenizer)."""
        hparams = dict(payload.hparams)
        model_cfg = {**hparams["model"]}
        model_cfg["image_encoder"] = {**model_cfg["image_encoder"], "pretrained": False, "checkpoint_path": None}
        if model_cfg["text_encoder"].get("name_or_path") is not None:
            model_cfg["text_encoder"] = {**model_cfg["text_encoder"], "pretrained": False}
        hparams["model"] = model_cfg
        hparams["loss"] = payload.loss_config()
        if hparams.get("data") is None and payload.data is not None:
            hparams["data"] = payload.data
        module = cls(**hparams)
        module.load_state_dict(state_dict)
        tokenizer = payload.tokenizer()
        if tokenizer is None:
            tok = dict(model_cfg["text_encoder"]["tokenizer"])
            tokenizer = build_tokenizer(tok.pop("kind"), **tok)
        module.tokenizer = tokenizer
        module.prepare_head(tokenizer)  # concept heads: tokenise; E came with the state dict
        return module

    def _datamodule(self):
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def run_tokenizer(self):
        """The tokenizer of the current run: the data module's during fit / test, else :attr:`tokenizer`."""
        return getattr(self._datamodule(), "tokenizer", None) or self.tokenizer

    def payload(self) -> CXRPayload:
        """What a checkpoint of this module carries besides its weights (see :mod:`cxr_vlp.checkpoint`)."""
        from cxr_vlp.data.tokenizer import tokenizer_to_json

        tokenizer = self.run_tokenizer()
        local = self.hparams["model"]["text_encoder"].get("tokenizer", {}).get("kind") == "wordpiece"
        return CXRPayload(
            kind="contrastive",
            hparams=dict(self.hparams),
            tokenizer_json=tokenizer_to_json(tokenizer) if local and tokenizer is not None else None,
            data=self.data_config,
            concepts=list(self.loss_head.concept_names) or None,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        write_payload(checkpoint, self.payload())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming or testing a checkpoint: the data module tokenises with the checkpoint's tokenizer."""
        datamodule = self._datamodule()
        tokenizer = read_payload(checkpoint).tokenizer()
        if datamodule is not None and tokenizer is not None:
            datamodule.use_tokenizer(tokenizer)

    # ------------------------------------------------------------------ the head's inputs
    def prepare_head(self, tokenizer=None) -> None:
        """Get the head ready for this run (concept heads: tokenise the concepts, make sure E exists)."""
        self.loss_head.prepare(tokenizer if tokenizer is not None else self.run_tokenizer())

    def encode_text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[K, D]`` L2-normalised text embeddings (what heads embed their extra inputs with)."""
        return self.encoder.encode_text(input_ids, attention_mask).embedding

    def setup(self, stage: str) -> None:
        # E before the model is moved / wrapped; a checkpoint restored afterwards overwrites it
        if stage == "fit":
            self.loss_head.prepare()

    def on_fit_start(self) -> None:
        self.prepare_head()

    def on_validation_start(self) -> None:
        self.prepare_head()

    def on_test_start(self) -> None:
        self.prepare_head()

    def on_validation_epoch_start(self) -> None:
        self._start_eval_inputs()

    def on_test_epoch_start(self) -> None:
        self._start_eval_inputs()

    @torch.no_grad()
    def _start_eval_inputs(self) -> None:
        self._eval_inputs = {k: v.detach() for k, v in self.loss_head.loss_inputs(self.encode_text_embedding).items()}

    # ------------------------------------------------------------------ forward
    def encode_views(self, batch: Batch) -> tuple[list[Embeddings], list[Embeddings]]:
        """Every image and text view of ``batch`` as :class:`Embeddings` of ``[B, D]`` rows (log σ² when
        probabilistic)."""
        b = batch.images.shape[0]
        img = self.encoder.encode_image(batch.images.flatten(0, 1)).embeddings
        txt = self.encoder.encode_text(batch.input_ids.flatten(0, 1), batch.attention_mask.flatten(0, 1)).embeddings
        return img.views(b), txt.views(b)

    def _loss_views(self, batch: Batch) -> tuple[list, list]:
        image, text = self.encode_views(batch)
        return [self.loss_head.loss_view(e) for e in image], [self.loss_head.loss_view(e) for e in text]

    def _head_loss(self, image_views: list, text_views: list, labels: torch.Tensor) -> LossOutput:
        return self.loss_head(
            image_views, text_views, labels=labels, **self.loss_head.loss_inputs(self.encode_text_embedding)
        )

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
            batch.split(int(self.micro_batch_size)),
            self._loss_views,
            lambda image_views, text_views: self._head_loss(image_views, text_views, batch.labels),
            backward=self.manual_backward,
            no_sync=getattr(self.trainer.strategy, "block_backward_sync", nullcontext),
            norm_module=self.encoder,
            device=batch.images.device,
        )
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
            log.warning(
                "trainer.accumulate_grad_batches=%d averages the losses of small batches: each sees only its "
                "own negatives. For the contrastive loss of the full batch with less memory, raise "
                "data.batch_size and set optim.micro_batch_size instead (feature cache)",
                self.trainer.accumulate_grad_batches,
            )

    # ------------------------------------------------------------------ FLOPs for Lightning's ThroughputMonitor (MFU)
    @property
    def flops_per_batch(self) -> int | None:
        """Forward + backward FLOPs of one training batch on this device (``torch.utils.flop_counter``: matmuls,
        convolutions, attention), counted during the first optimiser step of the fit; None until then, and under the
        feature cache (``optim.micro_batch_size``: its ``torch.autograd.grad`` calls cannot run under the counter)."""
        return getattr(self, "_flops_per_batch", None)

    def _counts_flops(self) -> bool:
        """Whether to count: a ThroughputMonitor reads the value (its subclass
        :class:`~cxr_vlp.lit.throughput.StudyThroughputMonitor` also stops the count when the fit raises)."""
        from lightning.pytorch.callbacks import ThroughputMonitor

        callbacks = getattr(self.trainer, "callbacks", [])
        return self.automatic_optimization and any(isinstance(c, ThroughputMonitor) for c in callbacks)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.flops_per_batch is None and self._counts_flops():
            if getattr(self, "_flop_count", None) is None:
                from torch.utils.flop_counter import FlopCounterMode

                self._flop_count = [FlopCounterMode(display=False), 0]
                self._flop_count[0].__enter__()
            self._flop_count[1] += 1  # batches accumulated into the first step

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.stop_flop_count()

    def on_train_end(self) -> None:
        self.stop_flop_count()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.automatic_optimization and self.trainer.accumulate_grad_batches == 1:
            self.stop_flop_count()  # a step that skipped the optimiser (e.g. a None loss)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        try:
            super().backward(loss, *args, **kwargs)
        except BaseException:
            self.stop_flop_count()
            raise

    def stop_flop_count(self) -> None:
        """Leave the FLOP counter (a process-wide dispatch mode) if it is running, keeping what it counted."""
        counter = getattr(self, "_flop_count", None)
        if counter is not None:
            self._flop_count = None
            counter[0].__exit__(None, None, None)
            self._flops_per_batch = counter[0].get_total_flops() // max(1, counter[1])

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch, stage: str) -> None:
        image, text = self.encode_views(batch)
        if self._eval_inputs is None:
            self._start_eval_inputs()
        head = self.loss_head
        out = head([head.loss_view(image[0])], [head.loss_view(text[0])], labels=batch.labels, **self._eval_inputs)
        self.log(f"{stage}/loss", out.loss, sync_dist=True, batch_size=len(batch))
        img, txt = image[0].detach(), text[0].detach()
        self._eval_outputs[stage].append(
            (batch.index, img.mean, txt.mean, img.logvar, txt.logvar, head.eval_scores(img, self._eval_inputs))
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def gathered_eval_split(self, stage: str) -> EvalSplit:
        """The eval outputs of the whole split across ranks, each study once, ordered by study index."""
        outputs = self._eval_outputs.pop(stage, [])
        tensors = [
            None if outputs[0][k] is None else torch.cat([o[k] for o in outputs]) for k in range(len(outputs[0]))
        ]
        if self.trainer.world_size > 1:
            tensors = [None if t is None else self.all_gather(t).flatten(0, 1) for t in tensors]
        first = _first_occurrence(tensors[0])
        index, img, txt, lv_img, lv_txt, scores = (None if t is None else t[first] for t in tensors)
        return EvalSplit(index, Embeddings(img, lv_img), Embeddings(txt, lv_txt), scores)

    @property
    def eval_uncertainty(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-sample uncertainty Σσ² of the last gathered split, by stage (splits with log-variances only)."""
        from cxr_vlp.losses.probabilistic import uncertainty

        return {
            stage: {
                "index": e.index.cpu(),
                "image": uncertainty(e.image.logvar).cpu(),
                "text": uncertainty(e.text.logvar).cpu(),
            }
            for stage, e in self.eval_splits.items()
            if e.image.logvar is not None
        }

    @property
    def eval_concept_scores(self) -> dict[str, dict[str, torch.Tensor]]:
        """The head's per-study scores (image concept scores f Cᵀ ``[N, K]``) of the last gathered split, by stage."""
        return {
            stage: {"index": e.index.cpu(), "scores": e.scores.float().cpu()}
            for stage, e in self.eval_splits.items()
            if e.scores is not None
        }

    def _log_retrieval(self, stage: str) -> None:
        if not self._eval_outputs.get(stage):
            return
        split = self.gathered_eval_split(stage)
        self.eval_splits[stage] = split.cpu()
        self.log_dict(head_retrieval(self.loss_head, split.image, split.text, prefix=f"{stage}/"), sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")
        self._eval_inputs = None

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")
        self._eval_inputs = None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_with_cosine(
            self.named_parameters(),
            self.optim_cfg,
            self.scheduler_cfg,
            int(self.trainer.estimated_stepping_batches),
            no_decay_prefixes=("loss_head.",),
        )


def _first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of ``index``, in increasing value order.

    DistributedSampler pads the last shard with repeated samples; they must count once in retrieval.
    """
    values, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((values.numel(),), index.numel(), dtype=torch.long, device=index.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")
