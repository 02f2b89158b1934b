"""Dataset summary: ``python -m cxr_vlp.data.summary data=<name> data.root=/path``.

Reads the dataset through the same data module as training (reader, cache, official or patient split)
and prints one JSON object on stdout (logs go to stderr, so the output pipes into ``jq``): per split the
numbers of studies, images and subjects, how many studies have findings / an impression, and each label's
positive / negative / unknown counts and prevalence (positives over known values); where the labels came
from (``label_sources``: per label ``given``, a label column of the dataset, or ``text``, derived from the
report by the rule-based labeler; null without labels) and ``labels_from_text`` (the names of the latter); and
``leaked_subjects``, counted afresh from the final split tables (the data module refuses leakage, so it is 0
whenever the command gets that far). The same object is written to ``summary.json`` in the run directory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from cxr_vlp.data.datamodule import SPLITS, CXRDataModule
from cxr_vlp.data.table import StudyTable
from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.utils.config import config_dir

log = logging.getLogger(__name__)


def table_summary(table: StudyTable) -> dict[str, Any]:
    """Counts for one split's table."""
    labels = np.asarray(table.labels, dtype=np.float32)
    per_label = {}
    for j, name in enumerate(CHEXPERT_LABELS):
        col = labels[:, j] if len(table) else np.empty(0, dtype=np.float32)
        pos, neg = int((col == 1).sum()), int((col == 0).sum())
        per_label[name] = {
            "positive": pos,
            "negative": neg,
            "unknown": int(np.isnan(col).sum()),
            "prevalence": round(pos / (pos + neg), 4) if pos + neg else None,
        }
    return {
        "studies": len(table),
        "images": int(sum(len(p) for p in table.image_paths)),
        "subjects": len(set(table.subject_ids)),
        "with_findings": int(sum(bool(t) for t in table.findings)),
        "with_impression": int(sum(bool(t) for t in table.impression)),
        "labels": per_label if table.has_labels else None,
    }


def leaked_subjects(tables: dict[str, StudyTable]) -> int:
    """Number of subject ids found in more than one split."""
    seen = Counter(s for table in tables.values() for s in set(table.subject_ids))
    return sum(1 for n in seen.values() if n > 1)


def summarize(datamodule: CXRDataModule) -> dict[str, Any]:
    """Prepare and set up the data module (no tokenizer needed) and summarise its splits."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    tables = datamodule.tables
    first = next(iter(tables.values()))
    return {
        "dataset": datamodule.name,
        "root": datamodule.root,
        "label_sources": dict(first.label_sources) if first.has_labels else None,
        "labels_from_text": first.labels_from_text(),
        "splits": {name: table_summary(tables[name]) for name in SPLITS},
        "total": {
            "studies": sum(len(t) for t in tables.values()),
            "images": sum(sum(len(p) for p in t.image_paths) for t in tables.values()),
            "subjects": len({s for t in tables.values() for s in t.subject_ids}),
        },
        "leaked_subjects": leaked_subjects(tables),
    }


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="summary")
def main(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data)
    summary = summarize(datamodule)
    if summary["labels_from_text"]:
        log.info("labels derived from the report text: %s", ", ".join(summary["labels_from_text"]))
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    out = Path(cfg.paths.output_dir) / "summary.json"
    out.write_text(text + "\n")
    log.info("summary written to %s", out)


if __name__ == "__main__":
    main()
