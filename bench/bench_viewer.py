"""Viewer throughput: slide tiles/s served over HTTP ÷ ``DeepZoomGenerator.get_tile``/s, one run.

Both sides make the same Deep Zoom tiles (every tile of the finest ``--levels`` levels of
every slide of the run) from the same files:

* direct: ``DeepZoomGenerator(OpenSlide(path), 254, 1, limit_bounds=False).get_tile`` in this
  process, one thread (and ``--clients`` threads, for reference), with and without the JPEG
  encoding a server has to add;
* served: ``python -m vistumor.viewer RUN --cache-mb 0`` in a separate process (no tile
  cache: every tile decoded, resized and encoded), ``--clients`` client threads each on one
  keep-alive ``http.client`` connection; then the same with the cache on, tiles asked twice
  (warm: the second pass comes from the LRU).

Heatmap tiles (both layers of every model, same tile addresses) are timed the same way,
cold and warm. An untimed pass first fills the page cache, so both sides measure decoding,
not the disk. Each measurement is the median of ``--rounds``.

    python bench/bench_viewer.py                                # outputs/demo/infer (make demo)
    python bench/bench_viewer.py --run RUN --clients 4 --levels 4 --out bench/results/viewer_cpu.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openslide
from openslide.deepzoom import DeepZoomGenerator

from vistumor.viewer.run import LAYERS, RunFolder
from vistumor.viewer.tiles import OVERLAP, TILE_SIZE, DziGeometry, encode_jpeg

ROOT = Path(__file__).resolve().parents[1]
Tile = tuple[str, int, int, int]  # slide, level, col, row


def tile_list(run: RunFolder, levels: int) -> list[Tile]:
    """Every tile of the ``levels`` finest Deep Zoom levels of every slide found."""
    tiles = []
    for name, entry in run.slides.items():
        if entry.path is None:
            continue
        with openslide.OpenSlide(str(entry.path)) as slide:
            geometry = DziGeometry(*slide.dimensions)
        for level in range(geometry.level_count - levels, geometry.level_count):
            cols, rows = geometry.level_tiles[level]
            tiles += [(name, level, c, r) for r in range(rows) for c in range(cols)]
    return tiles


def direct(run: RunFolder, tiles: list[Tile], threads: int, encode: bool) -> float:
    """Tiles/s of ``get_tile`` (+ JPEG) on fresh generators, ``threads`` at a time."""
    generators = {name: DeepZoomGenerator(openslide.OpenSlide(str(entry.path)), TILE_SIZE, OVERLAP, False)
                  for name, entry in run.slides.items() if entry.path is not None}

    def one(tile: Tile) -> int:
        image = generators[tile[0]].get_tile(tile[1], tile[2:])
        return len(encode_jpeg(image)) if encode else image.size[0]

    start = time.perf_counter()
    if threads == 1:
        for tile in tiles:
            one(tile)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, tiles, chunksize=8))
    return len(tiles) / (time.perf_counter() - start)


@contextmanager
def server(run_dir: Path, cache_mb: int):
    """``python -m vistumor.viewer`` on a free port; yields ``(host, port)``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vistumor.viewer", str(run_dir.resolve()), "--port", "0", "--cache-mb", str(cache_mb)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        url = None
        for line in process.stdout:
            if "open http://" in line:
                url = line.split("open http://")[1].split("/")[0]
                break
        if url is None:
            raise RuntimeError("the viewer did not start")
        host, port = url.rsplit(":", 1)
        yield host, int(port)
    finally:
        process.terminate()
        process.wait(10)


def fetch_all(address: tuple[str, int], paths: list[str], clients: int) -> float:
    """Paths/s with ``clients`` threads, each on one keep-alive connection."""
    lock, position, failures = threading.Lock(), [0], []

    def client() -> None:
        connection = http.client.HTTPConnection(*address, timeout=60)
        while True:
            with lock:
                i = position[0]
                position[0] += 1
            if i >= len(paths):
                break
            connection.request("GET", paths[i])
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or not body:
                failures.append((paths[i], response.status))
        connection.close()

    start = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[:3]}")
    return len(paths) / seconds


def slide_paths(tiles: list[Tile]) -> list[str]:
    return [f"/slide/{s}_files/{level}/{c}_{r}.jpeg" for s, level, c, r in tiles]


def heat_paths(run: RunFolder, tiles: list[Tile]) -> list[str]:
    return [f"/heat/{m}/{layer}/{s}_files/{level}/{c}_{r}.png" for m in run.models for layer in LAYERS
            for s, level, c, r in tiles
            if (run.root / "models" / m / LAYERS[layer] / f"{s}.npy").is_file()]


def interleaved(measures: dict, rounds: int) -> dict[str, float]:
    """Median rate of each measurement over ``rounds``, taken in turn within each round, so
    that load from elsewhere on the machine falls on all of them alike."""
    rates: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            rates[name].append(measure())
    return {name: round(statistics.median(values), 1) for name, values in rates.items()}


def measure(run: RunFolder, run_dir: Path, tiles: list[Tile], clients: int, rounds: int) -> dict:
    """Direct and served rates (tiles/s): cold (no tile cache) interleaved with direct, then warm."""
    heat = heat_paths(run, tiles)
    n = clients
    result: dict = {"heat_tiles": len(heat)}
    with server(run_dir, cache_mb=0) as address:
        result.update(interleaved({
            "direct_get_tile_per_s": lambda: direct(run, tiles, 1, False),
            "direct_get_tile_jpeg_per_s": lambda: direct(run, tiles, 1, True),
            f"direct_get_tile_jpeg_{n}threads_per_s": lambda: direct(run, tiles, n, True),
            "served_slide_cold_per_s": lambda: fetch_all(address, slide_paths(tiles), n),
            "served_heat_cold_per_s": lambda: fetch_all(address, heat, n),
        }, rounds))
    with server(run_dir, cache_mb=1024) as address:
        fetch_all(address, slide_paths(tiles) + heat, n)  # fills the cache
        result.update(interleaved({
            "served_slide_warm_per_s": lambda: fetch_all(address, slide_paths(tiles), n),
            "served_heat_warm_per_s": lambda: fetch_all(address, heat, n),
        }, rounds))
    cold = result["served_slide_cold_per_s"]
    result["served_over_get_tile"] = round(cold / result["direct_get_tile_per_s"], 3)
    result["served_over_get_tile_jpeg"] = round(cold / result["direct_get_tile_jpeg_per_s"], 3)
    result[f"served_over_get_tile_jpeg_{n}threads"] = round(cold / result[f"direct_get_tile_jpeg_{n}threads_per_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "outputs" / "demo" / "infer")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--levels", type=int, default=4, help="finest Deep Zoom levels timed (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (args.run / "run.json").is_file():
        raise SystemExit(f"error: {args.run}: no run.json; make demo (or infer.py) first, or give --run")
    run = RunFolder(args.run)
    tiles = tile_list(run, args.levels)
    direct(run, tiles, args.clients, encode=False)  # untimed: page cache
    result = {"run": str(args.run), "slides": len(run.slides), "models": list(run.models), "tiles": len(tiles),
              "levels": args.levels, "clients": args.clients, "rounds": args.rounds, "cpus": os.cpu_count(),
              "python": platform.python_version(), "openslide": openslide.__library_version__,
              "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}  # other work on the machine
    result.update(measure(run, args.run, tiles, args.clients, args.rounds))
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
