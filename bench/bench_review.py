"""Review save time against the number of drawn polygons.

A save (``ReviewStore.save``: parse and check the JSON, every polygon's validity, the holes
check of :func:`~vistumor.viewer.review.fill_shared_holes`, the GeoJSON, ASAP XML and
record written atomically) of ``N`` drawn triangles on a 100 000 px slide, in a throwaway
run folder with one slide and one model and no predicted lesions. Each count is timed
``--rounds`` times (median, CPU seconds of this process and wall seconds). A review holds
at most ``MAX_DRAWN`` polygons; the bench lifts that cap (its schema without it) to time
larger counts.

    python bench/bench_review.py                            # 500 and 5000 triangles
    python bench/bench_review.py --counts 500 1000 2000 --out bench/results/review_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vistumor.viewer import review
from vistumor.viewer.review import ReviewStore
from vistumor.viewer.run import RunFolder

SIZE = 100_000  # level-0 px, square


def triangles(count: int) -> list[dict]:
    """``count`` small right triangles on a grid, none touching another."""
    side = int(count**0.5) + 1
    step = SIZE / side
    out = []
    for k in range(count):
        x, y = (k % side) * step + 1, (k // side) * step + 1
        corners = [(x, y), (x + step / 2, y), (x, y + step / 2)]
        out.append({"points": [[round(a, 2), round(b, 2)] for a, b in corners]})
    return out


def run_folder(root: Path) -> RunFolder:
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_text(json.dumps({"slides": [{"slide": "s", "path": None}],
                                               "models": [{"name": "m", "checkpoint": ""}]}))
    return RunFolder(root)


class Uncapped(review.ReviewBody):
    """The review schema without its cap on drawn polygons: the bench measures the cost per polygon."""

    drawn: list[review.DrawnBody] = []


def time_save(count: int, rounds: int) -> dict:
    review.ReviewBody = Uncapped
    drawn = triangles(count)
    cpu, wall = [], []
    with tempfile.TemporaryDirectory(prefix="bench-review-") as folder:
        store = ReviewStore(run_folder(Path(folder) / "run"))
        for version in range(rounds):
            body = json.dumps({"reviewer": "bench", "drawn": drawn, "based_on": version}).encode()
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            store.save("m", "s", body, (SIZE, SIZE), 0.25)
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start_wall)
    return {"polygons": count, "body_bytes": len(body), "cpu_s": round(statistics.median(cpu), 4),
            "wall_s": round(statistics.median(wall), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    logging.getLogger("vistumor.viewer.run").setLevel(logging.ERROR)  # "slide file not found": none is needed
    results = []
    for count in args.counts:
        results.append(time_save(count, args.rounds))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"python": sys.version.split()[0], "machine": platform.machine(),
                                        "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
