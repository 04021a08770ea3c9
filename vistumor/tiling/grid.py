"""The patch grid of a slide: coordinates, tissue fractions and labels (pure numpy).

A tile is read as ``read_size x read_size`` pixels at ``level``; its footprint on level 0
is ``size0 = read_size * level_downsample`` pixels, placed every ``stride0`` level-0 pixels.
Labels follow the paper: tumor when at least ``min_tumor_fraction`` of the tile is
annotated tumor, normal when none of it is, and ambiguous (excluded) in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vistumor.labels import AMBIGUOUS, NORMAL, TUMOR

# Fractions are compared with this slack, so "exactly 5 %" is 5 % despite float rounding.
_EPS = 1e-9


@dataclass(frozen=True)
class GridSpec:
    """Where and how big tiles are, in level-0 pixels, and how they are read.

    Attributes:
        level: pyramid level the pixels are read from.
        read_size: tile edge in pixels at ``level``.
        size0: tile edge in level-0 pixels.
        stride0: distance between neighbouring tiles in level-0 pixels.
    """

    level: int
    read_size: int
    size0: float
    stride0: float


def grid_coordinates(width0: int, height0: int, spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 top-left corners ``(x0, y0)`` of every whole tile inside the slide, row-major."""
    nx = _fits(width0, spec.size0, spec.stride0)
    ny = _fits(height0, spec.size0, spec.stride0)
    xs = np.floor(np.arange(nx) * spec.stride0).astype(np.int64)
    ys = np.floor(np.arange(ny) * spec.stride0).astype(np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel(), gy.ravel()


def _fits(length: int, size: float, stride: float) -> int:
    if length < size:
        return 0
    return int(math.floor((length - size) / stride + _EPS)) + 1


def box_fractions(
    mask: np.ndarray, downsample: float, x0: np.ndarray, y0: np.ndarray, size0: float
) -> np.ndarray:
    """Share of mask pixels set inside each level-0 box ``[x0, x0+size0) x [y0, y0+size0)``.

    A mask pixel ``(c, r)`` stands for the level-0 point at its centre,
    ``((c + .5) * downsample, (r + .5) * downsample)``, and belongs to the boxes containing
    that point. Computed with an integral image: O(1) per box.
    """
    # OpenCV's integral image (zero first row and column), exact in int32 below 2^31 pixels
    depth = cv2.CV_32S if mask.size < 2**31 else cv2.CV_64F
    integral = cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=depth)
    rows, cols = mask.shape
    c_first = _first_centre(np.asarray(x0, np.float64), downsample, cols)
    c_stop = _first_centre(np.asarray(x0, np.float64) + size0, downsample, cols)
    r_first = _first_centre(np.asarray(y0, np.float64), downsample, rows)
    r_stop = _first_centre(np.asarray(y0, np.float64) + size0, downsample, rows)
    total = (
        integral[r_stop, c_stop] - integral[r_first, c_stop]
        - integral[r_stop, c_first] + integral[r_first, c_first]
    )
    # the box's own pixel count, as if the mask extended past the border
    n_cols = _first_centre(np.asarray(x0, np.float64) + size0, downsample, None) - _first_centre(
        np.asarray(x0, np.float64), downsample, None
    )
    n_rows = _first_centre(np.asarray(y0, np.float64) + size0, downsample, None) - _first_centre(
        np.asarray(y0, np.float64), downsample, None
    )
    area = np.maximum(n_cols * n_rows, 1)
    return total / area


def _first_centre(pos: np.ndarray, downsample: float, limit: int | None) -> np.ndarray:
    """Index of the first mask pixel whose centre is at or after level-0 ``pos``."""
    index = np.ceil(pos / downsample - 0.5 - _EPS).astype(np.int64)
    return index if limit is None else np.clip(index, 0, limit)


def label_tiles(tumor_fraction: np.ndarray, min_tumor_fraction: float) -> np.ndarray:
    """``TUMOR`` when fraction >= threshold, ``NORMAL`` when 0, else ``AMBIGUOUS``."""
    fraction = np.asarray(tumor_fraction, np.float64)
    labels = np.full(fraction.shape, AMBIGUOUS, np.int8)
    labels[fraction <= 0.0] = NORMAL
    labels[fraction >= min_tumor_fraction - _EPS] = TUMOR
    return labels


def keep_tissue(tissue_fraction: np.ndarray, min_tissue_fraction: float) -> np.ndarray:
    """Tiles with at least ``min_tissue_fraction`` tissue."""
    return np.asarray(tissue_fraction) >= min_tissue_fraction - _EPS
