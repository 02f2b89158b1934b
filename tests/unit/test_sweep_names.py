"""W&B naming of sweep jobs and the evaluation scalars sent to the loggers."""

from __future__ import annotations

from types import SimpleNamespace

from cxr_vlp.eval.run import Evaluator
from cxr_vlp.utils.sweep import varied_overrides


def test_run_name_keeps_the_swept_overrides_only() -> None:
    command = [
        "-m",
        "+experiment=demo",
        "trainer.max_steps=6",
        "evaluation.figures=true",
        "loss.lam=0.3,0.7",
        "model/image_encoder=resnet50,vit_small",
    ]
    job = [
        "+experiment=demo",
        "trainer.max_steps=6",
        "evaluation.figures=True",
        "loss.lam=0.7",
        "model/image_encoder=vit_small",
    ]
    assert varied_overrides(job, command) == ["loss.lam=0.7", "model/image_encoder=vit_small"]
    # a sweeper's own search space (Optuna) is not on the command line: kept
    assert varied_overrides(
        ["+experiment=demo", "optim.lr=0.0003"], ["-m", "+experiment=demo", "hparams_search=mcsl_optuna"]
    ) == ["optim.lr=0.0003"]
    # range() sweeps count as swept; an unparsable command line keeps everything
    assert varied_overrides(["seed=2", "trainer.max_steps=6"], ["seed=range(1,3)", "trainer.max_steps=6"]) == ["seed=2"]
    assert varied_overrides(["seed=2"], ["seed=[unclosed"]) == ["seed=2"]


def test_evaluation_scalars_reach_the_loggers() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.logged, self.saved = [], 0

        def log_metrics(self, metrics, step=None) -> None:
            self.logged.append(dict(metrics))

        def save(self) -> None:
            self.saved += 1

    recorder = Recorder()
    fake = SimpleNamespace(
        result=SimpleNamespace(
            metrics={"test/i2t/P@5": 0.7, "test/zeroshot/auroc_mean": 0.9, "test/probe/auroc": float("nan")}
        ),
        loggers=[recorder],
    )
    Evaluator._log_metrics(fake)
    assert recorder.logged == [{"eval/i2t/P@5": 0.7, "eval/zeroshot/auroc_mean": 0.9}] and recorder.saved == 1
