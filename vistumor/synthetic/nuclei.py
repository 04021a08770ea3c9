"""Sprite banks of pre-drawn nuclei: lymphocytes, tumor cells, centroblasts, histiocytes, spindles."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vistumor.synthetic.noise import smooth_noise
from vistumor.synthetic.tissue import Style


@dataclass(frozen=True)
class Sprites:
    """A library of pre-drawn nuclei: cover (0-255), hematoxylin and eosin (OD x 100)."""

    cover: np.ndarray  # (n, k, k) uint8, how much of the underlying stroma is hidden
    h: np.ndarray
    e: np.ndarray
    extent: np.ndarray  # (n,) radius of the drawn support, level-0 px


def _outline(rng, k: int, radius: float, aspect: float, roughness: float, angle: float):
    """Irregular ellipse on a k x k grid: antialiased alpha, depth (0 rim .. 1 centre), rho / r."""
    yy, xx = np.mgrid[0:k, 0:k].astype(np.float32) - (k - 1) / 2
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = yy * np.cos(angle) - xx * np.sin(angle)
    m = np.arange(2, 8)[:, None]
    table = np.linspace(-np.pi, np.pi, 721)  # the radius as a function of the polar angle
    wobble = (
        roughness * rng.normal(0, 1, (6, 1)) / m * np.cos(m * table + rng.uniform(0, 2 * np.pi, (6, 1)))
    ).sum(0)
    bins = np.rint((np.arctan2(v, u) + np.pi) * (720 / (2 * np.pi))).astype(np.intp)
    r = radius * np.clip(1 + wobble, 0.75, 1.25).astype(np.float32)[bins]
    rho = np.hypot(u / np.sqrt(aspect), v * np.sqrt(aspect))
    alpha = np.clip(r - rho + 0.5, 0, 1)
    return alpha, np.clip(1 - rho / r, 0, 1), rho / r


def _speckle(rng, k: int, sigma: float) -> np.ndarray:
    return smooth_noise(rng, (k, k), sigma)


def _disc(k: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:k, 0:k]
    return np.clip(radius - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1).astype(np.float32)


def _lymphocyte(rng, k, zoom, angle, style):
    """Small round dark nucleus with clumped chromatin, sometimes a retraction halo."""
    radius = rng.uniform(10.0, 13.0) * zoom
    alpha, depth, rel = _outline(rng, k, radius, rng.uniform(1.0, 1.25), 0.14, angle)
    chrom = _speckle(rng, k, 1.0 * zoom)
    rim = np.exp(-((depth * radius / (2.0 * zoom)) ** 2))
    h = alpha * (style.lymph_h * rng.uniform(0.8, 1.15) * (0.8 + 0.22 * chrom) + 0.2 * rim)
    cover = alpha
    if rng.random() < 0.6:  # retraction artefact: a clear ring around the nucleus
        halo = np.clip((1 + rng.uniform(2, 5) * zoom / radius - rel) * radius, 0, 1)
        cover = np.maximum(alpha, rng.uniform(0.4, 0.75) * halo)
    return cover, h, 0.6 * alpha


def _tumor_cell(rng, k, zoom, angle, style):
    """Large pleomorphic vesicular nucleus: pale, dark membrane, coarse chromatin, nucleoli."""
    radius = rng.uniform(17, 27) * zoom
    alpha, depth, _ = _outline(rng, k, radius, rng.uniform(1.05, 1.5), rng.uniform(0.06, 0.22), angle)
    chrom = _speckle(rng, k, 1.4 * zoom)
    dark = rng.random() < style.tumor_dark  # some hyperchromatic nuclei
    base = rng.uniform(0.9, 1.25) if dark else style.tumor_h * rng.uniform(0.8, 1.2)
    rim = rng.uniform(0.5, 0.9) * np.exp(-((depth * radius / (2.3 * zoom)) ** 2))
    h = alpha * (base * (1 + 0.25 * chrom) + 0.45 * np.clip(chrom - 0.5, 0, None) + rim)
    e = (rng.uniform(0.55, 0.7) if dark else rng.uniform(0.3, 0.45)) * alpha
    inner = np.argwhere(depth > 0.4)
    for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
        cy, cx = inner[rng.integers(len(inner))]
        blob = _disc(k, cy, cx, rng.uniform(2.5, 4.5) * zoom) * alpha
        h, e = np.maximum(h, 1.3 * blob), e + 0.5 * blob
    return alpha, h, e


def _centroblast(rng, k, zoom, angle, style):
    """Germinal-centre blast: medium, round, vesicular, nucleoli on the membrane."""
    radius = rng.uniform(13, 17) * zoom
    alpha, depth, _ = _outline(rng, k, radius, rng.uniform(1.0, 1.25), 0.15, angle)
    chrom = _speckle(rng, k, 1.2 * zoom)
    rim = 0.6 * np.exp(-((depth * radius / (2.0 * zoom)) ** 2))
    h = alpha * (rng.uniform(0.55, 0.8) * (1 + 0.2 * chrom) + rim)
    rim_pts = np.argwhere((depth > 0.12) & (depth < 0.3))
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rim_pts[rng.integers(len(rim_pts))]
        h = np.maximum(h, 1.3 * _disc(k, cy, cx, 2.2 * zoom) * alpha)
    return alpha, h, 0.45 * alpha


def _histiocyte(rng, k, zoom, angle, style):
    """Sinus histiocyte: oval or bean-shaped, pale, fine chromatin."""
    radius = rng.uniform(12, 16) * zoom
    alpha, depth, _ = _outline(rng, k, radius, rng.uniform(1.3, 2.0), 0.3, angle)
    chrom = _speckle(rng, k, 1.0 * zoom)
    rim = 0.35 * np.exp(-((depth * radius / (1.8 * zoom)) ** 2))
    h = alpha * (rng.uniform(0.5, 0.7) * (1 + 0.2 * chrom) + rim)
    return alpha, h, 0.4 * alpha


def _spindle(rng, k, zoom, angle, style):
    """Fibroblast or endothelial nucleus: thin, elongated along the collagen."""
    radius = rng.uniform(8.5, 11) * zoom
    alpha, _, _ = _outline(rng, k, radius, rng.uniform(4, 8), 0.08, angle)
    chrom = _speckle(rng, k, 1.0 * zoom)
    h = alpha * rng.uniform(1.1, 1.5) * (0.9 + 0.1 * chrom)
    return alpha, h, 0.5 * alpha


CELL_TYPES = {  # drawing function, sprite box (px at 0.25 um/px), grid cell of the placement
    "lymphocyte": (_lymphocyte, 46, 23),
    "tumor": (_tumor_cell, 96, 42),
    "centroblast": (_centroblast, 52, 44),
    "histiocyte": (_histiocyte, 60, 56),
    "spindle": (_spindle, 90, 46),
}
ANGLE_BINS = 8  # spindle nuclei are drawn in this many orientations


def sprite_bank(
    rng: np.random.Generator, cell_type: str, zoom: float, style: Style, count: int = 48
) -> Sprites:
    draw, box, _ = CELL_TYPES[cell_type]
    k = int(np.ceil(box * zoom)) | 1
    layers = []
    for i in range(count):
        angle = (i % ANGLE_BINS) * np.pi / ANGLE_BINS if cell_type == "spindle" else rng.uniform(0, np.pi)
        layers.append(draw(rng, k, zoom, angle, style))
    cover, h, e = (np.stack([layer[j] for layer in layers]) for j in range(3))
    for i in range(count):  # nuclei above or below the focal plane: soft and paler
        if rng.random() < 0.35:
            sigma = rng.uniform(0.8, 2.2) * zoom
            fade = rng.uniform(0.65, 0.9)
            cover[i] = cv2.GaussianBlur(cover[i], (0, 0), sigma)
            h[i] = cv2.GaussianBlur(h[i], (0, 0), sigma) * fade
            e[i] = cv2.GaussianBlur(e[i], (0, 0), sigma)
    yy, xx = np.mgrid[0:k, 0:k] - (k - 1) / 2
    extent = np.array([np.hypot(yy, xx)[c > 0.02].max() for c in cover])
    q = lambda a, s: np.clip(np.rint(a * s), 0, 255).astype(np.uint8)  # noqa: E731
    return Sprites(q(cover, 255), q(h, 100), q(e, 100), extent)
