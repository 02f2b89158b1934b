"""The retrieval table of report.md: both protocols side by side, the tied share and the tie rule."""

from __future__ import annotations

import torch

from cxr_vlp.eval.report import retrieval_section
from cxr_vlp.metrics.retrieval import TIE_RULE, evaluate_retrieval


def test_report_shows_both_protocols_and_the_rule() -> None:
    n = 12
    emb = torch.full((n, 4), 0.5)  # collapsed: chance everywhere
    texts = ["normal"] * 4 + [f"finding {i}" for i in range(n - 4)]
    labels = torch.ones(n, 2)
    metrics, _ = evaluate_retrieval(emb, emb.clone(), labels=labels, texts=texts, prefix="test/")
    text = retrieval_section(metrics, "test")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "→" in line]
    assert len(rows) == 4
    assert rows[0].startswith("| full gallery (12) | image → text | 8.3 | 41.7 | 83.3 | 6.5 | 6.5 |")
    assert rows[2].startswith("| identical reports merged (9 distinct) | image → text | 11.1 |")
    assert all(row.rstrip(" |").endswith("100.0") for row in rows)  # tied share: every match is tied
    assert "| P@1 | P@5 | P@10 | tied |" in text and TIE_RULE in text


def test_report_without_texts_has_the_full_gallery_only() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    metrics, _ = evaluate_retrieval(emb, emb, prefix="test/")
    text = retrieval_section(metrics, "test")
    assert "full gallery (6)" in text and "merged" not in text.split("\n\n", 2)[2]
    perfect = "| full gallery (6) | image → text | 100.0 | 100.0 | 100.0 | 1.0 | 1.0 | 1.000 | – | – | – | 0.0 |"
    assert perfect in text
