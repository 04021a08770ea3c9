"""The tumor-probability heatmap: one float per stride cell, its geometry beside it.

A cell holds the mean probability of the patches covering it (a cell is covered when its
centre lies in the patch; at half-patch stride, four patches), NaN where no tissue patch
covers it. ``heatmaps/<slide>.npy`` is the map; ``<slide>.json`` says where it lies:
level-0 origin, cell size in px and µm, the slide's checksum, the checkpoint and the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from vistumor.files import atomic_path, save_figure, write_json
from vistumor.infer.geometry import SlideGrid, cell_spans

COLORMAP = "inferno"


class ProbabilityMap:
    """Accumulates patch probabilities into the cells they cover."""

    def __init__(self, grid: SlideGrid):
        self.grid = grid
        self.total = np.zeros(grid.cells, np.float64)
        self.count = np.zeros(grid.cells, np.int32)
        rows, cols = grid.cells
        r0, r1, c0, c1 = cell_spans(grid)
        self.spans = (np.clip(r0, 0, rows), np.clip(r1, 0, rows), np.clip(c0, 0, cols), np.clip(c1, 0, cols))

    def add(self, indices: np.ndarray, prob: np.ndarray) -> None:
        r0, r1, c0, c1 = (s[indices] for s in self.spans)
        for a, b, c, d, p in zip(r0, r1, c0, c1, prob, strict=True):
            self.total[a:b, c:d] += p
            self.count[a:b, c:d] += 1

    def result(self) -> np.ndarray:
        """The map ``(rows, cols)`` float32: mean probability, NaN without tissue."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (self.total / self.count).astype(np.float32)
        out[self.count == 0] = np.nan
        return out


def save_map(path: Path, values: np.ndarray, sidecar: dict[str, Any]) -> None:
    """``path`` (.npy) and its ``.json`` sidecar, both atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, values)
    write_json(path.with_suffix(".json"), sidecar)


def geometry(grid: SlideGrid) -> dict[str, Any]:
    """The level-0 geometry of a map of ``grid``'s cells."""
    return {
        "origin_level0": [0, 0], "cell_size_px": grid.stride0, "cell_size_um": grid.cell_um,
        "shape": list(grid.cells), "width0": grid.width0, "height0": grid.height0, "mpp": grid.mpp,
        "patch_size_px": grid.size0, "stride_px": grid.stride0, "read_level": grid.read_level,
        "read_size": grid.read_size, "patches": len(grid), "upsample": grid.upsample,
    }


def heatmap_overlay(thumbnail: np.ndarray, thumb_downsample: float, values: np.ndarray, cell_px: float,
            vmax: float = 1.0, alpha: float = 0.55, cmap: str = COLORMAP) -> np.ndarray:
    """The thumbnail with ``values`` (cells of ``cell_px`` level-0 px; NaN transparent) on top."""
    import cv2

    h, w = thumbnail.shape[:2]
    scale = cell_px / thumb_downsample  # thumbnail px per cell
    big = cv2.resize(np.nan_to_num(values, nan=-1.0).astype(np.float32),
                     (int(round(values.shape[1] * scale)), int(round(values.shape[0] * scale))),
                     interpolation=cv2.INTER_NEAREST)
    layer = np.full((h, w), -1.0, np.float32)
    hh, ww = min(h, big.shape[0]), min(w, big.shape[1])
    layer[:hh, :ww] = big[:hh, :ww]
    level = np.clip(layer / vmax, 0, 1)
    colours = (colormaps[cmap](level, bytes=True)[..., :3]).astype(np.float32)
    shown = ((layer >= 0) * (0.15 + (alpha - 0.15) * level)).astype(np.float32)[..., None]  # low: see-through
    return (thumbnail * (1 - shown) + colours * shown).astype(np.uint8)


def heatmap_figure(path: Path, thumbnail: np.ndarray, thumb_downsample: float, values: np.ndarray,
                   cell_px: float, title: str, label: str = "tumor probability", vmax: float = 1.0) -> Path:
    """The heatmap drawn on the thumbnail, with a colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = Figure(figsize=(6, 6 * thumbnail.shape[0] / max(thumbnail.shape[1], 1) + 0.6), dpi=110)
    ax = fig.subplots()
    ax.imshow(heatmap_overlay(thumbnail, thumb_downsample, values, cell_px, vmax))
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.colorbar(ScalarMappable(Normalize(0, vmax), COLORMAP), ax=ax, fraction=0.04, label=label)
    return save_figure(fig, path)
