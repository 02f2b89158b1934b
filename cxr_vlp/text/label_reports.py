"""CLI: label report text with CheXpert values.

``python -m cxr_vlp.text.label_reports in_csv=IN out_csv=OUT [text_columns=findings,impression] [overwrite=false]
[no_finding_negative=true]``

Reads ``in_csv``, labels the text of ``text_columns`` (joined per row, blank cells skipped) with the
rule-based labeler (:mod:`cxr_vlp.text.labeler`) and writes a copy to ``out_csv`` with the 14 CheXpert
columns set to 1 / 0 / -1 / blank. Every other column is copied unchanged (read as text, so ids keep
their leading zeros); label columns already present are replaced, with a warning. ``no_finding_negative=false``
writes CheXpert's No Finding convention (1 or blank, never 0), for comparisons with CheXpert-labelled data.

Nothing the user made is lost: ``out_csv`` must differ from ``in_csv``, and an existing ``out_csv`` is
only replaced with ``overwrite=true``. The file is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_vlp.text.labeler import label_reports
from cxr_vlp.text.labels import CHEXPERT_LABELS
from cxr_vlp.utils.cli import parse_key_values

log = logging.getLogger(__name__)

_KEYS = {"in_csv": str, "out_csv": str, "text_columns": list, "overwrite": bool, "no_finding_negative": bool}
_DEFAULTS = {"text_columns": ["findings", "impression"], "overwrite": False, "no_finding_negative": True}


def parse_args(argv: list[str]) -> dict[str, object]:
    """``key=value`` arguments -> ``{in_csv, out_csv, text_columns: list[str], overwrite: bool,
    no_finding_negative: bool}``."""
    return parse_key_values(argv, _KEYS, _DEFAULTS, required=("in_csv", "out_csv"), doc=__doc__)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def label_csv(
    in_csv: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    text_columns: list[str] | tuple[str, ...] = ("findings", "impression"),
    overwrite: bool = False,
    no_finding_negative: bool = True,
) -> pd.DataFrame:
    """Label ``in_csv`` and write the copy to ``out_csv`` (see the module docstring); returns the written table.

    Raises ``FileNotFoundError`` (no input), ``FileExistsError`` (output exists, ``overwrite`` false),
    ``ValueError`` (output is the input, or a text column is missing: the message names file and column).
    """
    src, dst = Path(in_csv), Path(out_csv)
    if not src.is_file():
        raise FileNotFoundError(f"input CSV not found: {src}")
    if _same_file(src, dst):
        raise ValueError(f"out_csv is the input file {src}; choose another out_csv (the input is never modified)")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=true to replace it")
    if dst.exists() and not dst.is_file():
        raise FileExistsError(f"{dst} exists and is not a file; refusing to replace it")
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    missing = [c for c in text_columns if c not in df.columns]
    if missing:
        raise ValueError(f"{src}: missing text column(s) {missing}; found {list(df.columns)}")
    present = [c for c in CHEXPERT_LABELS if c in df.columns]
    if present:
        log.warning("%s: replacing existing label column(s) %s in the copy", src, present)
    texts = [
        "\n\n".join(cell.strip() for cell in row if cell and cell.strip())
        for row in df[list(text_columns)].itertuples(index=False, name=None)
    ]
    labels = label_reports(texts, no_finding_negative=no_finding_negative)
    for j, name in enumerate(CHEXPERT_LABELS):
        column = labels[:, j]
        df[name] = pd.array([None if np.isnan(v) else int(v) for v in column], dtype="Int64")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return df


def main(argv: list[str] | None = None) -> int:
    """Label the CSV and print a one-line summary plus per-label counts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    try:
        df = label_csv(
            args["in_csv"],
            args["out_csv"],
            args["text_columns"],
            bool(args["overwrite"]),
            no_finding_negative=bool(args["no_finding_negative"]),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"labelled {len(df)} reports from {args['in_csv']} in {time.perf_counter() - t0:.1f}s -> {args['out_csv']}")
    for name in CHEXPERT_LABELS:
        col = df[name]
        print(
            f"  {name:28s} pos {int((col == 1).sum()):6d}  neg {int((col == 0).sum()):6d}  "
            f"unc {int((col == -1).sum()):6d}  blank {int(col.isna().sum()):6d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
