"""The contrastive pretraining LightningModule: dual encoder + a swappable loss head.

Constructor arguments are plain dicts (the resolved Hydra nodes), so the module rebuilds itself from a
checkpoint's hyper-parameters, and checkpoints load with ``weights_only=True``. The tokenizer travels
inside the checkpoint (``checkpoint["cxr_vlp"]``), which makes a checkpoint self-contained.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from functools import partial
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LambdaLR

import cxr_vlp
from cxr_vlp.data.batch import Batch
from cxr_vlp.eval.retrieval import bidirectional_retrieval
from cxr_vlp.lit.schedule import cosine_with_warmup, resolve_warmup
from cxr_vlp.losses.heads import LossHead
from cxr_vlp.models.dual_encoder import DualEncoder
from cxr_vlp.models.hub import ModelNotAvailableError
from cxr_vlp.models.tokenizer import build_tokenizer, tokenizer_from_json, tokenizer_to_json

log = logging.getLogger(__name__)


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
    )


class ContrastiveModule(L.LightningModule):
    """Image–report contrastive pretraining with retrieval validation.

    Args:
        model: the ``model`` node (``image_encoder``, ``text_encoder`` with its ``tokenizer``, ``embed_dim``,
            ``projection``).
        loss: the ``loss`` node, instantiated to a :class:`LossHead`.
        optim: ``lr``, ``weight_decay``, ``betas``, ``eps``, ``fused``.
        scheduler: ``warmup`` (steps, or a fraction of all steps if < 1) and ``min_lr_ratio``.
    The local BERT's embedding table has ``tokenizer.vocab_size`` rows (the tokenizer's upper bound; a
    trained vocabulary may be smaller), so the model does not depend on the trained tokenizer.
    """

    def __init__(self, model: dict, loss: dict, optim: dict, scheduler: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_dual_encoder(model)
        self.loss_head: LossHead = instantiate(loss)
        self.optim_cfg = dict(optim)
        self.scheduler_cfg = dict(scheduler)
        self.tokenizer = None
        self._eval_outputs: dict[str, list[tuple[torch.Tensor, ...]]] = defaultdict(list)

    # ------------------------------------------------------------------ tokenizer in the checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None) or self.tokenizer
        local = self.hparams["model"]["text_encoder"].get("tokenizer", {}).get("kind") == "wordpiece"
        checkpoint["cxr_vlp"] = {
            "version": cxr_vlp.__version__,
            "tokenizer_json": tokenizer_to_json(tokenizer) if local and tokenizer is not None else None,
        }

    # ------------------------------------------------------------------ forward
    def _views(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        b, vi = batch.images.shape[:2]
        vt = batch.input_ids.shape[1]
        img = self.encoder.encode_image(batch.images.flatten(0, 1)).view(b, vi, -1)
        txt = self.encoder.encode_text(batch.input_ids.flatten(0, 1), batch.attention_mask.flatten(0, 1)).view(b, vt, -1)
        return list(img.unbind(1)), list(txt.unbind(1))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        image_views, text_views = self._views(batch)
        out = self.loss_head(image_views, text_views, labels=batch.labels)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v for k, v in out.logs.items() if k != "loss"}, batch_size=len(batch))
        return out.loss

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch, stage: str) -> None:
        image_views, text_views = self._views(batch)
        out = self.loss_head(image_views[:1], text_views[:1], labels=batch.labels)
        self.log(f"{stage}/loss", out.loss, sync_dist=True, batch_size=len(batch))
        self._eval_outputs[stage].append((batch.index, image_views[0].detach(), text_views[0].detach()))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def gathered_eval_embeddings(self, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings of the whole split across ranks, each study once, ordered by study index."""
        outputs = self._eval_outputs.pop(stage, [])
        index = torch.cat([o[0] for o in outputs])
        img = torch.cat([o[1] for o in outputs])
        txt = torch.cat([o[2] for o in outputs])
        if self.trainer.world_size > 1:
            index, img, txt = (self.all_gather(t).flatten(0, 1) for t in (index, img, txt))
        first = _first_occurrence(index)
        return index[first], img[first], txt[first]

    def _log_retrieval(self, stage: str) -> None:
        if not self._eval_outputs.get(stage):
            return
        _, img, txt = self.gathered_eval_embeddings(stage)
        metrics = bidirectional_retrieval(img.float(), txt.float(), prefix=f"{stage}/")
        metrics[f"{stage}/rsum"] = sum(v for k, v in metrics.items() if "/R@" in k)
        metrics[f"{stage}/num_studies"] = float(img.shape[0])
        self.log_dict(metrics, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or name.startswith("loss_head.") else decay).append(param)
        groups = [{"params": decay, "weight_decay": cfg.get("weight_decay", 0.0)},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))),
                                      eps=cfg.get("eps", 1e-8), fused=cfg.get("fused") or None)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = resolve_warmup(self.scheduler_cfg.get("warmup", 0), total)
        lr_lambda = partial(cosine_with_warmup, warmup_steps=warmup, total_steps=total,
                            min_lr_ratio=self.scheduler_cfg.get("min_lr_ratio", 0.0))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": LambdaLR(optimizer, lr_lambda), "interval": "step", "frequency": 1}}


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
    checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"])
    model_cfg = {**hparams["model"]}
    model_cfg["image_encoder"] = {**model_cfg["image_encoder"], "pretrained": False, "checkpoint_path": None}
    if model_cfg["text_encoder"].get("name_or_path") is not None:
        model_cfg["text_encoder"] = {**model_cfg["text_encoder"], "pretrained": False}
    hparams["model"] = model_cfg
    module = ContrastiveModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    saved = (checkpoint.get("cxr_vlp") or {}).get("tokenizer_json")
    if saved:
        module.tokenizer = tokenizer_from_json(saved)
    else:
        tok = dict(model_cfg["text_encoder"]["tokenizer"])
        module.tokenizer = build_tokenizer(tok.pop("kind"), **tok)
    return module
