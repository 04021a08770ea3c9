"""Patches of a slide's grid, each pixel decoded about once, in a background pool.

Overlapping patches (half-patch stride) share pixels: reading each patch on its own would
decode every pixel about four times. Here the grid is cut into blocks of up to ``block x
block`` patches; each block is one ``read_region`` at the reading level covering its
patches, which are then cut out of it. Neighbouring blocks overlap by one patch's overhang
only, so decoded / grid pixels is about ``(1 + (size - stride) / (block * stride))^2``.
Blocks are decoded by a thread pool (OpenSlide releases the GIL) ahead of the model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vistumor.infer.geometry import SlideGrid
from vistumor.wsi.slide import Slide


@dataclass(frozen=True)
class Block:
    """Patches read together: their indices in the grid and the region at the reading level."""

    indices: np.ndarray
    x0: int  # level-0 top-left of the region
    y0: int
    width: int  # region size at the reading level
    height: int


def plan_blocks(grid: SlideGrid, block: int = 16) -> list[Block]:
    """Group the grid's patches into blocks of up to ``block x block`` grid positions."""
    if not len(grid):
        return []
    ds = grid.read_downsample
    col = np.round(grid.x0 / grid.stride0).astype(np.int64) // block
    row = np.round(grid.y0 / grid.stride0).astype(np.int64) // block
    key = row * (int(col.max()) + 1) + col
    blocks = []
    for k in np.unique(key):  # row-major, as the grid
        idx = np.flatnonzero(key == k)
        x0, y0 = int(grid.x0[idx].min()), int(grid.y0[idx].min())
        lx, ly = int(np.floor(x0 / ds)), int(np.floor(y0 / ds))
        right = int(np.floor(grid.x0[idx].max() / ds)) + grid.read_size
        bottom = int(np.floor(grid.y0[idx].max() / ds)) + grid.read_size
        blocks.append(Block(idx, x0, y0, right - lx, bottom - ly))
    return blocks


def cut(grid: SlideGrid, block: Block, region: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Patches ``(n, read_size, read_size, 3)`` of grid indices ``which`` (all in ``block``)
    cut from the block's decoded region."""
    ds, size = grid.read_downsample, grid.read_size
    lx0, ly0 = int(np.floor(block.x0 / ds)), int(np.floor(block.y0 / ds))
    cols = np.floor(grid.x0[which] / ds).astype(np.int64) - lx0
    rows = np.floor(grid.y0[which] / ds).astype(np.int64) - ly0
    return np.stack([region[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)])


class PatchStream:
    """Batches ``(indices, patches)`` of a slide's grid, in grid order. Blocks are decoded
    ``ahead`` at a time by ``threads`` threads (one slide handle per thread); patches are cut
    from a block's region batch by batch, so memory holds a few regions and one batch.

    Attributes:
        decoded: read-level pixels decoded so far.
    """

    def __init__(self, path: str | Path, grid: SlideGrid, batch_size: int = 64, block: int = 16, threads: int = 2,
                 ahead: int = 3):
        self.path, self.grid, self.batch_size = Path(path), grid, batch_size
        self.blocks = plan_blocks(grid, block)
        self.threads, self.ahead = max(1, threads), max(1, ahead)
        self.decoded = 0
        self._local = threading.local()
        self._handles: list[Slide] = []
        self._lock = threading.Lock()

    def _slide(self) -> Slide:
        slide = getattr(self._local, "slide", None)
        if slide is None:
            slide = self._local.slide = Slide(self.path)  # read by level: no µm/px needed
            with self._lock:
                self._handles.append(slide)
        return slide

    def _read(self, block: Block) -> np.ndarray:
        return self._slide().read_region(block.x0, block.y0, self.grid.read_level, block.width, block.height)

    def _regions(self) -> Iterator[tuple[Block, np.ndarray]]:
        with ThreadPoolExecutor(self.threads) as pool:
            pending = [pool.submit(self._read, b) for b in self.blocks[: self.ahead]]
            for i, block in enumerate(self.blocks):
                region = pending.pop(0).result()
                if i + self.ahead < len(self.blocks):
                    pending.append(pool.submit(self._read, self.blocks[i + self.ahead]))
                self.decoded += block.width * block.height
                yield block, region

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        indices: list[np.ndarray] = []
        patches: list[np.ndarray] = []
        filled = 0
        regions = self._regions()
        try:
            for block, region in regions:
                pos = 0
                while pos < len(block.indices):  # a batch takes what it lacks; the rest follows
                    take = block.indices[pos : pos + self.batch_size - filled]
                    indices.append(take)
                    patches.append(cut(self.grid, block, region, take))
                    filled, pos = filled + len(take), pos + len(take)
                    if filled == self.batch_size:
                        yield np.concatenate(indices), np.concatenate(patches)
                        indices, patches, filled = [], [], 0
            if filled:
                yield np.concatenate(indices), np.concatenate(patches)
        finally:
            regions.close()  # waits for the blocks in flight before their handles close
            for slide in self._handles:
                slide.close()
