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


def _cast(key: str, raw: str, kind: typing.Any) -> typing.Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise SystemExit(f"error: {key}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def parse_args(argv: list[str]) -> tuple[str, dict[str, typing.Any]]:
    """Split ``key=value`` arguments into ``out_dir`` and typed config overrides."""
    hints = typing.get_type_hints(SyntheticConfig)
    types = {f.name: hints[f.name] for f in fields(SyntheticConfig)}
    valid = ["out_dir", *types]
    out_dir: str | None = None
    overrides: dict[str, typing.Any] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            raise SystemExit(__doc__.strip() + f"\nvalid keys: {', '.join(valid)}")
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep:
            raise SystemExit(f"error: expected key=value, got {arg!r}; valid keys: {', '.join(valid)}")
        if key == "out_dir":
            out_dir = value
        elif key in types:
            overrides[key] = _cast(key, value, types[key])
        else:
            raise SystemExit(f"error: unknown key {key!r}; valid keys: {', '.join(valid)}")
    if not out_dir:
        raise SystemExit(f"error: out_dir=DIR is required; valid keys: {', '.join(valid)}")
    return out_dir, overrides


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
    print(f"synthetic dataset: {counts['studies']} studies, {counts['images']} images, "
          f"{counts['patients']} patients in {time.perf_counter() - t0:.1f}s -> {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
