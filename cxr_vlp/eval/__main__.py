"""Evaluation entry point: ``python -m cxr_vlp.eval ckpt_path=<file.ckpt> [data=<name> data.root=...]
[evaluation.tasks=[retrieval,zeroshot,probe,uncertainty,concepts]]``, or ``python -m cxr_vlp.eval model=<spec>
data=<name> data.root=...`` for any model :func:`~cxr_vlp.inference.adapters.load_model` reads (``docs/models.md``).

A cxr_vlp checkpoint is loaded (weights only) with the model, loss and data configs it was trained with; another
project's model carries no data config, so ``data=`` is required with it. The splits are embedded once (cached in
the output directory), the tasks run and ``metrics.json``, ``report.md`` and ``figures/`` are written into the run
directory (``logs/eval/runs/<time>/``). On a dataset without reports (every study's text is built from its labels,
e.g. ``data=rsna``) retrieval is skipped and the label tasks run.

``model=`` on the command line is short for ``model_source.spec=`` (:func:`expand_model_override`): ``model`` is
also the training config group of our dual encoder, which Hydra would look the value up in.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cxr_vlp.eval.report import print_report
from cxr_vlp.eval.run import TASKS, Evaluator
from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.inference.model import CXRModel
from cxr_vlp.inference.payload import payload_from_checkpoint
from cxr_vlp.utils.checkpoint import is_remote
from cxr_vlp.utils.config import config_dir
from cxr_vlp.utils.validate import EVAL_SCHEMA, validate_config

log = logging.getLogger(__name__)


MODEL_SHORTHAND = "model="
NO_REPORT = "no_report"  # StudyTable.extra column of readers whose studies have no report (text built from labels)


def expand_model_override(args: Sequence[str]) -> list[str]:
    """Command-line arguments with ``model=<spec>`` (and ``+model=`` / ``++model=``) written as
    ``model_source.spec=<spec>``; every other argument unchanged."""
    out = []
    for arg in args:
        bare = arg.lstrip("+")
        out.append("model_source.spec=" + bare[len(MODEL_SHORTHAND) :] if bare.startswith(MODEL_SHORTHAND) else arg)
    return out


def _source_options(cfg: DictConfig) -> dict[str, Any]:
    """The adapter options of ``model_source`` that are set (``arch``, ``quick_gelu``, ``context_length``)."""
    source = cfg.get("model_source") or {}
    return {k: source.get(k) for k in ("arch", "quick_gelu", "context_length") if source.get(k) is not None}


def load_eval_model(cfg: DictConfig, evaluation: dict[str, Any]) -> tuple[ImageTextModel, str, dict | None]:
    """(the model, the source named in the report, the data config saved with it or None) from ``ckpt_path`` or
    ``model_source.spec`` (exactly one of them)."""
    spec = (cfg.get("model_source") or {}).get("spec")
    if cfg.get("ckpt_path") and spec:
        raise ValueError(f"give either ckpt_path or model, not both (ckpt_path={cfg.ckpt_path}, model={spec})")
    device, dtype = evaluation.get("device", "auto"), evaluation.get("precision")
    batch_size = int((cfg.get("model_source") or {}).get("batch_size") or 32)
    if cfg.get("ckpt_path"):
        ckpt = cfg.ckpt_path if is_remote(cfg.ckpt_path) else Path(cfg.ckpt_path)
        if isinstance(ckpt, Path) and not ckpt.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        payload = payload_from_checkpoint(str(ckpt))
        _require_contrastive(payload.kind, str(ckpt))
        model: ImageTextModel = CXRModel(payload, device=device, dtype=dtype, batch_size=batch_size)
        source = str(ckpt)
    elif spec:
        from cxr_vlp.inference.adapters import load_model

        model = load_model(str(spec), device=device, dtype=dtype, batch_size=batch_size, **_source_options(cfg))
        source = str(spec)
    else:
        raise ValueError(
            "no model to evaluate: give ckpt_path=<file.ckpt> (a cxr_vlp checkpoint) or model=<spec> (docs/models.md)"
        )
    if not isinstance(model, CXRModel):
        return model, source, None
    _require_contrastive(model.kind, source)
    return model, source, model.payload.record.data or model.payload.hparams.get("data")


def _require_contrastive(kind: str, source: str) -> None:
    if kind != "contrastive":
        raise ValueError(
            f"{source} is a {kind} checkpoint: the evaluation suite scores contrastive models "
            "(report generation is scored by its own test: `python -m cxr_vlp.train "
            "+experiment=reportgen_demo ...`; single reports: `python -m cxr_vlp.generate`)"
        )


def eval_tasks(evaluation: dict[str, Any], datamodule) -> list[str]:
    """``evaluation.tasks`` (all when null), without retrieval when the test split has no reports (the
    :data:`NO_REPORT` column of its table is true for every study)."""
    tasks = list(TASKS if evaluation.get("tasks") is None else evaluation["tasks"])
    table = (getattr(datamodule, "tables", None) or {}).get("test")
    flags = table.extra.get(NO_REPORT) if table is not None else None
    if "retrieval" in tasks and flags and all(flags):
        log.info("retrieval: skipped (the dataset has no reports: its texts are built from the labels)")
        tasks.remove("retrieval")
    return tasks


def evaluate(cfg: DictConfig) -> dict[str, float]:
    validate_config(cfg, EVAL_SCHEMA)
    evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
    model, source, saved_data = load_eval_model(cfg, evaluation)
    if cfg.get("data") is not None:
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    elif saved_data is not None:
        data_cfg = saved_data
    else:
        raise ValueError(
            f"model={source} is not a cxr_vlp checkpoint, so it carries no data config: name the data "
            "to evaluate on, e.g. data=chexpert data.root=/path/to/CheXpert-v1.0-small"
        )
    datamodule = instantiate(OmegaConf.create(data_cfg), tokenizer=None)
    if isinstance(model, CXRModel):
        datamodule.use_tokenizer(model.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("test")
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if v is not None and "_target_" in v]
    output_dir = Path(cfg.paths.output_dir)
    evaluator = Evaluator(
        model,
        datamodule,
        evaluation,
        output_dir,
        ckpt_path=source,
        data_cfg=data_cfg,
        credentialed=bool(data_cfg.get("credentialed", False)),
        loggers=loggers,
    )
    result = evaluator.run(eval_tasks(evaluation, datamodule))
    print_report(output_dir / "report.md")
    return result.metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    evaluate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = expand_model_override(sys.argv[1:])
    main()
