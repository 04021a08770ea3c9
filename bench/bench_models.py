"""Model-side throughput, measured in one run per backbone (ratios, since machines are noisy):

* forward-only images/s (inference mode) - the reference;
* frozen-trunk training images/s (forward, head backward, Adam step) / forward images/s;
* batched on-device Grad-CAM++ images/s / forward images/s (maps copied to the CPU, and
  maps left on the device for GPU pipelines);
* pytorch-grad-cam's Grad-CAM++ images/s / forward images/s (the library baseline).

On CUDA it runs bf16 autocast and channels_last (and fp32 for comparison); on CPU fp32.

    python bench/bench_models.py                                   # CPU: small backbones
    python bench/bench_models.py --backbones resnet50 densenet201 efficientnet_b7 --batch 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vistumor.explain.methods import explainer  # noqa: E402
from vistumor.model.classifier import PatchClassifier  # noqa: E402


def rate(fn, images: int, warmup: int, seconds: float, sync) -> float:
    """Images per second of ``fn`` over at least ``seconds`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    start, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return images * calls / elapsed


def bench_backbone(name: str, batch: int, size: int, device: str, dtype: str, seconds: float,
                   library: bool) -> dict:
    model = PatchClassifier(name, pretrained=False).to(device)  # speed does not depend on weights
    cuda = device == "cuda"
    if cuda:
        model.net.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and dtype == "bf16"
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def forward():
        with torch.inference_mode(), autocast:
            model.eval()(images)

    def train_step():
        model.train()
        with autocast:
            loss = model.loss(model.logits({"image": images, "label": labels}), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fast = explainer(model, "gradcam++", fast=True, batch_size=batch)
    slow = explainer(model, "gradcam++", fast=False, batch_size=batch)

    def cam_fast():
        with autocast:
            fast(images)

    def cam_fast_on_device():
        with autocast:
            fast(images, on_device=True)

    result = {"backbone": name, "device": device, "dtype": dtype, "batch": batch, "size": size}
    result["forward_img_s"] = rate(forward, batch, 2, seconds, sync)
    result["train_img_s"] = rate(train_step, batch, 2, seconds, sync)
    result["gradcampp_fast_img_s"] = rate(cam_fast, batch, 1, seconds, sync)
    result["gradcampp_fast_on_device_img_s"] = rate(cam_fast_on_device, batch, 1, seconds, sync)
    if library:
        result["gradcampp_library_img_s"] = rate(lambda: slow(images), batch, 1, seconds, sync)
    fwd = result["forward_img_s"]
    result["train_over_forward"] = result["train_img_s"] / fwd
    result["cam_fast_over_forward"] = result["gradcampp_fast_img_s"] / fwd
    result["cam_fast_on_device_over_forward"] = result["gradcampp_fast_on_device_img_s"] / fwd
    if library:
        result["cam_library_over_forward"] = result["gradcampp_library_img_s"] / fwd
        result["cam_fast_over_library"] = result["gradcampp_fast_img_s"] / result["gradcampp_library_img_s"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "resnet50"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-library", action="store_true", help="skip pytorch-grad-cam (slow)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = ["bf16", "fp32"] if device == "cuda" else ["fp32"]
    host = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    rows = [bench_backbone(b, args.batch, args.size, device, d, args.seconds, not args.no_library)
            for b in args.backbones for d in dtypes]
    print(json.dumps({"host": host, "results": rows}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"host": host, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
