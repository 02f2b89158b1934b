"""The benchmark's prompt set, read from config (``conf/prompts/<name>.yaml``, ``prompts=<name>``).

A label's positive prompts are the ``templates`` with ``{phrase}`` replaced by the label's phrase (``phrases``),
its negative prompts the ``negative`` template(s) likewise; a label under ``labels`` gives its ``positive`` and
``negative`` lists in full instead (e.g. No Finding, which no "there is {phrase}" template fits). Zero-shot
classification uses the ensembles of these lists (:class:`~cxr_vlp.eval.zeroshot.PromptSet`), the prompt audit
each positive prompt on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cxr_vlp.eval.zeroshot import PromptSet
from cxr_vlp.text.labels import CHEXPERT_LABELS

__all__ = ["BenchmarkPrompts"]


def _strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    if not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise ValueError(f"{where}: a non-empty string or list of non-empty strings, got {value!r}")
    return items


@dataclass
class BenchmarkPrompts:
    """Templates, the negative template(s), label phrases and full per-label lists (module docstring)."""

    templates: list[str]
    negative: list[str]
    phrases: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> BenchmarkPrompts:
        """From the ``prompts`` config node; ``ValueError`` naming the key at fault."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"prompts: a mapping with templates / negative / phrases / labels, got {cfg!r}")
        unknown = sorted(set(cfg) - {"templates", "negative", "phrases", "labels"})
        if unknown:
            raise ValueError(f"prompts: unknown key(s) {unknown}; expected templates, negative, phrases, labels")
        templates = _strings(cfg.get("templates"), "prompts.templates")
        negative = _strings(cfg.get("negative"), "prompts.negative")
        for t in templates + negative:
            if "{phrase}" not in t:
                raise ValueError(f"prompts: template {t!r} has no {{phrase}} placeholder")
        phrases = {str(k): str(v) for k, v in (cfg.get("phrases") or {}).items()}
        labels: dict[str, dict[str, list[str]]] = {}
        for label, sides in (cfg.get("labels") or {}).items():
            if not isinstance(sides, Mapping) or set(sides) != {"positive", "negative"}:
                raise ValueError(f"prompts.labels[{label!r}]: {{positive: [...], negative: [...]}}")
            labels[str(label)] = {s: _strings(sides[s], f"prompts.labels[{label!r}].{s}") for s in sides}
        bad = sorted((set(phrases) | set(labels)) - set(CHEXPERT_LABELS))
        if bad:
            raise ValueError(f"prompts: unknown label(s) {bad}; labels: {list(CHEXPERT_LABELS)}")
        return cls(templates, negative, phrases, labels)

    def _check(self, label: str) -> None:
        if label not in self.labels and label not in self.phrases:
            raise ValueError(
                f"prompts: no phrase or prompt lists for label {label!r} (add prompts.phrases."
                f"{label!r} or prompts.labels.{label!r})"
            )

    def positive(self, label: str) -> list[str]:
        self._check(label)
        if label in self.labels:
            return list(self.labels[label]["positive"])
        return [t.format(phrase=self.phrases[label]) for t in self.templates]

    def negatives(self, label: str) -> list[str]:
        self._check(label)
        if label in self.labels:
            return list(self.labels[label]["negative"])
        return [t.format(phrase=self.phrases[label]) for t in self.negative]

    def prompt_set(self, labels: Sequence[str]) -> PromptSet:
        """The positive / negative ensembles of ``labels`` for :func:`~cxr_vlp.eval.zeroshot.zeroshot_classify`."""
        return PromptSet({n: self.positive(n) for n in labels}, {n: self.negatives(n) for n in labels})
