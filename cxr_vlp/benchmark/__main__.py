"""Benchmark entry point: ``python -m cxr_vlp.benchmark models=[<a.ckpt>,<exported folder>,...]
benchmark=[chexpert5,chexpert5x200,mimic5x200,rsna,retrieval] [data=<name> data.root=...]``.

Every model (anything :func:`~cxr_vlp.inference.adapters.load_model` reads) is scored by the chosen protocols
(:mod:`cxr_vlp.benchmark.protocols`) on the same studies; each model's splits are embedded once, cached by the
model's fingerprint and the data config (``cache_dir``). Writes ``benchmark.md``, ``benchmark.csv``,
``audit.csv``, the forest plots under ``figures/`` and the 5×200 selections under ``selections/`` into the run
directory (``logs/benchmark/runs/<time>/``). Without ``data=...`` the first model's training data config is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cxr_vlp.benchmark.audit import AuditRow, prompt_audit
from cxr_vlp.benchmark.prompts import BenchmarkPrompts
from cxr_vlp.benchmark.protocols import COMPETITION_LABELS, Context, LabelProtocol, Protocol, Result, build_protocols
from cxr_vlp.benchmark.report import forest_plot, summarise, write_csv, write_markdown
from cxr_vlp.eval.embed import SplitEmbeddings, cached_embeddings
from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.utils.config import config_dir

log = logging.getLogger(__name__)

__all__ = ["BenchmarkOutput", "display_names", "run_benchmark"]


class BenchmarkOutput(dict):
    """What :func:`run_benchmark` returns: ``rows`` (:class:`~cxr_vlp.benchmark.report.Row`), ``audit``,
    ``models`` (display names), ``results`` (per model, the :class:`~cxr_vlp.benchmark.protocols.Result` rows)
    and ``out_dir``."""


def _specs(cfg: DictConfig) -> list[str]:
    models = None if OmegaConf.is_missing(cfg, "models") else cfg.get("models")
    if models is None:
        raise ValueError(
            "models: the models to compare, e.g. models=[logs/a/runs/<time>/checkpoints/last.ckpt,cxr_model_folder]"
        )
    specs = [str(models)] if isinstance(models, str) else [str(m) for m in models]
    if not specs:
        raise ValueError("models=[]: give at least one model")
    return specs


def _short(spec: str) -> str:
    """A short name of a model spec: the run's task folder for ``logs/<task>/runs/<time>/checkpoints/x.ckpt``,
    else the file or folder name."""
    path = Path(spec)
    parts = path.parts
    if "runs" in parts:
        i = len(parts) - 1 - parts[::-1].index("runs")
        if i >= 1:
            return parts[i - 1]
    return path.stem if path.suffix == ".ckpt" else path.name or spec


def display_names(specs: Sequence[str], names: Sequence[str], given: Sequence[str] | None) -> list[str]:
    """``given`` when set (one per model), else each model's name, made unique with its short spec and then its
    position."""
    if given:
        if len(given) != len(specs):
            raise ValueError(f"names: {len(given)} names for {len(specs)} models")
        if len(set(given)) != len(given):
            raise ValueError(f"names: {list(given)} are not distinct")
        return [str(g) for g in given]
    names = list(names)
    out = [f"{_short(s)} ({n})" if names.count(n) > 1 else n for s, n in zip(specs, names)]
    return [f"{n} #{i + 1}" if out.count(n) > 1 else n for i, n in enumerate(out)]


def _data_config(cfg: DictConfig, first: ImageTextModel) -> dict[str, Any]:
    if cfg.get("data") is not None:
        return OmegaConf.to_container(cfg.data, resolve=True)
    payload = getattr(first, "payload", None)
    data = None if payload is None else (payload.record.data or payload.hparams.get("data"))
    if not data:
        raise ValueError(
            f"{first.name} carries no training data config: choose the data, e.g. data=mimic_cxr "
            "data.root=/data/mimic-cxr-jpg/2.1.0"
        )
    return dict(data)


def _embedder(model: ImageTextModel, ctx: Context, cache_root: Path, data_cfg: dict[str, Any], train_limit: int | None):
    data_key = hashlib.sha1(json.dumps(data_cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = cache_root / model.fingerprint[:16] / data_key
    memo: dict[str, SplitEmbeddings] = {}

    def embed(split: str) -> SplitEmbeddings:
        if split not in memo:
            limit = train_limit if split == "train" else None
            key = {**data_cfg, "benchmark_split": ctx.split_keys.get(split)}
            memo[split] = cached_embeddings(model, ctx.datamodule, split, cache, data_cfg=key, limit=limit)
        return memo[split]

    return embed


def _audit_labels(cfg: DictConfig, protocols: Sequence[Protocol]) -> list[str]:
    given = (cfg.get("audit") or {}).get("labels")
    if given:
        labels = [str(x) for x in given]
    else:
        labels = [x for p in protocols if isinstance(p, LabelProtocol) for x in p.audit_labels]
        labels = list(dict.fromkeys(labels or COMPETITION_LABELS))
    if "No Finding" not in labels:
        labels.append("No Finding")
    unknown = [x for x in labels if x not in CHEXPERT_LABELS]
    if unknown:
        raise ValueError(f"audit.labels: unknown label(s) {unknown}")
    return labels


def run_benchmark(cfg: DictConfig) -> BenchmarkOutput:
    """Run the chosen protocols for every model and write the outputs (module docstring)."""
    from cxr_vlp.inference.adapters import load_model

    specs = _specs(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench_cfg = OmegaConf.to_container(cfg.get("benchmark") or {}, resolve=True)
    protocols = build_protocols(bench_cfg)
    prompts = BenchmarkPrompts.from_config(OmegaConf.to_container(cfg.prompts, resolve=True))
    boot = dict(cfg.get("bootstrap") or {})
    n_resamples, seed, alpha = (
        int(boot.get("n_resamples", 1000)),
        int(boot.get("seed", 0)),
        float(boot.get("alpha", 0.05)),
    )
    probe = dict(OmegaConf.to_container(cfg.get("probe") or {}, resolve=True))
    train_limit = probe.pop("max_train_studies", None)
    kwargs = {
        "device": str(cfg.get("device", "auto")),
        "dtype": cfg.get("precision"),
        "batch_size": int(cfg.get("batch_size", 64)),
    }

    first = load_model(specs[0], **kwargs)
    data_cfg = _data_config(cfg, first)
    datamodule = instantiate(OmegaConf.create(data_cfg), tokenizer=None)
    datamodule.prepare_data()
    datamodule.setup("test")
    ctx = Context(datamodule=datamodule, out_dir=out_dir, prompts=prompts, probe=probe)
    for p in protocols:
        p.prepare(ctx)
    audit_labels = _audit_labels(cfg, protocols)
    audit_split = str((cfg.get("audit") or {}).get("split", "test"))
    cache_root = Path(str(cfg.get("cache_dir") or out_dir / "embeddings"))

    names: list[str] = []
    results: dict[str, list[Result]] = {}
    audit: list[tuple[int, AuditRow]] = []
    for i, spec in enumerate(specs):
        model = first if i == 0 else load_model(spec, **kwargs)
        log.info("benchmark: model %d/%d %s (%s)", i + 1, len(specs), model.name, spec)
        embed = _embedder(model, ctx, cache_root, data_cfg, train_limit)
        mine: list[Result] = []
        for p in protocols:
            mine += p.run(model, embed, ctx)
        names.append(model.name)
        results[str(i)] = mine
        if (cfg.get("audit") or {}).get("enabled", True):
            emb = embed(audit_split)
            audit += [
                (i, row)
                for row in prompt_audit(
                    model.name,
                    model.encode_texts,
                    emb.image,
                    emb.labels,
                    audit_labels,
                    [CHEXPERT_LABELS.index(x) for x in audit_labels],
                    prompts,
                )
            ]
        if i > 0:
            del model
    shown = display_names(specs, names, cfg.get("names"))
    by_name = {shown[int(k)]: v for k, v in results.items()}
    for i, row in audit:
        row.model = shown[i]
    audit_rows = [row for _, row in audit]

    rows = summarise(shown, by_name, n_resamples, seed, alpha)
    write_csv(rows, out_dir / "benchmark.csv")
    pd.DataFrame([{k: v for k, v in asdict(a).items() if k != "per_prompt"} for a in audit_rows]).to_csv(
        out_dir / "audit.csv", index=False
    )
    figures: dict[str, Path] = {}
    if cfg.get("figures", True) and len(shown) > 1:
        for p in protocols:
            fig = forest_plot(
                out_dir / "figures" / f"forest_{p.name}.png",
                [r for r in rows if r.protocol == p.name],
                shown[0],
                f"{p.name}: difference to {shown[0]}",
            )
            if fig is not None:
                figures[f"forest_{p.name}"] = fig
    write_markdown(
        out_dir / "benchmark.md",
        rows,
        shown,
        specs,
        audit_rows,
        ctx.notes,
        figures,
        n_resamples,
        str(data_cfg.get("name", "data")),
    )
    log.info("benchmark written to %s (benchmark.md, benchmark.csv, %d figures)", out_dir, len(figures))
    return BenchmarkOutput(rows=rows, audit=audit_rows, models=shown, results=by_name, out_dir=out_dir)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="benchmark")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = run_benchmark(cfg)
    print((Path(out["out_dir"]) / "benchmark.md").read_text())


if __name__ == "__main__":
    main()
