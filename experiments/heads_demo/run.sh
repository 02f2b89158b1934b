#!/usr/bin/env bash
# The four loss heads on the synthetic dataset, same data / towers / budget, each from its untrained start.
# Run from the repository root:  bash experiments/heads_demo/run.sh   (about 50 minutes on 2 CPU cores)
set -euo pipefail
out=${OUT:-logs/heads_demo}
mkdir -p "$out"
for exp in clip_demo mcsl_demo probclip_vib_demo clear_demo; do
  for budget in untrained trained; do
    extra=()
    [[ $budget == untrained ]] && extra=(trainer.max_epochs=0)   # random towers, no step: the starting point
    start=$(date +%s)
    .venv/bin/python -m cxr_vlp.train +experiment="$exp" "${extra[@]}" hydra.run.dir="$out/${exp}_$budget" \
      callbacks.progress_bar=null > "$out/${exp}_$budget.log" 2>&1
    echo "$exp $budget $(( $(date +%s) - start ))" >> "$out/seconds.txt"
  done
done
.venv/bin/python experiments/heads_demo/table.py "$out"
