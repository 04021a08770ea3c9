"""Noise fields and seamless periodic textures, the raw material of every synthetic texture."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit std (float32).

    Wide filters run on a coarser grid and are upsampled: same look, a fraction of the cost.
    """
    step = max(1.0, sigma / 3)
    coarse = (int(np.ceil(shape[0] / step)) + 2, int(np.ceil(shape[1] / step)) + 2)
    noise = rng.standard_normal(coarse, dtype=np.float32)
    if sigma > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT)
    if step > 1:
        noise = cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    else:
        noise = noise[1 : shape[0] + 1, 1 : shape[1] + 1]
    return (noise - noise.mean()) / (noise.std() + 1e-6)


class PeriodicTexture:
    """A seamless periodic noise tile repeated over the slide: cheap level-0 texture."""

    def __init__(self, rng: np.random.Generator, width: int, sigma: float, period: int = 1031):
        pad = int(3 * sigma) + 1
        tile = np.pad(rng.standard_normal((period, period), dtype=np.float32), pad, "wrap")
        if sigma > 0:
            tile = cv2.GaussianBlur(tile, (0, 0), sigma)
        tile = tile[pad:-pad, pad:-pad]
        tile = (tile - tile.mean()) / (tile.std() + 1e-6)
        self._wide = np.ascontiguousarray(np.tile(tile, (1, width // period + 2)))
        self._period, self._width = period, width
        self._dx, self._dy = (int(v) for v in rng.integers(period, size=2))

    def rows(self, y0: int, y1: int) -> np.ndarray:
        idx = (np.arange(y0, y1) + self._dy) % self._period
        return self._wide[idx, self._dx : self._dx + self._width]


class FibreTexture:
    """Wavy collagen: anisotropic noise in four orientations, blended by the local direction."""

    def __init__(self, rng: np.random.Generator, width: int, zoom: float, period: int = 521):
        along, across = 18 * zoom, 1.7 * zoom
        half = int(3 * along)
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
        self._dirs = [(np.cos(2 * a), np.sin(2 * a)) for a in np.arange(4) * np.pi / 4]
        self._tiles = []
        for c2, s2 in self._dirs:
            angle = np.arctan2(s2, c2) / 2
            u = xx * np.cos(angle) + yy * np.sin(angle)
            v = yy * np.cos(angle) - xx * np.sin(angle)
            kernel = np.exp(-0.5 * ((u / along) ** 2 + (v / across) ** 2)).astype(np.float32)
            white = np.pad(rng.standard_normal((period, period), dtype=np.float32), half, "wrap")
            tile = cv2.filter2D(white, -1, kernel)[half:-half, half:-half]
            tile = (tile - tile.mean()) / tile.std()
            self._tiles.append(np.ascontiguousarray(np.tile(tile, (1, width // period + 2))[:, :width]))
        self._period, self._dy = period, int(rng.integers(period))

    def block(self, y0: int, y1: int, x0: int, x1: int, direction: np.ndarray) -> np.ndarray:
        """Fibre intensity (about unit std) of rows [y0, y1), columns [x0, x1)."""
        idx = (np.arange(y0, y1) + self._dy) % self._period
        total, norm = 0.0, 0.0
        for (c2, s2), tile in zip(self._dirs, self._tiles, strict=True):
            weight = np.maximum(direction[..., 0] * c2 + direction[..., 1] * s2, 0) ** 2
            total = total + weight * tile[idx, x0:x1]
            norm = norm + weight * weight
        return total / np.sqrt(norm + 1e-3)
