"""Run the evaluation tasks on a trained module: what ``python -m cxr_vlp.eval`` and the end of training call.

Tasks (``evaluation.tasks``): ``retrieval`` (exact-pair and class-based, both ways), ``zeroshot`` (prompt pairs,
Youden thresholds from validation), ``probe`` (linear / MLP on frozen image features), ``uncertainty``
(probabilistic heads) and ``concepts`` (concept heads). Writes ``metrics.json``, ``report.md`` and the figures
into the output directory; thresholds are only ever fitted on the validation split.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_vlp.eval import report as md
from cxr_vlp.eval.embed import SplitEmbeddings, cached_embeddings
from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.metrics.retrieval import evaluate_retrieval
from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.tracking import hooks as tracking
from cxr_vlp.utils.reporting import write_metrics

log = logging.getLogger(__name__)

TASKS = ("retrieval", "zeroshot", "probe", "uncertainty", "concepts")
# figures that show patient images or report text (never uploaded for credentialed datasets unless allowed)
PATIENT_CONTENT = {"retrieval_i2t", "retrieval_t2i", "gradcam"}


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


class Evaluator:
    """Embeds the splits it needs once and runs the requested tasks (see the module docstring) on ``model``, any
    :class:`~cxr_vlp.inference.base.ImageTextModel` (our checkpoints as :class:`~cxr_vlp.inference.CXRModel`,
    other people's models through their adapters): what depends on the model (the retrieval order, the zero-shot
    scale, whether uncertainty or concept tasks apply, the concept names) is asked of it.
    ``ckpt_path``: the source named in ``report.md``.
    """

    def __init__(
        self,
        model: ImageTextModel,
        datamodule,
        cfg: dict[str, Any],
        output_dir: str | Path,
        ckpt_path: str | None = None,
        data_cfg: dict[str, Any] | None = None,
        credentialed: bool = False,
        loggers: list | None = None,
    ) -> None:
        self.model = model
        self.datamodule = datamodule
        self.cfg = cfg
        self.out = Path(output_dir)
        self.fig_dir = self.out / "figures"
        self.ckpt_path = ckpt_path
        self.data_cfg = data_cfg or {}
        self.credentialed = credentialed
        self.loggers = loggers or []
        self._emb: dict[str, SplitEmbeddings] = {}
        self.result = EvalResult()
        self.label_names = list(CHEXPERT_LABELS)
        self._unlabelled: dict[str, list[str]] = {}  # label task -> its splits without any known label
        self._datasets: dict[str, Any] = {}

    # ------------------------------------------------------------------ embeddings
    def embeddings(self, split: str) -> SplitEmbeddings:
        if split not in self._emb:
            limit = self.cfg.get("probe", {}).get("max_train_studies") if split == "train" else None
            self._emb[split] = cached_embeddings(
                self.model, self.datamodule, split, self.out / "embeddings", data_cfg=self.data_cfg, limit=limit
            )
        return self._emb[split]

    def dataset(self, split: str):
        """The split as the model sees it (its own image preprocessing), for figures and Grad-CAM."""
        if split not in self._datasets:
            self._datasets[split] = self.datamodule.eval_dataset(split, self.model.image_transform)
        return self._datasets[split]

    # ------------------------------------------------------------------ tasks
    def run(self, tasks: list[str] | None = None) -> EvalResult:
        tasks = list(self.cfg.get("tasks", TASKS) if tasks is None else tasks)
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown evaluation task(s) {unknown}; known: {list(TASKS)}")
        for task in TASKS:
            if task in tasks:
                getattr(self, f"_{task}")()
        self.result.sections[:0] = self._label_notes(tasks)
        self._finish()
        return self.result

    def _retrieval(self) -> None:
        cfg = self.cfg.get("retrieval", {})
        test = self.embeddings("test")
        side = {
            "i2t": (test.image_embeddings, test.text_embeddings),
            "t2i": (test.text_embeddings, test.image_embeddings),
        }

        def score_fn(direction: str, q_rows: torch.Tensor, g_rows: torch.Tensor) -> torch.Tensor:
            q, g = side[direction]
            return self.model.ranking_scores(q.rows(q_rows.cpu()), g.rows(g_rows.cpu()))

        metrics, scans = evaluate_retrieval(
            test.image,
            test.text,
            labels=test.labels,
            texts=test.texts,
            prefix="test/",
            chunk_size=int(cfg.get("chunk_size", 1024)),
            precision_ks=tuple(cfg.get("precision_ks", (1, 5, 10))),
            score_fn=score_fn,
        )
        self.result.metrics.update(metrics)
        self.result.sections.append(md.retrieval_section(metrics, "test"))
        self._scans = scans
        if self.cfg.get("figures", True):
            self._retrieval_figures(test, scans)

    def _zeroshot(self) -> None:
        from cxr_vlp.eval.zeroshot import PromptSet, zeroshot_classify
        from cxr_vlp.metrics.classification import evaluate_binary

        if self._without_labels("zero-shot", ("val", "test")):
            return
        prompts = PromptSet.from_config(self.cfg.get("zeroshot", {}).get("prompts"))
        scale = self.model.zero_shot_scale
        probs = {
            s: zeroshot_classify(self.model.encode_texts, self.embeddings(s).image, self.label_names, prompts, scale)
            for s in ("val", "test")
        }
        report = evaluate_binary(
            _np(probs["val"]),
            _np(self.embeddings("val").labels),
            _np(probs["test"]),
            _np(self.embeddings("test").labels),
            self.label_names,
            **self._bootstrap(),
        )
        self.result.metrics.update(report.to_flat("test/zeroshot/"))
        self.result.sections.append(
            md.classification_section(
                "Zero-shot classification", report, f"two-way softmax of prompt pairs, scale {scale:.1f}"
            )
        )
        self._roc_figure("roc_zeroshot", report)
        self._zeroshot_prompts = prompts

    def _probe(self) -> None:
        from cxr_vlp.eval.probe import ProbeConfig, predict_probs, train_probe
        from cxr_vlp.metrics.classification import evaluate_binary

        if self._without_labels("probe", ("train", "val", "test")):
            return
        cfg = dict(self.cfg.get("probe", {}))
        kinds = list(cfg.pop("kinds", ["linear", "mlp"]))
        fractions = list(cfg.pop("label_fractions", [1.0]))
        cfg.pop("max_train_studies", None)
        tr, va, te = self.embeddings("train"), self.embeddings("val"), self.embeddings("test")
        for kind in kinds:
            for fraction in fractions:
                pc = ProbeConfig(**{**cfg, "kind": kind, "label_fraction": float(fraction)})
                res = train_probe(tr.features, tr.labels, va.features, va.labels, pc)
                report = evaluate_binary(
                    _np(predict_probs(res, va.features)),
                    _np(va.labels),
                    _np(predict_probs(res, te.features)),
                    _np(te.labels),
                    self.label_names,
                    **self._bootstrap(),
                )
                tag = kind if fraction == 1.0 else f"{kind}_{int(round(100 * fraction))}pct"
                self.result.metrics.update(report.to_flat(f"test/probe_{tag}/"))
                self.result.sections.append(
                    md.classification_section(
                        f"Probe: {kind}, {100 * fraction:g}% of training labels ({res.n_train_used} studies)",
                        report,
                        f"frozen image features, early stopping at epoch {res.best_epoch} on validation mean AUROC",
                    )
                )
                if fraction == fractions[0] and kind == kinds[-1]:
                    self._roc_figure(f"roc_probe_{kind}", report)

    def _uncertainty(self) -> None:
        if not self.model.probabilistic:
            log.info("uncertainty: skipped (the model is not probabilistic)")
            return
        from cxr_vlp.eval.uncertainty import recall_by_uncertainty_bins, risk_coverage

        test = self.embeddings("test")
        if not hasattr(self, "_scans"):
            self._retrieval()
        ranks = self._scans["i2t"].ranks
        u = test.image_uncertainty
        bins = recall_by_uncertainty_bins(ranks, u.numpy(), n_bins=min(10, len(test)))
        rc = risk_coverage(ranks, u.numpy())
        self.result.metrics.update(bins.to_flat("test/uncertainty/") | rc.to_flat("test/uncertainty/"))
        self.result.sections.append(md.uncertainty_section(bins, rc))
        if self.cfg.get("figures", True):
            from cxr_vlp.eval.figures import uncertainty_figure

            self._figure(
                "uncertainty", uncertainty_figure, bins.mean_uncertainty, bins.recall, rc.coverage, rc.risk, rc.aurc
            )

    def _concepts(self) -> None:
        if not self.model.concept_names:
            log.info("concepts: skipped (the model has no concept bank)")
            return
        from cxr_vlp.eval.concept_audit import (
            concept_relevance,
            confounder_table,
            confounders_markdown,
            fit_concept_bottleneck,
            top_concepts,
        )
        from cxr_vlp.metrics.classification import auroc_per_label

        if self._without_labels("concept audit", ("train", "val", "test")):
            return
        names = list(self.model.concept_names)
        tr, va, te = self.embeddings("train"), self.embeddings("val"), self.embeddings("test")
        cbm = fit_concept_bottleneck(
            _np(tr.concept_scores), _np(tr.labels), _np(va.concept_scores), _np(va.labels), self.label_names, names
        )
        auc = auroc_per_label(cbm.predict_probs(_np(te.concept_scores)), _np(te.labels))
        for name, value in zip(self.label_names, auc):
            self.result.metrics[f"test/concept_bottleneck/auroc/{name}"] = float(value)
        self.result.metrics["test/concept_bottleneck/auroc_mean"] = float(np.nanmean(auc))
        rows = confounder_table(
            cbm, concept_relevance(names, self.label_names), top=int(self.cfg.get("concepts", {}).get("top", 10))
        )
        example = {}
        for i in range(min(int(self.cfg.get("figure_examples", 4)), len(te))):
            lab = te.labels[i].nan_to_num(0)
            label = self.label_names[int(lab.argmax())] if lab.max() > 0 else "No Finding"
            example[te.study_ids[i]] = (label, top_concepts(cbm, _np(te.concept_scores[i]), label, k=5))
        self.result.sections.append(md.concept_section(self.label_names, auc, confounders_markdown(rows), example))

    # ------------------------------------------------------------------ labels of the label tasks
    def _table(self, split: str):
        return (getattr(self.datamodule, "tables", None) or {}).get(split)

    def _labels_known(self, split: str) -> bool:
        """Whether ``split`` has at least one known label value (the data module's table, else its embeddings)."""
        table = self._table(split)
        labels = table.labels if table is not None else self.embeddings(split).labels
        return bool(np.isfinite(np.asarray(labels, dtype=np.float64)).any())

    def _without_labels(self, task: str, splits: tuple[str, ...]) -> bool:
        """True (and the task recorded for the one-line note) when any of ``splits`` has no known label."""
        missing = [s for s in splits if not self._labels_known(s)]
        if missing:
            self._unlabelled[task] = missing
            log.info("%s: skipped, no known labels in the %s split(s)", task, " / ".join(missing))
        return bool(missing)

    def _label_notes(self, tasks: list[str]) -> list[str]:
        """One line on skipped label tasks (no known labels), one on labels derived from the report text."""
        if "retrieval" in tasks and not self._labels_known("test"):
            self._unlabelled["class-based P@K"] = ["test"]
        notes = []
        if self._unlabelled:
            splits = sorted({s for v in self._unlabelled.values() for s in v}, key=["train", "val", "test"].index)
            notes.append(md.no_labels_line(list(self._unlabelled), splits))
        table = self._table("test")
        from_text = table.labels_from_text() if table is not None and table.has_labels else []
        if from_text:
            notes.append(md.text_labels_line(from_text, len(self.label_names)))
        return notes

    # ------------------------------------------------------------------ figures and output
    def _bootstrap(self) -> dict[str, int]:
        b = self.cfg.get("bootstrap", {})
        return {"n_resamples": int(b.get("n_resamples", 1000)), "seed": int(b.get("seed", 0))}

    def _figure(self, name: str, fn, *args, **kwargs) -> None:
        path = self.fig_dir / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.result.figures[name] = Path(fn(path, *args, **kwargs))
        except Exception as err:  # a figure must never lose the metrics
            log.warning("figure %s failed: %s", name, err)

    def _roc_figure(self, name: str, report) -> None:
        if not self.cfg.get("figures", True):
            return
        from cxr_vlp.eval.figures import roc_figure

        curves = [report.roc_curve(i) for i in range(len(self.label_names)) if math.isfinite(report.auroc[i])]
        self._figure(name, roc_figure, curves)

    def _images(self, split: str, rows: list[int]) -> torch.Tensor:
        """Model inputs ``[n, 1, S, S]`` of ``rows`` for figures: a model fed RGB copies of the gray image gets their
        channel mean (an affine function of the gray values, which the figures' min-max display undoes)."""
        dataset = self.dataset(split)
        images = torch.stack([dataset[int(r)].images[0] for r in rows])
        return images.mean(dim=1, keepdim=True) if images.shape[1] != 1 else images

    def _retrieval_figures(self, test: SplitEmbeddings, scans) -> None:
        """Full-gallery retrieval grids: top 5 per example query, the true match framed."""
        from cxr_vlp.eval.figures import retrieval_grid, text_to_image_grid, tsne_figure

        n_ex = min(int(self.cfg.get("figure_examples", 4)), len(test))
        rows = list(range(n_ex))
        top_i2t = [scans["i2t"].topk[r, :5].tolist() for r in rows]
        hits = [next((k for k, j in enumerate(t) if j == r), None) for r, t in zip(rows, top_i2t)]
        self._figure(
            "retrieval_i2t",
            retrieval_grid,
            self._images("test", rows),
            [[test.texts[j] for j in t] for t in top_i2t],
            [test.texts[r] for r in rows],
            hits,
        )
        top_t2i = [scans["t2i"].topk[r, :5].tolist() for r in rows]
        hits_t = [next((k for k, j in enumerate(t) if j == r), None) for r, t in zip(rows, top_t2i)]
        images = torch.stack([self._images("test", t) for t in top_t2i])
        self._figure("retrieval_t2i", text_to_image_grid, [test.texts[r] for r in rows], images, hits_t)
        self._figure("tsne", tsne_figure, test.image.numpy(), test.labels.numpy(), self.label_names)
        self._gradcam(test, rows)

    def _gradcam(self, test: SplitEmbeddings, rows: list[int]) -> None:
        from cxr_vlp.eval.figures import gradcam_figure
        from cxr_vlp.eval.zeroshot import PromptSet, class_text_embeddings

        prompts = PromptSet.from_config(self.cfg.get("zeroshot", {}).get("prompts"))
        label = str(self.cfg.get("gradcam_label", "Cardiomegaly"))
        if label not in prompts.positive:
            raise ValueError(f"evaluation.gradcam_label={label!r} is not a label with prompts")
        emb = class_text_embeddings(self.model.encode_texts, prompts.positive[label])
        images = self._images("test", rows)

        if not self.model.explainable:
            log.info("figure gradcam skipped: Grad-CAM is not available for %s", self.model.name)
            return

        def draw(path: Path) -> Path:
            maps = self.model.gradcam_maps(images, emb)
            return gradcam_figure(path, images, maps, [f"{test.study_ids[r]}: {label}" for r in rows])

        self._figure("gradcam", draw)

    def _finish(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_metrics(self.result.metrics, self.out / "metrics.json")
        figures = [f"![{name}](figures/{p.name})" for name, p in self.result.figures.items()]
        text = md.document(self.result.sections, figures, self.ckpt_path, self.credentialed)
        (self.out / "report.md").write_text(text)
        self._log_metrics()
        self._log_figures()
        tracking.after_evaluation(self)  # the W&B tables (per-label AUROC, retrieval examples)
        log.info("evaluation written to %s (metrics.json, report.md, %d figures)", self.out, len(self.result.figures))

    def _log_metrics(self) -> None:
        """The suite's scalars to the run's loggers (W&B, CSV, ...) under ``eval/``, beside its figures."""
        scalars = {
            f"eval/{k.removeprefix('test/')}": float(v)
            for k, v in self.result.metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        }
        for logger in self.loggers:
            if hasattr(logger, "log_metrics"):
                logger.log_metrics(scalars)
                logger.save()

    def _log_figures(self) -> None:
        allow = bool(self.cfg.get("allow_patient_content_upload", False))
        for logger in self.loggers:
            if not hasattr(logger, "log_image"):
                continue
            for name, path in self.result.figures.items():
                if name in PATIENT_CONTENT and self.credentialed and not allow:
                    log.info(
                        "figure %s not uploaded: the dataset is under credentialed access (set "
                        "evaluation.allow_patient_content_upload=true to override)",
                        name,
                    )
                    continue
                logger.log_image(key=f"eval/{name}", images=[str(path)])
