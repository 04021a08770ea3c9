"""Feature cache: wall time of a 5-epoch frozen-trunk run with and without cached features.

Both runs train the same model (ImageNet EfficientNet-Lite0 by default) on the same
manifest (the demo's synthetic tiles), same seed, same epochs; the cached run computes the
trunk features once per patch and augmentation variant and then trains the head alone.
Reported: fit wall times, their ratio, and test accuracy/AUROC of both (they should agree).

    python bench/bench_feature_cache.py
    python bench/bench_feature_cache.py --epochs 5 --variants 2 --root /tmp/vt-cache
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from vistumor.tasks import train  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def run(root: Path, name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / "runs" / name)
        return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="working folder (data, tiles, runs)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="vistumor-cache-"))
    common = ["tiling=demo", f"model={args.model}", f"trainer.max_epochs={args.epochs}",
              "logger=csv", "~callbacks.cam", "test=true"]
    run(root, "warmup", [*common, "trainer.max_epochs=1", "train=false", "test=false"])  # data + tiles
    plain = run(root, "images", common)
    cached = run(root, "cached", [*common, "callbacks=feature_cache",
                                  f"callbacks.feature_cache.variants={args.variants}"])
    result = {
        "model": args.model, "epochs": args.epochs, "variants": args.variants,
        "images_wall_s": plain["wall_time_s"], "cached_wall_s": cached["wall_time_s"],
        "speedup": round(plain["wall_time_s"] / cached["wall_time_s"], 2),
        "images_test_acc": plain.get("test/acc"), "cached_test_acc": cached.get("test/acc"),
        "images_test_auroc": plain.get("test/auroc"), "cached_test_auroc": cached.get("test/auroc"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
