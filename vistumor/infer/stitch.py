"""The stitched Grad-CAM++ heatmap (or another ``infer.cam.method``'s): raw patch maps,
weighted by tumor probability, blended with a tapered window into a slide canvas at
sub-patch resolution, on disk.

Not pytorch-grad-cam's per-patch min-max scaling: that stretches every patch's map to
``[0, 1]``, so a normal patch's faint attention looks as hot as a tumor's. Raw maps (one
model, one scale) weighted by the patch's tumor probability keep normal tissue cold.
Overlapping patches blend with a Hann window (at half-patch stride its shifted copies sum
to a constant), so seams and patch borders do not show. The canvas has ``px_per_cell``
output px per CAM cell and lives in memory-mapped files written block by block: a
100,000 px slide never needs a full-resolution array in memory. Values stay raw; the
sidecar records the slide's maximum (``scale``) by which a viewer divides.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vistumor.files import atomic_path, write_json
from vistumor.infer.geometry import SlideGrid

_FLOOR = 1e-3  # the window never reaches 0: a lone patch still counts up to its border
_ROWS = 1024  # canvas rows finalised per step
_RELEASE_EVERY = 32  # batches between releases of the canvas's pages


def hann(n: int) -> np.ndarray:
    """A 2-D tapered window ``(n, n)``: ``sin^2`` per axis, floored at a small value."""
    t = np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2
    return np.maximum(np.outer(t, t), _FLOOR).astype(np.float32)


class CamCanvas:
    """Accumulates probability-weighted raw maps of one slide into a memory-mapped canvas.

    Args:
        grid: the slide's grid (patch geometry in level-0 px).
        cam_cells: the maps' edge (e.g. 7 for a 224 px input and a stride-32 trunk).
        px_per_cell: output px per map cell (the canvas resolution).
        path: the ``.npy`` it will be saved to; the accumulators are its temporaries
            (``.<name>.*.tmp`` beside it), which a rerun after ``kill -9`` removes.
    """

    def __init__(self, grid: SlideGrid, cam_cells: int, px_per_cell: int, path: Path, weighted: bool = True,
                 method: str = "gradcam++"):
        self.grid, self.cells, self.px, self.weighted = grid, cam_cells, px_per_cell, weighted
        self.method = method  # the explanation method of the maps (recorded in the sidecar)
        self.size = cam_cells * px_per_cell  # output px per patch
        self.out_px0 = grid.size0 / self.size  # level-0 px per output px
        self.shape = (math.ceil(grid.height0 / self.out_px0), math.ceil(grid.width0 / self.out_px0))
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._files = [self.path.parent / f".{self.path.name}.{os.getpid()}-{n}.tmp" for n in ("sum", "weight")]
        self.total, self.weight = (np.memmap(f, np.float32, "w+", shape=self.shape) for f in self._files)
        self.window = hann(self.size)
        self._adds = 0

    def add(self, indices: np.ndarray, prob: np.ndarray, maps: np.ndarray) -> None:
        """Add each patch's raw map, upsampled, times its probability and the window."""
        h, w = self.shape
        for i, p, cam in zip(indices, prob, maps, strict=True):
            big = cv2.resize(cam.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            top = int(round(self.grid.y0[i] / self.out_px0))
            left = int(round(self.grid.x0[i] / self.out_px0))
            rows, cols = min(self.size, h - top), min(self.size, w - left)
            window = self.window[:rows, :cols]
            weight = float(p) if self.weighted else 1.0  # a mask is a probability already
            self.total[top : top + rows, left : left + cols] += weight * big[:rows, :cols] * window
            self.weight[top : top + rows, left : left + cols] += window
        self._adds += 1
        if self._adds % _RELEASE_EVERY == 0:
            self.release()

    def release(self) -> None:
        """Write the touched pages back and let the kernel drop them: the canvas's resident
        memory stays bounded (pages a later patch touches come back from the file)."""
        for canvas in (self.total, self.weight):
            canvas.flush()
            if hasattr(mmap, "MADV_DONTNEED") and canvas._mmap is not None:
                canvas._mmap.madvise(mmap.MADV_DONTNEED)

    def save(self, sidecar: dict[str, Any]) -> dict[str, Any]:
        """Write the blended canvas to its ``.npy`` (NaN where no patch) and its sidecar;
        returns the sidecar (with the slide's ``scale``)."""
        path = self.path
        peak = 0.0
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=self.shape)
            for start in range(0, self.shape[0], _ROWS):
                stop = min(start + _ROWS, self.shape[0])
                weight = np.asarray(self.weight[start:stop])
                with np.errstate(invalid="ignore", divide="ignore"):
                    rows = np.where(weight > 0, np.asarray(self.total[start:stop]) / weight, np.nan)
                out[start:stop] = rows
                if np.isfinite(rows).any():
                    peak = max(peak, float(np.nanmax(rows)))
            out.flush()
            del out
        meta = {**sidecar, "shape": list(self.shape), "cell_size_px": self.out_px0,
                "cell_size_um": self.out_px0 * self.grid.mpp if self.grid.mpp else None,
                "origin_level0": [0, 0], "cam_cells": self.cells, "px_per_cam_cell": self.px,
                "scale": peak if self.weighted else 1.0, "method": self.method,
                "value": (f"probability-weighted raw {self.method} map, blended (Hann window)" if self.weighted
                          else "predicted tumor probability per pixel (segmentation), blended (Hann window)")}
        write_json(path.with_suffix(".json"), meta)
        return meta

    def close(self) -> None:
        """Drop the accumulators (again: a no-op)."""
        self.total = self.weight = None
        for f in self._files:
            f.unlink(missing_ok=True)


def thumbnail_of(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """A saved canvas reduced to about ``shape``, and its level-0 px per value."""
    canvas = np.load(path, mmap_mode="r")
    return reduce_canvas(path, max(1, int(math.ceil(max(canvas.shape[0] / shape[0], canvas.shape[1] / shape[1])))))


def reduce_canvas(path: Path, factor: int) -> tuple[np.ndarray, float]:
    """A saved canvas reduced by block means of ``factor x factor`` (NaN ignored; read in row
    chunks), and its level-0 px per value."""
    canvas = np.load(path, mmap_mode="r")
    cell_px = float(json.loads(path.with_suffix(".json").read_text())["cell_size_px"])
    h, w = canvas.shape[0] // factor, canvas.shape[1] // factor
    out = np.empty((h, w), np.float32)
    for r in range(0, h, 256):
        rows = np.asarray(canvas[r * factor : min(h, r + 256) * factor, : w * factor])
        blocks = rows.reshape(-1, factor, w, factor)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block: "mean of empty slice"
            out[r : r + blocks.shape[0]] = np.nanmean(blocks, axis=(1, 3))
    return out, cell_px * factor
