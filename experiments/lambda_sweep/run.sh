#!/usr/bin/env bash
# The λ × concept-temperature study of MCSL on the synthetic data (experiments/lambda_sweep/README.md):
# 8 jobs (λ = 0 is the CLIP objective), then the table and plots in this folder. About 25 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
"$PY" -m cxr_vlp.train -m +experiment=lambda_sweep loss.lam=0.0,0.3,0.7,1.0 loss.concept_temperature=0.1,1.0
sweep=$(ls -d logs/lambda_sweep/multiruns/*/ | sort | tail -1)
"$PY" -m cxr_vlp.experiments.collect "$sweep" x=loss.lam hue=loss.concept_temperature \
    metrics=test/i2t/R@10,eval/i2t/P@5,test/t2i/R@10,eval/i2t/P@1 out=experiments/lambda_sweep
