"""The config validation pass: every spec class, the error message, and the real configs passing it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cxr_vlp.utils.config import config_dir
from cxr_vlp.utils.validate import (
    DEVICES,
    EVAL_SCHEMA,
    TRAIN_SCHEMA,
    AnyOf,
    Bool,
    Choice,
    ConfigValidationError,
    Float,
    Int,
    ListOf,
    Str,
    _precisions,
    config_errors,
    non_negative,
    positive,
    probability,
    validate_config,
)
from tests.integration.hydra_helpers import compose_train


def _ok(spec, value) -> bool:
    return spec.error(value) is None


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        (Int(), [0, -5, 10**12], ["3", 3.0, True, None, [1]]),
        (Int(min=-1, max=3), [-1, 0, 3], [-2, 4]),
        (Float(), [0, 1.5, -2], ["1e-3", math.nan, math.inf, True, None]),
        (Float(min=0.0, max=1.0, min_open=True, max_open=True), [1e-9, 0.5, 0.999], [0.0, 1.0, -0.1, 1.1]),
        (positive(), [1e-12, 3, 1e6], [0, 0.0, -1e-9, "abc"]),
        (non_negative(), [0, 0.0, 2.5], [-1e-9, -1]),
        (probability(), [0, 0.0, 0.5, 1, 1.0], [-0.01, 1.01, "0.5"]),
        (Bool(), [True, False], [1, 0, "true", None]),
        (Str(), ["", "abc"], [1, None, ["a"]]),
        (Str(pattern=r"cuda(:\d+)?"), ["cuda", "cuda:1"], ["cuda:", "gpu", "xcuda"]),
        (Choice(options=("norm", "value", 16)), ["norm", "value", 16], ["Norm", "16", 16.0, True, None]),
        (Choice(options=(1,)), [1], [True]),  # True == 1 in Python, not here
        (ListOf(item=probability(), length=2), [[0.1, 1.0], (0, 0)], [[0.1], [0.1, 2.0], "ab", 0.5]),
        (ListOf(item=Int(min=1)), [[], [1, 2, 3]], [[0], [1, "2"]]),
        (AnyOf(specs=(Int(min=0), Float(min=0.0, max=1.0))), [0, 7, 0.25, 1.0], [1.5, -1, "1"]),
        (DEVICES, [1, 4, -1, "auto", "0,1", "1", [0, 1]], [0, -2, "abc", "0,,1", [-1], 1.0]),
    ],
)
def test_spec_accepts_and_rejects(spec, good, bad) -> None:
    for value in good:
        assert _ok(spec, value), (spec, value)
    for value in bad:
        assert not _ok(spec, value), (spec, value)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (Int(min=-1, nullable=True), "an integer >= -1 or null"),
        (Int(min=1, max=8), "an integer in [1, 8]"),
        (Float(min=0.0, min_open=True), "a number > 0"),
        (Float(max=1.0, max_open=True), "a number < 1"),
        (Float(min=0.0, max=1.0, max_open=True), "a number in [0, 1)"),
        (Bool(nullable=True), "true or false or null"),
        (Choice(options=("a", 1)), "one of 'a', 1"),
        (ListOf(item=Int(), length=3), "a list of 3 items, each an integer"),
        (AnyOf(specs=(Bool(), Choice(options=("warn",)))), "true or false, or one of 'warn'"),
    ],
)
def test_spec_says_what_is_expected(spec, text) -> None:
    assert spec.expected_text() == text


def test_nullable_and_required() -> None:
    assert _ok(Int(nullable=True), None) and not _ok(Int(), None)
    cfg = OmegaConf.create({"a": "???", "b": "???"})
    errors = config_errors(cfg, {"a": Str(required=True), "b": Str(), "c": Int()})
    assert errors == ["a is required (???): expected a string"]  # b not required, c absent: not checked


def test_errors_name_key_value_type_expectation_and_interpolation() -> None:
    cfg = OmegaConf.create({"x": {"n": "abc", "m": "${y}", "ok": 3, "lst": [0.1, 7]}, "y": 0})
    schema = {
        "x.n": Int(min=-1),
        "x.m": Int(min=1),
        "x.ok": Int(),
        "x.lst": ListOf(item=probability()),
        "x.absent": Int(),
        "z.deep": Int(),
    }
    assert config_errors(cfg, schema) == [
        "x.n='abc' (str): expected an integer >= -1",
        "x.m=0 (int) (from ${y}): expected an integer >= 1",
        "x.lst=list: expected a list of items, each a number in [0, 1]",
    ]
    with pytest.raises(ConfigValidationError, match=r"invalid config values:\n  x\.n='abc'.*\n  x\.m=0"):
        validate_config(cfg, schema)


def test_unresolvable_interpolation_is_reported_by_key() -> None:
    cfg = OmegaConf.create({"a": "${nowhere.key}"})
    (error,) = config_errors(cfg, {"a": Int()})
    assert error.startswith("a: cannot be resolved")


def test_precision_choices_follow_lightning() -> None:
    assert {"32-true", "bf16-mixed", "16-mixed", 32, 16, "64"} <= set(_precisions())


EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml") if not p.stem.startswith("_"))


def test_every_shipped_experiment_and_trainer_passes(tmp_path: Path) -> None:
    overrides = [[f"+experiment={e}"] for e in EXPERIMENTS]
    overrides += [[f"trainer={t}"] for t in ("cpu", "gpu", "ddp", "ddp_spawn")]
    overrides += [[f"debug={d}"] for d in ("fdr", "limit", "overfit")]
    overrides += [["callbacks=none", "logger=many_loggers"]]
    for extra in overrides:
        cfg = compose_train(tmp_path, extra)
        assert config_errors(cfg, TRAIN_SCHEMA) == [], extra
    cfg = compose_train(tmp_path, ["ckpt_path=x.ckpt", "data=synthetic"], config_name="eval")
    assert config_errors(cfg, EVAL_SCHEMA) == []


def test_bad_values_in_the_real_config_each_named(tmp_path: Path) -> None:
    bad = {
        "trainer.max_epochs": "abc",
        "optim.lr": "abc",
        "trainer.precision": "17",
        "trainer.devices": "0",
        "data.batch_size": "0",
        "trainer.limit_val_batches": "1.5",
        "optim.betas": "[0.9]",
        "model.projection_dropout": "1.0",
        "loss.temperature_init": "-0.07",
        "callbacks.divergence.max_consecutive_bad_steps": "0",
        "evaluation.tasks": "[retrieval,zeroshoot]",
    }
    cfg = compose_train(tmp_path, [f"{k}={v}" for k, v in bad.items()])
    errors = config_errors(cfg, TRAIN_SCHEMA)
    assert sorted(e.split("=")[0] for e in errors) == sorted(bad)
    assert "trainer.max_epochs='abc' (str): expected an integer >= -1 or null" in errors
    assert "optim.lr='abc' (str): expected a number > 0" in errors


def test_train_stops_on_a_bad_value_before_any_data_work(tmp_path: Path) -> None:
    from cxr_vlp.train import train

    data_dir = tmp_path / "data"
    cfg = compose_train(tmp_path / "run", [f"paths.data_dir={data_dir}", "optim.lr=abc"])
    with pytest.raises(ConfigValidationError, match=r"optim\.lr='abc' \(str\): expected a number > 0"):
        train(cfg)
    assert not data_dir.exists()


def test_eval_entry_point_validates(tmp_path: Path) -> None:
    from cxr_vlp.eval.__main__ import evaluate

    cfg = compose_train(tmp_path, ["ckpt_path=missing.ckpt", "evaluation.probe.lr=abc"], config_name="eval")
    with pytest.raises(ConfigValidationError, match=r"evaluation\.probe\.lr='abc'"):
        evaluate(cfg)
