"""Concept banks: plain text files, one short radiological observation per line.

Format: UTF-8, one concept per line; blank lines and lines starting with ``#`` are ignored. Concepts are
stored lower case with single spaces; two lines that normalise to the same text are an error (naming the
file and both line numbers), as is a bank with no concepts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

__all__ = ["ConceptBankError", "default_bank_path", "load_concept_bank", "normalize_concept", "save_concept_bank"]


class ConceptBankError(ValueError):
    """A concept bank file is malformed (empty, duplicate entries)."""


def normalize_concept(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding punctuation/space stripped."""
    return " ".join(str(text).lower().split()).strip(" .,;:")


def default_bank_path() -> Path:
    """Path of the concept bank shipped with the package (``cxr_vlp/resources/concepts.txt``)."""
    return Path(str(resources.files("cxr_vlp").joinpath("resources", "concepts.txt")))


def parse_concept_lines(lines: Iterable[str], source: str = "<concepts>") -> list[str]:
    """Validate and normalise concept lines; errors name ``source`` and the line number."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for lineno, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        concept = normalize_concept(stripped)
        if not concept:
            raise ConceptBankError(f"{source}, line {lineno}: {raw.strip()!r} is empty after normalisation")
        if concept in seen:
            raise ConceptBankError(
                f"{source}, line {lineno}: duplicate concept {concept!r} (first on line {seen[concept]})"
            )
        seen[concept] = lineno
        out.append(concept)
    if not out:
        raise ConceptBankError(f"{source}: the concept bank is empty (no concept lines)")
    return out


def load_concept_bank(path: str | os.PathLike | None = None) -> list[str]:
    """Load a concept bank; ``None`` loads the packaged default. Returns normalised concepts in file order."""
    if path is None:
        text = resources.files("cxr_vlp").joinpath("resources", "concepts.txt").read_text(encoding="utf-8")
        source = str(default_bank_path())
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"concept bank {p} does not exist")
        text = p.read_text(encoding="utf-8")
        source = str(p)
    return parse_concept_lines(text.splitlines(), source)


def save_concept_bank(
    concepts: Iterable[str], path: str | os.PathLike, overwrite: bool = False, header: str | None = None
) -> Path:
    """Write ``concepts`` one per line (normalised, validated) atomically; refuses to overwrite by default."""
    p = Path(path).expanduser()
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; pass overwrite=True (overwrite=true on the CLI) to replace it")
    items = parse_concept_lines([str(c) for c in concepts], source=f"concepts for {p}")
    lines = [f"# {h}" for h in (header.splitlines() if header else [])] + items
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
