"""PatchCamelyon reading: per-patch time of torchvision's ``PCAM`` against ``PCamFiles``, and
the up-front cost of a split of the release's size.

* ``read``: a ``valid``-sized file (32,768 patches of 96 x 96 x 3, random pixels), stored
  contiguous or in gzip chunks of 32 patches, 2,048 patches read in a shuffled order (as a
  training epoch reads them): torchvision opens both files for every item; ``PCamFiles``
  keeps one handle per process; ``PCamDataset`` adds the resize to 224 px.
* ``setup``: a ``train``-sized split (262,144 patches; ``x`` left unwritten, so the file is
  small) with its meta table: the checks, the labels and the meta table read when a split's
  dataset is built.

    python bench/bench_pcam.py                      # writes bench/results/pcam_cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from torchvision.datasets import PCAM

from vistumor.data.pcam import PCamDataset, PCamFiles

RESULTS = Path(__file__).resolve().parent / "results" / "pcam_cpu.json"
NAME = "camelyonpatch_level_2_split_{split}_{kind}"


def write(folder: Path, split: str, n: int, pixels: bool, gzip: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    layout = {"chunks": (32, 96, 96, 3), "compression": "gzip"} if gzip else {}
    with h5py.File(folder / f"{NAME.format(split=split, kind='x')}.h5", "w") as f:
        x = f.create_dataset("x", (n, 96, 96, 3), np.uint8, **layout)
        for start in range(0, n if pixels else 0, 4096):
            x[start:start + 4096] = rng.integers(0, 256, (min(4096, n - start), 96, 96, 3), np.uint8)
    labels = np.arange(n) % 2
    with h5py.File(folder / f"{NAME.format(split=split, kind='y')}.h5", "w") as f:
        f.create_dataset("y", data=labels.astype(np.uint8).reshape(n, 1, 1, 1))
    pd.DataFrame({"coord_y": np.arange(n), "coord_x": np.arange(n), "tumor_patch": labels.astype(bool),
                  "center_tumor_patch": labels.astype(bool), "wsi": [f"slide_{i // 1000:03d}" for i in range(n)]}
                 ).to_csv(folder / f"{NAME.format(split=split, kind='meta')}.csv")


def per_patch_ms(read, indices) -> float:
    start = time.perf_counter()
    for i in indices:
        read(int(i))
    return round((time.perf_counter() - start) / len(indices) * 1e3, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result: dict = {}
    indices = np.random.default_rng(1).permutation(32_768)[:2048]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for layout in ("contiguous", "gzip"):
            write(root / layout / "pcam", "valid", 32_768, pixels=True, gzip=layout == "gzip")
            ours, theirs = PCamFiles(root / layout, "val"), PCAM(root / layout, split="val")
            dataset = PCamDataset(ours, 224, with_masks=False)
            result[layout] = {
                "patches_read": len(indices),
                "torchvision_pcam_ms_per_patch": per_patch_ms(theirs.__getitem__, indices),
                "pcamfiles_ms_per_patch": per_patch_ms(ours.image, indices),
                "pcamdataset_224px_item_ms": per_patch_ms(dataset.__getitem__, indices),
            }
        write(root / "big", "train", 262_144, pixels=False)
        start = time.perf_counter()
        big = PCamDataset(PCamFiles(root / "big", "train"), 224)
        result["train_split_setup_s"] = round(time.perf_counter() - start, 3)
        result["train_split_patches"] = len(big)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
