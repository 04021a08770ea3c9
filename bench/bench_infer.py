"""Whole-slide inference benchmark: decode economy, pipeline efficiency, memory, level choice.

Measured in one run on this machine (each large-slide measurement in its own process, so
its peak RSS is its own):

* ``decoded / grid``: read-level pixels decoded ÷ the pixels the tissue patches cover, at a
  stride of half a patch (a patch-by-patch reader decodes ~4x);
* pipeline efficiency: slide patches/s with Grad-CAM++ ÷ min(loader-only patches/s,
  forward-only img/s), on the same patches;
* peak RSS of the whole pass on the 100,000 x 100,000 px tiling-bench slide;
* reading level: mean |Δp| and the change in patch AUROC when patches come from the coarsest
  fine-enough level instead of level 0 (demo checkpoint, held-out synthetic test slides).

    python bench/bench_infer.py                      # all of it (the 100k slide is written once)
    python bench/bench_infer.py --size 50000 --skip-levels
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results"
TILING = {
    "grid": {"patch_size": 512, "stride": None, "level": 0, "target_mpp": None, "min_tissue_fraction": 0.6},
    "tissue": {"downsample": 32, "blur": 5, "min_saturation": 0.07, "max_saturation": 0.3, "min_value": 0.12,
               "open_radius": 1, "close_radius": 3, "fill_holes": True, "min_area": 64},
}


def model_run(backbone: str, out: Path, device: str = "cpu", input_size: int = 224):
    import torch

    from vistumor.infer.engine import ModelScorer
    from vistumor.infer.slide_run import ModelRun
    from vistumor.model.classifier import PatchClassifier

    model = PatchClassifier(backbone, pretrained=False, image_size=input_size, tiling=TILING)
    scorer = ModelScorer(model, torch.device(device))
    return ModelRun(backbone, scorer, "none", TILING, input_size, out / "models" / backbone), scorer


def measure_slide(slide: Path, backbone: str, device: str, threads: int, input_size: int = 224) -> dict:
    """The whole pass over one slide, then loader-only and forward-only on the same patches."""
    import torch
    from bench_tiling import peak_rss_mb

    from vistumor.infer.geometry import plan_grid
    from vistumor.infer.inputs import SlideInput
    from vistumor.infer.params import InferParams, ReadSettings
    from vistumor.infer.reader import PatchStream
    from vistumor.infer.slide_run import run_slide
    from vistumor.wsi.slide import Slide

    out = Path(tempfile.mkdtemp(prefix="infer-"))
    model, scorer = model_run(backbone, out, device, input_size)
    params = InferParams(read=ReadSettings(threads=threads), batch_size=128 if device != "cpu" else 64)
    baseline = peak_rss_mb()  # torch (a CUDA build here), Lightning, timm... imported, the model built
    start = time.perf_counter()
    facts = run_slide(SlideInput(slide.stem, slide), [model], params)[backbone]
    whole = time.perf_counter() - start
    rss = peak_rss_mb()
    with Slide(slide) as s:
        grid = plan_grid(s, TILING, input_size)
    start = time.perf_counter()
    batches = [p for _, p in PatchStream(slide, grid, 128, threads=threads)]
    loader = time.perf_counter() - start
    sample = batches[: max(1, min(len(batches), 40))]
    x = [scorer._images(p) for p in sample]
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in x:
            scorer.model(batch).float().cpu()
    forward = time.perf_counter() - start
    n_forward = sum(len(b) for b in sample)
    rates = {"slide_patches_per_s": facts["patches"] / facts["pass_seconds"],
             "loader_patches_per_s": len(grid) / loader, "forward_img_per_s": n_forward / forward}
    return {"slide": slide.name, "backbone": backbone, "input_size": input_size, "device": device,
            "seconds": round(whole, 2), "pass_seconds": facts["pass_seconds"],
            "peak_rss_mb": round(rss, 1), "rss_before_the_slide_mb": round(baseline, 1),
            "slide_rss_mb": round(rss - baseline, 1), "patches": facts["patches"], "read_level": facts["read_level"],
            "decoded_over_grid": round(facts["decoded_px"] / facts["grid_px"], 3),
            **{k: round(v, 1) for k, v in rates.items()},
            "efficiency": round(rates["slide_patches_per_s"] / min(rates["loader_patches_per_s"],
                                                                  rates["forward_img_per_s"]), 3)}


def measure_levels(ckpt: Path, data_root: Path) -> dict:
    """Probabilities read at the auto level vs level 0, on the held-out synthetic test slides."""
    import torch

    from vistumor.evaluate.camelyon16.auc import roc_auc
    from vistumor.infer.engine import ModelScorer
    from vistumor.infer.geometry import plan_grid
    from vistumor.infer.inputs import from_layout
    from vistumor.infer.reader import PatchStream
    from vistumor.model.checkpoints import load_classifier
    from vistumor.tasks.inferring import tiling_of
    from vistumor.tiling.grid import label_tiles
    from vistumor.wsi.annotations import TumorAnnotation, read_annotations
    from vistumor.wsi.slide import Slide

    model = load_classifier(ckpt)
    scorer = ModelScorer(model, torch.device("cpu"), cams=False)
    layout = {"slides": {"unlabelled": ["testing/images/*.tif"]}, "annotation_dir": "testing/lesion_annotations",
              "reference": "testing/reference.csv"}
    probs = {"auto": [], "0": []}
    labels, levels = [], set()
    for item in from_layout(data_root, layout):
        annotation = read_annotations(item.annotation) if item.annotation else TumorAnnotation()
        for level in ("auto", 0):
            with Slide(item.path) as s:
                grid = plan_grid(s, tiling_of(model), model.input_size, read_level=level)
            levels.add(grid.read_level)
            out = np.empty(len(grid), np.float32)
            for idx, patches in PatchStream(item.path, grid, 64):
                out[idx] = scorer(patches, grid.x0[idx], grid.y0[idx], grid.size0)[0]
            probs[str(level)].append(out)
        labels.append(label_tiles(annotation.tumor_fractions(grid.x0, grid.y0, grid.size0, grid.size0), 0.05))
    auto, full, label = (np.concatenate(v) for v in (probs["auto"], probs["0"], labels))
    keep = label >= 0
    return {"slides": len(labels), "patches": int(len(auto)), "levels": sorted(levels),
            "mean_abs_dp": round(float(np.abs(auto - full).mean()), 5),
            "max_abs_dp": round(float(np.abs(auto - full).max()), 5),
            "auroc_auto_level": round(roc_auc(label[keep], auto[keep]), 5),
            "auroc_level0": round(roc_auc(label[keep], full[keep]), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--workdir", default=None, help="where the large slide is (shared with bench_tiling)")
    parser.add_argument("--backbone", default="test_resnet", help="timm model for the large slide")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=224, help="model input (a 512 px patch is resized to it)")
    parser.add_argument("--ckpt", default="outputs/demo/train/checkpoints/last.ckpt")
    parser.add_argument("--test-data", default="data/synthetic_test")
    parser.add_argument("--skip-levels", action="store_true")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_slide(Path(args.measure), args.backbone, args.device, args.threads,
                                       args.input_size)))
        return
    from bench_tiling import write_big_slide

    work = Path(args.workdir or tempfile.gettempdir()) / "vistumor-bench"
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"big_{args.size}.tif"
    if not slide.is_file():
        write_big_slide(slide, args.size)
    results = {}
    cmd = [sys.executable, __file__, "--measure", str(slide), "--backbone", args.backbone, "--device", args.device,
           "--threads", str(args.threads), "--input-size", str(args.input_size)]
    results["large_slide"] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                                        .strip().splitlines()[-1])
    if not args.skip_levels and Path(args.ckpt).is_file() and Path(args.test_data).is_dir():
        results["reading_level"] = measure_levels(Path(args.ckpt), Path(args.test_data))
    print(json.dumps(results, indent=2))
    name = f"infer_{args.device.split(':')[0]}_{args.size}.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
