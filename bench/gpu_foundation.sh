#!/usr/bin/env bash
# One prepared GPU run: the six pathology foundation models (random weights, the cards'
# architectures) and resnet50 for reference, bf16, batch 64: forward images/s and the time of
# Grad-CAM++ and of the attention map against the forward (bench_foundation.py). About 3 min
# on an H100/H200. Needs torch, timm, lightning, torchmetrics, hydra-core on the machine (the
# rest from wheels in .whl/, see bench/README.md). Results go to $OUT (or bench/results).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_foundation.txt"
python3 bench/bench_foundation.py --models resnet50 uni uni2_h virchow2 h_optimus_0 h_optimus_1 gigapath \
  --methods gradcam++ attention --batch 64 --seconds 2 --out "$OUT/foundation_gpu.json" \
  > "$OUT/foundation_gpu.log" 2>&1
tail -10 "$OUT/foundation_gpu.log"
