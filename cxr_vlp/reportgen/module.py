"""Report generation on a frozen contrastive image tower (CLIP-XRad §III-D, Algorithm 1), as a LightningModule.

image → frozen tower → (memory, global embedding) → concept classifier → positive findings written into a prompt
("Findings: cardiomegaly, pleural effusion.") → ``[CLS] prompt <report>`` → decoder cross-attending to the memory →
report. Training: teacher forcing with label smoothing, plus the classifier's masked BCE; the prompt comes from the
ground-truth labels (``prompts.train_source=labels``) or from the classifier (``predicted``). Validation tunes the
classifier's per-label thresholds (best F1) and scores greedy generations of a few batches; test generates the
whole split (beam search) and writes ``metrics``, ``reportgen/report.md`` and ``reportgen/generations.csv``.
With ``prompts.enabled=false`` the decoder sees ``[CLS] <report>`` only (the ablation).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from cxr_vlp.checkpoint import CXRPayload, read_checkpoint, write_payload
from cxr_vlp.data.batch import Batch
from cxr_vlp.data.tokenizer import build_tokenizer, tokenizer_to_json
from cxr_vlp.lit.module import instantiate_node
from cxr_vlp.lit.schedule import adamw_with_cosine
from cxr_vlp.lit.transfer import BatchTransferMixin
from cxr_vlp.metrics.classification import f1_thresholds, youden_thresholds
from cxr_vlp.reportgen.decoder import ReportDecoder
from cxr_vlp.reportgen.metrics import bleu_scores, clinical_metrics, rouge_l, write_generation_report
from cxr_vlp.reportgen.prompts import (
    NUM_LABELS,
    ConceptClassifier,
    masked_bce,
    prompts_from_labels,
    prompts_from_probabilities,
)
from cxr_vlp.reportgen.tokens import (
    add_report_token,
    build_decoder_inputs,
    build_prefix,
    decode_reports,
    normalize_reports,
    suppressed_token_ids,
)
from cxr_vlp.reportgen.tower import FrozenImageTower
from cxr_vlp.utils.checkpoint import is_remote

log = logging.getLogger(__name__)
# per-label decision thresholds of the concept classifier, fitted on each validation epoch
THRESHOLD_RULES = {"f1": f1_thresholds, "youden": youden_thresholds}
HEADLINE = (
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "rougeL",
    "clinical/micro_precision",
    "clinical/micro_recall",
    "clinical/micro_f1",
    "clinical/macro_f1",
)


class ReportGenModule(BatchTransferMixin, L.LightningModule):
    """Frozen image tower + concept classifier + cross-attending decoder. Build it with :meth:`from_pretrained`.

    Args:
        image_encoder, embed_dim, projection: the image side of the contrastive checkpoint (its ``model`` node).
        decoder: :class:`ReportDecoder` arguments (``vocab_size`` and ``pad_token_id`` from the tokenizer).
        classifier: :class:`ConceptClassifier` ``hidden`` / ``dropout`` and ``weight`` (of its loss).
        prompts: ``enabled``, ``train_source`` (labels | predicted), ``threshold`` (initial, every label),
            ``tune_threshold`` and ``threshold_rule`` (per-label F1 (default) or Youden's J, on each validation epoch).
        generation: ``num_beams``, ``max_new_tokens``, ``min_new_tokens``, ``length_penalty``,
            ``no_repeat_ngram_size``, ``val_batches`` (greedy generation on that many validation batches),
            ``examples`` (in report.md), ``oracle`` (test also with ground-truth prompts).
        memory_grid: the decoder attends to the tower's patch grid as well as the global embedding.
        data: the resolved data config of the run (stored in the checkpoint payload).
        output_dir: where test writes ``reportgen/`` (default: the trainer's ``default_root_dir``).
    """

    def __init__(
        self,
        image_encoder: dict,
        embed_dim: int,
        projection: str,
        decoder: dict,
        classifier: dict,
        prompts: dict,
        generation: dict,
        optim: dict,
        scheduler: dict,
        memory_grid: bool = False,
        label_smoothing: float = 0.1,
        max_length: int = 160,
        pretrained_ckpt: str | None = None,
        data: dict | None = None,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        tower_cfg = {**image_encoder, "pretrained": False, "checkpoint_path": None}
        self.tower = FrozenImageTower(instantiate_node(tower_cfg), embed_dim, projection, grid=memory_grid)
        self.classifier = ConceptClassifier(
            embed_dim, hidden=classifier.get("hidden"), dropout=classifier.get("dropout", 0.0)
        )
        self.decoder = ReportDecoder(memory_dim=embed_dim, **decoder)
        self.register_buffer("thresholds", torch.full((NUM_LABELS,), float(prompts.get("threshold", 0.5))))
        self.prompt_cfg, self.gen_cfg = dict(prompts), dict(generation)
        self.optim_cfg, self.scheduler_cfg = dict(optim), dict(scheduler)
        self.tokenizer = None
        self.data_config: dict[str, Any] | None = None if data is None else dict(data)
        self.output_dir: Path | None = None if output_dir is None else Path(output_dir)
        self._val: dict[str, list] = defaultdict(list)
        self._test: list[dict[str, str]] = []

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def from_pretrained(
        cls,
        pretrained_ckpt: str | None,
        reportgen: dict,
        optim: dict,
        scheduler: dict,
        data: dict | None = None,
        output_dir: str | None = None,
    ) -> ReportGenModule:
        """A fresh module on the image tower of a contrastive checkpoint (``python -m cxr_vlp.train`` output).

        The decoder uses the checkpoint's own report tokenizer (local WordPiece) unless ``decoder.name_or_path``
        names a Hugging Face model, whose tokenizer it then uses; ``<report>`` is added to it.
        """
        if not pretrained_ckpt:
            raise ValueError(
                "report generation needs pretrained_ckpt=<contrastive checkpoint> (e.g. the best .ckpt "
                "of `python -m cxr_vlp.train +experiment=demo`)"
            )
        path = str(pretrained_ckpt)
        if not is_remote(path) and not Path(path).is_file():
            raise FileNotFoundError(
                f"pretrained_ckpt={pretrained_ckpt}: no such checkpoint (train one with "
                "`python -m cxr_vlp.train +experiment=<contrastive experiment>`)"
            )
        checkpoint, payload = read_checkpoint(path)
        model = payload.hparams.get("model")
        if payload.kind != "contrastive" or model is None or "image_encoder" not in model:
            raise KeyError(f"{path} has no model.image_encoder hyper-parameters: not a cxr_vlp contrastive checkpoint")
        decoder_cfg = dict(reportgen["decoder"])
        if decoder_cfg.get("name_or_path"):
            tokenizer = build_tokenizer(
                "pretrained",
                name_or_path=decoder_cfg["name_or_path"],
                allow_download=decoder_cfg.get("allow_download", True),
            )
        elif payload.tokenizer_json:
            tokenizer = payload.tokenizer()
        else:
            tok = dict(model["text_encoder"]["tokenizer"])
            tokenizer = build_tokenizer(tok.pop("kind"), **tok)
        add_report_token(tokenizer)
        decoder_cfg.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        module = cls(
            image_encoder=model["image_encoder"],
            embed_dim=model.get("embed_dim", 256),
            projection=model.get("projection", "linear"),
            decoder=decoder_cfg,
            classifier=reportgen.get("classifier", {}),
            prompts=reportgen.get("prompts", {}),
            generation=reportgen.get("generation", {}),
            optim=optim,
            scheduler=scheduler,
            memory_grid=reportgen.get("memory_grid", False),
            label_smoothing=reportgen.get("label_smoothing", 0.1),
            max_length=reportgen.get("max_length", 160),
            pretrained_ckpt=path,
            data=data,
            output_dir=output_dir,
        )
        module.tower.load_from_contrastive(checkpoint["state_dict"])
        module.tokenizer = tokenizer
        log.info(
            "report generation on the frozen image tower of %s (%s, %d-d); decoder vocabulary %d",
            path,
            model["image_encoder"].get("name"),
            module.tower.embed_dim,
            len(tokenizer),
        )
        return module

    @classmethod
    def from_payload(cls, payload: CXRPayload, state_dict: dict[str, torch.Tensor]) -> ReportGenModule:
        """Rebuild a trained report generator (its tokenizer from the payload; no writes into the training run)."""
        hparams = dict(payload.hparams)
        hparams["decoder"] = {**hparams["decoder"], "pretrained": False}  # the weights come from this file
        hparams["output_dir"] = None
        if hparams.get("data") is None and payload.data is not None:
            hparams["data"] = payload.data
        module = cls(**hparams)
        module.load_state_dict(state_dict)
        module.tokenizer = payload.tokenizer()
        add_report_token(module.tokenizer)
        return module

    def payload(self) -> CXRPayload:
        """What a checkpoint of this module carries besides its weights (see :mod:`cxr_vlp.checkpoint`)."""
        return CXRPayload(
            kind="reportgen",
            hparams=dict(self.hparams),
            data=self.data_config,
            tokenizer_json=tokenizer_to_json(self.tokenizer),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        write_payload(checkpoint, self.payload())

    # ------------------------------------------------------------------ shared pieces
    def _reports(self, batch: Batch) -> list[str]:
        return [texts[0] for texts in batch.texts]

    def _encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory, global_emb = self.tower(batch.images[:, 0])
        return memory, global_emb, self.classifier(global_emb)

    def _prompts(self, logits: torch.Tensor, labels: torch.Tensor, source: str) -> list[str] | None:
        if not self.prompt_cfg.get("enabled", True):
            return None
        if source == "labels":
            return prompts_from_labels(labels)
        if source == "predicted":
            return prompts_from_probabilities(torch.sigmoid(logits.detach().float()), self.thresholds)
        raise ValueError(f"prompts.train_source must be 'labels' or 'predicted', got {source!r}")

    def _losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        memory, _, logits = self._encode(batch)
        prompts = self._prompts(logits, batch.labels, self.prompt_cfg.get("train_source", "labels"))
        inputs = build_decoder_inputs(self.tokenizer, prompts, self._reports(batch), self.hparams.max_length).to(
            self.device
        )
        token_logits = self.decoder(inputs.input_ids, inputs.attention_mask, memory)
        lm = self.decoder.loss(token_logits, inputs.labels, self.hparams.label_smoothing)
        cls = masked_bce(logits.float(), batch.labels)
        return {
            "loss": lm + self.hparams.classifier.get("weight", 1.0) * cls,
            "lm_loss": lm,
            "cls_loss": cls,
            "logits": logits,
        }

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        oracle: bool = False,
        num_beams: int | None = None,
    ) -> tuple[list[str] | None, list[str]]:
        """Reports for ``images [B, C, H, W]``: ``(prompts, texts)``. Prompts from the classifier (thresholds
        tuned on validation), or from ``labels`` with ``oracle=True``; ``None`` when prompts are disabled."""
        memory, global_emb = self.tower(images)
        logits = self.classifier(global_emb)
        prompts = self._prompts(logits, labels, "labels" if oracle else "predicted")
        prefix_ids, prefix_mask = build_prefix(self.tokenizer, prompts, images.shape[0])
        g = self.gen_cfg
        ids = self.decoder.generate(
            memory,
            None,
            prefix_ids.to(self.device),
            prefix_mask.to(self.device),
            max_new_tokens=g.get("max_new_tokens", 100),
            min_new_tokens=g.get("min_new_tokens", 0),
            num_beams=num_beams or g.get("num_beams", 1),
            length_penalty=g.get("length_penalty", 1.0),
            eos_token_id=self.tokenizer.sep_token_id,
            no_repeat_ngram_size=g.get("no_repeat_ngram_size", 0),
            suppress_token_ids=suppressed_token_ids(self.tokenizer),
        )
        return prompts, decode_reports(self.tokenizer, ids)

    def score(self, generated: list[str], references: list[str]) -> dict[str, float]:
        """BLEU / ROUGE-L against the references as this tokenizer writes them (lower case, WordPiece spacing),
        clinical precision / recall / F1 against the original references."""
        normalized = normalize_reports(self.tokenizer, references)
        return {
            **bleu_scores(generated, normalized),
            "rougeL": rouge_l(generated, normalized),
            **clinical_metrics(generated, references),
        }

    # ------------------------------------------------------------------ training and validation
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        out = self._losses(batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=len(batch))
        self.log_dict({"train/lm_loss": out["lm_loss"], "train/cls_loss": out["cls_loss"]}, batch_size=len(batch))
        return out["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self._losses(batch)
        self.log_dict(
            {"val/loss": out["loss"], "val/lm_loss": out["lm_loss"], "val/cls_loss": out["cls_loss"]},
            batch_size=len(batch),
            sync_dist=True,
        )
        self._val["probs"].append(torch.sigmoid(out["logits"].float()))
        self._val["labels"].append(batch.labels.float())
        if batch_idx < self.gen_cfg.get("val_batches", 2):
            _, texts = self.generate(batch.images[:, 0], num_beams=1)
            self._val["generated"].extend(texts)
            self._val["references"].extend(self._reports(batch))

    def on_validation_epoch_end(self) -> None:
        probs, labels = torch.cat(self._val.pop("probs")), torch.cat(self._val.pop("labels"))
        generated, references = self._val.pop("generated", []), self._val.pop("references", [])
        if self.trainer.world_size > 1:
            probs, labels = self.all_gather(probs).flatten(0, 1), self.all_gather(labels).flatten(0, 1)
            generated, references = _gather_lists(generated), _gather_lists(references)
        if self.prompt_cfg.get("tune_threshold", True) and not self.trainer.sanity_checking:
            known = labels.clone()
            known[known < 0] = float("nan")  # uncertain: not a known class for the threshold
            rule = self.prompt_cfg.get("threshold_rule", "f1")
            if rule not in THRESHOLD_RULES:
                raise ValueError(f"prompts.threshold_rule must be one of {sorted(THRESHOLD_RULES)}, got {rule!r}")
            thresholds = THRESHOLD_RULES[rule](probs.cpu().numpy(), known.cpu().numpy())
            self.thresholds.copy_(torch.as_tensor(np.asarray(thresholds), dtype=self.thresholds.dtype))
        if generated:
            metrics = self.score(generated, references)
            self.log_dict({f"val/{k}": metrics[k] for k in HEADLINE if np.isfinite(metrics[k])}, sync_dist=False)

    # ------------------------------------------------------------------ test: the whole split, beam search
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, references = batch.images[:, 0], self._reports(batch)
        prompts, texts = self.generate(images)
        oracle = (
            self.generate(images, batch.labels, oracle=True)[1]
            if self.gen_cfg.get("oracle", True) and self.prompt_cfg.get("enabled", True)
            else [None] * len(texts)
        )
        for i, study in enumerate(batch.study_ids):
            self._test.append(
                {
                    "study_id": study,
                    "prompt": prompts[i] if prompts else "",
                    "generated": texts[i],
                    "oracle": oracle[i] or "",
                    "reference": references[i],
                }
            )

    def on_test_epoch_end(self) -> None:
        rows = _gather_lists(self._test) if self.trainer.world_size > 1 else self._test
        self._test = []
        rows = list({r["study_id"]: r for r in rows}.values())  # DistributedSampler pads with repeats
        references = [r["reference"] for r in rows]
        metrics = self.score([r["generated"] for r in rows], references)
        logged = {f"test/{k}": v for k, v in metrics.items() if np.isfinite(v)}
        if rows and rows[0]["oracle"]:
            oracle = self.score([r["oracle"] for r in rows], references)
            logged.update({f"test/oracle/{k}": oracle[k] for k in HEADLINE if np.isfinite(oracle[k])})
        logged["test/num_studies"] = float(len(rows))
        self.log_dict(logged, sync_dist=False)
        if self.trainer.is_global_zero:
            self._write_outputs(rows, metrics, logged)

    def _write_outputs(self, rows: list[dict[str, str]], metrics: dict[str, float], logged: dict[str, float]) -> None:
        out = (self.output_dir or Path(self.trainer.default_root_dir)) / "reportgen"
        out.mkdir(parents=True, exist_ok=True)
        with (out / "generations.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["study_id", "prompt", "generated", "oracle", "reference"])
            writer.writeheader()
            writer.writerows(rows)
        extra = {k.removeprefix("test/"): v for k, v in logged.items() if k.startswith("test/oracle/")}
        title = "Report generation — " + ("concept prompts" if self.prompt_cfg.get("enabled", True) else "no prompts")
        write_generation_report(
            out / "report.md", {**metrics, **extra}, rows[: self.gen_cfg.get("examples", 5)], title=title
        )
        log.info(
            "report generation: %d test studies, BLEU-4 %.3f, ROUGE-L %.3f, clinical micro F1 %.3f -> %s",
            len(rows),
            metrics["bleu4"],
            metrics["rougeL"],
            metrics["clinical/micro_f1"],
            out,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_with_cosine(
            self.named_parameters(), self.optim_cfg, self.scheduler_cfg, int(self.trainer.estimated_stepping_batches)
        )


def _gather_lists(items: list) -> list:
    """Concatenate a Python list across ranks (every rank gets all items, rank order)."""
    gathered: list[list] = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
    torch.distributed.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]
