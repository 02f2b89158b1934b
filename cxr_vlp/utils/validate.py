"""Type and range checks of the composed Hydra config, before any work starts.

The configs are instantiated through ``_target_``, so a wrong value otherwise surfaces late and far away (a
``TypeError`` inside Lightning after the dataset was generated, or inside AdamW). :func:`validate_config` walks a
small schema, ``{dotted key: Spec}``, over the composed config and raises one :class:`ConfigValidationError` that
lists every bad key with its value and what is expected. Keys absent from the config are not checked (each
experiment composes its own nodes); a key whose value is ``???`` is reported when the spec is ``required``.

Specs: :class:`Int`, :class:`Float` (ranges, open or closed), :class:`Bool`, :class:`Str`, :class:`Choice`,
:class:`ListOf` and :class:`AnyOf`; :func:`positive`, :func:`non_negative` and :func:`probability` are
common floats. ``nullable=True`` accepts ``null``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

_ABSENT = object()


class ConfigValidationError(ValueError):
    """One or more config values have the wrong type or are out of range; the message names every key."""


@dataclass(frozen=True)
class Spec:
    """A value check: ``error(value)`` is None when the value is acceptable; ``expected`` says what is."""

    nullable: bool = False
    required: bool = False

    def error(self, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else self.expected_text()
        return None if self._ok(value) else self.expected_text()

    def _ok(self, value: Any) -> bool:
        raise NotImplementedError

    def expected(self) -> str:
        raise NotImplementedError

    def expected_text(self) -> str:
        return self.expected() + (" or null" if self.nullable else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Int(Spec):
    min: int | None = None
    max: int | None = None

    def _ok(self, value: Any) -> bool:
        return _is_int(value) and (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def expected(self) -> str:
        return "an integer" + _range_text(self.min, self.max, True, True)


@dataclass(frozen=True)
class Float(Spec):
    """A finite number (integers accepted) in the range; ``min_open`` / ``max_open`` exclude the bound."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def _ok(self, value: Any) -> bool:
        if not _is_number(value):
            return False
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return self.max is None or (value < self.max if self.max_open else value <= self.max)

    def expected(self) -> str:
        return "a number" + _range_text(self.min, self.max, not self.min_open, not self.max_open)


def _range_text(lo: float | None, hi: float | None, lo_closed: bool, hi_closed: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'[' if lo_closed else '('}{lo:g}, {hi:g}{']' if hi_closed else ')'}"
    if lo is not None:
        return f" {'>=' if lo_closed else '>'} {lo:g}"
    if hi is not None:
        return f" {'<=' if hi_closed else '<'} {hi:g}"
    return ""


def positive(nullable: bool = False) -> Float:
    return Float(min=0.0, min_open=True, nullable=nullable)


def non_negative(nullable: bool = False) -> Float:
    return Float(min=0.0, nullable=nullable)


def probability(nullable: bool = False) -> Float:
    return Float(min=0.0, max=1.0, nullable=nullable)


@dataclass(frozen=True)
class Bool(Spec):
    def _ok(self, value: Any) -> bool:
        return isinstance(value, bool)

    def expected(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Str(Spec):
    """A string, optionally matching ``pattern`` (``re.fullmatch``), described by ``what``."""

    pattern: str | None = None
    what: str = "a string"

    def _ok(self, value: Any) -> bool:
        return isinstance(value, str) and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)

    def expected(self) -> str:
        return self.what


@dataclass(frozen=True)
class Choice(Spec):
    options: tuple[Any, ...] = ()

    def _ok(self, value: Any) -> bool:
        return not isinstance(value, bool) and any(value == o and type(value) is type(o) for o in self.options)

    def expected(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list whose every item passes ``item``; ``length`` fixes the number of items."""

    item: Spec = Spec()
    length: int | None = None

    def _ok(self, value: Any) -> bool:
        if not isinstance(value, Sequence) or isinstance(value, str):
            return False
        return (self.length is None or len(value) == self.length) and all(self.item.error(v) is None for v in value)

    def expected(self) -> str:
        n = f"{self.length} " if self.length is not None else ""
        return f"a list of {n}items, each {self.item.expected_text()}"


@dataclass(frozen=True)
class AnyOf(Spec):
    specs: tuple[Spec, ...] = ()

    def _ok(self, value: Any) -> bool:
        return any(s.error(value) is None for s in self.specs)

    def expected(self) -> str:
        return ", or ".join(s.expected_text() for s in self.specs)


Schema = Mapping[str, Spec]


def _lookup(cfg: DictConfig, key: str) -> Any:
    """The resolved plain value at a dotted key, ``_ABSENT`` when a parent or the key is missing, ``"???"`` for
    a mandatory value not given."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return _ABSENT
        if OmegaConf.is_missing(node, part):  # (`in` is false for a ??? value)
            return "???" if i == len(parts) - 1 else _ABSENT
        if part not in node:
            return _ABSENT
        node = node[part]
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def config_errors(cfg: DictConfig, schema: Schema) -> list[str]:
    """One line per bad key: ``key=value (type): expected ...``; empty when the config passes."""
    errors = []
    for key, spec in schema.items():
        try:
            value = _lookup(cfg, key)
        except InterpolationResolutionError as err:
            errors.append(f"{key}: cannot be resolved ({err})")
            continue
        if value is _ABSENT:
            continue
        if isinstance(value, str) and value == "???":
            if spec.required:
                errors.append(f"{key} is required (???): expected {spec.expected_text()}")
            continue
        problem = spec.error(value)
        if problem is not None:
            shown = type(value).__name__ if isinstance(value, (dict, list)) else f"{value!r} ({type(value).__name__})"
            errors.append(f"{key}={shown}{_interpolation(cfg, key)}: expected {problem}")
    return errors


def _interpolation(cfg: DictConfig, key: str) -> str:
    """`` (from ${...})`` when the value at ``key`` is an interpolation, else an empty string."""
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and OmegaConf.is_interpolation(parent, last):
        return f" (from {OmegaConf.to_container(parent, resolve=False)[last]})"
    return ""


def validate_config(cfg: DictConfig, schema: Schema | None = None) -> None:
    """Raise :class:`ConfigValidationError` naming every key of ``schema`` (default: :data:`TRAIN_SCHEMA`) whose
    value in ``cfg`` has the wrong type or range."""
    errors = config_errors(cfg, TRAIN_SCHEMA if schema is None else schema)
    if errors:
        raise ConfigValidationError(
            "invalid config value" + ("s" if len(errors) > 1 else "") + ":\n  " + "\n  ".join(errors)
        )


# ------------------------------------------------------------------ the schemas
def _precisions() -> tuple[Any, ...]:
    """The precision values Lightning's Trainer accepts (its ``_PRECISION_INPUT`` literal)."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT

    def flat(t: Any) -> list[Any]:
        return [x for a in typing.get_args(t) for x in (flat(a) if typing.get_args(a) else [a])]

    return tuple(flat(_PRECISION_INPUT))


def _accelerators() -> tuple[str, ...]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _choices(module: str, name: str) -> tuple[Any, ...]:
    import importlib

    return tuple(getattr(importlib.import_module(module), name))


_COUNT_OR_FRACTION = AnyOf(specs=(Int(min=0), Float(min=0.0, max=1.0)))
DEVICES = AnyOf(
    specs=(
        Int(min=1),
        Choice(options=(-1, "auto")),
        Str(pattern=r"-1|\d+(,\s*\d+)*,?", what="a string of device indices like '0,1'"),
        ListOf(item=Int(min=0)),
    )
)


def trainer_schema() -> dict[str, Spec]:
    """The Lightning Trainer arguments our configs set."""
    t = "trainer."
    return {
        t + "accelerator": Choice(options=_accelerators()),
        t + "devices": DEVICES,
        t + "num_nodes": Int(min=1),
        t + "precision": Choice(options=_precisions()),
        t + "max_epochs": Int(min=-1, nullable=True),
        t + "min_epochs": Int(min=0, nullable=True),
        t + "max_steps": Int(min=-1),
        t + "gradient_clip_val": non_negative(nullable=True),
        t + "gradient_clip_algorithm": Choice(options=("norm", "value"), nullable=True),
        t + "accumulate_grad_batches": Int(min=1),
        t + "check_val_every_n_epoch": Int(min=1, nullable=True),
        t + "val_check_interval": AnyOf(specs=(Int(min=1), Float(min=0.0, max=1.0, min_open=True)), nullable=True),
        t + "log_every_n_steps": Int(min=0),
        t + "num_sanity_val_steps": Int(min=-1),
        t + "deterministic": AnyOf(specs=(Bool(), Choice(options=("warn",))), nullable=True),
        t + "benchmark": Bool(nullable=True),
        t + "fast_dev_run": AnyOf(specs=(Bool(), Int(min=0))),
        t + "overfit_batches": _COUNT_OR_FRACTION,
        t + "limit_train_batches": AnyOf(specs=_COUNT_OR_FRACTION.specs, nullable=True),
        t + "limit_val_batches": AnyOf(specs=_COUNT_OR_FRACTION.specs, nullable=True),
        t + "limit_test_batches": AnyOf(specs=_COUNT_OR_FRACTION.specs, nullable=True),
        t + "sync_batchnorm": Bool(),
        t + "use_distributed_sampler": Bool(),
    }


def data_schema(prefix: str = "data.") -> dict[str, Spec]:
    """The data module's settings (``conf/data/_datamodule.yaml``, the transforms, the synthetic generator)."""
    d, tr = prefix, prefix + "transforms."
    return {
        d + "credentialed": Bool(),
        d + "split_fractions": ListOf(item=non_negative(), length=3),
        d + "split_seed": Int(),
        d + "use_official_split": Bool(),
        d + "text_views.num_views": Int(min=1),
        d + "text_views.shuffle_p": probability(),
        d + "text_views.dropout_p": probability(),
        d + "num_image_views": Int(min=1),
        d + "batch_size": Int(min=1),
        d + "eval_batch_size": Int(min=1),
        d + "num_workers": Int(min=0),
        d + "max_length": Int(min=2),
        d + "pin_memory": Bool(),
        d + "persistent_workers": Bool(),
        d + "seed": Int(nullable=True),
        d + "stream": Str(nullable=True),
        d + "prepare.num_patients": Int(min=1),
        d + "prepare.seed": Int(),
        d + "prepare.image_size": Int(min=8),
        d + "prepare.workers": Int(min=0, nullable=True),
        tr + "image_size": Int(min=8),
        tr + "crop_scale": ListOf(item=Float(min=0.0, max=1.0, min_open=True), length=2),
        tr + "crop_ratio": ListOf(item=positive(), length=2),
        tr + "clahe_p": probability(),
        tr + "clahe_clip_limit": positive(),
        tr + "brightness_contrast_p": probability(),
        tr + "brightness_limit": non_negative(),
        tr + "contrast_limit": non_negative(),
        tr + "affine_p": probability(),
        tr + "rotate_limit": non_negative(),
        tr + "translate": Float(min=0.0, max=1.0),
        tr + "scale_limit": Float(min=0.0, max=1.0),
        tr + "hflip_p": probability(),
        tr + "mean": Float(),
        tr + "std": positive(),
    }


def evaluation_schema() -> dict[str, Spec]:
    """The evaluation suite (``conf/evaluation/default.yaml``), after training and in ``python -m cxr_vlp.eval``."""
    e = "evaluation."
    return {
        e + "tasks": ListOf(item=Choice(options=_choices("cxr_vlp.eval.run", "TASKS")), nullable=True),
        e + "figures": Bool(),
        e + "figure_examples": Int(min=0),
        e + "gradcam_label": Choice(options=_choices("cxr_vlp.text.labels", "CHEXPERT_LABELS")),
        e + "device": Str(pattern=r"auto|cpu|mps|cuda(:\d+)?", what="'auto', 'cpu', 'mps', 'cuda' or 'cuda:<index>'"),
        e + "precision": Choice(options=("32-true", "bf16-mixed")),
        e + "retrieval.chunk_size": Int(min=1),
        e + "retrieval.precision_ks": ListOf(item=Int(min=1)),
        e + "probe.kinds": ListOf(item=Choice(options=("linear", "mlp"))),
        e + "probe.label_fractions": ListOf(item=Float(min=0.0, max=1.0, min_open=True)),
        e + "probe.max_train_studies": Int(min=1, nullable=True),
        e + "probe.hidden": Int(min=1),
        e + "probe.max_epochs": Int(min=1),
        e + "probe.patience": Int(min=1),
        e + "probe.lr": positive(),
        e + "probe.batch_size": Int(min=1),
        e + "bootstrap.n_resamples": Int(min=0),
        e + "bootstrap.seed": Int(),
        e + "concepts.top": Int(min=1),
        e + "allow_patient_content_upload": Bool(),
    }


def model_schema() -> dict[str, Spec]:
    m, te, ie = "model.", "model.text_encoder.", "model.image_encoder."
    return {
        m + "embed_dim": Int(min=1),
        m + "projection": Choice(options=("linear", "mlp")),
        m + "projection_dropout": Float(min=0.0, max=1.0, max_open=True),
        m + "probabilistic": Bool(),
        m + "logvar_dim": AnyOf(specs=(Choice(options=("embed",)), Choice(options=(1, "1")))),
        m + "logvar_init": Float(),
        ie + "pretrained": Bool(),
        ie + "in_chans": Int(min=1),
        ie + "freeze": Bool(),
        ie + "gradient_checkpointing": Bool(),
        ie + "channels_last": Bool(),
        te + "pooling": Choice(options=("cls", "mean")),
        te + "freeze": Bool(),
        te + "gradient_checkpointing": Bool(),
        te + "local_config.hidden_size": Int(min=1),
        te + "local_config.num_hidden_layers": Int(min=1),
        te + "local_config.num_attention_heads": Int(min=1),
        te + "local_config.intermediate_size": Int(min=1),
        te + "local_config.max_position_embeddings": Int(min=2),
        te + "local_config.hidden_dropout_prob": Float(min=0.0, max=1.0, max_open=True),
        te + "local_config.attention_probs_dropout_prob": Float(min=0.0, max=1.0, max_open=True),
        te + "tokenizer.vocab_size": Int(min=1),
        te + "tokenizer.min_frequency": Int(min=0),
        te + "tokenizer.lowercase": Bool(),
    }


def loss_schema() -> dict[str, Spec]:
    """Keys shared by several heads; each is checked where the chosen head's node has it."""
    lo = "loss."
    weights = ("w_i2i", "w_t2t", "w_clip", "w_concept", "lam", "kl_weight", "pseudo_positive_weight", "clip_weight")
    return {
        **{lo + w: non_negative() for w in weights},
        **{
            lo + t: positive()
            for t in (
                "temperature_init",
                "max_scale",
                "concept_temperature",
                "concept_temperature_init",
                "concept_max_scale",
            )
        },
        **{lo + b: Bool() for b in ("learn_temperature", "learn_concept_temperature", "learn_ab", "gather")},
        lo + "a_init": Float(),
        lo + "b_init": Float(),
        lo + "empty_row": Choice(options=_choices("cxr_vlp.losses.mcsl", "EMPTY_ROW_MODES")),
        lo + "distance": Choice(options=_choices("cxr_vlp.losses.prob_head", "DISTANCES")),
        lo + "kl_reduction": Choice(options=_choices("cxr_vlp.losses.probabilistic", "KL_REDUCTIONS")),
        lo + "embedder.kind": Choice(options=("hf", "hashing")),
        lo + "embedder.batch_size": Int(min=1),
        lo + "embedder.max_length": Int(min=1),
        lo + "embedder.dim": Int(min=1),
    }


def _train_schema() -> dict[str, Spec]:
    return {
        "seed": Int(min=0, max=2**32 - 1),
        "test": Bool(),
        "ckpt_path": Str(nullable=True),
        "optimized_metric": Str(nullable=True),
        "optim.lr": positive(),
        "optim.weight_decay": non_negative(),
        "optim.betas": ListOf(item=Float(min=0.0, max=1.0, max_open=True), length=2),
        "optim.eps": positive(),
        "optim.fused": Bool(nullable=True),
        "optim.micro_batch_size": Int(min=1, nullable=True),
        "scheduler.warmup": non_negative(),
        "scheduler.min_lr_ratio": probability(),
        "callbacks.divergence.max_consecutive_bad_steps": Int(min=1),
        "callbacks.divergence.val_loss_key": Str(nullable=True),
        **trainer_schema(),
        **data_schema(),
        **model_schema(),
        **loss_schema(),
        **evaluation_schema(),
    }


def _eval_schema() -> dict[str, Spec]:
    ms = "model_source."
    return {
        "seed": Int(min=0, max=2**32 - 1),
        "ckpt_path": Str(nullable=True),
        ms + "spec": Str(nullable=True),
        ms + "arch": Str(nullable=True),
        ms + "quick_gelu": Bool(nullable=True),
        ms + "context_length": Int(min=1, nullable=True),
        ms + "batch_size": Int(min=1),
        **data_schema(),
        **evaluation_schema(),
    }


def _explore_schema() -> dict[str, Spec]:
    return {
        "ckpt_path": Str(required=True),
        "split": Choice(options=("train", "val", "test")),
        "host": Str(),
        "port": Int(min=0, max=65535),
        "device": Str(),
        "k": Int(min=1, max=1000),
        "limit": Int(min=1, nullable=True),
        "cache_dir": Str(nullable=True),
        "export": Str(nullable=True),
        "concepts.top": Int(min=1),
        "concepts.bottleneck_split": Choice(options=("train", "val", "test"), nullable=True),
        "concepts.l2": positive(),
        "export_options.studies": Int(min=0),
        "export_options.cams": Int(min=0),
        "export_options.texts": ListOf(item=Str()),
        **data_schema(),
    }


TRAIN_SCHEMA: dict[str, Spec] = _train_schema()
"""``python -m cxr_vlp.train`` (``conf/train.yaml`` and its groups)."""
EVAL_SCHEMA: dict[str, Spec] = _eval_schema()
"""``python -m cxr_vlp.eval`` (``conf/eval.yaml``)."""
EXPLORE_SCHEMA: dict[str, Spec] = _explore_schema()
"""``python -m cxr_vlp.explore`` (``conf/explore.yaml``)."""
