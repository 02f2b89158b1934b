"""The benchmark's protocols, built deterministically from the data a user has (docs/benchmark.md, docs/design.md §4).

- :class:`LabelProtocol` (``chexpert5``, ``rsna``): zero-shot and probe AUROC of a few labels on the test split (the
  CheXpert ``valid.csv`` studies), plus an extra test table when its labels file is present (the 500-study
  CheXpert test set, ``test_labels.csv``).
- :class:`FiveByTwoHundred` (``chexpert5x200``, ``mimic5x200``): :func:`select_5x200` picks, with a fixed seed,
  up to ``per_class`` studies positive for exactly one of five labels from a pool split; scored by 5-way zero-shot
  accuracy (argmax of the cosines to the five prompt ensembles) and class-level retrieval (class-based P@K of
  image → class prompts and, where the dataset has reports, image ↔ report).
- :class:`RetrievalProtocol` (``retrieval``): exact-pair R@K and class-based P@K on the test split, both protocols
  (full gallery and de-duplicated report texts) of :func:`~cxr_vlp.metrics.retrieval.evaluate_retrieval`.

Every protocol returns :class:`Result` rows whose :class:`~cxr_vlp.benchmark.paired.Measure` holds the per-row
data the bootstrap resamples; the metrics themselves come from :mod:`cxr_vlp.metrics`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_vlp.benchmark.paired import Measure
from cxr_vlp.benchmark.prompts import BenchmarkPrompts
from cxr_vlp.data.readers.chexpert import report_from_labels
from cxr_vlp.data.readers.common import existing_mask, raw_labels, read_csv, require_columns
from cxr_vlp.data.table import StudyTable
from cxr_vlp.eval.embed import SplitEmbeddings
from cxr_vlp.eval.probe import ProbeConfig, predict_probs, train_probe
from cxr_vlp.eval.zeroshot import class_text_embeddings, zeroshot_classify
from cxr_vlp.inference.base import ImageTextModel
from cxr_vlp.metrics.retrieval import class_precision_per_query, evaluate_retrieval
from cxr_vlp.text.labels import CHEXPERT_LABELS, apply_policy

log = logging.getLogger(__name__)

__all__ = [
    "COMPETITION_LABELS",
    "Context",
    "FiveByTwoHundred",
    "LabelProtocol",
    "Protocol",
    "Result",
    "RetrievalProtocol",
    "Selection",
    "build_protocols",
    "read_chexpert_test",
    "select_5x200",
]

COMPETITION_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

Embed = Callable[[str], SplitEmbeddings]


@dataclass
class Result:
    """One metric of one model: ``protocol`` / ``split`` / ``task`` / ``measure`` name it, ``data`` is what the
    bootstrap resamples."""

    protocol: str
    split: str
    task: str
    measure: str
    data: Measure

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.protocol, self.split, self.task, self.measure


@dataclass
class Context:
    """What every protocol shares: the data module (set up), the run directory, the prompt set, the probe settings
    and the notes written into ``benchmark.md``."""

    datamodule: Any
    out_dir: Path
    prompts: BenchmarkPrompts
    probe: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # extra identity of injected tables for the embedding cache: split -> sha256 of its study ids
    split_keys: dict[str, str] = field(default_factory=dict)

    def table(self, split: str) -> StudyTable:
        tables = getattr(self.datamodule, "tables", {}) or {}
        if split not in tables:
            raise ValueError(f"the data has no {split!r} split; splits: {sorted(tables)}")
        return tables[split]

    def add_table(self, split: str, table: StudyTable) -> None:
        """Make ``table`` embeddable as split ``split`` (``datamodule.eval_dataset`` reads ``tables``)."""
        self.datamodule.tables[split] = table
        self.split_keys[split] = _sha256_lines(table.study_ids)


def _sha256_lines(lines: Sequence[str]) -> str:
    return hashlib.sha256("".join(f"{x}\n" for x in lines).encode()).hexdigest()


def _label_index(names: Sequence[str], where: str) -> list[int]:
    unknown = [n for n in names if n not in CHEXPERT_LABELS]
    if unknown:
        raise ValueError(f"{where}: unknown label(s) {unknown}; labels: {list(CHEXPERT_LABELS)}")
    return [CHEXPERT_LABELS.index(n) for n in names]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _both_classes(y: np.ndarray) -> bool:
    known = y[np.isfinite(y)]
    return bool(known.size) and 0 < known.sum() < known.size


class Protocol:
    """A benchmark protocol: :meth:`prepare` once on the data (selections, extra tables), then :meth:`run` per
    model, which embeds what it needs through ``embed(split)`` (cached per model) and returns :class:`Result` rows.
    :attr:`audit_labels` are the labels of its label tasks (for the prompt audit)."""

    def __init__(self, name: str, cfg: Mapping[str, Any]) -> None:
        self.name = name
        self.cfg = dict(cfg)

    audit_labels: tuple[str, ...] = ()

    def prepare(self, ctx: Context) -> None:
        """Build what depends on the data only (default: nothing)."""

    def run(self, model: ImageTextModel, embed: Embed, ctx: Context) -> list[Result]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- label tasks
def read_chexpert_test(
    csv_path: str | os.PathLike[str], root: str | os.PathLike[str], uncertain: str = "unknown"
) -> StudyTable:
    """The CheXpert test set as released with its radiologist labels (``Path`` + CheXpert label columns, one row
    per image; ``Path`` resolved against ``root``, its parent, or ``root`` without the path's first folder) as a
    study table (study = patient + study folder, text built from the labels). A missing label column is unknown."""
    csv_path, root = Path(csv_path), Path(root)
    df = read_csv(csv_path, (), "CheXpert test labels")
    require_columns(csv_path, df, ("Path",))
    present = [c for c in CHEXPERT_LABELS if c in df.columns]
    if not present:
        raise ValueError(f"{csv_path}: no CheXpert label column; expected some of {list(CHEXPERT_LABELS)}")
    for name in CHEXPERT_LABELS:
        if name not in df.columns:
            df[name] = np.nan
    paths = df["Path"].astype(str).str.strip().str.replace("\\", "/", regex=False)
    parts = paths.str.extract(r"(patient\d+)/(study\d+)/")
    bad = parts[0].isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{csv_path}: row {row + 1}, column 'Path': {paths.iloc[row]!r} has no patient<N>/study<N>/")
    raw = raw_labels(csv_path, df)
    candidates = [lambda p: root / p, lambda p: root.parent / p, lambda p: root / p.split("/", 1)[-1]]
    resolve = next((c for c in candidates if Path(c(paths.iloc[0])).is_file()), candidates[0])
    files = [str(resolve(p)) for p in paths]
    keep = existing_mask(files, True)
    if not keep.any():
        raise FileNotFoundError(f"{csv_path}: none of its images exist under {root} (e.g. {files[0]})")
    study = (parts[0] + "_" + parts[1]).to_numpy()
    order: dict[str, list[int]] = {}
    for i in np.flatnonzero(keep):
        order.setdefault(study[i], []).append(int(i))
    ids = list(order)
    first = [rows[0] for rows in order.values()]
    texts = [report_from_labels(raw[i], key=s) for i, s in zip(first, ids)]
    return StudyTable(
        study_ids=ids,
        subject_ids=[parts[0].iloc[i] for i in first],
        image_paths=[[files[i] for i in rows] for rows in order.values()],
        view_names=[["FRONTAL" if "frontal" in files[i] else "UNKNOWN" for i in rows] for rows in order.values()],
        findings=[None] * len(ids),
        impression=texts,
        labels=apply_policy(raw[first], uncertain),
        split=["test"] * len(ids),
        source=str(csv_path),
    )


class LabelProtocol(Protocol):
    """Zero-shot and probe AUROC of ``labels`` (mean over them and each) on the test split and the extra test
    table (``extra_test_csv``, relative to the dataset root, read when present)."""

    EXTRA = "extra_test"

    def __init__(self, name: str, cfg: Mapping[str, Any]) -> None:
        super().__init__(name, cfg)
        self.labels = tuple(str(x) for x in self.cfg.get("labels") or ())
        if not self.labels:
            raise ValueError(f"benchmark.{name}.labels: at least one label")
        self.columns = _label_index(self.labels, f"benchmark.{name}.labels")
        self.audit_labels = self.labels
        self.splits = [str(self.cfg.get("split", "test"))]
        self.probe_kinds = [str(k) for k in self.cfg.get("probe_kinds", ["linear"]) or []]

    def prepare(self, ctx: Context) -> None:
        extra = self.cfg.get("extra_test_csv")
        if not extra:
            return
        path = Path(str(extra))
        root = Path(str(getattr(ctx.datamodule, "root", "") or "."))
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            log.info("%s: no %s, the extra test set is not scored", self.name, path)
            return
        split = f"{self.name}_{self.EXTRA}"
        table = read_chexpert_test(path, root)
        ctx.add_table(split, table)
        self.splits.append(split)
        ctx.notes.append(f"{self.name}: also scored on {len(table)} studies of {path.name} (split `{split}`).")

    def _usable(self, y: np.ndarray, split: str, ctx: Context) -> list[int]:
        keep = [j for j in range(y.shape[1]) if _both_classes(y[:, j])]
        dropped = [self.labels[j] for j in range(y.shape[1]) if j not in keep]
        note = f"{self.name} / {split}: {dropped} left out (a single known class)"
        if dropped and note not in ctx.notes:
            ctx.notes.append(note)
        return keep

    def _auroc_results(
        self, split: str, task: str, probs: np.ndarray, y: np.ndarray, ids: list[str], keep: list[int]
    ) -> list[Result]:
        out = [Result(self.name, split, task, "mean AUROC", Measure("auroc", probs[:, keep], y[:, keep], ids))]
        out += [
            Result(self.name, split, task, f"AUROC {self.labels[j]}", Measure("auroc", probs[:, j], y[:, j], ids))
            for j in keep
        ]
        return out

    def run(self, model: ImageTextModel, embed: Embed, ctx: Context) -> list[Result]:
        results: list[Result] = []
        prompt_set = ctx.prompts.prompt_set(self.labels)
        probes = {}
        if self.probe_kinds:
            tr, va = embed("train"), embed("val")
            for kind in self.probe_kinds:
                cfg = ProbeConfig(**{**ctx.probe, "kind": kind})
                ytr, yva = tr.labels[:, self.columns], va.labels[:, self.columns]
                if not torch.isfinite(ytr).any():
                    ctx.notes.append(f"{self.name}: no known label in the train split, probes skipped")
                    break
                probes[kind] = train_probe(tr.features, ytr, va.features, yva, cfg)
        for split in self.splits:
            emb = embed(split)
            y = _np(emb.labels[:, self.columns])
            keep = self._usable(y, split, ctx)
            if not keep:
                continue
            ids = list(emb.study_ids)
            zs = zeroshot_classify(model.encode_texts, emb.image, self.labels, prompt_set, model.zero_shot_scale)
            results += self._auroc_results(split, "zero-shot", _np(zs), y, ids, keep)
            for kind, probe in probes.items():
                results += self._auroc_results(
                    split, f"probe ({kind})", _np(predict_probs(probe, emb.features)), y, ids, keep
                )
        return results


# ---------------------------------------------------------------------------------------------- 5 × 200
@dataclass
class Selection:
    """A 5×200-style selection: ``study_ids`` and their ``classes`` (class order, ids sorted within a class),
    ``available`` eligible studies per class and the sha256 of the ``"<study_id>,<class>\\n"`` lines."""

    study_ids: list[str]
    classes: list[str]
    available: dict[str, int]
    per_class: int

    @property
    def counts(self) -> dict[str, int]:
        return {c: self.classes.count(c) for c in self.available}

    @property
    def sha256(self) -> str:
        return _sha256_lines([f"{s},{c}" for s, c in zip(self.study_ids, self.classes)])

    @property
    def short(self) -> dict[str, int]:
        """Classes with fewer than ``per_class`` eligible studies: their count."""
        return {c: n for c, n in self.counts.items() if n < self.per_class}

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"study_id": self.study_ids, "class": self.classes}).to_csv(path, index=False)
        return path


_OTHERS = ("not_positive", "negative")


def select_5x200(
    study_ids: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    per_class: int = 200,
    seed: int = 0,
    others: str = "not_positive",
) -> Selection:
    """GLoRIA's / CXR-CLIP's 5×200 rule on a pool of studies.

    ``labels`` ``[N, len(classes)]`` (1 / 0 / NaN) holds the pool's values of ``classes``. A study is eligible for
    class c when it is positive for c and, with ``others="not_positive"``, for none of the other classes (0 or
    unknown), with ``others="negative"`` known negative for all of them. Per class, in ``classes`` order, the
    eligible study ids are sorted, one generator ``numpy.random.default_rng(seed)`` permutes them, and the first
    ``per_class`` of the permutation are kept (all of them when fewer are eligible), sorted. Classes are disjoint by
    construction; the result does not depend on the pool's row order."""
    if others not in _OTHERS:
        raise ValueError(f"others must be one of {list(_OTHERS)}, got {others!r}")
    y = np.asarray(labels, dtype=np.float64)
    ids = [str(s) for s in study_ids]
    if y.shape != (len(ids), len(classes)):
        raise ValueError(f"labels must be [{len(ids)}, {len(classes)}], got {list(y.shape)}")
    if int(per_class) < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    positive = y == 1
    rng = np.random.default_rng(int(seed))
    out_ids: list[str] = []
    out_cls: list[str] = []
    available: dict[str, int] = {}
    for c, name in enumerate(classes):
        rest = np.delete(np.arange(len(classes)), c)
        ok = ~positive[:, rest].any(axis=1) if others == "not_positive" else (y[:, rest] == 0).all(axis=1)
        eligible = sorted(ids[i] for i in np.flatnonzero(positive[:, c] & ok))
        available[str(name)] = len(eligible)
        chosen = sorted(eligible[i] for i in rng.permutation(len(eligible))[: int(per_class)])
        out_ids += chosen
        out_cls += [str(name)] * len(chosen)
    return Selection(out_ids, out_cls, available, int(per_class))


class FiveByTwoHundred(Protocol):
    """5-way zero-shot accuracy and class-level retrieval on a :func:`select_5x200` selection (module docstring)."""

    def __init__(self, name: str, cfg: Mapping[str, Any]) -> None:
        super().__init__(name, cfg)
        self.classes = tuple(str(x) for x in self.cfg.get("classes") or COMPETITION_LABELS)
        self.columns = _label_index(self.classes, f"benchmark.{name}.classes")
        self.pool = str(self.cfg.get("pool", "train"))
        self.precision_ks = tuple(int(k) for k in self.cfg.get("precision_ks", (1, 5, 10)))
        self.split = f"{name}_selection"
        self.selection: Selection | None = None

    def prepare(self, ctx: Context) -> None:
        pool = ctx.table(self.pool)
        sel = select_5x200(
            pool.study_ids,
            pool.labels[:, self.columns],
            self.classes,
            int(self.cfg.get("per_class", 200)),
            int(self.cfg.get("seed", 0)),
            str(self.cfg.get("others", "not_positive")),
        )
        if not sel.study_ids:
            raise ValueError(
                f"benchmark={self.name}: no study of the {self.pool!r} split is positive for exactly "
                f"one of {list(self.classes)}"
            )
        row = {s: i for i, s in enumerate(pool.study_ids)}
        table = pool.subset([row[s] for s in sel.study_ids])
        ctx.add_table(self.split, table)
        self.selection = sel
        path = sel.to_csv(ctx.out_dir / "selections" / f"{self.name}.csv")
        counts = ", ".join(f"{c} {n}" for c, n in sel.counts.items())
        note = (
            f"{self.name}: {len(sel.study_ids)} studies of the {self.pool!r} split ({counts}), seed "
            f"{self.cfg.get('seed', 0)}; ids in `{path.relative_to(ctx.out_dir)}`, sha256 `{sel.sha256}`."
        )
        if sel.short:
            note += (
                f" Fewer than {sel.per_class} eligible studies for {sorted(sel.short)}: the pool is small, so "
                "these figures are not comparable with published 5×200 numbers."
            )
        ctx.notes.append(note)

    def _onehot(self) -> torch.Tensor:
        assert self.selection is not None
        idx = torch.tensor([self.classes.index(c) for c in self.selection.classes])
        return torch.nn.functional.one_hot(idx, len(self.classes)).float()

    def _precision(self, scores: torch.Tensor, q_labels: torch.Tensor, g_labels: torch.Tensor) -> np.ndarray:
        precision, _ = class_precision_per_query(scores, q_labels, g_labels, self.precision_ks)
        return precision.double().numpy()

    def run(self, model: ImageTextModel, embed: Embed, ctx: Context) -> list[Result]:
        emb = embed(self.split)
        assert self.selection is not None
        if list(emb.study_ids) != self.selection.study_ids:
            raise RuntimeError(f"{self.name}: the embedded studies are not the selection (stale cache?)")
        ids = list(emb.study_ids)
        onehot = self._onehot()
        prompt_set = ctx.prompts.prompt_set(self.classes)
        class_emb = torch.stack(
            [class_text_embeddings(model.encode_texts, prompt_set.positive[c]) for c in self.classes]
        )
        pred = (torch.nn.functional.normalize(emb.image.float(), dim=-1) @ class_emb.T).argmax(dim=1)
        correct = (pred == onehot.argmax(dim=1)).double().numpy()
        results = [Result(self.name, self.split, "zero-shot", "5-way accuracy", Measure("mean", correct, None, ids))]

        prompts = [p for c in self.classes for p in prompt_set.positive[c]]
        prompt_labels = torch.nn.functional.one_hot(
            torch.tensor([self.classes.index(c) for c in self.classes for _ in prompt_set.positive[c]]),
            len(self.classes),
        ).float()
        prompt_emb = model.text_embeddings(prompts)
        p_img = self._precision(model.ranking_scores(emb.image_embeddings, prompt_emb), onehot, prompt_labels)
        for col, k in enumerate(self.precision_ks):
            results.append(
                Result(
                    self.name, self.split, "image → class prompts", f"P@{k}", Measure("mean", p_img[:, col], None, ids)
                )
            )
        if self.cfg.get("report_retrieval", False):
            scores = model.ranking_scores(emb.image_embeddings, emb.text_embeddings)
            i2t = self._precision(scores, onehot, onehot)
            t2i = self._precision(model.ranking_scores(emb.text_embeddings, emb.image_embeddings), onehot, onehot)
            for col, k in enumerate(self.precision_ks):
                results.append(
                    Result(self.name, self.split, "image → report", f"P@{k}", Measure("mean", i2t[:, col], None, ids))
                )
                results.append(
                    Result(self.name, self.split, "report → image", f"P@{k}", Measure("mean", t2i[:, col], None, ids))
                )
        return results


# ---------------------------------------------------------------------------------------------- retrieval
class RetrievalProtocol(Protocol):
    """Exact-pair R@K and class-based P@K on the test split, full gallery and de-duplicated report texts, through
    :func:`~cxr_vlp.metrics.retrieval.evaluate_retrieval` with the model's own ranking scores."""

    def __init__(self, name: str, cfg: Mapping[str, Any]) -> None:
        super().__init__(name, cfg)
        self.split = str(self.cfg.get("split", "test"))
        self.ks = tuple(int(k) for k in self.cfg.get("ks", (1, 5, 10)))
        self.precision_ks = tuple(int(k) for k in self.cfg.get("precision_ks", (5,)))
        self.skipped = False

    def prepare(self, ctx: Context) -> None:
        name = str(getattr(ctx.datamodule, "name", ""))
        if name in [str(x) for x in self.cfg.get("without_reports", [])]:
            self.skipped = True
            ctx.notes.append(f"{self.name}: skipped, the {name} dataset has no report texts.")

    def run(self, model: ImageTextModel, embed: Embed, ctx: Context) -> list[Result]:
        if self.skipped:
            return []
        test = embed(self.split)
        side = {
            "i2t": (test.image_embeddings, test.text_embeddings),
            "t2i": (test.text_embeddings, test.image_embeddings),
        }

        def score_fn(direction: str, q_rows: torch.Tensor, g_rows: torch.Tensor) -> torch.Tensor:
            q, g = side[direction]
            return model.ranking_scores(q.rows(q_rows.cpu()), g.rows(g_rows.cpu()))

        known = np.isfinite(_np(test.labels)).any()
        _, scans = evaluate_retrieval(
            test.image,
            test.text,
            labels=test.labels if known else None,
            texts=test.texts,
            ks=self.ks,
            precision_ks=self.precision_ks,
            chunk_size=int(self.cfg.get("chunk_size", 1024)),
            score_fn=score_fn,
        )
        from cxr_vlp.metrics.retrieval import text_groups

        _, first = text_groups(test.texts)
        results: list[Result] = []
        for proto, label in (("", "full gallery"), ("dedup/", "de-duplicated reports")):
            for direction in ("i2t", "t2i"):
                scan = scans[proto + direction]
                rows = first.tolist() if proto and direction == "t2i" else list(range(len(test)))
                ids = [test.study_ids[r] for r in rows]
                task = f"{direction} {label}"
                for k in self.ks:
                    results.append(
                        Result(
                            self.name,
                            self.split,
                            task,
                            f"R@{k}",
                            Measure("mean", scan.ranks.hit_probability(k).numpy(), None, ids),
                        )
                    )
                if scan.precision is not None:
                    p = scan.precision.double().numpy()
                    ok = np.isfinite(p[:, 0])
                    for col, k in enumerate(scan.precision_ks):
                        results.append(
                            Result(
                                self.name,
                                self.split,
                                task,
                                f"class P@{k}",
                                Measure("mean", p[ok, col], None, [i for i, o in zip(ids, ok) if o]),
                            )
                        )
        return results


KINDS: dict[str, type[Protocol]] = {
    "labels": LabelProtocol,
    "five_by_200": FiveByTwoHundred,
    "retrieval": RetrievalProtocol,
}


def build_protocols(cfg: Mapping[str, Mapping[str, Any]]) -> list[Protocol]:
    """The protocols of ``benchmark`` (name → its config with ``kind``), in config order."""
    if not cfg:
        raise ValueError("benchmark: choose at least one protocol, e.g. benchmark=[chexpert5,retrieval]")
    out = []
    for name, spec in cfg.items():
        if not isinstance(spec, Mapping) or "kind" not in spec:
            raise ValueError(f"benchmark.{name}: a protocol config with a `kind` ({list(KINDS)})")
        if spec["kind"] not in KINDS:
            raise ValueError(f"benchmark.{name}.kind={spec['kind']!r}: one of {list(KINDS)}")
        out.append(KINDS[spec["kind"]](str(name), spec))
    return out
