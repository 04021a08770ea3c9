"""Foundation models: images/s and the time of Grad-CAM++ against the forward, one row each.

Each model is composed from its ``conf/model/<name>.yaml`` (the card's architecture, random
weights: speed does not depend on them), built on the device, and measured in one run:

* forward images/s (inference mode; bf16 autocast on CUDA, fp32 on CPU), the rate of the
  feature cache's trunk pass and of whole-slide probabilities;
* fast Grad-CAM++ images/s (``vistumor.explain.methods.explainer``, maps copied to the CPU)
  and ``cam / forward`` = Grad-CAM++ time per image ÷ forward time per image;
* the same for every other method named with ``--methods`` (e.g. ``attention``);
* trunk parameters, the head's input width and, on CUDA, peak memory.

    python bench/bench_foundation.py                                        # CPU: model=tiny_fm
    python bench/bench_foundation.py --models uni uni2_h virchow2 h_optimus_0 h_optimus_1 gigapath \\
        --batch 64 --out bench/results/foundation_gpu.json                  # a lent GPU (gpu_foundation.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_models import rate  # noqa: E402  (bench/ is the script's folder)
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from vistumor.errors import VisTumorError  # noqa: E402
from vistumor.explain.methods import explainer  # noqa: E402
from vistumor.model.classifier import PatchClassifier  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def build(name: str, device: str) -> PatchClassifier:
    """``conf/model/<name>.yaml`` with random weights, built directly on ``device``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = OmegaConf.to_container(compose("train", overrides=[f"model={name}"]).model, resolve=True)
    for key in ("_target_", "optimizer", "scheduler"):
        node.pop(key, None)
    with torch.device(device):
        model = PatchClassifier(**{**node, "pretrained": False, "weights_path": None})
    return model.to(device).eval()


def bench(name: str, batch: int, device: str, seconds: float, methods: list[str]) -> dict:
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = build(name, device)
    built_s = time.perf_counter() - start
    size = model.input_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    head = model.net.get_classifier()
    trunk = sum(p.numel() for p in model.net.parameters()) - sum(p.numel() for p in head.parameters())
    row = {"model": name, "device": device, "dtype": "bf16" if cuda else "fp32", "batch": batch, "size": size,
           "trunk_params_M": round(trunk / 1e6, 2), "features": head.in_features, "build_s": round(built_s, 1)}

    def forward():
        with torch.inference_mode(), autocast:
            model(images)

    row["forward_img_s"] = rate(forward, batch, 2, seconds, sync)
    for method in methods:
        key = method.replace("+", "p")
        try:
            explain = explainer(model, method, fast=True, batch_size=batch)
        except VisTumorError as err:  # e.g. attention maps of a CNN
            row[f"{key}_img_s"] = row[f"{key}_time_over_forward"] = None
            print(f"{name}: {method} skipped ({err})", flush=True)
            continue

        def run(explain=explain):
            with autocast:
                explain(images)

        row[f"{key}_img_s"] = rate(run, batch, 1, seconds, sync)
        row[f"{key}_time_over_forward"] = row["forward_img_s"] / row[f"{key}_img_s"]
    if cuda:
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def markdown(rows: list[dict], methods: list[str]) -> str:
    keys = [m.replace("+", "p") for m in methods]
    header = ["model", "dtype", "batch", "trunk params (M)", "features", "forward img/s",
              *[f"{m} img/s" for m in methods], *[f"{m} time / forward" for m in methods]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], r["dtype"], r["batch"], r["trunk_params_M"], r["features"], f"{r['forward_img_s']:.1f}",
                 *[_num(r[f"{k}_img_s"], 1) for k in keys], *[_num(r[f"{k}_time_over_forward"], 2) for k in keys]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny_fm"], help="conf/model/<name>.yaml names")
    parser.add_argument("--methods", nargs="+", default=["gradcam++"], help="explanation methods to time")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    host = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    rows = []
    for name in args.models:
        rows.append(bench(name, args.batch, device, args.seconds, args.methods))
        print(json.dumps(rows[-1]), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()  # the last model's blocks, before the next (up to 1.1 B) is built
    print(markdown(rows, args.methods))
    if args.out:
        Path(args.out).write_text(json.dumps({"host": host, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
