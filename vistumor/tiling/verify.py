"""Decode every patch a manifest may hold, once, while tiling: a damaged slide fails in
minutes, at tiling, instead of hours later at the first bad patch of a training epoch.

Tiling itself reads only the thumbnail level, and slide checksums sample the file: neither
sees a damaged level-0 tile. Here the candidate patches (tumor and normal) are read in
large regions, each pixel about once; a failing region is narrowed down to its first bad
patch, which the error names.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from vistumor.errors import SlideError
from vistumor.labels import NORMAL, TUMOR
from vistumor.wsi.slide import Slide

#: edge (read-level px) of the regions decoded in one call
CHUNK = 4096


def verify_tiles(path: str | Path, tiles: pd.DataFrame, chunk: int = CHUNK, threads: int = 2) -> int:
    """Decode every tumor and normal tile of one slide's tile table, regions in ``threads``
    threads (OpenSlide decodes outside the GIL; one handle per thread).

    Returns:
        The number of read-level pixels decoded.

    Raises:
        SlideError: naming the first tile (level-0 ``x0, y0``, size, level) that cannot be decoded.
    """
    tiles = tiles[tiles["label"].isin([TUMOR, NORMAL])]
    if tiles.empty:
        return 0
    level, size = int(tiles["level"].iloc[0]), int(tiles["read_size"].iloc[0])
    with Slide(path) as slide:
        downsample = slide.level_downsamples[level]
    lx = np.floor(tiles["x0"].to_numpy() / downsample).astype(np.int64)
    ly = np.floor(tiles["y0"].to_numpy() / downsample).astype(np.int64)
    keys = (ly // chunk) * (1 << 32) + lx // chunk
    regions = []
    order = np.argsort(keys, kind="stable")  # regions in reading order: the first failure named is the first's
    starts = np.flatnonzero(np.r_[True, np.diff(keys[order]) != 0])
    for rows in np.split(order, starts[1:]):
        gx, gy = lx[rows], ly[rows]
        group = tiles.iloc[rows]
        box = (int(group["x0"].min()), int(group["y0"].min()), int(gx.max() - gx.min() + size),
               int(gy.max() - gy.min() + size))
        regions.append((group, box))
    local = threading.local()
    handles: list[Slide] = []

    def decode(box: tuple[int, int, int, int]) -> None:
        if getattr(local, "slide", None) is None:
            local.slide = Slide(path)
            handles.append(local.slide)
        try:
            local.slide.read_region(box[0], box[1], level, box[2], box[3])
        except SlideError:
            handles.remove(local.slide)  # an OpenSlide error is sticky: this thread reopens next time
            local.slide.close()
            local.slide = None
            raise

    try:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            outcomes = list(pool.map(_outcome(decode), [box for _, box in regions]))
    finally:
        for handle in handles:
            handle.close()
    for (group, _), failed in zip(regions, outcomes, strict=True):
        if failed:
            _first_bad(path, group, level, size)
            raise failed  # (the region failed although each of its tiles reads: still damaged)
    return sum(box[2] * box[3] for _, box in regions)


def _outcome(decode):
    """``decode`` returning its SlideError instead of raising it (every region is tried)."""
    def run(box):
        try:
            decode(box)
        except SlideError as err:
            return err
        return None

    return run


def _first_bad(path, group: pd.DataFrame, level: int, size: int) -> None:
    """Read a failed region's tiles one by one (a fresh handle each time: an OpenSlide error
    is sticky) and raise for the first that fails."""
    for x0, y0 in group.sort_values(["y0", "x0"])[["x0", "y0"]].itertuples(index=False):
        with Slide(path) as slide:
            try:
                slide.read_region(int(x0), int(y0), level, size, size)
            except SlideError as err:
                cause = str(err.__cause__ or err).splitlines()[0]
                raise SlideError(
                    f"damaged pixels: cannot decode the {size}x{size} px patch at level {level}, "
                    f"(x0, y0)=({x0}, {y0}) ({cause}); tiling.run.verify found it", path
                ) from err
