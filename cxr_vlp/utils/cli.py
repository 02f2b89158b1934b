"""Hydra-style ``key=value`` arguments for the small command-line tools (no argparse walls).

``parse_key_values(argv, types, defaults, required, doc)`` casts each value to the type declared for
its key (``bool`` accepts true/false/1/0/yes/no/on/off; ``list`` is comma-separated, brackets allowed)
and exits with a message naming the key and the valid keys on any mistake.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def cast_value(key: str, raw: str, kind: Any) -> Any:
    """``raw`` as ``kind``; ``SystemExit`` naming ``key`` if it does not parse."""
    if kind is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise SystemExit(f"error: {key}={raw!r} is not a valid bool (true / false)")
    if kind is list:
        items = [item.strip() for item in raw.strip("[]").split(",") if item.strip()]
        if not items:
            raise SystemExit(f"error: {key} is empty; give a comma-separated list, e.g. {key}=a,b")
        return items
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise SystemExit(f"error: {key}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def parse_key_values(
    argv: Sequence[str],
    types: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    required: Sequence[str] = (),
    doc: str = "",
) -> dict[str, Any]:
    """Parse ``key=value`` arguments (a leading ``+`` is accepted, as in Hydra) against ``types``."""
    valid = ", ".join(types)
    args: dict[str, Any] = dict(defaults or {})
    for arg in argv:
        if arg in ("-h", "--help"):
            raise SystemExit(doc.strip() + f"\nvalid keys: {valid}")
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep:
            raise SystemExit(f"error: expected key=value, got {arg!r}; valid keys: {valid}")
        if key not in types:
            raise SystemExit(f"error: unknown key {key!r}; valid keys: {valid}")
        args[key] = cast_value(key, value, types[key])
    missing = [key for key in required if not args.get(key)]
    if missing:
        raise SystemExit(f"error: {' and '.join(k + '=...' for k in missing)} required; valid keys: {valid}")
    return args
