"""Evaluation entry point: ``python -m cxr_vlp.eval ckpt_path=<file.ckpt> [data=<name> data.root=...]
[evaluation.tasks=[retrieval,zeroshot,probe,uncertainty,concepts]]``.

Loads the checkpoint (weights only) with the model, loss and data configs it was trained with, embeds the
splits once (cached in the output directory), runs the tasks and writes ``metrics.json``, ``report.md`` and
``figures/`` into the run directory (``logs/eval/runs/<time>/``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cxr_vlp.eval.report import print_report
from cxr_vlp.eval.run import Evaluator
from cxr_vlp.inference.model import CXRModel
from cxr_vlp.inference.payload import payload_from_checkpoint
from cxr_vlp.utils.checkpoint import is_remote
from cxr_vlp.utils.config import config_dir
from cxr_vlp.utils.validate import EVAL_SCHEMA, validate_config

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    validate_config(cfg, EVAL_SCHEMA)
    ckpt = cfg.ckpt_path if is_remote(cfg.ckpt_path) else Path(cfg.ckpt_path)
    if isinstance(ckpt, Path) and not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
    payload = payload_from_checkpoint(str(ckpt))
    if payload.kind != "contrastive":
        raise ValueError(f"{ckpt} is a {payload.kind} checkpoint: the evaluation suite scores contrastive models "
                         "(report generation is scored by its own test: `python -m cxr_vlp.train "
                         "+experiment=reportgen_demo ...`; single reports: `python -m cxr_vlp.generate`)")
    model = CXRModel(payload, device=evaluation.get("device", "auto"), dtype=evaluation.get("precision"))
    if cfg.get("data") is not None:
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    else:
        data_cfg = payload.record.data or payload.hparams.get("data")
    datamodule = instantiate(OmegaConf.create(data_cfg), tokenizer=None)
    datamodule.use_tokenizer(model.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("test")
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if v is not None and "_target_" in v]
    output_dir = Path(cfg.paths.output_dir)
    evaluator = Evaluator(model, datamodule, evaluation, output_dir, ckpt_path=str(ckpt), data_cfg=data_cfg,
                          credentialed=bool(data_cfg.get("credentialed", False)), loggers=loggers)
    result = evaluator.run()
    print_report(output_dir / "report.md")
    return result.metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    evaluate(cfg)


if __name__ == "__main__":
    main()
