"""Markdown table of the heads study: python experiments/heads_demo/table.py logs/heads_demo"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADS = ("clip_demo", "mcsl_demo", "probclip_vib_demo", "clear_demo")


def main(out: Path) -> None:
    seconds = {}
    for line in (out / "seconds.txt").read_text().splitlines():
        exp, budget, sec = line.split()
        seconds[exp, budget] = int(sec)
    print("| `+experiment=` | untrained i2t R@1 / R@10 | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@10 | i2t MedR "
          "| i2t class P@5 | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for exp in HEADS:
        try:
            u = json.loads((out / f"{exp}_untrained" / "metrics.json").read_text())
            t = json.loads((out / f"{exp}_trained" / "metrics.json").read_text())
        except FileNotFoundError:
            continue

        def pct(d: dict, key: str) -> str:
            return f"{100 * d[key]:.1f}" if d.get(key) is not None else "–"

        print(f"| `{exp}` | {pct(u, 'test/i2t/R@1')} / {pct(u, 'test/i2t/R@10')} | {pct(t, 'test/i2t/R@1')} | "
              f"{pct(t, 'test/i2t/R@5')} | {pct(t, 'test/i2t/R@10')} | {pct(t, 'test/t2i/R@10')} | "
              f"{t['test/i2t/MedR']:.0f} | {pct(t, 'eval/i2t/P@5')} | {seconds[exp, 'trained'] / 60:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/heads_demo"))
