"""Fetch the OpenI (IU X-Ray) report XML files and list the reports of the labeler's real-report set.

``python scripts/openi_reports.py fetch out_dir=DIR [version=1.5.7]``
    ``pip download torchxrayvision==VERSION --no-deps`` into a temporary folder, then extracts
    ``ecgen-radiology/<n>.xml`` from the ``NLMCXR_reports.tgz`` archive inside the wheel to
    ``DIR/ecgen-radiology/``. A file already there is kept when its bytes match and is an error when they
    differ (nothing already on disk is replaced). Neither the wheel nor the XML belong in the repository.

``python scripts/openi_reports.py select xml_dir=DIR out_jsonl=FILE [max_number=2000] [count=330]``
    The ``count`` reports with the lowest file numbers ``n < max_number`` that have a non-empty findings
    or impression section, one JSON object per line: ``{"id": "CXR<n>", "findings": ..., "impression": ...}``.
    This is the selection of ``tests/fixtures/openi/reports.jsonl`` (docs/labeler.md); an existing
    ``out_jsonl`` is never replaced.

The OpenI reports are published by the National Library of Medicine under CC BY-NC-ND 4.0 (the licence is
stated in every XML file).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from cxr_vlp.data.readers.iu_xray import OPENI_REPORTS, parse_openi_xml
from cxr_vlp.utils.cli import parse_key_values

ARCHIVE = "torchxrayvision/data/NLMCXR_reports.tgz"
DEFAULT_VERSION = "1.5.7"


def download_wheel(version: str, into: Path) -> Path:
    """The torchxrayvision wheel, fetched with ``pip download`` into ``into``."""
    cmd = [sys.executable, "-m", "pip", "download", f"torchxrayvision=={version}", "--no-deps", "-d", str(into)]
    subprocess.run(cmd, check=True)
    wheels = sorted(into.glob("torchxrayvision-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no torchxrayvision wheel in {into}")
    return wheels[0]


def extract_reports(wheel: Path, out_dir: Path) -> int:
    """Extract ``ecgen-radiology/*.xml`` from the report archive inside ``wheel``; returns the number written."""
    out = out_dir / OPENI_REPORTS
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(wheel) as whl:
        if ARCHIVE not in whl.namelist():
            raise FileNotFoundError(f"{wheel}: no {ARCHIVE} inside the wheel")
        with whl.open(ARCHIVE) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
            for member in tar:
                name = Path(member.name)
                if not member.isfile() or name.parent.name != OPENI_REPORTS or name.suffix != ".xml":
                    continue
                data = tar.extractfile(member).read()
                target = out / name.name
                if target.exists():
                    if target.read_bytes() != data:
                        raise FileExistsError(f"{target} exists with other content; not replacing it")
                    continue
                target.write_bytes(data)
                written += 1
    return written


def select_reports(xml_dir: Path, max_number: int, count: int) -> list[dict[str, str | None]]:
    """The evaluation selection (module docstring): lowest file numbers below ``max_number`` with text."""
    reports = xml_dir / OPENI_REPORTS if (xml_dir / OPENI_REPORTS).is_dir() else xml_dir
    numbered = sorted((int(p.stem), p) for p in reports.glob("*.xml") if p.stem.isdigit())
    rows: list[dict[str, str | None]] = []
    for number, path in numbered:
        if number >= max_number or len(rows) >= count:
            break
        study, findings, impression, _ = parse_openi_xml(path)
        if findings or impression:
            rows.append({"id": study, "findings": findings, "impression": impression})
    if len(rows) < count:
        raise ValueError(f"{reports}: only {len(rows)} reports with text below file number {max_number}")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run ``fetch`` or ``select`` (module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("fetch", "select"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "fetch":
        args = parse_key_values(
            rest, {"out_dir": str, "version": str}, {"version": DEFAULT_VERSION}, required=("out_dir",), doc=__doc__
        )
        with tempfile.TemporaryDirectory() as tmp:
            n = extract_reports(download_wheel(args["version"], Path(tmp)), Path(args["out_dir"]))
        print(f"{n} report files written to {Path(args['out_dir']) / OPENI_REPORTS}")
        return 0
    args = parse_key_values(
        rest,
        {"xml_dir": str, "out_jsonl": str, "max_number": int, "count": int},
        {"max_number": 2000, "count": 330},
        required=("xml_dir", "out_jsonl"),
        doc=__doc__,
    )
    out = Path(args["out_jsonl"])
    if out.exists():
        print(f"error: {out} already exists; choose another out_jsonl", file=sys.stderr)
        return 1
    rows = select_reports(Path(args["xml_dir"]), args["max_number"], args["count"])
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} reports -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
