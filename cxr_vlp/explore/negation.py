"""The negated variant of a free-text query: ``negated("pleural effusion") == "no pleural effusion"`` and back.

A text that already opens with a negation cue (``no``, ``there is no``, ``there are no``, ``no evidence of``,
``without``) loses the cue; any other text gets ``no`` in front, after dropping an opening existential phrase
(``there is a``, ``there are``, ``a``, ``an``, ...), so "there is a small pneumothorax" becomes
"no small pneumothorax". Case is kept as typed, except that the first letter after an added ``no`` is lowered.
"""

from __future__ import annotations

import re

__all__ = ["negated"]

_NEGATION = re.compile(
    r"^\s*(?:there\s+(?:is|are)\s+no|no\s+evidence\s+of|without|no)\s+(?P<rest>.+)$", re.IGNORECASE | re.DOTALL
)
_EXISTENTIAL = re.compile(r"^\s*(?:there\s+(?:is|are)\s+(?:an?\s+)?|an?\s+)(?P<rest>.+)$", re.IGNORECASE | re.DOTALL)


def negated(text: str) -> str:
    """The negated variant of ``text`` (see the module docstring); ``ValueError`` for an empty text."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("negated: expected a non-empty text")
    stripped = text.strip()
    match = _NEGATION.match(stripped)
    if match:
        return match.group("rest").strip()
    match = _EXISTENTIAL.match(stripped)
    rest = match.group("rest").strip() if match else stripped
    if rest[:1].isupper() and not rest[:2].isupper():
        rest = rest[:1].lower() + rest[1:]
    return f"no {rest}"
