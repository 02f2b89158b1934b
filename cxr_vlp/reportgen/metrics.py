"""Text-generation metrics for radiology report generation: BLEU-1..4, ROUGE-L and clinical efficacy.

All of them run offline (nothing is downloaded at run time). Each hypothesis is compared with one reference.

* **BLEU-n** (:func:`bleu_scores`) is *corpus* BLEU as report-generation papers give it: cumulative BLEU-n =
  brevity penalty x geometric mean of the 1..n-gram precisions (uniform weights), n-gram matches clipped per
  sentence and summed over the corpus, BP = exp(1 - r/c) when the hypotheses are shorter (c < r) in total.
  Computed with ``sacrebleu.metrics.BLEU(max_ngram_order=n, tokenize="13a", lowercase=True,
  smooth_method="none", effective_order=False)``: no smoothing, so an order with no match gives BLEU-n = 0
  exactly as in Papineni et al. (sacrebleu's default "exp" smoothing would not); ``effective_order`` stays
  off because it is meant for sentence-level BLEU and would silently drop an order that has no n-grams at all.
  Scores are on a 0-1 scale (sacrebleu reports 0-100). The 13a tokeniser splits punctuation into tokens, so
  the values are close to, but not the same as, pycocoevalcap's (whose PTB tokeniser removes punctuation).
* **ROUGE-L** (:func:`rouge_l`): mean over samples of rouge-score's LCS F-measure, without stemming (no
  NLTK data needed). rouge-score's tokeniser lowercases and keeps only ``[a-z0-9]`` runs.
* **Clinical efficacy** (:func:`clinical_metrics`): both sides labelled with the rule-based labeler
  (:func:`cxr_vlp.text.labeler.label_reports`); micro / macro / per-label precision, recall and F1.

Not provided: METEOR (NLTK's implementation needs the WordNet corpus downloaded) and CIDEr (pycocoevalcap is
unmaintained since 2020 and ships a ~100 MB wheel with Java jars).
"""

from __future__ import annotations

import functools
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU
from sklearn.metrics import precision_recall_fscore_support

from cxr_vlp.text.labeler import label_reports
from cxr_vlp.text.labels import CHEXPERT_LABELS

__all__ = [
    "bleu_scores",
    "clinical_metrics",
    "normalize_report",
    "report_generation_metrics",
    "rouge_l",
    "write_generation_report",
]

MAX_BLEU_ORDER = 4
CLINICAL = "clinical"
# Headline metrics in the order the Markdown report lists them.
MAIN_METRICS: tuple[tuple[str, str], ...] = (
    *((f"bleu{n}", f"BLEU-{n}") for n in range(1, MAX_BLEU_ORDER + 1)),
    ("rougeL", "ROUGE-L"),
    (f"{CLINICAL}/micro_precision", "Clinical micro precision"),
    (f"{CLINICAL}/micro_recall", "Clinical micro recall"),
    (f"{CLINICAL}/micro_f1", "Clinical micro F1"),
    (f"{CLINICAL}/macro_f1", "Clinical macro F1"),
)
_PER_LABEL_STATS = ("precision", "recall", "f1", "support")


def normalize_report(text: str) -> str:
    """Lower case, whitespace collapsed to single spaces, stripped; punctuation is kept (13a splits it off)."""
    return " ".join(str(text).lower().split())


def _check_pair(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    """Raise ``ValueError`` unless both are equally long, non-empty sequences of strings."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses and references must be lists of strings, not a single string")
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses but {len(references)} references; they must pair up")
    if len(hypotheses) == 0:
        raise ValueError("no hypotheses/references given: metrics need at least one pair")
    for name, texts in (("hypotheses", hypotheses), ("references", references)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"{name}[{bad}] is {type(texts[bad]).__name__}, not str")


def bleu_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 on a 0-1 scale: ``{"bleu1": .., "bleu2": .., "bleu3": .., "bleu4": ..}``."""
    _check_pair(hypotheses, references)
    hyps = [normalize_report(h) for h in hypotheses]
    refs = [[normalize_report(r) for r in references]]
    out = {}
    for n in range(1, MAX_BLEU_ORDER + 1):
        bleu = BLEU(
            max_ngram_order=n, tokenize="13a", lowercase=True, smooth_method="none", effective_order=False, force=True
        )
        out[f"bleu{n}"] = bleu.corpus_score(hyps, refs).score / 100.0
    return out


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer  # imports NLTK (~2 s), so only when needed

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean over samples of the ROUGE-L F-measure (0-1); an empty hypothesis or reference scores 0."""
    _check_pair(hypotheses, references)
    scorer = _rouge_scorer()
    scores = [
        scorer.score(normalize_report(ref), normalize_report(hyp))["rougeL"].fmeasure  # score(target, prediction)
        for hyp, ref in zip(hypotheses, references)
    ]
    return float(np.mean(scores))


def clinical_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] = CHEXPERT_LABELS,
    uncertain_as_positive: bool = False,
) -> dict[str, float]:
    """Clinical efficacy: findings extracted by the rule-based labeler, compared per report and label.

    A finding is present when the labeler says positive (``1``), or also uncertain (``-1``) with
    ``uncertain_as_positive``; negative and not mentioned count as absent. Keys: ``clinical/micro_precision``,
    ``clinical/micro_recall``, ``clinical/micro_f1`` (TP / FP / FN summed over reports and ``labels``),
    ``clinical/macro_f1`` (mean F1 over the labels present in at least one reference; NaN when there is none)
    and per label ``clinical/<Label>/precision|recall|f1|support`` (support = references with the finding).
    A zero denominator gives 0. "No Finding" is scored like the others (the labeler sets it to 1 when no
    pathology is positive or uncertain). Report text is labelled as is (FINDINGS / IMPRESSION headers honoured).
    """
    _check_pair(hypotheses, references)
    unknown = [name for name in labels if name not in CHEXPERT_LABELS]
    if unknown or not labels:
        raise ValueError(f"labels must be a non-empty subset of {list(CHEXPERT_LABELS)}; unknown: {unknown}")
    columns = [CHEXPERT_LABELS.index(name) for name in labels]
    present = (1.0, -1.0) if uncertain_as_positive else (1.0,)
    y_pred = np.isin(label_reports(hypotheses)[:, columns], present).astype(int)
    y_true = np.isin(label_reports(references)[:, columns], present).astype(int)

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    out = {
        f"{CLINICAL}/micro_precision": float(p),
        f"{CLINICAL}/micro_recall": float(r),
        f"{CLINICAL}/micro_f1": float(f),
    }
    ps, rs, fs, _ = precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0, labels=list(range(len(columns)))
    )
    support = y_true.sum(axis=0)
    occurring = support > 0
    out[f"{CLINICAL}/macro_f1"] = float(np.mean(fs[occurring])) if occurring.any() else math.nan
    for j, name in enumerate(labels):
        out[f"{CLINICAL}/{name}/precision"] = float(ps[j])
        out[f"{CLINICAL}/{name}/recall"] = float(rs[j])
        out[f"{CLINICAL}/{name}/f1"] = float(fs[j])
        out[f"{CLINICAL}/{name}/support"] = float(support[j])
    return out


def report_generation_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and the clinical metrics in one flat dict (``bleu1`` .. ``rougeL``, ``clinical/..``)."""
    _check_pair(hypotheses, references)
    return {
        **bleu_scores(hypotheses, references),
        "rougeL": rouge_l(hypotheses, references),
        **clinical_metrics(hypotheses, references),
    }


def _fmt(value: float) -> str:
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _quote(text: str) -> str:
    lines = str(text).strip().splitlines() or [""]
    return "\n".join(f"> {line}".rstrip() for line in lines)


def _per_label_rows(metrics: Mapping[str, float]) -> tuple[dict[str, dict[str, float]], set[str]]:
    """``clinical/<Label>/<stat>`` entries as ``{label: {stat: value}}``, and the keys they came from."""
    rows: dict[str, dict[str, float]] = {}
    used = set()
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == CLINICAL and parts[2] in _PER_LABEL_STATS:
            rows.setdefault(parts[1], {})[parts[2]] = value
            used.add(key)
    return rows, used


def write_generation_report(
    path: Path,
    metrics: Mapping[str, float],
    examples: Sequence[Mapping[str, str]],
    title: str = "Report generation",
) -> Path:
    """Write a Markdown summary: metric table, per-label clinical table, example generations; returns ``path``.

    ``examples`` are dicts with ``study_id``, ``prompt``, ``generated`` and ``reference`` (missing keys show
    as "-"). The file is written atomically (temporary file + rename); an existing file is replaced.
    """
    path = Path(path)
    per_label, per_label_keys = _per_label_rows(metrics)
    main_keys = {key for key, _ in MAIN_METRICS}
    lines = [f"# {title}", "", "## Metrics", "", "| Metric | Value |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(metrics[key])} |" for key, name in MAIN_METRICS if key in metrics]
    lines += [
        f"| {key} | {_fmt(value)} |"
        for key, value in metrics.items()
        if key not in main_keys and key not in per_label_keys
    ]
    if per_label:
        lines += [
            "",
            "## Clinical metrics per label",
            "",
            "| Label | Precision | Recall | F1 | Support |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in per_label.items():
            cells = [_fmt(row.get(stat, math.nan)) for stat in _PER_LABEL_STATS[:3]]
            support = float(row.get("support", math.nan))
            cells.append("n/a" if math.isnan(support) else str(int(support)))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"## Example generations ({len(examples)})"]
    for i, example in enumerate(examples, start=1):
        lines += [
            "",
            f"### {i}. Study {example.get('study_id', '-')}",
            "",
            f"**Prompt:** {example.get('prompt', '-')}",
            "",
            "**Generated:**",
            "",
            _quote(example.get("generated", "-")),
            "",
            "**Reference:**",
            "",
            _quote(example.get("reference", "-")),
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
