"""Training entry point: ``python -m cxr_vlp.train +experiment=<name> [overrides]``.

Instantiates data, tokenizer, model, callbacks, loggers and trainer from the Hydra config, fits, tests
the best checkpoint on the held-out split and writes ``metrics.json`` in the run directory. Returns the
value of ``optimized_metric`` (for sweepers).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

from cxr_vlp.checkpoint import read_checkpoint
from cxr_vlp.lit.module import ContrastiveModule, instantiate_node
from cxr_vlp.tracking import hooks as tracking
from cxr_vlp.utils.config import config_dir, require_accelerator
from cxr_vlp.utils.reporting import print_retrieval, to_floats, write_metrics
from cxr_vlp.utils.sweep import finish_wandb, job_failed
from cxr_vlp.utils.validate import validate_config

log = logging.getLogger(__name__)


def _instantiate_dict(node: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` node (callbacks, loggers)."""
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) as the config says; returns the flat metric dict that is written to metrics.json."""
    validate_config(cfg)  # types and ranges, before any data is generated or read
    require_accelerator(cfg.trainer)  # trainer=gpu on a machine without one: say trainer=cpu
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    container = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data, tokenizer=container["model"]["text_encoder"]["tokenizer"])
    module = build_module(container)
    if getattr(module, "tokenizer", None) is not None:  # a module that brings its own (a report decoder's)
        datamodule.use_tokenizer(module.tokenizer)

    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **manual_optimization_overrides(cfg, module)
    )
    try:
        return _fit_test_evaluate(cfg, trainer, module, datamodule, container, output_dir)
    finally:
        finish_wandb(loggers)


def build_module(container: dict) -> L.LightningModule:
    """The LightningModule of the ``module`` config group (``conf/module/contrastive.yaml`` or ``reportgen.yaml``,
    selected by the experiment), built from its resolved node."""
    node = container.get("module")
    if not node or "_target_" not in node:
        raise ValueError("the config has no module._target_: select a module (module=contrastive|reportgen)")
    return instantiate_node(node)


def _fit_test_evaluate(
    cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule, container: dict, output_dir: Path
) -> dict[str, float]:
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(container)

    trainer.fit(
        module, datamodule=datamodule, ckpt_path=resume_path(cfg.get("ckpt_path"), output_dir), weights_only=True
    )  # remote ckpt_path too (Lightning defaults http(s) URLs to full unpickling)
    recover_after_spawn(trainer, module, datamodule)
    if trainer.is_global_zero:
        datamodule.save_split(output_dir / "split.json")
    metrics = to_floats(trainer.callback_metrics)

    if cfg.get("test"):
        checkpoint = next(
            (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None
        )
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if not best:
            log.warning("no best checkpoint (fast_dev_run or no validation); testing the current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(to_floats(trainer.callback_metrics))
        if best:
            metrics["best_model_score"] = float(checkpoint.best_model_score)

    if trainer.is_global_zero:
        write_metrics(metrics, output_dir / "metrics.json")
        if cfg.get("test") and "test/i2t/R@1" in metrics:
            print_retrieval(metrics, "test")
        log.info("metrics written to %s", output_dir / "metrics.json")

    # the evaluation suite on the tested weights (rank 0), into <run>/eval/ and the eval/ keys of metrics.json
    tasks = list((cfg.get("evaluation") or {}).get("tasks") or [])
    if cfg.get("test") and tasks and trainer.is_global_zero:
        metrics.update(evaluate_trained(module, datamodule, cfg, output_dir / "eval", best or None, trainer.loggers))
        write_metrics(metrics, output_dir / "metrics.json")
    tracking.after_training(cfg, trainer, output_dir, metrics)  # W&B summary, example tables, model artifacts
    return metrics


def manual_optimization_overrides(cfg: DictConfig, module: L.LightningModule) -> dict[str, Any]:
    """Feature-cache accumulation (``optim.micro_batch_size``) optimises by hand: the trainer's gradient clipping moves
    into the module (its ``gradient_clip`` argument; Lightning refuses automatic clipping then) and loss-averaging
    accumulation is refused."""
    if module.automatic_optimization:
        return {}
    if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        raise ValueError(
            f"optim.micro_batch_size={module.micro_batch_size} (feature-cache accumulation) replaces "
            f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches}: set "
            "trainer.accumulate_grad_batches=1 and put the whole contrastive batch in data.batch_size"
        )
    return {"gradient_clip_val": None}


def recover_after_spawn(trainer: L.Trainer, module: L.LightningModule, datamodule) -> None:
    """``trainer=ddp_spawn`` fits (and tests) in spawned processes. The launching process, which writes the split
    file and runs the evaluation suite, gets back the metrics, the fitted weights and the best checkpoint's path, but
    not the rest: its data module was never set up (no split, no tokenizer) and the best score is missing. They are
    taken from the best checkpoint (the tokenizer from its payload; the split is seeded), with its weights, which the
    spawned test evaluates."""
    if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        return
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or ""
    if best:
        state, payload = read_checkpoint(best)
        tokenizer = payload.tokenizer()
        if tokenizer is not None:
            datamodule.use_tokenizer(tokenizer)
        module.load_state_dict(state["state_dict"])
        checkpoint.best_model_score = next(
            (
                s["best_model_score"]
                for s in state.get("callbacks", {}).values()
                if isinstance(s, dict) and s.get("best_model_path") == best
            ),
            checkpoint.best_model_score,
        )
    datamodule.setup("fit")


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``ckpt_path=auto``: ``<run>/checkpoints/last.ckpt`` when it exists (a requeued SLURM job), else a fresh start."""
    if ckpt_path != "auto":
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    log.info("ckpt_path=auto: no %s yet, starting from scratch", last)
    return None


def evaluate_trained(
    module: ContrastiveModule, datamodule, cfg: DictConfig, out: Path, ckpt_path: str | None, loggers: list
) -> dict[str, float]:
    """The evaluation suite on the tested weights (same code as ``python -m cxr_vlp.eval``); keys ``eval/...``."""
    from cxr_vlp.eval.report import print_report
    from cxr_vlp.eval.run import Evaluator
    from cxr_vlp.inference.model import CXRModel

    evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    model = CXRModel.from_module(
        module,
        data_cfg,
        device=evaluation.get("device", "auto"),
        dtype=evaluation.get("precision"),
        tokenizer=datamodule.tokenizer,
    )
    result = Evaluator(
        model,
        datamodule,
        evaluation,
        out,
        ckpt_path=ckpt_path,
        data_cfg=data_cfg,
        credentialed=bool(data_cfg.get("credentialed", False)),
        loggers=loggers,
    ).run()
    print_report(out / "report.md")
    return {f"eval/{k.removeprefix('test/')}": v for k, v in result.metrics.items()}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        metrics = train(cfg)
    except BaseException as err:  # in a sweep: <job>/error.txt and the sweep goes on, or a stop (cxr_vlp.utils.sweep)
        return job_failed(cfg.paths.output_dir, err)
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s is not among the run's metrics (no validation?); the sweeper gets None", name)
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
