"""Tiling benchmark: time and peak memory of tiling one large slide, against the floor.

The floor is reading the mask-level image alone (what any tiler must do); the ratio
``tiling time / floor`` is what the tiler adds (tissue mask, grid, fractions, labels from
the annotation, QC picture, writing results). Each measurement runs in a fresh process so
its peak RSS is its own.

The large slide (default 100,000 x 100,000 px, 7 levels) is written quickly by repeating
pre-encoded JPEG tiles: tissue tiles inside a blob layout, glass elsewhere; the coarse
levels that the tissue mask reads are rendered in full, so the mask sees real shapes. A
tumor annotation with a few lesions comes with it.

    python bench/bench_tiling.py                  # 100k x 100k
    python bench/bench_tiling.py --size 50000 --workdir /tmp/vt-bench
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import tifffile

TILE = 256
MPP = 0.25


def layout(cells: int, seed: int) -> np.ndarray:
    """Tissue layout, one value per level-0 tile: a few smooth blobs covering ~40 %."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.standard_normal((cells, cells)).astype(np.float32), (0, 0), cells / 12)
    yy, xx = np.mgrid[0:cells, 0:cells] / cells
    centre = np.exp(-(((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.08))
    score = centre + 4 * noise / noise.std()
    return score > np.quantile(score, 0.6)


def tissue_tile(rng, size: int) -> np.ndarray:
    """A crude H&E-ish tile: pink background with dark purple dots."""
    tile = np.empty((size, size, 3), np.uint8)
    tile[:] = (225, 160, 205)
    for _ in range(size * size // 300):
        y, x = rng.integers(0, size, 2)
        cv2.circle(tile, (int(x), int(y)), int(rng.integers(3, 7)), (95, 50, 140), -1)
    return tile


def write_big_slide(path: Path, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cells = -(-size // TILE)
    tissue = layout(cells, seed)
    glass = np.full((TILE, TILE, 3), 242, np.uint8)
    variants = [imagecodecs.jpeg_encode(tissue_tile(rng, TILE), level=85) for _ in range(8)]
    background = imagecodecs.jpeg_encode(glass, level=85)
    levels = 0
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        level_size = size
        while True:
            ds = 2**levels
            per_cm = 1e4 / (MPP * ds)
            kwargs = dict(tile=(TILE, TILE), compression="jpeg", photometric="rgb",
                          subfiletype=0 if levels == 0 else 1, resolution=(per_cm, per_cm),
                          resolutionunit="CENTIMETER")
            n = -(-level_size // TILE)
            if level_size <= 8192:  # coarse levels: render real pixels from the layout
                tif.write(_render(tissue, level_size, ds, rng), **kwargs)
            else:  # fine levels: repeat pre-encoded tiles
                tif.write(_tiles(tissue, n, ds, variants, background), shape=(level_size, level_size, 3),
                          dtype="uint8", **kwargs)
            levels += 1
            level_size //= 2
            if level_size < 512:
                break
    return path


def _tiles(tissue: np.ndarray, n: int, ds: int, variants: list[bytes], background: bytes):
    for i in range(n):
        for j in range(n):
            block = tissue[i * ds : (i + 1) * ds, j * ds : (j + 1) * ds]
            yield variants[(i * 7 + j) % len(variants)] if block.size and block.mean() > 0.5 else background


def _render(tissue: np.ndarray, level_size: int, ds: int, rng) -> np.ndarray:
    mask = cv2.resize(tissue.astype(np.uint8), (level_size, level_size), interpolation=cv2.INTER_NEAREST)
    image = np.full((level_size, level_size, 3), 242, np.uint8)
    texture = tissue_tile(rng, 512)
    reps = -(-level_size // 512)
    tiled = np.tile(texture, (reps, reps, 1))[:level_size, :level_size]
    image[mask > 0] = tiled[mask > 0]
    return image


def write_annotation(path: Path, size: int, seed: int = 0) -> Path:
    """A few round lesions (ASAP XML) inside the central tissue."""
    rng = np.random.default_rng(seed)
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations><Annotations>"]
    for k in range(6):
        cx, cy = rng.uniform(0.4, 0.6, 2) * size
        r = size * rng.uniform(0.005, 0.03)
        angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
        radius = r * (1 + 0.2 * np.sin(5 * angles + k))
        parts.append(f'<Annotation Name="lesion {k}" Type="Polygon" PartOfGroup="_0"><Coordinates>')
        parts += [f'<Coordinate Order="{i}" X="{cx + q * np.cos(a):.1f}" Y="{cy + q * np.sin(a):.1f}" />'
                  for i, (a, q) in enumerate(zip(angles, radius, strict=True))]
        parts.append("</Coordinates></Annotation>")
    parts.append("</Annotations></ASAP_Annotations>")
    path.write_text("\n".join(parts))
    return path


# -- measurements (each in its own process) ----------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited
    from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, slide: Path, xml: Path, out: Path) -> dict:
    from vistumor.tiling.catalog import SlideRecord
    from vistumor.tiling.jobs import TilingChecks, process_slide
    from vistumor.tiling.params import TilingParams
    from vistumor.wsi.slide import Slide

    params = TilingParams()
    start = time.perf_counter()
    if kind == "floor":
        with Slide(slide) as s:
            image, ds = s.thumbnail(params.tissue.downsample)
        extra = {"thumbnail": list(image.shape), "downsample": ds}
    else:
        run = TilingChecks(verify=kind == "verify")
        status = process_slide(SlideRecord(slide.stem, slide, "tumor", xml), params, out, run)
        if status["status"] != "done":
            raise SystemExit(status["reason"])
        keys = ("n_grid", "n_tissue", "n_tumor", "n_normal", "n_ambiguous", "verified_px")
        extra = {k: status[k] for k in keys if k in status}
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    return {"kind": kind, "seconds": round(seconds, 3), "peak_rss_mb": round(peak_mb, 1), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--measure", choices=["floor", "tiling", "verify"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-verify", action="store_true", help="do not time tiling.run.verify")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vistumor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    slide, xml = work / f"big_{args.size}.tif", work / f"big_{args.size}.xml"
    if args.measure:
        out = Path(tempfile.mkdtemp(prefix="tiles-", dir=work))  # fresh: no resume
        print(json.dumps(measure(args.measure, slide, xml, out)))
        return
    if not xml.is_file():
        write_annotation(xml, args.size)
    if not slide.is_file():
        start = time.perf_counter()
        write_big_slide(slide, args.size)
        size_gib = slide.stat().st_size / 2**30
        print(f"wrote {slide} ({size_gib:.2f} GiB) in {time.perf_counter() - start:.0f} s")
    results = {}
    for kind in ("floor", "tiling") + (() if args.skip_verify else ("verify",)):
        cmd = [sys.executable, __file__, "--size", str(args.size), "--workdir", str(work), "--measure", kind]
        results[kind] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    floor, tiling = results["floor"], results["tiling"]
    print(json.dumps(results, indent=2))
    print(f"\n{args.size:,} x {args.size:,} px slide: tiling {tiling['seconds']:.2f} s "
          f"(peak {tiling['peak_rss_mb']:.0f} MB) vs reading the mask level alone "
          f"{floor['seconds']:.2f} s (peak {floor['peak_rss_mb']:.0f} MB): "
          f"ratio {tiling['seconds'] / floor['seconds']:.2f}")
    if "verify" in results:
        verify = results["verify"]
        extra = verify["seconds"] - tiling["seconds"]
        print(f"tiling.run.verify (decode every candidate patch once): {verify['seconds']:.2f} s, "
              f"+{extra:.2f} s for {verify['verified_px'] / 1e9:.2f} Gpx "
              f"({verify['verified_px'] / 1e6 / max(extra, 1e-9):.0f} Mpx/s), "
              f"peak {verify['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
