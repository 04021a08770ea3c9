"""Bag extraction benchmark: patches per second and the decode ratio of the one read pass.

Synthetic slides (the MIL dataset's kind: 2048 px, 1 um/px) are generated into a work folder,
then every tissue patch goes through the trunk once (:func:`vistumor.infer.bags.extract_bags`,
infer's grid and block reader). Reported per slide and overall: patches, seconds, patches/s,
and ``decode ratio = decoded pixels / pixels the tissue patches cover`` (1.0 would decode each
covered pixel once; half-patch strides make a patch-by-patch reader decode ~4x).

    python bench/bench_bags.py                                  # lite0 (ImageNet, offline), 4 slides
    python bench/bench_bags.py --trunk small_cnn --slides 8
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vistumor.infer.bags import BagSettings, TrunkFeatures, extract_bags
from vistumor.synthetic import generate_dataset

CONF = Path(__file__).resolve().parents[1] / "conf"


def trunk_config(name: str) -> dict:
    """``conf/model/<name>.yaml`` composed as the MIL experiment's trunk."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=mil", f"model@model.trunk={name}"])
    return OmegaConf.to_container(cfg.model.trunk, resolve=True), OmegaConf.to_container(cfg.tiling, resolve=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="efficientnet_lite0", help="a conf/model entry")
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bags_cpu.json"))
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vt-bags-"))
    paths = generate_dataset(work / "slides", n_normal=args.slides // 2, n_tumor=args.slides - args.slides // 2,
                             size=args.size, mpp=1.0, seed=18)
    trunk_cfg, tiling = trunk_config(args.trunk)
    trunk = TrunkFeatures(trunk_cfg, "cpu")
    start = time.perf_counter()
    records = extract_bags([(p.stem, p) for p in paths], work / "bags", trunk,
                           {"grid": tiling["grid"], "tissue": tiling["tissue"]}, BagSettings(device="cpu"))
    total = time.perf_counter() - start
    patches = sum(r["patches"] for r in records)
    decoded, covered = sum(r["decoded_px"] for r in records), sum(r["grid_px"] for r in records)
    result = {"trunk": trunk.name, "input_size": trunk.input_size, "slides": len(records), "size": args.size,
              "patches": patches, "seconds": round(total, 2), "patches_per_s": round(patches / total, 2),
              "decode_ratio": round(decoded / covered, 3), "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(),
              "per_slide": [{k: r[k] for k in ("slide", "patches", "seconds", "decode_ratio")} for r in records]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_slide"}, indent=2))


if __name__ == "__main__":
    main()
