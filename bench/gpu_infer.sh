#!/usr/bin/env bash
# Whole-slide inference on a GPU host, as one prepared run (see bench/README.md): ResNet50
# (random weights: throughput only), bf16, fast Grad-CAM++, half-patch stride, 16 decoding
# threads, on the 100,000 x 100,000 px tiling-bench slide (written first). Needs torch, timm,
# lightning, torchmetrics on the machine; the rest from wheels in .whl/ as gpu_bench.sh.
# Results: $OUT/infer_cuda_100000.json (or bench/results).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
python3 bench/bench_infer.py --size 100000 --backbone resnet50 --device cuda --threads 16 --skip-levels \
  > "$OUT/infer_gpu.log" 2>&1
tail -25 "$OUT/infer_gpu.log"
