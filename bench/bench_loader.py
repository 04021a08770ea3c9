"""Loader efficiency: patches/s of the training loader ÷ raw OpenSlide reads/s, one run.

Both sides read the same manifest coordinates with the same number of processes:

* raw: ``openslide.OpenSlide.read_region`` of each patch in a process pool (RGBA, nothing else);
* loader: ``PatchDataModule``'s training ``DataLoader`` (read, RGBA->RGB, resize 512->224,
  the default Albumentations pipeline incl. H&E jitter, uint8 tensors, batching).

Both are measured in steady state: an untimed pass first starts the processes, opens the
slides and fills the page cache, so both measure decoding, not the disk or start-up.

    python bench/bench_loader.py                      # small synthetic dataset, 2 processes
    python bench/bench_loader.py --workers 16 --manifest outputs/tiles/synthetic/manifest.csv
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import openslide  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from vistumor.data.augment import build_pipeline  # noqa: E402
from vistumor.data.patches import PatchDataset  # noqa: E402
from vistumor.runner import RunSettings  # noqa: E402
from vistumor.synthetic import generate_dataset  # noqa: E402
from vistumor.tiling.catalog import find_slides  # noqa: E402
from vistumor.tiling.jobs import SlideStore, tile_slides  # noqa: E402
from vistumor.tiling.manifest import load_manifest  # noqa: E402
from vistumor.tiling.params import GridParams, TilingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_tiles(work: Path, size: int, stride: int, workers: int) -> pd.DataFrame:
    """All tissue tiles (both classes, unbalanced) of a small synthetic dataset."""
    data = work / "data"
    generate_dataset(data, n_normal=2, n_tumor=2, size=size, seed=0, workers=min(4, workers))
    records = find_slides(data, {"normal": ["training/normal/*.tif"], "tumor": ["training/tumor/*.tif"]},
                          "training/lesion_annotations")
    params = TilingParams(GridParams(stride=stride))
    tile_slides(records, params, work / "tiles", RunSettings(workers=min(4, workers), progress=False))
    store = SlideStore(work / "tiles")
    return pd.concat([store.read_tiles(r.slide_id) for r in records], ignore_index=True)


_HANDLES: dict[str, openslide.OpenSlide] = {}


def _open_handles() -> None:
    _HANDLES.clear()


def _read_chunk(rows: list[tuple[str, int, int, int, int]]) -> int:
    for path, x0, y0, level, size in rows:
        slide = _HANDLES.get(path) or _HANDLES.setdefault(path, openslide.OpenSlide(path))
        slide.read_region((x0, y0), level, (size, size))
    return len(rows)


def raw_rate(table: pd.DataFrame, workers: int) -> float:
    """Steady state: the pool reads everything once (processes up, slides open, page cache
    warm), then the timed pass."""
    rows = list(table[["slide_path", "x0", "y0", "level", "read_size"]].itertuples(index=False, name=None))
    chunks = [rows[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, initializer=_open_handles) as pool:
        sum(pool.map(_read_chunk, chunks))
        start = time.perf_counter()
        n = sum(pool.map(_read_chunk, chunks))
        return n / (time.perf_counter() - start)


def loader_rate(table: pd.DataFrame, workers: int, augment: bool, batch: int, image_size: int) -> float:
    """Steady state: one untimed epoch (workers up, slides open), then a timed epoch."""
    transforms = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/augment/default.yaml"))["train"]
    dataset = PatchDataset(table, image_size, build_pipeline(transforms) if augment else None,
                           with_masks=False)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=True)
    sum(len(b["label"]) for b in loader)
    start = time.perf_counter()
    n = sum(len(b["label"]) for b in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=None,
                        help="an existing manifest (default: tiles of a small synthetic dataset)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patches", type=int, default=1200, help="patches per measurement")
    parser.add_argument("--size", type=int, default=6144, help="synthetic slide size when building")
    parser.add_argument("--stride", type=int, default=256, help="tiling stride when building")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.manifest:
        table = load_manifest(args.manifest).table
    else:
        table = make_tiles(Path(tempfile.mkdtemp(prefix="vistumor-loader-")), args.size, args.stride,
                           args.workers)
    table = table.sample(n=min(args.patches, len(table)), random_state=0).reset_index(drop=True)
    result = {
        "patches": len(table), "workers": args.workers, "read_size": int(table["read_size"].iloc[0]),
        "raw_read_per_s": raw_rate(table, args.workers),
        "loader_per_s": loader_rate(table, args.workers, True, args.batch, args.image_size),
        "loader_no_augment_per_s": loader_rate(table, args.workers, False, args.batch, args.image_size),
    }
    result["loader_over_raw"] = result["loader_per_s"] / result["raw_read_per_s"]
    result["loader_no_augment_over_raw"] = result["loader_no_augment_per_s"] / result["raw_read_per_s"]
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":  # the generator's worker processes are spawned: keep this guard
    main()
