#!/usr/bin/env bash
# GPU checks for a machine with one CUDA device (prints, never asserts beyond the tests it runs):
#   1. tests/gpu: every head's loss and gradients on CUDA equal the CPU's; bf16 autocast stays close to fp32;
#      the real configs train with trainer=gpu (bf16-mixed)
#   2. train-step throughput of the demo towers and of paper-size towers (Swin-T 224 px + a BERT-base-sized
#      encoder built from its config, 2 image + 2 text views, batch 64), fp32 vs bf16-mixed
#   3. the demo experiment end to end on the GPU in bf16-mixed (wall time, test retrieval)
# Usage: bash bench/gpu_checks.sh [python]   (default .venv/bin/python; results also under ${OUT:-logs/gpu_checks})
set -uo pipefail
PY=${1:-.venv/bin/python}
out=${OUT:-logs/gpu_checks}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi -L
$PY -c "import torch, lightning, timm, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), '| lightning', lightning.__version__, '| timm', timm.__version__, \
'| transformers', transformers.__version__)"

echo "== 1. tests/gpu"
$PY -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -n 15

echo "== 2. train-step throughput"
paper=(+experiment=clip_mimic model/text_encoder=local_bert model.image_encoder.pretrained=false
       model.text_encoder.local_config.hidden_size=768 model.text_encoder.local_config.num_hidden_layers=12
       model.text_encoder.local_config.num_attention_heads=12 model.text_encoder.local_config.intermediate_size=3072
       model.text_encoder.local_config.max_position_embeddings=512 model.text_encoder.tokenizer.vocab_size=28996)
for precision in 32-true bf16-mixed; do
  $PY bench/train_step.py +experiment=demo trainer.precision=$precision steps=20 2>&1 | tail -n 2
  $PY bench/train_step.py "${paper[@]}" trainer.precision=$precision steps=10 2>&1 | tail -n 2
done

echo "== 3. make demo on the GPU (bf16-mixed)"
start=$(date +%s)
$PY -m cxr_vlp.train +experiment=demo trainer=gpu data.num_workers=8 hydra.run.dir="$out/demo_gpu" \
  callbacks.progress_bar=null > "$out/demo_gpu.log" 2>&1
echo "rc=$? wall=$(( $(date +%s) - start )) s"
tail -n 12 "$out/demo_gpu.log"
