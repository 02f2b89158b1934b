"""Mine candidate concepts from training reports and merge them with a base concept bank.

CLI::

    python -m cxr_vlp.concepts.mine in_csv=train.csv out_txt=concepts.txt [min_count=20] [max_concepts=500]
        [text_columns=findings,impression] [base=default] [overwrite=false]

How candidates are found
------------------------
1. The text columns of each row are split into sentences (blocks of
   :func:`~cxr_vlp.text.sections.text_blocks`, then :func:`~cxr_vlp.text.text_views.split_sentences`).
2. Each sentence is normalised: lower case, numbers and measurements removed, anything but letters,
   hyphens and spaces becomes a break (so an n-gram never spans a comma or a clause).
3. Every 1–4 word n-gram inside a run is a candidate if it contains a *finding term*: a word of
   :data:`FINDING_STEMS` (prefix match) or a word inside a mention the rule-based labeler
   (:func:`~cxr_vlp.text.labeler.explain`) found in that sentence. N-grams that start or end with a
   function word (:data:`STOPWORDS`; "no" may start one, "no pleural effusion" is a concept) are dropped.
4. Counts are per report (document frequency). Candidates seen in fewer than ``min_count`` reports are
   dropped, as is a shorter n-gram that only ever occurs inside one longer kept n-gram with the same count.
5. The survivors are ranked by count (ties: longer first, then alphabetical), the first ``max_concepts``
   that are not already in the base bank are appended to it (``base=default``: the packaged bank;
   ``base=none``: no base; otherwise a path), and the result is written one per line.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cxr_vlp.concepts.bank import load_concept_bank, normalize_concept, save_concept_bank
from cxr_vlp.text.sections import text_blocks
from cxr_vlp.text.text_views import is_missing, split_sentences
from cxr_vlp.utils.cli import parse_key_values

__all__ = ["FINDING_STEMS", "STOPWORDS", "count_candidates", "main", "mine_concepts", "sentence_ngrams"]

# Word prefixes that mark a radiological finding, device, or anatomical abnormality.
FINDING_STEMS: tuple[str, ...] = (
    "effusion",
    "opacit",
    "opacif",
    "consolidat",
    "atelecta",
    "pneumothora",
    "edema",
    "oedema",
    "congest",
    "cardiomegal",
    "enlarge",
    "widen",
    "nodul",
    "mass",
    "lesion",
    "granuloma",
    "tumor",
    "metasta",
    "infiltrat",
    "pneumonia",
    "infection",
    "aspiration",
    "collapse",
    "fracture",
    "deformit",
    "kyphos",
    "scolios",
    "degenerat",
    "osteopen",
    "tube",
    "catheter",
    "line",
    "pacemaker",
    "pacer",
    "lead",
    "wire",
    "clip",
    "stent",
    "valve",
    "device",
    "drain",
    "port",
    "picc",
    "defibrillat",
    "emphysema",
    "hyperinfla",
    "fibros",
    "scar",
    "thicken",
    "calcif",
    "hernia",
    "pneumomediast",
    "blunt",
    "haz",
    "ground-glass",
    "glass",
    "bronchiect",
    "cavit",
    "volume",
    "elevat",
    "tortu",
    "engorge",
    "cephaliz",
    "kerley",
    "cuffing",
    "silhouette",
    "cardiomediastinal",
    "mediastin",
    "hilar",
    "clear",
    "normal",
    "unremarkable",
    "sternotomy",
    "lymphadenopath",
    "air",
    "fold",
    "abnormal",
    "prominen",
    "thickening",
)

STOPWORDS: frozenset[str] = frozenset(
    "a an the and or of in on at to for with without by from as is are was were be been being has have had "
    "this that these those there it its which who whom into onto over under than then no not nor but if "
    "also again still now seen noted identified present visualized demonstrated appears appear compared "
    "prior previous study since interval unchanged stable change changes there's may could likely possible "
    "possibly probably suggest suggests suggesting consistent concerning new measuring measures measure "
    "measured approximately about".split()
)
_START_OK = frozenset({"no"})
_BREAK = re.compile(r"[^a-z\- ]+")
_NUMBERISH = re.compile(r"\b[\w.]*\d[\w.]*\b(?:\s*(?:cm|mm|x)\b)?")


def _normalise_sentence(sentence: str) -> list[list[str]]:
    """Runs of words (no punctuation inside a run), lower case, numbers and measurements removed."""
    text = _NUMBERISH.sub(" | ", sentence.lower())
    runs = []
    for chunk in _BREAK.split(text):
        words = [w.strip("-") for w in chunk.split()]
        words = [w for w in words if w]
        if words:
            runs.append(words)
    return runs


def _is_finding(word: str, extra: set[str]) -> bool:
    return word in extra or word.startswith(FINDING_STEMS)


def _mention_words(sentence: str) -> set[str]:
    try:
        from cxr_vlp.text.labeler import explain
    except ImportError:  # pragma: no cover - labeler is part of the package
        return set()
    words: set[str] = set()
    for m in explain(sentence, use_sections=False):
        words.update(m.phrase.lower().split())
    return words


def sentence_ngrams(sentence: str, max_n: int = 4, use_labeler: bool = True) -> set[str]:
    """The candidate n-grams (1..max_n words) of one sentence (see the module docstring)."""
    extra = _mention_words(sentence) if use_labeler else set()
    out: set[str] = set()
    for run in _normalise_sentence(sentence):
        for i in range(len(run)):
            if run[i] in STOPWORDS and run[i] not in _START_OK:
                continue
            for n in range(1, max_n + 1):
                gram = run[i : i + n]
                if len(gram) < n:
                    break
                if gram[-1] in STOPWORDS or (n == 1 and gram[0] in _START_OK):
                    continue
                if any(_is_finding(w, extra) for w in gram):
                    out.add(" ".join(gram))
    return out


def _report_sentences(texts: Iterable[Any]) -> list[str]:
    sentences = []
    for text in texts:
        if is_missing(text):
            continue
        for block in text_blocks(str(text)):
            sentences.extend(split_sentences(block))
    return sentences


def count_candidates(reports: Iterable[Sequence[Any]], max_n: int = 4, use_labeler: bool = True) -> Counter:
    """Document frequency of candidate n-grams over reports (each report: a sequence of section texts)."""
    counts: Counter = Counter()
    for texts in reports:
        grams: set[str] = set()
        for sentence in _report_sentences(texts):
            grams |= sentence_ngrams(sentence, max_n=max_n, use_labeler=use_labeler)
        counts.update(grams)
    return counts


def _drop_fragments(counts: dict[str, int]) -> dict[str, int]:
    """Drop an n-gram whose count equals that of a longer kept n-gram containing it (a mere fragment)."""
    keep = dict(counts)
    for gram, c in counts.items():
        padded = f" {gram} "
        for other, oc in counts.items():
            if oc == c and len(other) > len(gram) and padded in f" {other} ":
                keep.pop(gram, None)
                break
    return keep


def rank_candidates(counts: Counter, min_count: int) -> list[tuple[str, int]]:
    kept = _drop_fragments({g: c for g, c in counts.items() if c >= min_count})
    return sorted(kept.items(), key=lambda gc: (-gc[1], -len(gc[0].split()), gc[0]))


def _read_reports(in_csv: str | Path, text_columns: Sequence[str]) -> list[list[Any]]:
    import pandas as pd

    path = Path(in_csv).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input CSV {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str)
    except Exception as err:
        raise ValueError(f"cannot read {path} as CSV: {err}") from err
    missing = [c for c in text_columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: text column(s) {missing} not found; columns are {list(df.columns)}")
    return df[list(text_columns)].values.tolist()


def mine_concepts(
    in_csv: str | Path,
    min_count: int = 20,
    max_concepts: int = 500,
    text_columns: Sequence[str] = ("findings", "impression"),
    base: str | None = "default",
    use_labeler: bool = True,
) -> tuple[list[str], list[tuple[str, int]]]:
    """``(merged bank, mined [(concept, count)] that were added)``; base first, then mined by rank."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_concepts < 0:
        raise ValueError(f"max_concepts must be >= 0, got {max_concepts}")
    reports = _read_reports(in_csv, text_columns)
    ranked = rank_candidates(count_candidates(reports, use_labeler=use_labeler), min_count)
    if base is None or str(base).lower() in ("none", "", "null"):
        bank: list[str] = []
    elif str(base).lower() == "default":
        bank = load_concept_bank()
    else:
        bank = load_concept_bank(base)
    seen = set(bank)
    added: list[tuple[str, int]] = []
    for gram, count in ranked:
        if len(added) >= max_concepts:
            break
        concept = normalize_concept(gram)
        if concept and concept not in seen:
            seen.add(concept)
            added.append((concept, count))
    return bank + [c for c, _ in added], added


# --------------------------------------------------------------------------- CLI
_KEYS = {
    "in_csv": str,
    "out_txt": str,
    "min_count": int,
    "max_concepts": int,
    "text_columns": list,
    "base": str,
    "overwrite": bool,
}
_DEFAULTS = {
    "min_count": 20,
    "max_concepts": 500,
    "text_columns": ["findings", "impression"],
    "base": "default",
    "overwrite": False,
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    return parse_key_values(argv, _KEYS, _DEFAULTS, required=("in_csv", "out_txt"), doc=__doc__)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args["out_txt"]).expanduser()
    if out.exists() and not args["overwrite"]:
        print(f"error: {out} already exists; pass overwrite=true to replace it", file=sys.stderr)
        return 1
    try:
        bank, added = mine_concepts(
            args["in_csv"],
            min_count=args["min_count"],
            max_concepts=args["max_concepts"],
            text_columns=args["text_columns"],
            base=args["base"],
        )
        save_concept_bank(
            bank,
            out,
            overwrite=args["overwrite"],
            header=f"concept bank: {len(bank) - len(added)} base + {len(added)} mined from "
            f"{args['in_csv']} (min_count={args['min_count']})",
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(bank)} concepts ({len(added)} mined) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
