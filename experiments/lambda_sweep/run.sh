#!/usr/bin/env bash
# The λ × concept-temperature study of MCSL on the synthetic data (experiments/lambda_sweep/README.md):
# 8 jobs (λ = 0 is the CLIP objective), then the table and plots in the sweep's own folder
# (logs/lambda_sweep/multiruns/<time>/). About 25 minutes on 2 CPU cores.
#   UPDATE_RESULTS=1 bash experiments/lambda_sweep/run.sh   also copies them over the committed results here
# Environment: PY (the interpreter), LAMS / TAUS (the grid), SWEEP_DIR (the sweep folder), RESULTS_DIR (where
# UPDATE_RESULTS=1 copies to); extra arguments are passed to the sweep as overrides.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LAMS=${LAMS:-0.0,0.3,0.7,1.0}
TAUS=${TAUS:-0.1,1.0}
SWEEP_DIR=${SWEEP_DIR:-logs/lambda_sweep/multiruns/$(date +%Y-%m-%d_%H-%M-%S)}
RESULTS_DIR=${RESULTS_DIR:-experiments/lambda_sweep}
# a sweep with failed jobs exits non-zero: the table (which lists them) is still made, then that status returned
status=0
"$PY" -m cxr_vlp.train -m +experiment=lambda_sweep "loss.lam=$LAMS" "loss.concept_temperature=$TAUS" \
    "hydra.sweep.dir=$SWEEP_DIR" "$@" || status=$?
"$PY" -m cxr_vlp.experiments.collect "$SWEEP_DIR" x=loss.lam hue=loss.concept_temperature \
    metrics=test/i2t/R@10,eval/i2t/P@5,test/t2i/R@10,eval/i2t/P@1 out="$SWEEP_DIR"
echo "table and plots: $SWEEP_DIR"
if [[ "${UPDATE_RESULTS:-0}" == 1 ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$SWEEP_DIR"/results.csv "$SWEEP_DIR"/results.md "$SWEEP_DIR"/*_vs_loss.lam.png "$RESULTS_DIR"/
    echo "copied to $RESULTS_DIR"
fi
exit "$status"
