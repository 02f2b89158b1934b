"""CLI: ``python -m cxr_vlp.data.synthetic out_dir=DIR [num_patients=N] [seed=S] [image_size=..] [workers=..]``.

Arguments are Hydra-style ``key=value`` pairs; keys are ``out_dir`` plus the fields of
:class:`~cxr_vlp.data.synthetic.SyntheticConfig`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import typing
from dataclasses import fields

from cxr_vlp.data.synthetic import SyntheticConfig, generate_dataset
from cxr_vlp.utils.cli import parse_key_values


def parse_args(argv: list[str]) -> tuple[str, dict[str, typing.Any]]:
    """Split ``key=value`` arguments into ``out_dir`` and typed config overrides."""
    hints = typing.get_type_hints(SyntheticConfig)
    types = {"out_dir": str, **{f.name: hints[f.name] for f in fields(SyntheticConfig)}}
    args = parse_key_values(argv, types, required=("out_dir",), doc=__doc__)
    return args.pop("out_dir"), args


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the dataset and print a one-line summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    try:
        csv_path = generate_dataset(out_dir, **overrides)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = json.loads((csv_path.parent / "manifest.json").read_text())["counts"]
    print(
        f"synthetic dataset: {counts['studies']} studies, {counts['images']} images, "
        f"{counts['patients']} patients in {time.perf_counter() - t0:.1f}s -> {csv_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
