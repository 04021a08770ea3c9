#!/usr/bin/env bash
# One prepared GPU run (used on a lent H100): model throughput per backbone (fp32 vs bf16 +
# channels_last), frozen-trunk training / forward, fast Grad-CAM++ / forward and
# pytorch-grad-cam / forward, then the loader ratio with 16 processes.
# Needs: torch, timm, lightning, torchmetrics on the machine; the rest from wheels in .whl/
# (see bench/README.md). Results go to $OUT (or bench/results).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
python3 bench/bench_models.py --backbones resnet50 densenet201 efficientnet_b7 tf_efficientnet_lite0 \
  --batch 128 --seconds 2 --out "$OUT/models_gpu.json" > "$OUT/models_gpu.log" 2>&1
tail -3 "$OUT/models_gpu.log"
python3 bench/bench_loader.py --workers 16 --stride 128 --patches 4000 --out "$OUT/loader_16workers.json" \
  > "$OUT/loader_gpu.log" 2>&1
tail -12 "$OUT/loader_gpu.log"
